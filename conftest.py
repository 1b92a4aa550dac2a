"""Loaded by pytest before any test module: chooses where the GPU kernels run.

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported, so the
choice is made here, first. On a machine without an NVIDIA driver the GPU
kernels run in Numba's CUDA simulator (the ``gpu_sim`` tests); on a machine
with one they run on the device (the ``gpu`` tests), unless
``NUMBA_ENABLE_CUDASIM=1`` is set explicitly.
"""

import os


def _nvidia_driver_present():
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _nvidia_driver_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    import sys

    # The simulator runs each CUDA thread as a Python thread and meets every __syncthreads() at a barrier;
    # with the interpreter's default 5 ms thread switch interval a block-per-row kernel spends most of its
    # time waiting for the GIL (softmax over 32 rows: 1.5 s, against 0.15-0.25 s with 0.1 ms).
    sys.setswitchinterval(1e-4)
