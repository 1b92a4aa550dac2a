"""Learning-rate schedules: callables ``step -> lr`` (step counts optimizer updates from 0)."""

from __future__ import annotations

import math
import numbers

from .errors import InvalidInputError, InvalidTypeError


def _finite_real(value):
    """``float(value)`` when ``value`` is a real number (not a bool) that is finite as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        value = float(value)
    except (OverflowError, TypeError, ValueError):  # an int beyond float's range, an odd Real
        return None
    return value if math.isfinite(value) else None


def check_positive(name, value):
    """Raise unless ``value`` is a finite real number > 0; returns it as a float."""
    number = _finite_real(value)
    if number is None or number <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_positive_integer(name, value):
    """Raise unless ``value`` is an integer >= 1 (not a bool); returns it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class Schedule:
    """Base class; subclasses define ``__call__(step) -> float`` and ``get_config``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return {"name": type(self).__name__, **vars(self)}


class Constant(Schedule):
    """``lr``."""

    def __init__(self, lr: float) -> None:
        self.lr = check_positive("lr", lr)

    def __call__(self, step):
        return self.lr


class StepDecay(Schedule):
    """``lr * gamma ** (step // step_size)``."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = check_positive("lr", lr)
        self.step_size = check_positive_integer("step_size", step_size)
        self.gamma = check_positive("gamma", gamma)

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.step_size)


class ExponentialDecay(Schedule):
    """``lr * decay_rate ** (step / decay_steps)``."""

    def __init__(self, lr: float, decay_steps: int, decay_rate: float) -> None:
        self.lr = check_positive("lr", lr)
        self.decay_steps = check_positive("decay_steps", decay_steps)
        self.decay_rate = check_positive("decay_rate", decay_rate)

    def __call__(self, step):
        return self.lr * self.decay_rate ** (step / self.decay_steps)


class InverseScaling(Schedule):
    """``lr / (step + 1) ** power_t`` (scikit-learn's "invscaling")."""

    def __init__(self, lr: float, power_t: float = 0.5) -> None:
        self.lr = check_positive("lr", lr)
        self.power_t = check_positive("power_t", power_t)

    def __call__(self, step):
        return self.lr / (step + 1) ** self.power_t


class Cosine(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps``, then ``min_lr``."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0) -> None:
        self.lr = check_positive("lr", lr)
        self.total_steps = check_positive_integer("total_steps", total_steps)
        min_value = _finite_real(min_lr)
        if min_value is None or not 0 <= min_value <= self.lr:
            raise InvalidInputError(f"min_lr must be a number in [0, lr] = [0, {self.lr!r}], got {min_lr!r}")
        self.min_lr = min_value

    def __call__(self, step):
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


SCHEDULES = {cls.__name__: cls for cls in (Constant, StepDecay, ExponentialDecay, InverseScaling, Cosine)}


def as_schedule(lr: float | Schedule) -> Schedule:
    """A number becomes :class:`Constant`; a :class:`Schedule` passes through."""
    if isinstance(lr, Schedule):
        return lr
    if callable(lr):
        raise InvalidTypeError(f"lr must be a number or a gpubp.schedules.Schedule (subclass Schedule to use a "
                               f"function step -> lr), got {type(lr).__name__}")
    return Constant(lr)


def schedule_from_config(config):
    """The schedule described by ``get_config()`` output; InvalidInputError when it describes none."""
    given = config
    try:
        config = dict(config)
        cls = SCHEDULES[config.pop("name")]
    except (TypeError, ValueError, KeyError):
        raise InvalidInputError(f"a schedule config must be a dict whose 'name' is one of {sorted(SCHEDULES)}, "
                                f"got {given!r}") from None
    try:
        return cls(**config)
    except TypeError as exc:  # missing or unknown keys
        raise InvalidInputError(f"invalid {cls.__name__} config {config!r}: {exc}") from None
