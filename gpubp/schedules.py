"""Learning-rate schedules: callables ``step -> lr`` (step counts optimizer updates from 0)."""

from __future__ import annotations

import math
import numbers

from .errors import InvalidInputError


def check_positive(name, value):
    """Raise unless ``value`` is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Schedule:
    """Base class; subclasses define ``__call__(step) -> float`` and ``get_config``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {"name": type(self).__name__, **vars(self)}


class Constant(Schedule):
    """``lr``."""

    def __init__(self, lr):
        self.lr = check_positive("lr", lr)

    def __call__(self, step):
        return self.lr


class StepDecay(Schedule):
    """``lr * gamma ** (step // step_size)``."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = check_positive("lr", lr)
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise InvalidInputError(f"step_size must be an integer >= 1, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = check_positive("gamma", gamma)

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


class ExponentialDecay(Schedule):
    """``lr * decay_rate ** (step / decay_steps)``."""

    def __init__(self, lr, decay_steps, decay_rate):
        self.lr = check_positive("lr", lr)
        self.decay_steps = check_positive("decay_steps", decay_steps)
        self.decay_rate = check_positive("decay_rate", decay_rate)

    def __call__(self, step):
        return self.lr * self.decay_rate ** (step / self.decay_steps)


class InverseScaling(Schedule):
    """``lr / (step + 1) ** power_t`` (scikit-learn's "invscaling")."""

    def __init__(self, lr, power_t=0.5):
        self.lr = check_positive("lr", lr)
        self.power_t = check_positive("power_t", power_t)

    def __call__(self, step):
        return self.lr / (step + 1) ** self.power_t


class Cosine(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps``, then ``min_lr``."""

    def __init__(self, lr, total_steps, min_lr=0.0):
        self.lr = check_positive("lr", lr)
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
            raise InvalidInputError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        self.total_steps = int(total_steps)
        if not 0 <= min_lr <= self.lr:
            raise InvalidInputError(f"min_lr must lie in [0, lr], got {min_lr!r}")
        self.min_lr = float(min_lr)

    def __call__(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


SCHEDULES = {cls.__name__: cls for cls in (Constant, StepDecay, ExponentialDecay, InverseScaling, Cosine)}


def as_schedule(lr):
    """A number becomes :class:`Constant`; a :class:`Schedule` passes through."""
    if isinstance(lr, Schedule):
        return lr
    return Constant(lr)


def schedule_from_config(config):
    config = dict(config)
    return SCHEDULES[config.pop("name")](**config)
