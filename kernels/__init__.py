"""Compute kernels of gpubp, one module per device.

``gpubp.kernels.cpu`` holds Numba kernels for NumPy arrays and
``gpubp.kernels.cuda`` holds CuPy kernels for CUDA arrays. Both modules export
the same functions with the same signatures, so the layer, loss and optimizer
code calls ``backend.kernels.<name>`` and never asks which device it runs on.
"""
