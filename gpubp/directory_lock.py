"""One training run per checkpoint directory: an exclusive lock that the OS releases when its process dies.

The lock is ``flock`` on ``<directory>/.gpubp.lock`` (which also records the
holder's process id, for the error message). A run killed with SIGKILL leaves
the file but not the lock, so nothing stays stuck. Within one process the lock
is counted, so ``save_checkpoint`` called by a running ``fit`` shares it. On
systems without ``fcntl`` (Windows) directories are not locked.
"""

from __future__ import annotations

import contextlib
import os
import threading

from .errors import InvalidInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".gpubp.lock"

_held = {}  # real path of a directory -> [file descriptor, holders in this process]
_guard = threading.Lock()


def _holder_pid(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip())
    except (OSError, ValueError):
        return None


def _acquire(path):
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise InvalidInputError(f"checkpoint directory {path!r} cannot be written ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder_pid(fd)
        os.close(fd)
        raise InvalidInputError(
            f"checkpoint directory {path!r} is in use by another training run"
            f"{'' if pid is None else f' (process {pid})'}; wait for it to finish or use another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def locked(directory, exclusive=False):
    """Hold the lock of ``directory`` (created when missing) for the ``with`` block.

    Raises InvalidInputError naming the holder when another process holds it,
    or, with ``exclusive``, when this process already does (a second ``fit``
    on the same directory).
    """
    path = os.path.realpath(os.fspath(directory))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"checkpoint directory {os.fspath(directory)!r} cannot be created "
                                f"({exc.strerror or exc})") from None
    if fcntl is None:  # pragma: no cover
        yield
        return
    with _guard:
        entry = _held.get(path)
        if entry is not None and exclusive:
            raise InvalidInputError(f"checkpoint directory {path!r} is in use by another training run "
                                    f"in this process; use another directory")
        if entry is None:
            entry = _held[path] = [_acquire(path), 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                os.close(entry[0])  # releases the lock
