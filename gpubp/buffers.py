"""Preallocated activation and gradient buffers for one batch shape.

A :class:`BatchPlan` is made once per (batch size, training?) pair and reused by
every step of that shape, so the steady-state step allocates nothing: inputs
are gathered into ``x``/``y``, each layer writes its output into ``outputs[l]``
and the backward pass ping-pongs dL/dz between two flat scratch buffers.
"""

from __future__ import annotations


class BatchPlan:
    """Buffers for a batch of ``batch_size`` rows.

    Attributes
    ----------
    x : (B, n_inputs) array, dtype of the model
    y : targets, (B,) int64 labels or (B, n_outputs) floats; None for inference plans
    outputs : list of (B, units_l) arrays, the activations y_l of each layer
    deltas : list of (B, units_l) arrays, dL/dz_l (views of two scratch buffers;
        consecutive layers never share one); None for inference plans
    """

    def __init__(self, backend, batch_size, n_inputs, widths, dtype, target_shape=None, target_dtype=None):
        B = batch_size
        self.batch_size = B
        self.x = backend.empty((B, n_inputs), dtype)
        self.outputs = [backend.empty((B, w), dtype) for w in widths]
        self.y = self.deltas = None
        if target_shape is not None:
            self.y = backend.empty((B,) + tuple(target_shape), target_dtype)
            scratch = [backend.empty(B * max(widths), dtype) for _ in range(min(2, len(widths)))]
            self.deltas = [scratch[l % 2][: B * w].reshape(B, w) for l, w in enumerate(widths)]
