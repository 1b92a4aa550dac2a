"""Every GPU kernel compiles to PTX for sm_80, sm_90 and sm_100, without a GPU (NVVM from the CUDA wheels).

And no float32 kernel does float64 arithmetic unless it is documented as
intended (the float64 loss sums and gradient norm, Adam's bias correction
formed from the float64 ``hyper`` values): float64 runs at 1/64 of the
float32 rate on many GPUs, so a stray Python float literal is a bug.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_compile

SCRIPT = Path(__file__).parent / "gpu_compile" / "compile_kernels.py"
#: float32 kernels whose float64 arithmetic is intended: the loss and norm sums (float64 accumulators), and
#: the once-per-thread 1 - beta, 1 - rho and 1 / bc2 formed in float64 before the cast, as on the CPU
FLOAT64_BY_DESIGN = {"softmax_cross_entropy_rows", "bce_terms", "mse_terms", "huber_terms", "mae_terms",
                     "square_terms", "scale_to_norm",
                     "adam_check", "adam_apply", "rmsprop_check", "rmsprop_apply", "_finish_sum"}
F64_ARITHMETIC = re.compile(r"\b(add|sub|mul|div|fma|mad|sqrt|rcp|neg|abs|min|max|ex2|lg2)(\.[a-z]+)*\.f64\b")


def _compile(arch):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run([sys.executable, str(SCRIPT), str(arch)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=(80, 90, 100), ids=("sm_80", "sm_90", "sm_100"))
def compiled(request):
    return request.param, _compile(request.param)


def test_every_kernel_compiles(compiled):
    arch, ptx = compiled
    names = {key.split("/")[0].split(".")[-1] for key in ptx}
    for kernel in ("bias_activation", "activation_backward", "softmax_rows", "softmax_cross_entropy_rows",
                   "bce_terms", "mse_terms", "mark_non_finite", "_record_mark", "restore", "clip_values",
                   "square_terms", "scale_to_norm", "weigh_or_poison", "_finish_sum", "sgd_check", "sgd_apply", "momentum_check",
                   "momentum_apply", "adam_check", "adam_apply", "rmsprop_check", "rmsprop_apply", "column_sums",
                   "_gather", "_copy", "sigmoid_inplace", "huber_terms", "mae_terms", "dropout"):
        assert kernel in names, f"{kernel} was not compiled"
    for key, text in ptx.items():
        assert f".target sm_{arch}" in text, key
        assert ".entry" in text, key


def test_float32_kernels_do_no_float64_arithmetic_unless_intended(compiled):
    _, ptx = compiled
    offenders = []
    for key, text in ptx.items():
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
