"""The layers of a Sequential model: Dense (fully connected, with a fused bias + activation) and Dropout."""

from __future__ import annotations

from typing import Callable

import numbers

import numpy as np

from .activations import ACTIVATIONS, DEFAULT_INIT, PARAMETERS, activation_parameter, keeps_pre_activation, \
    resolve_activation
from .errors import InvalidInputError, InvalidTypeError
from .initializers import get_initializer
from .validation import check_finite_for_dtype


class Dense:
    """``y = f(x @ W + b)`` with ``W`` of shape (fan_in, units) and ``b`` of shape (units,).

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : {None, "linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "gelu_exact", \
"softplus", "silu"}
        ``f``; it lives in the layer so that the bias add and the activation
        run as one fused in-place pass over the GEMM output. "gelu" is the
        tanh approximation, "gelu_exact" the erf form (see ``gpubp.activations``).
    init : str or callable, optional
        Weight initialiser (see ``gpubp.initializers``); by default Glorot
        uniform, or He normal before a rectifier (relu, leaky_relu, elu, gelu,
        gelu_exact, softplus, silu). Biases start at zero.
    negative_slope : float > 0, optional
        The slope of ``activation="leaky_relu"`` for z < 0 (default 0.01, as PyTorch's ``LeakyReLU``).
    alpha : float > 0, optional
        The ``alpha`` of ``activation="elu"`` (default 1.0, as PyTorch's ``ELU``).

    Either parameter given for another activation raises InvalidInputError. A
    layer with gelu, gelu_exact or silu keeps its pre-activation ``x @ W + b`` for
    the backward pass (one more buffer per batch plan, see ``gpubp.buffers``).

    The model binds ``W``, ``b`` and their gradients ``dW``, ``db`` to views of
    its flat parameter and gradient buffers (see :meth:`bind`).
    """

    def __init__(self, units: int, activation: str | None = None, init: str | Callable | None = None, *,
                 negative_slope: float | None = None, alpha: float | None = None) -> None:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise InvalidInputError(f"Dense units must be a positive integer, got {units!r}")
        self.units = int(units)
        if activation is not None and not isinstance(activation, str):
            raise InvalidInputError(f"unknown activation {activation!r}; valid names are {list(ACTIVATIONS)} or None")
        self.activation = resolve_activation(activation)
        #: the activation's parameter (leaky_relu's negative slope, elu's alpha), None for the others
        self.activation_parameter = activation_parameter(self.activation,
                                                         {"negative_slope": negative_slope, "alpha": alpha})
        #: whether the forward pass keeps the pre-activation for the backward pass (gelu, gelu_exact, silu)
        self.keeps_pre_activation = keeps_pre_activation(self.activation)
        self.init = init if init is not None else DEFAULT_INIT[self.activation]
        self._initializer = get_initializer(self.init)
        self.fan_in = None
        self.W = self.b = self.dW = self.db = None

    def __repr__(self):
        parameter = "".join(f", {key}={value!r}" for key, value in self._parameter_config().items())
        return f"Dense({self.units}, activation={self.activation!r}{parameter})"

    def _parameter_config(self):
        """``{keyword: value}`` of the activation's parameter, empty for an activation without one."""
        keyword = PARAMETERS.get(self.activation)
        return {} if keyword is None else {keyword: self.activation_parameter}

    def get_config(self):
        init = self.init if isinstance(self.init, str) else "glorot"
        return {"units": self.units, "activation": self.activation, "init": init, **self._parameter_config()}

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

    def forward(self, kernels, x, out, training=False, pre=None):
        """``out = f(x @ W + b)``; x (B, fan_in), out (B, units), both preallocated (the same in training).

        ``pre`` (B, units), given when :attr:`keeps_pre_activation`, receives ``x @ W + b`` in the same pass.
        """
        kernels.linear_(x, self.W, out)
        kernels.bias_activation_(out, self.b, self.activation, self.activation_parameter, pre)
        return out

    def backward(self, kernels, delta, x, dx=None, target=None, training=False):
        """Write ``dx = delta W^T``, ``db = sum_b delta`` and the weight gradient ``x^T delta`` (the same in
        training).

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

    def activation_backward_(self, kernels, dy, y, pre=None):
        """dL/dz = dL/dy * f'(z), written with this layer's output ``y`` (or, when it keeps it, its
        pre-activation ``pre`` from :meth:`forward`) and over ``y``; returns it."""
        kernels.activation_backward_(dy, y, self.activation, self.activation_parameter, pre)
        return y


class Dropout:
    """Inverted dropout: in a training step, each unit of the previous layer's output is kept with
    probability ``1 - rate`` and scaled by ``1 / (1 - rate)``, else set to 0; ``predict`` and ``evaluate``
    pass the output through unchanged (Keras' and PyTorch's ``Dropout``).

    Parameters
    ----------
    rate : float in [0, 1)
        The fraction of units dropped.

    The mask is drawn on the device by one kernel from a counter-based generator (Philox4x32-10) keyed
    by the model's dropout seed and this layer's position, with the optimizer's step count read from
    device memory: each step draws a new mask (a captured CUDA graph too), the backward pass recomputes
    the same mask instead of storing it, and a run resumed from a checkpoint draws the masks the
    uninterrupted run drew. A Dropout layer holds no parameters and may not be the last layer.
    """

    def __init__(self, rate: float) -> None:
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
            raise InvalidTypeError(f"Dropout rate must be a number in [0, 1), got {rate!r}")
        if not 0.0 <= rate < 1.0:  # NaN fails too; no float(): an int beyond float's range compares exactly
            raise InvalidInputError(f"Dropout rate must lie in [0, 1) (the fraction of units dropped), got {rate!r}")
        self.rate = float(rate)
        #: the width of its input and output, set when the model is built
        self.units = None
        self.index = self.seed = self.clock = None
        #: no activation, so no pre-activation to keep (see ``Dense.keeps_pre_activation``)
        self.keeps_pre_activation = False

    def __repr__(self):
        return f"Dropout({self.rate!r})"

    def get_config(self):
        return {"type": "Dropout", "rate": self.rate}

    def bind(self, index, seed, clock):
        """Draw masks keyed by position ``index`` in the model, from the device arrays ``seed`` ((1,) int64,
        the model's dropout seed) and ``clock`` ((1,) int64, the optimizer's step)."""
        self.index, self.seed, self.clock = index, seed, clock

    def forward(self, kernels, x, out, training=False, pre=None):
        """``out = x * mask / (1 - rate)`` in a training step, else ``out = x``; x, out (B, units); ``pre`` is
        unused (no activation)."""
        if training:
            kernels.dropout_(x, out, self.rate, self.seed, self.clock, self.index)
        else:
            kernels.copy_(x, out)
        return out

    def activation_backward_(self, kernels, dy, y, pre=None):
        """No activation: dL/d(output) passes through."""
        return dy

    def backward(self, kernels, delta, x, dx=None, target=None, training=False):
        """``dx = delta * mask / (1 - rate)`` with the forward's mask (recomputed), or ``dx = delta`` outside a
        training step; nothing for the first layer (dx None). ``x`` and ``target`` are unused (no parameters)."""
        if dx is None:
            return
        if training:
            kernels.dropout_(delta, dx, self.rate, self.seed, self.clock, self.index)
        else:
            kernels.copy_(delta, dx)


#: The layer classes a saved configuration names by its "type" (a layer without one is a Dense).
LAYER_TYPES = {"Dense": Dense, "Dropout": Dropout}


def layer_from_config(config: dict) -> Dense | Dropout:
    """A new layer from :meth:`get_config`'s output (Dense or Dropout); ValueError or TypeError when invalid."""
    config = dict(config)
    kind = config.pop("type", "Dense")
    if kind not in LAYER_TYPES:
        raise InvalidInputError(f"unknown layer type {kind!r}; expected one of {sorted(LAYER_TYPES)}")
    return LAYER_TYPES[kind](**config)
