"""``benchmarks/gpu_day.py`` end to end on Numba's CUDA simulator: every part runs, both reports are written
and every target is evaluated; without a GPU and without ``--simulate`` the script refuses with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gpubp as gb
from gpubp.backend import probe_cupy
from helpers import requires_simulator

pytestmark = pytest.mark.gpu_sim

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_day.py"
SECTIONS = ("meta", "gpu_tests", "parity", "graphs", "sgemm", "bandwidth", "grid", "targets")
STATUSES = {"PASS", "MISS", "not measured"}


def run(*args, simulator):
    env = dict(os.environ)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-day")
    return run("--simulate", "--out", str(out), simulator=True), out


def test_a_simulated_run_writes_every_section(simulated):
    proc, out = simulated
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(SECTIONS) <= set(results)
    for name in SECTIONS[:-1]:
        assert "error" not in results[name], results[name]
    assert results["meta"]["mode"] == "simulate"
    assert "skipped" in results["gpu_tests"]
    assert len(results["parity"]["cases"]) == 4
    assert all("error" not in case and case["max_abs_dW"] < 1e-5 for case in results["parity"]["cases"])
    assert all(row["eager_ms"] > 0 and row["graph_ms"] > 0 for row in results["graphs"]["rows"])
    # the mode each timing actually ran in: a capture that fell back to eager steps would show here
    assert [(row["eager_mode"], row["graph_mode"]) for row in results["graphs"]["rows"]] == [("eager", "graph")]
    assert results["sgemm"]["rows"] and results["bandwidth"]["copy"]["gb_per_s"] > 0
    assert all("fraction_of_copy" in k for k in results["bandwidth"]["kernels"])
    cell, = results["grid"]["cells"]
    assert cell["ms"]["gpubp"] > 0 and set(cell["skipped"]) == {"torch", "torch.compile", "jax"}
    assert cell["gpubp_mode"] == "graph"


def test_targets_are_evaluated_and_unmeasured_ones_say_so(simulated):
    _, out = simulated
    targets = {t["id"]: t for t in json.loads((out / "results.json").read_text())["targets"]}
    assert set(targets) == {"a", "b", "c", "d"}
    assert all(t["status"] in STATUSES and t["detail"] for t in targets.values())
    assert targets["a"]["status"] == targets["b"]["status"] == targets["c"]["status"] == "not measured"
    assert targets["d"]["measured"] == 3


def test_the_markdown_report_has_the_table_and_the_targets(simulated):
    proc, out = simulated
    md = (out / "results.md").read_text()
    assert ("| cell | gpubp ms | torch ms | torch.compile ms | jax ms | gpubp / fastest peer | "
            "torch eager / gpubp graph | % of sgemm |") in md
    assert "| eager / graph | graph column ran as |" in md and " | graph |\n" in md
    assert "did not run as a CUDA graph" not in md
    for target_id in "abcd":
        line = next(line for line in md.splitlines() if line.startswith(f"- **({target_id})**"))
        assert any(f"**{status}**" in line for status in STATUSES)
        assert f"({target_id}) " in proc.stdout


def test_without_a_gpu_and_without_simulate_it_exits_2(tmp_path):
    if probe_cupy()[0] is not None:
        pytest.skip("a CUDA device answers here")
    proc = run("--out", str(tmp_path / "out"), simulator=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no usable CUDA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def gpu_day(monkeypatch):
    """The script imported as a module (its folder on sys.path, and its ``engines`` module in sys.modules,
    only for the test)."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("gpu_day_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    if "engines" not in before:
        sys.modules.pop("engines", None)


@requires_simulator
def test_step_mode_tells_a_capture_that_fell_back_to_eager_steps(gpu_day, monkeypatch):
    """What ``step_mode`` records beside the graph timings: "graph" only when the plan replays a captured
    graph; a failed capture (logged once, then eager steps) and graphs off are "eager"."""
    import argparse

    setup = gpu_day.make_setup(argparse.Namespace(simulate=True, quick=False))
    assert gpu_day.step_mode(gpu_day.warm(gpu_day.gpubp_step(setup, 8, 1, graphs=True))) == "graph"
    assert gpu_day.step_mode(gpu_day.warm(gpu_day.gpubp_step(setup, 8, 1, graphs=False))) == "eager"
    one_step = gpu_day.gpubp_step(setup, 8, 1, graphs=True)
    assert gpu_day.step_mode(gpu_day.warm(one_step, steps=1)) == "eager"  # warmed up, not captured yet

    def refuse(kernels, body):
        raise RuntimeError("capture refused")

    backend = gb.get_backend("gpu-sim")
    monkeypatch.setattr(backend.runtime, "capture", refuse)
    engine = gpu_day.warm(gpu_day.gpubp_step(setup, 8, 1, graphs=True), steps=3)
    assert gpu_day.step_mode(engine) == "eager"
    assert gpu_day.step_mode(gpu_day.Engine("torch", "cuda", lambda: None, lambda: None)) == "unknown"
    # and a grid cell whose gpubp steps fell back misses target (b), saying why
    cell = {"width": 16, "depth": 1, "batch": 8, "ms": {"gpubp": 1.0, "torch": 5.0}, "gpubp_mode": "eager"}
    target = gpu_day.target_graph_speedup([cell])
    assert target["status"] == "MISS" and "gpubp ran eager, not as a CUDA graph" in target["detail"]
    assert gpu_day.target_graph_speedup([dict(cell, gpubp_mode="graph")])["status"] == "PASS"
