"""Exceptions raised by gpubp.

Every error subclasses a built-in (``ValueError``, ``TypeError`` or
``RuntimeError``) so handlers written for those keep working.
"""


class GpubpError(Exception):
    """Base class of every error gpubp raises on purpose."""


class InvalidInputError(GpubpError, ValueError):
    """An array or argument has the wrong value, shape or content."""


class InvalidTypeError(GpubpError, TypeError):
    """An array or argument has the wrong type or dtype."""


class BackendUnavailableError(GpubpError, RuntimeError):
    """The requested array backend cannot run on this machine."""


class NotCompiledError(GpubpError, RuntimeError):
    """``fit``/``train_on_batch`` was called before ``compile``."""


class ModelFileError(GpubpError, ValueError):
    """A model file is missing, corrupted or of an unknown format."""


class TrainingDiverged(GpubpError, FloatingPointError):
    """The loss, the gradient or the update of a training step was NaN or Inf.

    ``epoch`` and ``step`` (0-based epoch, 1-based step within it; None outside
    ``fit``) say which step first went bad, ``iteration`` its optimizer step
    count and ``reason`` what was not finite. The parameters and the optimizer
    state are those from before that step.
    """

    def __init__(self, message, epoch=None, step=None, iteration=None, reason=None):
        super().__init__(message)
        self.epoch, self.step, self.iteration, self.reason = epoch, step, iteration, reason


class InsufficientMemory(GpubpError, MemoryError):
    """A run would not fit in the memory available on its device."""


class DistributedAbort(GpubpError, RuntimeError):
    """Another rank of a data-parallel run failed (that rank reports why), so this one stops too."""
