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
