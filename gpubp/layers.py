"""Fully connected layer with a fused bias + activation."""

from __future__ import annotations

import numbers

import numpy as np

from .activations import ACTIVATIONS, DEFAULT_INIT, resolve_activation
from .errors import InvalidInputError, InvalidTypeError
from .initializers import get_initializer
from .validation import check_finite_for_dtype


class Dense:
    """``y = f(x @ W + b)`` with ``W`` of shape (fan_in, units) and ``b`` of shape (units,).

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : {None, "linear", "sigmoid", "tanh", "relu"}
        ``f``; it lives in the layer so that the bias add and the activation
        run as one fused in-place pass over the GEMM output.
    init : str or callable, optional
        Weight initialiser (see ``gpubp.initializers``); by default Glorot
        uniform, or He normal before a ReLU. Biases start at zero.

    The model binds ``W``, ``b`` and their gradients ``dW``, ``db`` to views of
    its flat parameter and gradient buffers (see :meth:`bind`).
    """

    def __init__(self, units, activation=None, init=None):
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise InvalidInputError(f"Dense units must be a positive integer, got {units!r}")
        self.units = int(units)
        if activation is not None and not isinstance(activation, str):
            raise InvalidInputError(f"unknown activation {activation!r}; valid names are {list(ACTIVATIONS)} or None")
        self.activation = resolve_activation(activation)
        self.init = init if init is not None else DEFAULT_INIT[self.activation]
        self._initializer = get_initializer(self.init)
        self.fan_in = None
        self.W = self.b = self.dW = self.db = None

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r})"

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "glorot"
        return {"units": self.units, "activation": self.activation, "init": init}

    def initial_weights(self, rng, fan_in):
        """Draw this layer's initial ``(W, b)`` as float64 host arrays.

        What the initialiser returns must be a numeric array of shape ``(fan_in, units)`` whose
        values are finite and within float32's range (the model may run in float32); anything
        else raises InvalidInputError or InvalidTypeError naming this layer and its initialiser.
        """
        fan_in = int(fan_in)
        W = self._check_initial(self._initializer(rng, fan_in, self.units), fan_in)
        self.fan_in = fan_in
        return W, np.zeros(self.units)

    def _check_initial(self, W, fan_in):
        """``W`` from the initialiser as a float64 array, checked for type, shape and values."""
        init = self.init if isinstance(self.init, str) else getattr(self.init, "__name__", repr(self.init))
        label = f"W drawn by init {init!r} for {self!r} (fan_in {fan_in})"
        try:
            W = np.asarray(W)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError(f"{label} cannot be converted to a numeric array: {exc}") from None
        if W.dtype.kind not in "biuf":
            raise InvalidTypeError(f"{label} must hold numbers, got an array of dtype {W.dtype}")
        if W.shape != (fan_in, self.units):
            raise InvalidInputError(f"{label} has shape {W.shape}; expected (fan_in, units) = {(fan_in, self.units)}")
        check_finite_for_dtype(W, np.float32, label)  # before the cast, which would overflow silently
        return W.astype(np.float64)

    def bind(self, W, b, dW, db):
        """Attach the parameter and gradient views this layer reads and writes."""
        self.W, self.b, self.dW, self.db = W, b, dW, db

    def forward(self, kernels, x, out):
        """``out = f(x @ W + b)``; x (B, fan_in), out (B, units), both preallocated."""
        kernels.linear_(x, self.W, out)
        kernels.bias_activation_(out, self.b, self.activation)
        return out

    def backward(self, kernels, delta, x, dx=None, target=None):
        """Write ``dx = delta W^T``, ``db = sum_b delta`` and the weight gradient ``x^T delta``.

        ``delta`` (B, units) is dL/dz of this layer (the activation derivative
        already applied). ``dx`` (B, fan_in) receives dL/dx, the previous
        layer's dL/dy; it is skipped for the first layer. The weight gradient
        goes into ``dW``, or as ``out = alpha x^T delta + beta out`` into the
        ``target = (out, scale)``, ``scale = [alpha, beta]`` on the device, the
        optimizer chose (taken last, after dx has read W). The layer never
        knows which optimizer runs.
        """
        if dx is not None:
            kernels.input_gradient_(delta, self.W, dx)
        kernels.bias_gradient_(delta, self.db)
        out, scale = (self.dW, None) if target is None else target
        kernels.weight_gradient_(x, delta, out, scale)

    def activation_backward_(self, kernels, dy, y):
        """dL/dz = dL/dy * f'(z), written with this layer's output ``y`` and over it; returns it."""
        kernels.activation_backward_(dy, y, self.activation)
        return y
