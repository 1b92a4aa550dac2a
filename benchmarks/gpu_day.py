"""Measure the GPU backend against its targets in one run on a machine with a CUDA GPU.

Parts, each recorded in ``results.json`` (a part that fails records its error and the run goes on):

* ``gpu_tests``: ``python -m pytest -m gpu -q`` (the real-GPU tests): counts and the output's tail;
* ``parity``: the same small MLP trained with ``fit`` on backend "cpu" and on the GPU (sgd and adam,
  softmax cross-entropy and MSE): losses and the largest weight difference;
* ``graphs``: ``model.train_step(plan)`` with ``model.cuda_graphs`` off and on (width 1024, depth 2), with
  the mode each actually ran in (``eager_mode``, ``graph_mode``: "graph" or "eager", see :func:`step_mode`);
* ``sgemm``: the in-run cuBLAS float32 GEMM rate (CuPy matmul) at each grid batch's (batch, width, width);
* ``bandwidth``: device-to-device copy bandwidth and the bytes/s of fused gpubp kernels over a large array;
* ``grid``: one SGD step at width 1024, depths 1, 2, 4, batches 32 to 32768: gpubp (CUDA graphs) against
  PyTorch eager, ``torch.compile(mode="reduce-overhead")`` and JAX jit (``gpubp_mode``: how gpubp's steps ran);
* ``targets``: PASS / MISS / not measured, with the numbers, for (a) gpubp <= the fastest peer in every
  grid cell, (b) gpubp >= 2x PyTorch eager at batch <= 512, (c) >= 70% of the sgemm rate at batch >= 8192,
  (d) fused kernels >= 70% of the copy bandwidth.

Engines of one comparison are timed round-robin in one run (``interleaved_seconds`` of
``benchmarks/conftest.py``) with a short pause between engines; times are medians. Every engine does
float32 math (TF32 off). ``results.md`` holds the same as Markdown tables.

Run::

    python benchmarks/gpu_day.py --out gpu-day/            # everything (torch.compile compiles every cell)
    python benchmarks/gpu_day.py --out gpu-day/ --quick    # fewer repeats, smaller grid
    python benchmarks/gpu_day.py --out /tmp/gpu-day --simulate

``--simulate`` runs the gpubp parts on Numba's CUDA simulator (backend "gpu-sim") with tiny shapes and
skips the peers and the real-GPU tests: it checks the script's plumbing on a CPU, and its timings say
nothing about a GPU. Without a usable GPU and without ``--simulate`` the script exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from engines import (LR, Engine, flops_per_step, gpubp_engine, initial_weights, jax_engine,  # noqa: E402
                     make_batch, sgemm_engine, torch_engine)

PEERS = ("torch", "torch.compile", "jax")
ENGINE_NAMES = ("gpubp",) + PEERS
GRAPH_SPEEDUP_TARGET = 2.0
SMALL_BATCH = 512
LARGE_BATCH = 8192
GEMM_FRACTION_TARGET = 0.70
BANDWIDTH_FRACTION_TARGET = 0.70
COPY = "device-to-device copy"
#: fused kernels timed against the copy: read z (and b), write z; read x, write x; read dy and y, write y
BANDWIDTH_KERNELS = ("bias_activation_ (sigmoid)", "sigmoid_", "activation_backward_ (relu)")
PARITY_CASES = [(opt, loss) for opt in ("sgd", "adam") for loss in ("softmax_cross_entropy", "mse")]
LIBRARIES = ("numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "cupy", "torch", "jax", "jaxlib",
             "gpubp", "pytest")


@dataclass(frozen=True)
class Setup:
    """Shapes and timing of one run."""

    mode: str
    backend: str
    n_in: int
    width: int
    n_out: int
    depths: tuple
    batches: tuple
    graph_depth: int
    graph_batches: tuple
    parity_sizes: tuple
    parity_samples: int
    parity_batch: int
    parity_epochs: int
    kernel_shape: tuple
    timing: dict
    peers: bool
    run_gpu_tests: bool
    gpu_tests_timeout: int


def make_setup(args):
    if args.simulate:
        return Setup(mode="simulate", backend="gpu-sim", n_in=8, width=16, n_out=4, depths=(1,), batches=(8,),
                     graph_depth=1, graph_batches=(8,), parity_sizes=(8, 16, 4), parity_samples=16, parity_batch=8,
                     parity_epochs=1, kernel_shape=(8, 16),
                     timing={"budget_seconds": 0.0, "min_rounds": 1, "max_rounds": 1, "settle_seconds": 0.0},
                     peers=False, run_gpu_tests=False, gpu_tests_timeout=0)
    if args.quick:
        return Setup(mode="quick", backend="gpu", n_in=784, width=1024, n_out=10, depths=(1, 2),
                     batches=(32, 512, 8192), graph_depth=2, graph_batches=(32, 512), parity_sizes=(784, 256, 10),
                     parity_samples=2048, parity_batch=128, parity_epochs=1, kernel_shape=(8192, 4096),
                     timing={"budget_seconds": 1.0, "min_rounds": 3, "max_rounds": 5, "settle_seconds": 0.05},
                     peers=True, run_gpu_tests=True, gpu_tests_timeout=900)
    return Setup(mode="full", backend="gpu", n_in=784, width=1024, n_out=10, depths=(1, 2, 4),
                 batches=(32, 128, 512, 2048, 8192, 32768), graph_depth=2, graph_batches=(32, 128, 512, 2048),
                 parity_sizes=(784, 256, 10), parity_samples=4096, parity_batch=256, parity_epochs=2,
                 kernel_shape=(16384, 4096),
                 timing={"budget_seconds": 3.0, "min_rounds": 5, "max_rounds": 11, "settle_seconds": 0.1},
                 peers=True, run_gpu_tests=True, gpu_tests_timeout=1800)


def log(message):
    print(f"[gpu_day] {message}", file=sys.stderr, flush=True)


def describe(exc):
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def failure(exc):
    return {"error": describe(exc), "traceback": traceback.format_exc(limit=8)}


# ----------------------------------------------------------------------------- backends and engines
def open_backend(simulate):
    """``(backend, None)``, or ``(None, reason)`` when the requested device is unusable here."""
    from gpubp.backend import get_backend, probe_gpu

    if simulate:
        try:
            return get_backend("gpu-sim"), None
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            return None, describe(exc)
    backend, reason = probe_gpu()
    return backend, None if reason is None else " ".join(str(reason).split())


def device_sync(backend):
    """Waits for all queued work on the device: gpubp's step stream and CuPy's own streams."""
    if backend.name != "gpu":
        return backend.synchronize
    import cupy

    return cupy.cuda.runtime.deviceSynchronize


@contextlib.contextmanager
def graphs_env(enabled):
    """Models made inside have ``cuda_graphs`` set to ``enabled`` (read from GPUBP_CUDA_GRAPHS at construction)."""
    old = os.environ.get("GPUBP_CUDA_GRAPHS")
    os.environ["GPUBP_CUDA_GRAPHS"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GPUBP_CUDA_GRAPHS", None)
        else:
            os.environ["GPUBP_CUDA_GRAPHS"] = old


def gpubp_step(setup, batch, depth, graphs=True):
    with graphs_env(graphs):
        return gpubp_engine(setup.backend, batch, setup.n_in, setup.width, depth, setup.n_out)


def step_mode(engine):
    """How the steps of a gpubp ``engine`` (of :func:`gpubp_step`) actually ran once they ran: "graph" or
    "eager" (graphs off, or a capture that failed: the backend then only logs a warning and runs eager
    steps, at eager speed; see ``Backend.step_mode``); "unknown" for an engine without a gpubp plan.
    Recorded beside every timing labelled as graphed."""
    if engine.plan is None:
        return "unknown"
    from gpubp.backend import Backend

    return Backend.step_mode(engine.plan)


def _torch_mlp(torch, n_in, width, depth, n_out):
    modules = []
    for i, (W, b) in enumerate(initial_weights(n_in, width, depth, n_out)):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        if i < depth:
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules)


def torch_compile_engine(device, batch, n_in, width, depth, n_out):
    """PyTorch with forward, loss and backward compiled by ``torch.compile(mode="reduce-overhead")`` (CUDA
    graphs on a GPU); the SGD update runs eagerly, as in :func:`engines.torch_engine`."""
    import torch

    torch._dynamo.reset()  # a fresh cache per cell, so no cell runs into dynamo's recompile limit
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = _torch_mlp(torch, n_in, width, depth, n_out).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    X, y = make_batch(batch, n_in, n_out)
    X, y = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(lambda inputs, labels: loss_fn(model(inputs), labels), mode="reduce-overhead")
    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)

    def step():
        mark_step()
        opt.zero_grad(set_to_none=True)
        loss = forward(X, y)
        loss.backward()
        opt.step()
        return loss

    return Engine("torch.compile", device, step, torch.cuda.synchronize if device == "gpu" else (lambda: None))


def configure_peers():
    """float32 GEMMs in every peer (no TF32), as gpubp's default; returns what was set."""
    settings = {}
    with contextlib.suppress(Exception):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        settings["torch"] = "allow_tf32=False"
    with contextlib.suppress(Exception):
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        settings["jax"] = "jax_default_matmul_precision='highest'"
    return settings


def build_peer(name, batch, n_in, width, depth, n_out):
    if name == "torch":
        return torch_engine("gpu", batch, n_in, width, depth, n_out)
    if name == "torch.compile":
        return torch_compile_engine("gpu", batch, n_in, width, depth, n_out)
    return jax_engine("gpu", batch, n_in, width, depth, n_out)


def peer_missing(setup, name):
    """Why peer ``name`` cannot run in this run, or None."""
    if not setup.peers:
        return "peers are not run with --simulate"
    from conftest import missing

    return missing("torch" if name.startswith("torch") else name, "gpu")


def warm(engine, steps=2):
    for _ in range(steps):
        engine.step()
    engine.sync()
    return engine


def release_memory():
    gc.collect()
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["torch"].cuda.empty_cache()
    if "cupy" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["cupy"].get_default_memory_pool().free_all_blocks()


def timed_ms(engines, setup):
    from conftest import interleaved_seconds

    return {name: s * 1e3 for name, s in interleaved_seconds(engines, **setup.timing).items()}


# ----------------------------------------------------------------------------- parts
def part_meta(setup, backend):
    meta = {
        "mode": setup.mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": backend.device_name,
        "backend": backend.name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {},
        "setup": asdict(setup),
    }
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            meta["libraries"][name] = importlib.metadata.version(name)
    with contextlib.suppress(Exception):
        meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    with contextlib.suppress(Exception):
        from gpubp.backend import get_float32_matmul_precision

        meta["gpubp_float32_matmul_precision"] = get_float32_matmul_precision()
    meta["CUPY_TF32"] = os.environ.get("CUPY_TF32", "unset")
    meta["cuda"] = cuda_versions() if backend.name == "gpu" else {"note": "simulated run: no CUDA driver used"}
    return meta


def cuda_versions():
    try:
        from gpubp.kernels import cuda_device

        return cuda_device.versions()
    except Exception as first:  # noqa: BLE001 - fall back to CuPy's runtime
        try:
            import cupy

            return {"driver": str(cupy.cuda.runtime.driverGetVersion()),
                    "runtime": str(cupy.cuda.runtime.runtimeGetVersion()),
                    "note": f"cuda_device.versions() failed: {describe(first)}"}
        except Exception as exc:  # noqa: BLE001
            return {"error": describe(exc)}


SUMMARY_WORDS = ("passed", "failed", "skipped", "errors", "error", "deselected", "xfailed", "xpassed", "warnings",
                 "warning")


def pytest_counts(output):
    """Counts from pytest's final summary line, e.g. ``{"passed": 12, "skipped": 1}``."""
    pattern = re.compile(r"(\d+) (" + "|".join(SUMMARY_WORDS) + r")\b")
    for line in reversed(output.splitlines()):
        found = pattern.findall(line)
        if found and " in " in line:
            counts = {}
            for n, word in found:
                word = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[word] = counts.get(word, 0) + int(n)
            return counts
    return {}


def part_gpu_tests(setup, backend):
    if not setup.run_gpu_tests:
        return {"skipped": "the real-GPU tests are not run with --simulate"}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    result = {"command": "python -m pytest -m gpu -q"}
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, check=False, capture_output=True, text=True,
                              timeout=setup.gpu_tests_timeout)
        output, result["returncode"] = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        result["error"] = f"timed out after {setup.gpu_tests_timeout} s"
    result["counts"] = pytest_counts(output)
    result["tail"] = "\n".join(output.splitlines()[-40:])
    return result


def parity_data(loss, n, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)).astype(np.float32)
    mix = rng.normal(size=(n_in, n_out)).astype(np.float32) / np.sqrt(n_in)
    if loss == "softmax_cross_entropy":
        return X, np.argmax(X @ mix, axis=1)
    return X, np.tanh(X @ mix).astype(np.float32)


def parity_case(setup, backend, optimizer, loss):
    import gpubp as gb

    n_in, width, n_out = setup.parity_sizes
    X, y = parity_data(loss, setup.parity_samples, n_in, n_out)
    losses, weights = {}, {}
    for name in ("cpu", backend.name):
        model = gb.Sequential([gb.Dense(width, activation="relu"), gb.Dense(n_out)], input_dim=n_in, backend=name,
                              dtype="float32", seed=0)
        opt = gb.optim.SGD(lr=0.05) if optimizer == "sgd" else gb.optim.Adam(lr=1e-3)
        model.compile(loss=loss, optimizer=opt)
        history = model.fit(X, y, batch_size=setup.parity_batch, epochs=setup.parity_epochs, verbose=0)
        losses[name] = [float(v) for v in history.history["loss"]]
        weights[name] = model.get_weights()
    cpu, gpu = weights["cpu"], weights[backend.name]
    return {
        "optimizer": optimizer, "loss": loss,
        "losses_cpu": losses["cpu"], "losses_gpu": losses[backend.name],
        "max_abs_dloss": max(abs(a - b) for a, b in zip(losses["cpu"], losses[backend.name])),
        "max_abs_dW": max(float(np.max(np.abs(a - b))) for a, b in zip(cpu, gpu)),
        "max_abs_W": max(float(np.max(np.abs(a))) for a in cpu),
    }


def part_parity(setup, backend):
    n_in, width, n_out = setup.parity_sizes
    cases = []
    for optimizer, loss in PARITY_CASES:
        log(f"parity {optimizer} / {loss}")
        try:
            cases.append(parity_case(setup, backend, optimizer, loss))
        except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
            cases.append({"optimizer": optimizer, "loss": loss, **failure(exc)})
    return {"model": f"{n_in} -> {width} (relu) -> {n_out}, float32, seed 0", "samples": setup.parity_samples,
            "batch": setup.parity_batch, "epochs": setup.parity_epochs, "compared": ["cpu", backend.name],
            "cases": cases}


def part_graphs(setup, backend):
    rows = []
    for batch in setup.graph_batches:
        log(f"graphs vs eager, batch {batch}")
        try:
            engines = {"eager": warm(gpubp_step(setup, batch, setup.graph_depth, graphs=False)),
                       "graph": warm(gpubp_step(setup, batch, setup.graph_depth, graphs=True))}
            ms = timed_ms(engines, setup)
            rows.append({"batch": batch, "eager_ms": ms["eager"], "graph_ms": ms["graph"],
                         "eager_over_graph": ms["eager"] / ms["graph"],
                         "eager_mode": step_mode(engines["eager"]), "graph_mode": step_mode(engines["graph"])})
        except Exception as exc:  # noqa: BLE001
            rows.append({"batch": batch, **failure(exc)})
        finally:
            engines = None
            release_memory()
    return {"width": setup.width, "depth": setup.graph_depth, "rows": rows}


def part_sgemm(setup, backend):
    sync = device_sync(backend)
    engines, shapes = {}, {}
    for batch in sorted(set(setup.batches)):
        name = f"{batch}x{setup.width}x{setup.width}"
        gemm = sgemm_engine(backend.name, batch, setup.width, setup.width)
        engines[name] = Engine(name, gemm.device, gemm.step, sync)
        shapes[name] = (batch, setup.width, setup.width)
    log(f"sgemm at {', '.join(engines)}")
    ms = timed_ms(engines, setup)
    release_memory()
    return {"library": "CuPy matmul (cuBLAS)" if backend.name == "gpu" else "NumPy matmul (simulated run)",
            "rows": [{"m": m, "k": k, "n": n, "ms": ms[name], "gflops": 2.0 * m * k * n / (ms[name] * 1e-3) / 1e9}
                     for name, (m, k, n) in shapes.items()]}


def bandwidth_engines(backend, shape, sync):
    """``{name: (Engine, bytes moved per call)}``: a device-to-device copy and fused gpubp kernels."""
    from gpubp.kernels.contract import KERNELS

    xp, kernels = backend.xp, backend.kernels
    rng = np.random.default_rng(0)

    def array(*dims):
        return backend.asarray(rng.normal(size=dims).astype(np.float32))

    source, target = array(*shape), backend.empty(shape, np.float32)
    z1, z2, b = array(*shape), array(*shape), array(shape[1])
    dy, y = array(*shape), array(*shape)
    nbytes = source.nbytes
    calls = {
        COPY: (lambda: xp.copyto(target, source), 2 * nbytes),
        "bias_activation_ (sigmoid)": (lambda: kernels.bias_activation_(z1, b, "sigmoid"), 2 * nbytes + b.nbytes),
        "sigmoid_": (lambda: kernels.sigmoid_(z2), 2 * nbytes),
        "activation_backward_ (relu)": (lambda: kernels.activation_backward_(dy, y, "relu"), 3 * nbytes),
    }
    unknown = {name.split(" ")[0] for name in BANDWIDTH_KERNELS} - set(KERNELS)
    if unknown:
        raise KeyError(f"not in the kernel contract: {sorted(unknown)}")
    return {name: (Engine(name, backend.name, fn, sync), size) for name, (fn, size) in calls.items()}


def part_bandwidth(setup, backend):
    built = bandwidth_engines(backend, setup.kernel_shape, device_sync(backend))
    log(f"bandwidth over {setup.kernel_shape[0]}x{setup.kernel_shape[1]} float32")
    ms = timed_ms({name: warm(engine) for name, (engine, _) in built.items()}, setup)
    rows = {name: {"name": name, "bytes": size, "ms": ms[name], "gb_per_s": size / (ms[name] * 1e-3) / 1e9}
            for name, (_, size) in built.items()}
    copy = rows.pop(COPY)
    for row in rows.values():
        row["fraction_of_copy"] = row["gb_per_s"] / copy["gb_per_s"]
    built = None
    release_memory()
    return {"shape": list(setup.kernel_shape), "dtype": "float32", "copy": copy, "kernels": list(rows.values())}


def grid_cell(setup, depth, batch):
    cell = {"width": setup.width, "depth": depth, "batch": batch,
            "flops_per_step": flops_per_step(batch, setup.n_in, setup.width, depth, setup.n_out),
            "ms": {}, "skipped": {}}
    engines = {}
    try:
        engines["gpubp"] = warm(gpubp_step(setup, batch, depth, graphs=True))
    except Exception as exc:  # noqa: BLE001
        cell.update(failure(exc))
        return cell
    for name in PEERS:
        reason = peer_missing(setup, name)
        if reason is not None:
            cell["skipped"][name] = reason
            continue
        try:
            engines[name] = warm(build_peer(name, batch, setup.n_in, setup.width, depth, setup.n_out), steps=3)
        except Exception as exc:  # noqa: BLE001 - the cell goes on without this peer
            cell["skipped"][name] = f"failed: {describe(exc)}"
    try:
        cell["ms"] = timed_ms(engines, setup)
    except Exception as exc:  # noqa: BLE001
        cell.update(failure(exc))
    cell["gpubp_mode"] = step_mode(engines["gpubp"])  # "graph" unless the capture failed (see step_mode)
    return cell


def part_grid(setup, backend):
    cells = []
    for depth in setup.depths:
        for batch in setup.batches:
            log(f"grid width {setup.width} depth {depth} batch {batch}")
            cells.append(grid_cell(setup, depth, batch))
            release_memory()
    return {"model": f"{setup.n_in} -> [{setup.width}] * depth (relu) -> {setup.n_out}, softmax cross-entropy, "
                     f"SGD lr {LR}, float32", "gpubp": "CUDA graphs on", "cells": cells}


# ----------------------------------------------------------------------------- targets
def cell_label(cell):
    return f"w{cell['width']} d{cell['depth']} b{cell['batch']}"


def sgemm_rates(results):
    rows = (results.get("sgemm") or {}).get("rows") or []
    return {(r["m"], r["k"], r["n"]): r["gflops"] for r in rows}


def gemm_fraction(cell, rates):
    """gpubp's GFLOP/s in ``cell`` over the in-run sgemm rate at (batch, width, width), or None."""
    ms, rate = cell.get("ms", {}).get("gpubp"), rates.get((cell["batch"], cell["width"], cell["width"]))
    if ms is None or not rate:
        return None
    return cell["flops_per_step"] / (ms * 1e-3) / 1e9 / rate


def fastest_peer(cell):
    peers = {name: ms for name, ms in cell.get("ms", {}).items() if name in PEERS}
    if not peers:
        return None, None
    name = min(peers, key=peers.get)
    return name, peers[name]


def verdict(target_id, text, checks, expected, empty_reason):
    """PASS when all ``expected`` items were measured and met, MISS when any was missed, else not measured.

    ``checks`` holds ``(score, ok, detail)`` per measured item; the detail quoted first is the worst score.
    """
    checks = sorted(checks, key=lambda check: check[0])
    misses = [detail for _, ok, detail in checks if not ok]
    if misses:
        status = "MISS"
        detail = f"{len(misses)} of {len(checks)} measured missed: " + "; ".join(misses[:6])
    elif checks and len(checks) == expected:
        status, detail = "PASS", f"all {expected} met; worst: {checks[0][2]}"
    elif checks:
        status = "not measured"
        detail = f"only {len(checks)} of {expected} measured (all met; worst: {checks[0][2]})"
    else:
        status, detail = "not measured", empty_reason
    return {"id": target_id, "target": text, "status": status, "detail": detail, "measured": len(checks),
            "expected": expected}


def skip_reasons(cells):
    reasons = sorted({f"{name}: {why}" for c in cells for name, why in c.get("skipped", {}).items()})
    return "; ".join(reasons) or "no cell was timed"


def target_fastest(cells, why_empty):
    checks = []
    for c in cells:
        name, peer_ms = fastest_peer(c)
        gpubp_ms = c.get("ms", {}).get("gpubp")
        if name and gpubp_ms:
            ratio = gpubp_ms / peer_ms
            detail = f"{cell_label(c)}: gpubp {gpubp_ms:.4g} ms vs {name} {peer_ms:.4g} ms ({ratio:.2f}x)"
            checks.append((-ratio, ratio <= 1.0, detail))
    width = cells[0]["width"] if cells else "?"
    return verdict("a", f"gpubp step time <= the fastest peer in every cell of the width-{width} grid", checks,
                   len(cells), skip_reasons(cells) if cells else why_empty)


def target_graph_speedup(cells):
    small = [c for c in cells if c["batch"] <= SMALL_BATCH]
    checks = []
    for c in small:
        torch_ms, gpubp_ms = c.get("ms", {}).get("torch"), c.get("ms", {}).get("gpubp")
        if torch_ms and gpubp_ms:
            speedup = torch_ms / gpubp_ms
            detail = f"{cell_label(c)}: torch eager {torch_ms:.4g} ms / gpubp {gpubp_ms:.4g} ms = {speedup:.2f}x"
            graphed = c.get("gpubp_mode", "graph") == "graph"  # a step that fell back to eager is no graph
            if not graphed:
                detail += f" (gpubp ran {c['gpubp_mode']}, not as a CUDA graph)"
            checks.append((speedup, graphed and speedup >= GRAPH_SPEEDUP_TARGET, detail))
    return verdict("b", f"with CUDA graphs, gpubp >= {GRAPH_SPEEDUP_TARGET:g}x PyTorch eager at batch <= "
                        f"{SMALL_BATCH}", checks, len(small),
                   skip_reasons(small) if small else f"no cell at batch <= {SMALL_BATCH}")


def target_gemm_fraction(cells, rates):
    large = [c for c in cells if c["batch"] >= LARGE_BATCH]
    checks = []
    for c in large:
        fraction = gemm_fraction(c, rates)
        if fraction is not None:
            checks.append((fraction, fraction >= GEMM_FRACTION_TARGET, f"{cell_label(c)}: {fraction:.0%} of sgemm"))
    why_empty = "no sgemm rate or gpubp time for them" if large else f"no cell at batch >= {LARGE_BATCH} in this grid"
    return verdict("c", f"float32 cells at batch >= {LARGE_BATCH} reach >= {GEMM_FRACTION_TARGET:.0%} of the in-run "
                        "cuBLAS sgemm rate", checks, len(large), why_empty)


def target_bandwidth(bandwidth):
    kernels = bandwidth.get("kernels") or []
    checks = []
    for k in kernels:
        fraction = k.get("fraction_of_copy")
        if fraction is not None:
            detail = (f"{k['name']}: {k['gb_per_s']:.4g} GB/s = {fraction:.0%} of copy "
                      f"({bandwidth['copy']['gb_per_s']:.4g} GB/s)")
            checks.append((fraction, fraction >= BANDWIDTH_FRACTION_TARGET, detail))
    return verdict("d", f"fused kernels move bytes at >= {BANDWIDTH_FRACTION_TARGET:.0%} of the device-to-device "
                        "copy bandwidth", checks, len(kernels) or len(BANDWIDTH_KERNELS),
                   bandwidth.get("error", "the bandwidth part did not run"))


def evaluate_targets(results):
    grid = results.get("grid") or {}
    cells = grid.get("cells") or []
    return [target_fastest(cells, grid.get("error", "the grid did not run")), target_graph_speedup(cells),
            target_gemm_fraction(cells, sgemm_rates(results)), target_bandwidth(results.get("bandwidth") or {})]


# ----------------------------------------------------------------------------- writing
def clean(value):
    """JSON-safe: non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def fmt(value, spec=".4g", missing="–"):
    return missing if value is None else format(value, spec)


def markdown(results):
    meta = results.get("meta") or {}
    lines = [f"# gpubp on the GPU: {meta.get('device', '?')}", ""]
    if meta.get("mode") == "simulate":
        lines += [("Simulated run (backend gpu-sim, Numba's CUDA simulator, tiny shapes): it checks the script; "
                   "its timings say nothing about a GPU."), ""]
    libraries = ", ".join(f"{k} {v}" for k, v in (meta.get("libraries") or {}).items())
    cuda = ", ".join(f"{k} {v}" for k, v in (meta.get("cuda") or {}).items())
    lines += [f"- date: {meta.get('date', '?')}; mode: {meta.get('mode', '?')}; commit: {meta.get('commit', '?')}",
              f"- CUDA: {cuda or '?'}", f"- libraries: {libraries or '?'}",
              "- float32 GEMMs everywhere (TF32 off); engines of a table timed round-robin in one run, medians", ""]

    lines += ["## Targets", ""]
    for t in results.get("targets") or []:
        lines.append(f"- **({t['id']})** {t['target']}: **{t['status']}**: {t['detail']}")
    lines.append("")

    grid = results.get("grid") or {}
    rates = sgemm_rates(results)
    lines += ["## Step grid", "", grid.get("model", ""), "",
              "| cell | " + " | ".join(f"{name} ms" for name in ENGINE_NAMES)
              + " | gpubp / fastest peer | torch eager / gpubp graph | % of sgemm |",
              "|---" * (len(ENGINE_NAMES) + 4) + "|"]
    for c in grid.get("cells") or []:
        ms = c.get("ms", {})
        _, peer_ms = fastest_peer(c)
        g = ms.get("gpubp")
        ratio = g / peer_ms if g and peer_ms else None
        speedup = ms["torch"] / g if g and ms.get("torch") else None
        fraction = gemm_fraction(c, rates)
        cells = [fmt(ms.get(name), ".4g", "error" if "error" in c else "–") for name in ENGINE_NAMES]
        lines.append(f"| {cell_label(c)} | " + " | ".join(cells) + f" | {fmt(ratio, '.2f')} | {fmt(speedup, '.2f')} | "
                     f"{fmt(None if fraction is None else 100 * fraction, '.0f')} |")
    reasons = skip_reasons(grid.get("cells") or []) if any(c.get("skipped") for c in grid.get("cells") or []) else ""
    errors = [f"{cell_label(c)}: {c['error']}" for c in grid.get("cells") or [] if "error" in c]
    not_graphed = [f"{cell_label(c)} ({c['gpubp_mode']})" for c in grid.get("cells") or []
                   if c.get("gpubp_mode", "graph") != "graph"]
    lines += [""] + ([f"Not timed: {reasons}", ""] if reasons else []) + [f"- {e}" for e in errors]
    if not_graphed:
        lines += [f"- gpubp did not run as a CUDA graph in: {', '.join(not_graphed)}"]
    lines += section_error(grid)

    graphs = results.get("graphs") or {}
    lines += ["", f"## CUDA graphs vs eager steps (width {graphs.get('width', '?')}, depth {graphs.get('depth', '?')})",
              "", "| batch | eager ms | graph ms | eager / graph | graph column ran as |", "|---|---|---|---|---|"]
    for r in graphs.get("rows") or []:
        if "error" in r:
            lines.append(f"| {r['batch']} | error: {r['error']} | | | |")
        else:
            lines.append(f"| {r['batch']} | {fmt(r['eager_ms'])} | {fmt(r['graph_ms'])} | "
                         f"{fmt(r['eager_over_graph'], '.2f')} | {r.get('graph_mode', '?')} |")
    lines += section_error(graphs)

    parity = results.get("parity") or {}
    lines += ["", f"## Parity: {' vs '.join(parity.get('compared', []))}", "", parity.get("model", ""), "",
              "| optimizer | loss | final loss cpu | final loss gpu | max abs dloss | max abs dW | max abs W |",
              "|---|---|---|---|---|---|---|"]
    for c in parity.get("cases") or []:
        if "error" in c:
            lines.append(f"| {c['optimizer']} | {c['loss']} | error: {c['error']} | | | | |")
            continue
        lines.append(f"| {c['optimizer']} | {c['loss']} | {fmt(c['losses_cpu'][-1], '.6g')} | "
                     f"{fmt(c['losses_gpu'][-1], '.6g')} | {fmt(c['max_abs_dloss'], '.3g')} | "
                     f"{fmt(c['max_abs_dW'], '.3g')} | {fmt(c['max_abs_W'], '.3g')} |")
    lines += section_error(parity)

    sgemm = results.get("sgemm") or {}
    lines += ["", f"## The machine: {sgemm.get('library', 'sgemm')}", "", "| m x k x n | ms | GFLOP/s |",
              "|---|---|---|"]
    lines += [f"| {r['m']} x {r['k']} x {r['n']} | {fmt(r['ms'])} | {fmt(r['gflops'], '.1f')} |"
              for r in sgemm.get("rows") or []]
    lines += section_error(sgemm)
    bandwidth = results.get("bandwidth") or {}
    lines += ["", f"Bandwidth over {' x '.join(map(str, bandwidth.get('shape', [])))} float32:", "",
              "| operation | bytes per call | ms | GB/s | % of copy |", "|---|---|---|---|---|"]
    for r in ([bandwidth["copy"]] if "copy" in bandwidth else []) + (bandwidth.get("kernels") or []):
        fraction = r.get("fraction_of_copy")
        lines.append(f"| {r['name']} | {r['bytes']} | {fmt(r['ms'])} | {fmt(r['gb_per_s'], '.1f')} | "
                     f"{fmt(None if fraction is None else 100 * fraction, '.0f')} |")
    lines += section_error(bandwidth)

    tests = results.get("gpu_tests") or {}
    lines += ["", "## Real-GPU tests (python -m pytest -m gpu -q)", ""]
    if "skipped" in tests:
        lines.append(f"Not run: {tests['skipped']}")
    else:
        counts = ", ".join(f"{n} {word}" for word, n in (tests.get("counts") or {}).items()) or "no summary line"
        lines += [f"Exit code {tests.get('returncode', '?')}: {counts}", "", "```", tests.get("tail", ""), "```"]
    lines += section_error(tests)
    return "\n".join(lines).rstrip() + "\n"


def section_error(section):
    return ["", f"Error: {section['error']}"] if "error" in section else []


def write(out, results):
    (out / "results.json").write_text(json.dumps(clean(results), indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))


# ----------------------------------------------------------------------------- main
PARTS = (("gpu_tests", part_gpu_tests), ("parity", part_parity), ("graphs", part_graphs), ("sgemm", part_sgemm),
         ("bandwidth", part_bandwidth), ("grid", part_grid))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json and results.md")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller grid")
    parser.add_argument("--simulate", action="store_true",
                        help="gpubp parts on Numba's CUDA simulator with tiny shapes; no peers, no real-GPU tests")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX would otherwise take most GPU memory
    backend, reason = open_backend(args.simulate)
    if backend is None:
        what = "Numba's CUDA simulator is unavailable" if args.simulate else "no usable CUDA GPU"
        print(f"gpu_day: {what}: {reason} (--simulate checks this script on a CPU)", file=sys.stderr)
        return 2
    setup = make_setup(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        results["meta"] = part_meta(setup, backend)
    except Exception as exc:  # noqa: BLE001
        results["meta"] = {"mode": setup.mode, "device": backend.device_name, **failure(exc)}
    if setup.peers:
        results["meta"]["peer_settings"] = configure_peers()
    for name, part in PARTS:
        log(f"{name} ...")
        try:
            results[name] = part(setup, backend)
        except Exception as exc:  # noqa: BLE001 - recorded; the next part goes on
            results[name] = failure(exc)
            log(f"{name} failed: {describe(exc)}")
        write(args.out, results)
    try:
        results["targets"] = evaluate_targets(results)
    except Exception as exc:  # noqa: BLE001
        results["targets"] = [{"id": "?", "target": "evaluation", "status": "not measured",
                               "detail": describe(exc)}]
    write(args.out, results)
    for t in results["targets"]:
        print(f"({t['id']}) {t['status']}: {t['target']}: {t['detail']}")
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
