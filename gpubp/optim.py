"""Optimizers: each owns the update of the flat parameter buffer, one guarded kernel call per step.

The model keeps every weight and bias in one flat array (weights first, then
biases) and every gradient in a twin array. An optimizer allocates its state
(momenta, moments) as flat twins too, so an update is a single in-place kernel
call over all parameters (weight decay applies to the first ``n_weights``
entries, the weights, inside the same call). The optimizer also names the
gradient hooks that run between "gradients are complete" and the update
(the all-reduce of data-parallel training, then clip_value, then clip_norm);
layers never know which optimizer runs.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import InvalidInputError
from .kernels.contract import STATUS_GRADIENT, STATUS_UPDATE
from .schedules import Schedule, as_schedule, check_positive, schedule_from_config
from .validation import check_bool


def _finite_real(value):
    """True for a finite real number that is not a bool (an int beyond float's range is not finite)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_fraction(name, value, *, allow_zero=True):
    ok = _finite_real(value) and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        raise InvalidInputError(f"{name} must lie in {'[0' if allow_zero else '(0'}, 1), got {value!r}")
    return float(value)


def _check_nonnegative(name, value):
    if not _finite_real(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_eps(value):
    """eps must be > 0: with eps = 0, an exactly-zero gradient (a dead ReLU, a constant feature) gives 0/0."""
    if not _finite_real(value) or value <= 0:
        raise InvalidInputError(
            f"eps must be a finite number > 0, got {value!r}: it keeps m / (sqrt(v) + eps) finite where a "
            f"gradient entry is exactly 0 (a dead ReLU unit, a constant feature), which would be 0/0 with eps = 0")
    return float(value)


class Optimizer:
    """Base class: owns the update of the flat parameter buffer and the gradient hooks before it.

    Parameters
    ----------
    lr : float or gpubp.schedules.Schedule
        Learning rate, or a schedule ``step -> lr``.
    weight_decay : float
        L2 penalty coefficient added to the weight gradients (``g + wd * W``),
        not to the biases (as in scikit-learn).
    clip_norm : float, optional
        Rescale the whole gradient so its global L2 norm is at most this.
    clip_value : float, optional
        Clip every gradient entry to [-clip_value, clip_value].

    Every update is guarded (see ``gpubp.kernels.contract``): when the
    gradient or any new parameter or state value would be NaN/Inf, nothing is
    written and the model's divergence status records the step.
    """

    #: Names of the flat state buffers, each shaped like the parameters.
    state_names = ()
    #: Length of :attr:`hyper`, the per-step values the update kernel reads from the device.
    n_hyper = 1

    def __init__(self, lr: float | Schedule, weight_decay: float = 0.0, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        self.schedule = as_schedule(lr)
        self.weight_decay = _check_nonnegative("weight_decay", weight_decay)
        self.clip_norm = None if clip_norm is None else check_positive("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else check_positive("clip_value", clip_value)
        self.iterations = 0
        #: multiplies the schedule's output (1.0: the schedule as given); callbacks such as
        #: ``ReduceLROnPlateau`` change it between steps, and :meth:`begin_step` stages the product
        self.lr_scale = 1.0
        self.state = {}
        self._backend = self._params = self._grads = None
        self._n_decayed = 0
        #: the all-reduce of data-parallel training (see :meth:`set_all_reduce`), None in one process
        self.all_reduce = None
        #: ``[(name, hook)]`` added by :meth:`add_gradient_hook` (observers such as ``GradientMonitor``)
        self.added_hooks = []
        self._hooks = self._make_gradient_hooks()

    @property
    def lr(self):
        """The learning rate of the next step: the schedule's value times :attr:`lr_scale`."""
        return self.schedule(self.iterations) * self.lr_scale

    def bind(self, backend, params, grads, n_weights, weights=()):
        """Allocate state for flat ``params``/``grads`` whose first ``n_weights`` entries are weights.

        ``weights`` lists each layer's weight matrix (views of ``params``), for
        optimizers whose update can ride in the weight-gradient GEMMs.
        """
        self._check_dtype(params.dtype)
        self.state = {name: backend.zeros(params.shape, params.dtype) for name in self.state_names}
        self._backend, self._params, self._grads = backend, params, grads
        self._n_weights, self._weights = n_weights, list(weights)
        #: (weights, biases) views of the parameters and of the gradients, made once
        self._split = ((params[:n_weights], params[n_weights:]), (grads[:n_weights], grads[n_weights:]))
        self._state_list = [self.state[name] for name in self.state_names]
        self._n_decayed = n_weights if self.weight_decay > 0 else 0
        #: the (1,) int64 step and the float64 per-step values, staged to the device by :meth:`begin_step`
        self.clock = backend.staged(np.zeros(1, np.int64))
        self.hyper = backend.staged(np.zeros(self.n_hyper, np.float64))

    def _check_dtype(self, dtype):
        """Raise when a hyperparameter cannot be represented in the parameters' dtype."""

    def gradient_hooks(self):
        """``[(name, hook)]`` run in this order on the flat gradient before the update; ``hook(kernels, g)``."""
        return self._hooks

    def set_all_reduce(self, hook):
        """Run ``hook(kernels, g)`` first among the gradient hooks, before clipping and the update (the
        all-reduce of data-parallel training, which needs each rank's whole gradient in the gradient
        buffer); None removes it."""
        self.all_reduce = hook
        self._hooks = self._make_gradient_hooks()

    def add_gradient_hook(self, name, hook):
        """Run ``hook(kernels, g)`` on the whole flat gradient of every step, after the all-reduce and before
        clipping and the update, until :meth:`remove_gradient_hook` (``name``). While any is added the
        gradient is always materialised in the gradient buffer: plain SGD does not fuse its weight update
        into the weight-gradient GEMMs."""
        if not isinstance(name, str) or not callable(hook):
            raise InvalidInputError(f"add_gradient_hook takes a name (str) and a callable hook(kernels, g), "
                                    f"got {name!r} and {type(hook).__name__}")
        if any(added == name for added, _ in self.added_hooks):
            raise InvalidInputError(f"a gradient hook named {name!r} is already added")
        self.added_hooks.append((name, hook))
        self._hooks = self._make_gradient_hooks()

    def remove_gradient_hook(self, name):
        """Remove the hook :meth:`add_gradient_hook` added as ``name`` (nothing when there is none)."""
        self.added_hooks = [(added, hook) for added, hook in self.added_hooks if added != name]
        self._hooks = self._make_gradient_hooks()

    def _make_gradient_hooks(self):
        hooks = [] if self.all_reduce is None else [("all_reduce", self.all_reduce)]
        hooks += self.added_hooks
        # the clipping hooks read clip_value / clip_norm when they run
        if self.clip_value is not None:
            hooks.append(("clip_value", lambda kernels, g: kernels.clip_by_value_(g, self.clip_value)))
        if self.clip_norm is not None:
            hooks.append(("clip_norm", lambda kernels, g: kernels.clip_by_norm_(g, self.clip_norm)))
        return hooks

    def weight_gradient_targets(self, kernels):
        """Where each layer's weight-gradient GEMM writes, called before the backward pass: None (into
        the gradient buffer), or one ``(out, scale)`` per layer, ``out = alpha x^T delta + beta out`` with
        ``[alpha, beta] = scale`` a device array."""
        return None

    def begin_step(self):
        """The host's part of a step, before the device work: advance the step count and stage this
        step's values (:attr:`clock`, :attr:`hyper`) to the device, where the update reads them."""
        step = self.iterations
        self.iterations += 1
        self.clock.host[0] = step
        self._stage(self.hyper.host, self.schedule(step) * self.lr_scale, step)
        self.clock.upload()
        self.hyper.upload()

    def _stage(self, hyper, lr, step):
        """Write this step's per-step values into the host array ``hyper``."""
        hyper[0] = lr

    def update(self, kernels, status):
        """Apply one guarded update with the current gradients; reads the staged step values on the device."""
        self._update(kernels, self._params, self._grads, self._state_list, status, self.clock.device)

    def _update(self, kernels, p, g, state, status, clock):
        raise NotImplementedError

    def step_signature(self):
        """Everything the update passes to its kernels as fixed scalars: a step captured (as a CUDA
        graph) for one signature is replayed only while it is unchanged."""
        return (type(self).__name__, self.weight_decay, self.clip_norm, self.clip_value,
                tuple(sorted(self._hyperparameters().items())), id(self.all_reduce),
                tuple(id(hook) for _, hook in self.added_hooks))

    def state_dict(self):
        """``{"iterations": int, "lr_scale": float, "state": {name: host array}}``; the schedule's
        position is ``iterations``."""
        return {"iterations": int(self.iterations), "lr_scale": float(self.lr_scale),
                "state": {name: self._backend.to_host(self.state[name]).copy() for name in self.state_names}}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (after :meth:`bind`); checks names, shapes and step count."""
        iterations = state.get("iterations")
        if (isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0
                or iterations > 2 ** 62):
            raise InvalidInputError(f"optimizer iterations must be an integer in [0, 2**62], got {iterations!r}")
        lr_scale = state.get("lr_scale", 1.0)  # absent from state saved before lr_scale existed
        if not _finite_real(lr_scale) or lr_scale < 0:
            raise InvalidInputError(f"optimizer lr_scale must be a finite number >= 0, got {lr_scale!r}")
        arrays = dict(state.get("state", {}))
        if sorted(arrays) != sorted(self.state_names):
            raise InvalidInputError(f"optimizer state holds {sorted(arrays)}, {type(self).__name__} keeps "
                                    f"{sorted(self.state_names)}")
        for name in self.state_names:
            target = self.state.get(name)
            if target is None:
                raise InvalidInputError("the optimizer has no state buffers yet: compile a built model first")
            if tuple(arrays[name].shape) != tuple(target.shape):
                raise InvalidInputError(f"optimizer state {name!r} has shape {tuple(arrays[name].shape)}, "
                                        f"expected {tuple(target.shape)}")
            if not np.isfinite(arrays[name]).all():
                raise InvalidInputError(f"optimizer state {name!r} holds NaN or Inf values")
        for name in self.state_names:
            self._backend.copy_into(self.state[name], arrays[name])
        self.iterations = int(iterations)
        self.lr_scale = float(lr_scale)

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

    def __init__(self, lr: float | Schedule = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.momentum = _check_fraction("momentum", momentum)
        check_bool("nesterov", nesterov)
        if nesterov and self.momentum == 0:
            raise InvalidInputError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        if self.momentum == 0:
            self.state_names = ()  # plain SGD keeps no velocity

    def _fused(self):
        """True when the weight update can ride in the backward GEMMs: no momentum and no gradient hook
        (clipping, an all-reduce, which needs the gradient before any weight changes, or an added hook)."""
        return (not self.momentum and self.clip_norm is None and self.clip_value is None
                and self.all_reduce is None and not self.added_hooks)

    def bind(self, backend, params, grads, n_weights, weights=()):
        super().bind(backend, params, grads, n_weights, weights)
        #: [alpha, beta] = [-lr, 1 - lr wd] of the fused weight update, in the parameters' dtype
        self.gemm_scale = backend.staged(np.zeros(2, params.dtype))

    def _stage(self, hyper, lr, step):
        hyper[0] = lr
        if self._fused():
            self.gemm_scale.host[:] = (-lr, 1.0 - lr * self.weight_decay)
            self.gemm_scale.upload()

    def weight_gradient_targets(self, kernels):
        """Plain SGD without clipping or all-reduce rides in the weight-gradient GEMMs, ``W = (1 - lr wd) W - lr x^T delta``
        (no gradient buffer pass, no separate update pass for the weights). To keep the update
        all-or-nothing, the weights are first copied into the (otherwise unused) weight-gradient buffer,
        and :meth:`update` copies them back when anything in the step was not finite."""
        if not self._fused():
            return None
        (weights, _), (backup, _) = self._split
        kernels.copy_(weights, backup)
        return [(W, self.gemm_scale.device) for W in self._weights]

    def _update(self, kernels, p, g, state, status, clock):
        hyper = self.hyper.device
        if not self._fused():
            kernels.sgd_update_(p, g, state[0] if state else None, hyper, self.momentum, self.nesterov,
                                self.weight_decay, self._n_decayed, status, clock)
            return
        (weights, biases), (backup, bias_grads) = self._split
        # every delta reaches its bias gradient (a column sum), so a NaN/Inf delta shows there
        kernels.check_finite_(bias_grads, status, STATUS_GRADIENT, clock)
        kernels.check_finite_(weights, status, STATUS_UPDATE, clock)
        kernels.sgd_update_(biases, bias_grads, None, hyper, 0.0, False, 0.0, 0, status, clock)
        kernels.restore_if_diverged_(weights, backup, status)

    def step_signature(self):
        return super().step_signature() + (self._fused(),)

    def _hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), the same arithmetic as ``torch.optim.Adam``.

    ``m = b1 m + (1-b1) d``; ``v = b2 v + (1-b2) d^2``;
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """

    state_names = ("m", "v")
    n_hyper = 2

    def __init__(self, lr: float | Schedule = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.beta1 = _check_fraction("beta1", beta1)
        self.beta2 = _check_fraction("beta2", beta2)
        self.eps = _check_eps(eps)

    def _check_dtype(self, dtype):
        _check_eps_fits(self.eps, dtype)

    def _stage(self, hyper, lr, step):
        t = step + 1
        hyper[0] = lr / (1.0 - self.beta1 ** t)  # the step size
        hyper[1] = math.sqrt(1.0 - self.beta2 ** t)  # the square root of the second bias correction

    def _update(self, kernels, p, g, state, status, clock):
        kernels.adam_update_(p, g, state[0], state[1], self.hyper.device, self.beta1, self.beta2, self.eps,
                             self.weight_decay, self._n_decayed, status, clock)

    def _hyperparameters(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop: ``v = rho v + (1-rho) d^2``; ``p -= lr * d / (sqrt(v) + eps)``."""

    state_names = ("v",)

    def __init__(self, lr: float | Schedule = 1e-3, rho: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.0,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr, weight_decay, clip_norm, clip_value)
        self.rho = _check_fraction("rho", rho)
        self.eps = _check_eps(eps)

    def _check_dtype(self, dtype):
        _check_eps_fits(self.eps, dtype)

    def _update(self, kernels, p, g, state, status, clock):
        kernels.rmsprop_update_(p, g, state[0], self.hyper.device, self.rho, self.eps, self.weight_decay,
                                self._n_decayed, status, clock)

    def _hyperparameters(self):
        return {"rho": self.rho, "eps": self.eps}


def _check_eps_fits(eps, dtype):
    tiny = float(np.finfo(dtype).tiny)
    if eps < tiny:
        raise InvalidInputError(f"eps={eps!r} is below the smallest normal {np.dtype(dtype).name} "
                                f"({tiny:g}): it would round to 0 or a denormal in the update; use eps >= {tiny:g}")


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get_optimizer(optimizer: str | Optimizer) -> Optimizer:
    """Return an :class:`Optimizer` from a name (default hyperparameters) or an instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    try:
        return OPTIMIZERS[optimizer.lower()]()
    except (KeyError, AttributeError):
        raise InvalidInputError(
            f"unknown optimizer {optimizer!r}; valid names are {sorted(OPTIMIZERS)}"
        ) from None


def optimizer_from_config(config: dict) -> Optimizer:
    config = dict(config)
    cls = {c.__name__: c for c in OPTIMIZERS.values()}[config.pop("name")]
    config["lr"] = schedule_from_config(config["lr"])
    return cls(**config)
