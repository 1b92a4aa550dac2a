"""Checks that an output path can be written, made before the work whose result it will hold."""

from __future__ import annotations

import os

from .errors import InvalidInputError, InvalidTypeError


def check_path(name, path):
    """``os.fspath(path)`` once it names a path: InvalidTypeError (naming ``name``) unless a str or
    os.PathLike, InvalidInputError unless a non-empty text path without NUL characters."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidInputError(f"{name} must be a non-empty file path without NUL characters, got {path!r}")
    return path


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable_file(path, what):
    """Raise InvalidInputError (naming ``what``, e.g. "--save") unless a file can be written at ``path``:
    its directory exists and is writable, and ``path`` is not a directory or a read-only file."""
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise InvalidInputError(f"{what} {os.fspath(path)!r} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise InvalidInputError(f"{what} {os.fspath(path)!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(target) and not os.access(target, os.W_OK)):
        raise InvalidInputError(f"{what} {os.fspath(path)!r} cannot be written (permission denied)")


def check_writable_directory(path, what):
    """Raise InvalidInputError unless ``path`` is a writable directory or can be created as one."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidInputError(f"{what} {path!r} is a file, not a directory")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise InvalidInputError(f"{what} {path!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{what} {path!r} cannot be written (permission denied on {existing!r})")
