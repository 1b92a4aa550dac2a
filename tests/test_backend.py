import logging

import numpy as np
import pytest

import gpubp as gb
from gpubp import backend as backend_module


def test_cpu_aliases_give_numpy_backend():
    for name in ("cpu", "numpy", "CPU"):
        b = gb.get_backend(name)
        assert b.name == "cpu" and b.xp is np
        assert b.kernels.__name__ == "gpubp.kernels.cpu"


def test_unknown_backend_lists_valid_names():
    with pytest.raises(gb.InvalidInputError, match="valid names"):
        gb.get_backend("tpu")


def _simulate(monkeypatch, reason):
    monkeypatch.setattr(backend_module, "probe_cupy", lambda: (None, reason))
    monkeypatch.setattr(backend_module, "_CACHE", {})


def test_gpu_without_cupy_says_how_to_install(monkeypatch):
    _simulate(monkeypatch, f"CuPy is not installed; {backend_module.GPU_INSTALL_HINT}")
    with pytest.raises(gb.BackendUnavailableError, match=r"CuPy is not installed.*gpubp\[cuda12\]"):
        gb.get_backend("gpu")


def test_gpu_without_device_says_no_device(monkeypatch):
    _simulate(monkeypatch, "CuPy is installed but no CUDA device answers (0 devices found)")
    with pytest.raises(gb.BackendUnavailableError, match="no CUDA device answers"):
        gb.Sequential([gb.Dense(2)], input_dim=2, backend="gpu")


def test_auto_falls_back_to_cpu_with_one_log_line(monkeypatch, caplog):
    _simulate(monkeypatch, "CuPy is not installed")
    with caplog.at_level(logging.INFO, logger="gpubp"):
        b = gb.get_backend("auto")
    assert b.name == "cpu"
    assert [r.getMessage() for r in caplog.records] == ["gpubp: using the CPU backend (CuPy is not installed)"]


def test_probe_reports_missing_cupy_when_import_fails(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # makes "import cupy" raise ImportError
    cupy, reason = backend_module.probe_cupy()
    assert cupy is None and "CuPy" in reason


def test_dtype_resolution():
    assert backend_module.resolve_dtype("float64") == np.float64
    assert backend_module.resolve_dtype(np.float32) == np.float32
    with pytest.raises(gb.InvalidInputError, match="dtype"):
        backend_module.resolve_dtype("int8")


def test_cuda_kernels_define_every_cpu_kernel():
    """The layer code calls ``backend.kernels.<name>`` on either device, so both modules
    must define the same kernels (read from the source: CuPy is not needed)."""
    import ast
    from pathlib import Path

    from gpubp.kernels import cpu

    tree = ast.parse(Path(cpu.__file__).with_name("cuda.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    defined |= {target.id for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    missing = set(cpu.__all__) - {"PARALLEL_THRESHOLD"} - defined
    assert not missing, f"kernels/cuda.py lacks {sorted(missing)}"
