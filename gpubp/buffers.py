"""Preallocated activation and gradient buffers for one batch shape.

A :class:`BatchPlan` is made once per (batch size, training?) pair and reused by
every step of that shape, so the steady-state step allocates nothing: inputs
are gathered into ``x``/``y`` and each layer writes its output into
``outputs[l]``. The backward pass needs only two more buffers: ``loss_grad``
for dL/d(logits), and one ``scratch`` for dL/dy of the layer below, which the
activation backward kernel turns into dL/dz written over that layer's output
(the output is dead once its own weight gradient has been taken). A layer
whose activation derivative needs its input z (GELU, SiLU: not invertible) also
gets ``pre_activations[l]``, which its forward pass fills with z in the same pass.
"""

from __future__ import annotations

import itertools

import numpy as np


#: Rows per chunk in predict/evaluate when no batch size is given.
INFERENCE_BATCH = 4096


class BatchPlan:
    """Buffers for a batch of ``batch_size`` rows.

    Attributes
    ----------
    x : (B, n_inputs) array, dtype of the model
    y : targets, (B,) int64 labels or (B, n_outputs) floats; None for inference plans
    outputs : list of (B, units_l) arrays, the activations y_l of each layer;
        after a backward pass they hold dL/dz_l instead
    loss_grad : (B, n_outputs) array, dL/d(logits); None for inference plans
    loss : (1,) float64 array, the batch loss the loss kernel writes; None for inference plans
    weights : (B,) float64 array, the rows' weights of a weighted loss (gathered like y); None for inference
        plans
    scratch : list of (B, units_l) views of one flat buffer, for dL/dy_l;
        None for inference plans
    pre_activations : list of (B, units_l) arrays, the pre-activations z_l of the layers that keep theirs
        (``keeps_pre_activation``), None for the other layers; all None for inference plans
    """

    def __init__(self, backend, batch_size, n_inputs, widths, dtype, target_shape=None, target_dtype=None,
                 keeps_pre_activation=()):
        B = batch_size
        self.batch_size = B
        self.x = backend.empty((B, n_inputs), dtype)
        self.outputs = [backend.empty((B, w), dtype) for w in widths]
        self.kernels = backend.kernels
        #: captured steps of this plan (see ``Backend.run_step``), dropped with the plan
        self.captured = {}
        self._origin = backend.zeros(2, np.int64)  # the gather position of :meth:`gather`
        self.y = self.loss_grad = self.loss = self.scratch = self.weights = None
        self.pre_activations = [None] * len(widths)
        if target_shape is not None:
            keeps = list(keeps_pre_activation) or [False] * len(widths)  # one flag per layer
            self.pre_activations = [backend.empty((B, w), dtype) if k else None for w, k in zip(widths, keeps)]
            self.y = backend.empty((B,) + tuple(target_shape), target_dtype)
            self.loss_grad = backend.empty((B, widths[-1]), dtype)
            self.loss = backend.zeros(1, np.float64)
            self.weights = backend.zeros(B, np.float64)
            flat = backend.empty(B * max(widths[:-1], default=0), dtype)
            self.scratch = [flat[: B * w].reshape(B, w) for w in widths[:-1]]


    def gather(self, X, y, rows):
        """Copy rows ``rows`` (a (B,) device index array) of the device arrays X and y into x and y."""
        self.kernels.gather_rows_(X, rows, self._origin, self.x)
        self.kernels.gather_rows_(y, rows, self._origin, self.y)

    def load(self, x, y=None):
        """Copy a whole batch (device arrays of B rows) into x (and y)."""
        self.kernels.copy_(x, self.x)
        if y is not None:
            self.kernels.copy_(y, self.y)


class EpochBatches:
    """The training set on the device and the batches of an epoch, for steps that gather their own batch.

    A step (see ``Sequential.train_step``) copies rows ``rows[first:first + B]``
    of ``X`` and ``y`` into its plan and stores its loss in ``losses[slot]``,
    with ``[first, slot]`` read from the device array ``cursor.device``: so the
    gather and the loss belong to the step, and a step captured once as a CUDA
    graph replays with each batch's position. Every buffer is made once, so a
    captured step stays valid for the whole of ``fit``.

    Attributes
    ----------
    X : (n, d) device array; y : (n, ...) device targets
    weights : (n,) float64 device array of the rows' weights (gathered into ``plan.weights``), or None
    rows : (n,) int64 device array, the epoch's order (see :meth:`set_order`)
    cursor : staged (2,) int64 ``[first, slot]`` (see ``Backend.staged``)
    losses : (n_steps,) float64 device array, each step's loss
    serial : a number no other instance has (part of a captured step's key)
    """

    _serials = itertools.count()

    def __init__(self, backend, X, y, n_steps, weights=None):
        self.backend, self.X, self.y, self.weights = backend, X, y, weights
        self.rows = backend.empty(X.shape[0], np.int64)
        self.set_order(np.arange(X.shape[0], dtype=np.int64))
        self.cursor = backend.staged(np.zeros(2, np.int64))
        self.losses = backend.zeros(n_steps, np.float64)
        self.serial = next(self._serials)

    def set_order(self, order):
        """Copy the epoch's order (host int64 (n,)) into :attr:`rows` (one upload per epoch)."""
        self.backend.copy_into(self.rows, order)

    def begin_epoch(self, rng=None):
        """Start an epoch: draw its order from ``rng`` (None keeps the last one). Returns the batches in the
        order the steps take them, as indices of the epoch's batches in row order: here always in order
        (``gpubp.streaming.ChunkStream``, with the same interface, visits its chunks shuffled)."""
        if rng is not None:
            self.set_order(rng.permutation(self.X.shape[0]))
        return np.arange(self.losses.shape[0])

    def close(self):
        """Nothing to let go of (a streamed set stops its reader here)."""

    def select(self, first, slot):
        """Make the next step take rows ``rows[first:first + B]`` and store its loss in ``losses[slot]``."""
        self.cursor.host[0], self.cursor.host[1] = first, slot
        self.cursor.upload()

    def gather_(self, kernels, plan):
        kernels.gather_rows_(self.X, self.rows, self.cursor.device, plan.x)
        kernels.gather_rows_(self.y, self.rows, self.cursor.device, plan.y)
        if self.weights is not None:
            kernels.gather_rows_(self.weights, self.rows, self.cursor.device, plan.weights)

    def store_loss_(self, kernels, loss):
        kernels.store_at_(loss, self.losses, self.cursor.device)


def plan_bytes(batch_size, n_inputs, widths, itemsize, target_row=(), target_itemsize=8, keeps_pre_activation=()):
    """Bytes a training :class:`BatchPlan` of ``batch_size`` rows allocates (see its constructor)."""
    B = batch_size
    pre_activations = sum(w for w, keeps in zip(widths, keeps_pre_activation) if keeps)
    rows = n_inputs + sum(widths) + widths[-1] + max(widths[:-1], default=0) + pre_activations
    targets = B * int(np.prod(target_row, dtype=np.int64)) * target_itemsize
    return B * rows * itemsize + targets + 8 * B + 8  # + the (B,) float64 weights and the (1,) float64 loss
