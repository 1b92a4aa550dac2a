"""The package installs as ``gpubp`` + ``gpubp.kernels`` (never a top-level ``kernels``), from a
built wheel and as an editable install, each into a fresh virtual environment, and trains there."""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging
REPO = Path(__file__).resolve().parents[1]
SMOKE = """
import importlib.util, numpy as np, gpubp as gb, gpubp.kernels.cpu as k
assert importlib.util.find_spec("kernels") is None, "a top-level 'kernels' module was installed"
X = np.random.default_rng(0).normal(size=(200, 2)); y = (X[:, 0] > 0).astype(int)
m = gb.Sequential([gb.Dense(8, activation="sigmoid"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
m.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.05))
m.fit(X, y, batch_size=32, epochs=20, verbose=0)
print("kernels at", k.__file__); print("accuracy", m.evaluate(X, y)["accuracy"])
"""


def _copy_source(dest):
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for name in ("gpubp", "kernels"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _fresh_venv(path):
    venv.create(path, with_pip=True)
    return path / ("Scripts" if os.name == "nt" else "bin") / "python"


def _run(*cmd, cwd):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _check_smoke(python, cwd, expect_in_path):
    out = _run(python, "-c", SMOKE, cwd=cwd)
    kernels_path = out.split("kernels at ")[1].split()[0]
    assert expect_in_path in kernels_path
    assert float(out.split("accuracy ")[1]) >= 0.9


def test_wheel_installs_into_a_fresh_venv(tmp_path):
    src = _copy_source(tmp_path / "src")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("gpubp-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "gpubp/kernels/cpu.py" in names and "gpubp/kernels/cuda.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    python = _fresh_venv(tmp_path / "venv")
    _run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    _check_smoke(python, tmp_path, "site-packages")


def test_editable_install_into_a_fresh_venv(tmp_path):
    src = _copy_source(tmp_path / "src")
    python = _fresh_venv(tmp_path / "venv")
    _run(python, "-m", "pip", "install", "-q", "-e", src, cwd=tmp_path)
    _check_smoke(python, tmp_path, str(src / "kernels"))
