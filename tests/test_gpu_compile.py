"""Every GPU kernel compiles to PTX for sm_80, sm_90 and sm_100, without a GPU (NVVM from the CUDA wheels).

Every: the kernels expected are the ``@cuda.jit`` functions of ``gpubp.kernels.cuda`` (found in its
source), and every kernel object made from them (one per activation, per weighted variant) must have been
launched by the compile script, so a new kernel cannot be left out of the check.

And no float32 kernel does float64 arithmetic unless it is documented as
intended (the float64 loss sums and gradient norm, Adam's bias correction
formed from the float64 ``hyper`` values): float64 runs at 1/64 of the
float32 rate on many GPUs, so a stray Python float literal is a bug.
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_compile

SCRIPT = Path(__file__).parent / "gpu_compile" / "compile_kernels.py"
KERNELS_SOURCE = Path(importlib.util.find_spec("gpubp.kernels.cuda").origin)  # found, not imported
#: float32 kernels whose float64 arithmetic is intended: the loss and norm sums (float64 accumulators; the
#: loss kernels, weighted or not, weigh each row's float64 loss by its float64 weight there, while their
#: gradients are float32 arithmetic), and the once-per-thread 1 - beta, 1 - rho and 1 / bc2 formed in float64
#: before the cast, as on the CPU
FLOAT64_BY_DESIGN = {"softmax_cross_entropy_rows", "loss_terms", "square_terms", "scale_to_norm",
                     "adam_check", "adam_apply", "rmsprop_check", "rmsprop_apply", "_finish_sum"}
F64_ARITHMETIC = re.compile(r"\b(add|sub|mul|div|fma|mad|sqrt|rcp|neg|abs|min|max|ex2|lg2)(\.[a-z]+)*\.f64\b")


def _compile(arch):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run([sys.executable, str(SCRIPT), str(arch)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _is_kernel_decorator(node):
    """``@cuda.jit`` or ``@cuda.jit(...)`` without ``device=True``."""
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    if not (isinstance(target, ast.Attribute) and target.attr == "jit" and isinstance(target.value, ast.Name)
            and target.value.id == "cuda"):
        return False
    return not any(k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value
                   for k in (call.keywords if call else ()))


def kernels_in_source(source):
    """The names of the functions decorated as kernels in ``source``, nested ones (factories) included."""
    return {node.name for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef) and any(_is_kernel_decorator(d) for d in node.decorator_list)}


@pytest.fixture(scope="module", params=(80, 90, 100), ids=("sm_80", "sm_90", "sm_100"))
def compiled(request):
    return request.param, _compile(request.param)


def test_every_kernel_compiles(compiled):
    arch, result = compiled
    ptx = result["ptx"]
    names = {key.split("/")[0].split(".")[-1] for key in ptx}
    expected = kernels_in_source(KERNELS_SOURCE.read_text())
    assert not expected - names, f"kernels of {KERNELS_SOURCE.name} that were not compiled: {sorted(expected - names)}"
    assert not result["not_launched"], f"kernels made but never launched by {SCRIPT.name}: {result['not_launched']}"
    for key, text in ptx.items():
        assert f".target sm_{arch}" in text, key
        assert ".entry" in text, key


def test_float32_kernels_do_no_float64_arithmetic_unless_intended(compiled):
    _, result = compiled
    offenders = []
    for key, text in result["ptx"].items():
        name, dtypes, _ = key.split("/")
        if dtypes != "float32" or name.split(".")[-1] in FLOAT64_BY_DESIGN:
            continue
        lines = [line.strip() for line in text.splitlines() if F64_ARITHMETIC.search(line)]
        if lines:
            offenders.append(f"{name}: {lines[:3]}")
    assert not offenders, "float64 arithmetic in float32 kernels:\n" + "\n".join(offenders)


def test_the_check_finds_float64_arithmetic():
    assert F64_ARITHMETIC.search("\tadd.f64 \t%fd2, %fd1, 0d3FF0000000000000;")
    assert F64_ARITHMETIC.search("\tfma.rn.f64 \t%fd3, %fd1, %fd2, %fd1;")
    assert not F64_ARITHMETIC.search("\tcvt.rn.f32.f64 \t%f1, %fd1;")


def test_the_kernel_finder_takes_kernels_and_leaves_device_functions():
    source = """
@cuda.jit
def plain(a): pass

@cuda.jit("void(float32[:])")
def typed(a): pass

@cuda.jit(device=True)
def helper(a): pass

@_device
def inlined(a): pass

class Table:
    def __init__(self):
        def make():
            @cuda.jit
            def nested(a): pass
            return nested
"""
    assert kernels_in_source(source) == {"plain", "typed", "nested"}
