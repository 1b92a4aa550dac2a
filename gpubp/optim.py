"""Optimizers: each step is one fused kernel pass over the flat parameter buffer.

The model keeps every weight and bias in one flat array (weights first, then
biases) and every gradient in a twin array. An optimizer allocates its state
(momenta, moments) as flat twins too, so an update is a single in-place kernel
call over all parameters; with ``weight_decay`` it is two calls, because L2
decay applies to the weights only, not to the biases (as in scikit-learn).
"""

from __future__ import annotations

import math
import numbers

from .errors import InvalidInputError
from .schedules import as_schedule, check_positive, schedule_from_config


class NonFiniteGradient(ArithmeticError):
    """Raised inside a training step when the gradient holds NaN/Inf (fit turns it into TrainingDiverged)."""


def _check_fraction(name, value, *, allow_zero=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        raise InvalidInputError(f"{name} must lie in {'[0' if allow_zero else '(0'}, 1), got {value!r}")
    return float(value)


def _check_nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Optimizer:
    """Base class.

    Parameters
    ----------
    lr : float or gpubp.schedules.Schedule
        Learning rate, or a schedule ``step -> lr``.
    weight_decay : float
        L2 penalty coefficient added to the weight gradients (``g + wd * W``).
    clip_norm : float, optional
        Rescale the whole gradient so its global L2 norm is at most this.
    clip_value : float, optional
        Clip every gradient entry to [-clip_value, clip_value].

    Before every update the gradient's global norm is computed (one BLAS dot
    over the flat gradient, about 0.3 ms per 4M parameters on a 2-core CPU): a
    NaN/Inf norm raises :class:`NonFiniteGradient` and leaves the parameters as
    they were. (Plain SGD without clipping has no gradient buffer: its update
    is fused into the GEMMs, so only the loss is checked there.)
    """

    #: Names of the flat state buffers, each shaped like the parameters.
    state_names = ()

    def __init__(self, lr, weight_decay=0.0, clip_norm=None, clip_value=None):
        self.schedule = as_schedule(lr)
        self.weight_decay = _check_nonnegative("weight_decay", weight_decay)
        self.clip_norm = None if clip_norm is None else check_positive("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else check_positive("clip_value", clip_value)
        self._grads = None
        self.iterations = 0
        self.state = {}
        self._segments = []

    @property
    def lr(self):
        """The learning rate of the next step."""
        return self.schedule(self.iterations)

    def bind(self, backend, params, grads, n_weights):
        """Allocate state for flat ``params``/``grads`` whose first ``n_weights`` entries are weights."""
        self.state = {name: backend.zeros(params.shape, params.dtype) for name in self.state_names}
        if self.weight_decay > 0 and n_weights < params.size:
            cuts = [(slice(0, n_weights), self.weight_decay), (slice(n_weights, params.size), 0.0)]
        else:
            cuts = [(slice(0, params.size), self.weight_decay)]
        self._grads = grads

        def segment(s, wd):
            return params[s], grads[s], tuple(self.state[name][s] for name in self.state_names), wd

        self._segments = [segment(s, wd) for s, wd in cuts]
        self._bias_segments = [segment(slice(n_weights, params.size), 0.0)]

    def gemm_update(self):
        """``(alpha, beta)`` when this step can be fused into the weight-gradient GEMMs as
        ``W = beta W + alpha x^T delta``, else None (the default: the update needs the gradient)."""
        return None

    def check_and_clip_gradients(self, xp):
        """Raise NonFiniteGradient when the flat gradient holds NaN/Inf; apply clip_value / clip_norm in place."""
        g = self._grads
        if self.clip_value is not None:
            xp.clip(g, -self.clip_value, self.clip_value, out=g)
        norm = math.sqrt(float(xp.dot(g, g)))
        if not math.isfinite(norm):
            raise NonFiniteGradient(f"the gradient norm is {norm}")
        if self.clip_norm is not None and norm > self.clip_norm:
            g *= g.dtype.type(self.clip_norm / norm)

    @property
    def clips(self):
        return self.clip_norm is not None or self.clip_value is not None

    def step(self, kernels, biases_only=False):
        """Apply one update with the current gradients (only to the biases after a fused GEMM update)."""
        lr = self.schedule(self.iterations)
        self.iterations += 1
        for p, g, state, wd in (self._bias_segments if biases_only else self._segments):
            self._update(kernels, p, g, state, lr, wd)

    def _update(self, kernels, p, g, state, lr, wd):
        raise NotImplementedError

    def get_config(self):
        config = {"name": type(self).__name__, "lr": self.schedule.get_config(), "weight_decay": self.weight_decay,
                  "clip_norm": self.clip_norm, "clip_value": self.clip_value}
        config.update(self._hyperparameters())
        return config

    def _hyperparameters(self):
        return {}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, PyTorch convention.

    ``d = g + wd * p``; ``v = momentum * v + d``; ``p -= lr * (d + momentum * v if nesterov else v)``.
    """

    state_names = ("velocity",)

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None, clip_value=None):
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.momentum = _check_fraction("momentum", momentum)
        if nesterov and self.momentum == 0:
            raise InvalidInputError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        if self.momentum == 0:
            self.state_names = ()  # plain SGD keeps no velocity

    def gemm_update(self):
        """Plain SGD folds into the weight-gradient GEMM: ``W = (1 - lr wd) W - lr x^T delta``
        (not with clipping, which needs the whole gradient first)."""
        if self.momentum or self.clips:
            return None
        lr = self.schedule(self.iterations)
        return -lr, 1.0 - lr * self.weight_decay

    def _update(self, kernels, p, g, state, lr, wd):
        kernels.sgd_update_(p, g, state[0] if state else g, lr, self.momentum, self.nesterov, wd)

    def _hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), the same arithmetic as ``torch.optim.Adam``.

    ``m = b1 m + (1-b1) d``; ``v = b2 v + (1-b2) d^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    state_names = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=None,
                 clip_value=None):
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_nonnegative("eps", eps)

    def _update(self, kernels, p, g, state, lr, wd):
        t = self.iterations
        step_size = lr / (1.0 - self.beta1 ** t)
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** t)
        kernels.adam_update_(p, g, state[0], state[1], step_size, bias_correction2_sqrt,
                             self.beta1, self.beta2, self.eps, wd)

    def _hyperparameters(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop: ``v = rho v + (1-rho) d^2``; ``p -= lr * d / (sqrt(v) + eps)``."""

    state_names = ("v",)

    def __init__(self, lr=1e-3, rho=0.9, eps=1e-8, weight_decay=0.0, clip_norm=None, clip_value=None):
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.rho = _check_fraction("rho", rho)
        self.eps = _check_nonnegative("eps", eps)

    def _update(self, kernels, p, g, state, lr, wd):
        kernels.rmsprop_update_(p, g, state[0], lr, self.rho, self.eps, wd)

    def _hyperparameters(self):
        return {"rho": self.rho, "eps": self.eps}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get_optimizer(optimizer):
    """Return an :class:`Optimizer` from a name (default hyperparameters) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        return OPTIMIZERS[optimizer.lower()]()
    except (KeyError, AttributeError):
        raise InvalidInputError(
            f"unknown optimizer {optimizer!r}; valid names are {sorted(OPTIMIZERS)}"
        ) from None


def optimizer_from_config(config):
    config = dict(config)
    cls = {c.__name__: c for c in OPTIMIZERS.values()}[config.pop("name")]
    config["lr"] = schedule_from_config(config["lr"])
    return cls(**config)
