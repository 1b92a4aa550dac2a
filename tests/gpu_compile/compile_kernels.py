"""Compile every GPU kernel of gpubp to PTX for one architecture, without a GPU; print JSON.

Run as ``python compile_kernels.py 90`` (sm_90). Each public kernel function
is called once per dtype with small NumPy arrays (every activation, every
weighted loss) while the launch is intercepted, which yields every numba.cuda
kernel with the argument types it is launched with; each is then compiled with
``numba.cuda.compile_ptx``. ``cuda.jit`` is wrapped too, so every kernel object
made (one per activation, per weighted or unweighted variant of a factory) is
known, and one that is never launched is reported.
Output: ``{"ptx": {"kernel name/dtype/index": ptx}, "not_launched": [qualified names]}``, dtype that of the
kernel's first float array.
"""

import json
import os
import sys
import types

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

import numba  # noqa: E402
import numba.cuda.dispatcher as dispatcher  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

cc = (int(sys.argv[1]) // 10, int(sys.argv[1]) % 10)
# Device functions are compiled for the current device; with no GPU, for the architecture asked for.
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)

made = []  # every kernel (not device function) that cuda.jit makes
_jit = cuda.jit


def recording_jit(*args, **kwargs):
    if kwargs.get("device"):
        return _jit(*args, **kwargs)
    if args and callable(args[0]):  # @cuda.jit
        made.append(_jit(*args, **kwargs))
        return made[-1]
    decorate = _jit(*args, **kwargs)  # @cuda.jit(...)
    return lambda fn: made.append(decorate(fn)) or made[-1]


cuda.jit = recording_jit

from gpubp.kernels import cuda as gpu  # noqa: E402
from gpubp.kernels.contract import ACTIVATIONS, WEIGHTED_LOSSES  # noqa: E402

launches = {}


def record(kernel, n, *args, threads=None):
    signature = tuple(numba.typeof(a) for a in args)
    # the kernel object too: a factory makes several kernels of one name (one per activation)
    launches[(kernel.py_func.__qualname__, signature, id(kernel))] = (kernel, signature)


gpu._launch = record
gpu.runtime.scratch = lambda key, shape, dtype: np.zeros(shape, dtype)
gpu.runtime.stream_handle = lambda: 0
no_other_ranks = types.SimpleNamespace(allreduce_sum_=lambda buffer, stream: None)

for dtype in (np.float32, np.float64):
    z, dz = np.ones((4, 3), dtype), np.ones((4, 3), dtype)
    flat, flat2, flat3 = np.ones(12, dtype), np.ones(12, dtype), np.ones(12, dtype)
    status, clock, hyper = np.zeros(4, np.int64), np.zeros(1, np.int64), np.ones(2)
    loss, labels = np.zeros(1), np.zeros(4, np.int64)
    for activation in ACTIVATIONS:
        gpu.bias_activation_(z, np.ones(3, dtype), activation, None, np.ones((4, 3), dtype))
        gpu.activation_backward_(dz, z, activation, None, np.ones((4, 3), dtype))
    gpu.sigmoid_(z)
    gpu.softmax_(z)
    gpu.softmax_cross_entropy(z, labels, dz, loss, 0.1)
    gpu.binary_cross_entropy(z, z, dz, loss)
    gpu.mse(z, z, dz, loss)
    gpu.huber(z, z, dz, loss, 1.0)
    gpu.mae(z, z, dz, loss)
    for name in WEIGHTED_LOSSES:
        gpu.weighted_loss(name, z, labels if name == "softmax_cross_entropy" else z, np.ones(4), dz, loss, 0.1)
    gpu.dropout_(z, dz, 0.5, np.zeros(2, np.int64), clock, 2)
    gpu.check_finite_(flat, status, 1, clock)
    gpu.restore_if_diverged_(flat, flat2, status)
    gpu.clip_by_value_(flat, 1.0)
    gpu.clip_by_norm_(flat, 1.0)
    gpu.all_reduce_mean_(flat, np.ones(1), status, no_other_ranks)
    gpu.sgd_update_(flat, flat2, None, hyper, 0.0, False, 0.0, 0, status, clock)
    gpu.sgd_update_(flat, flat2, flat3, hyper, 0.9, True, 0.0, 0, status, clock)
    gpu.adam_update_(flat, flat2, flat3, np.ones(12, dtype), hyper, 0.9, 0.999, 1e-8, 0.0, 0, status, clock)
    gpu.rmsprop_update_(flat, flat2, flat3, hyper, 0.9, 1e-8, 0.0, 0, status, clock)
    gpu.bias_gradient_(z, np.ones(3, dtype))
    gpu.bias_gradient_(np.ones((4096, 3), dtype), np.ones(3, dtype))  # several chunks of rows: two passes
    gpu.gather_rows_(z, labels, labels, dz)
    gpu.copy_(z, dz)
gpu.gather_rows_(labels, labels, labels, labels)
gpu.store_at_(loss, loss, labels)

out = {}
for (name, signature, _), (kernel, _) in sorted(launches.items(), key=lambda item: str(item[0][:2])):
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
    floats = [str(t.dtype) for t in signature if isinstance(t, numba.types.Array) and str(t.dtype).startswith("float")]
    out[f"{name}/{floats[0] if floats else 'int'}/{len(out)}"] = ptx  # the first float array: the kernel's dtype
launched = {id(kernel) for kernel, _ in launches.values()}
not_launched = sorted(kernel.py_func.__qualname__ for kernel in made if id(kernel) not in launched)
json.dump({"ptx": out, "not_launched": not_launched}, sys.stdout)
