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
