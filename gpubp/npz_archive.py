"""Reading ``.npz`` files that may be crafted: a regular file, a plain zip of ``.npy`` members, every
array's header checked before its data is read, and data read in bounded chunks.

Every fault raises a one-line :class:`~gpubp.errors.ModelFileError` naming the file; an archive whose
arrays would not fit in memory raises :class:`~gpubp.errors.InsufficientMemory` first.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from .backend import get_backend
from .errors import ModelFileError

#: dtype kinds an array may have: bool, integers, floats, complex (never objects)
NUMERIC_KINDS = "biufc"
#: the most members (arrays and the metadata) a file may hold
MAX_MEMBERS = 1024
_HEADER_BYTES = 16 * 2 ** 10  # read for an .npy header: magic, length and a dict numpy caps at 10,000 characters
#: bytes read (or scanned) at a time
CHUNK = 2 ** 20
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
#: what zipfile and the .npy header parser raise for bytes that are not what they should be
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, OSError, EOFError, ValueError, SyntaxError,
                TypeError, NotImplementedError, RecursionError)


def one_line(exc):
    """``exc``'s message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_regular_file(path):
    """Whether ``path`` is a regular file (or a link to one)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _open_regular_file(path, what):
    """``path`` opened for reading, once it is known to be a regular file: a FIFO, device or directory is
    refused before it is opened (and checked again once open), so reading never blocks nor runs forever."""
    try:
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags) if stat.S_ISREG(os.stat(path).st_mode) else None
    except FileNotFoundError:
        raise ModelFileError(f"{what} {path!r} does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ModelFileError(f"{path!r} cannot be opened ({one_line(exc)})") from None
    if fd is not None and not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the stat and the open
        os.close(fd)
        fd = None
    if fd is None:
        raise ModelFileError(f"{path!r} is not a regular file, so not a gpubp {what}")
    return os.fdopen(fd, "rb")


class ArrayHeader(NamedTuple):
    """A member's ``.npy`` header, checked: its data follows ``offset`` bytes into the member."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize


class NpzArchive:
    """A ``.npz`` file opened for reading without pickle: a regular file holding a zip of at most
    :data:`MAX_MEMBERS` ``.npy`` members with unique names free of path separators.

    ``files`` lists the array names. :meth:`header` reads and checks a member's ``.npy`` header,
    :meth:`read` its data, bounded by that header; ``archive[key]`` does both (when the array fits in
    memory). Every fault raises ModelFileError naming the file (``what`` says what it should be).
    """

    def __init__(self, path, what):
        self.path, self.what = path, what
        self._file = _open_regular_file(path, what)
        try:
            self._zip = self._open_zip()
            self._members = self._index_members()
        except BaseException:
            self.close()
            raise
        self.files = list(self._members)

    def _open_zip(self):
        if os.fstat(self._file.fileno()).st_size == 0:
            raise ModelFileError(f"{self.path!r} is empty, not a gpubp {self.what}")
        try:
            return zipfile.ZipFile(self._file)
        except _READ_ERRORS as exc:
            self._file.seek(0)
            if self._file.read(6) == b"\x93NUMPY":
                raise ModelFileError(f"{self.path!r} is a bare .npy array, not a gpubp {self.what}") from None
            raise ModelFileError(f"{self.path!r} is not a gpubp {self.what}: not a zip archive, or a truncated one "
                                 f"({one_line(exc)})") from None

    def _index_members(self):
        """``{key: ZipInfo}`` of the members, each an unencrypted, stored or deflated, plainly named ``.npy``."""
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ModelFileError(f"{self.path!r} holds {len(infos):,} members, more than the {MAX_MEMBERS:,} "
                                 f"of a gpubp {self.what}")
        members = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or len(name) == 4 or any(c in name for c in "/\\\0"):
                raise ModelFileError(f"{self.path!r} holds a member named {name!r}, not an array name")
            if name[:-4] in members:
                raise ModelFileError(f"{self.path!r} holds the member {name!r} twice")
            if info.flag_bits & 0x1:
                raise ModelFileError(f"{self.path!r} holds an encrypted member {name!r}")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ModelFileError(f"{self.path!r}: member {name!r} uses an unsupported compression method "
                                     f"({info.compress_type})")
            members[name[:-4]] = info
        return members

    def _label(self, key):
        return "the metadata record" if key == "__meta__" else f"array {key!r}"

    def header(self, key, limit=None, allows=""):
        """The checked :class:`ArrayHeader` of member ``key``; reads at most its first 16 KiB.

        Refuses a dtype that is not numeric or not in this machine's byte order, a negative dimension,
        more than ``limit`` bytes of data (``allows`` says who allows that many), and a zip entry whose
        size is not that of the header plus the data it declares.
        """
        info, label = self._members[key], self._label(key)
        prefix = np.empty(min(info.file_size, _HEADER_BYTES), np.uint8)
        self._read_into(info, 0, prefix)
        prefix = io.BytesIO(prefix.tobytes())
        try:
            reader = _NPY_HEADERS.get(np.lib.format.read_magic(prefix))
            if reader is None:
                raise ValueError("an .npy format version other than 1.0 or 2.0")
            shape, fortran_order, dtype = reader(prefix)
        except _READ_ERRORS as exc:
            raise ModelFileError(f"{self.path!r}: {label} has an unreadable .npy header ({one_line(exc)})") from None
        if dtype.kind not in NUMERIC_KINDS:
            raise ModelFileError(f"{self.path!r}: {label} is corrupted or non-numeric (dtype {dtype})")
        if not dtype.isnative:
            raise ModelFileError(f"{self.path!r}: {label} is not in this machine's byte order ({dtype.str})")
        if any(n < 0 for n in shape):
            raise ModelFileError(f"{self.path!r}: {label} has an invalid shape {shape}")
        header = ArrayHeader(key, info, shape, dtype, fortran_order, prefix.tell())
        if limit is not None and header.nbytes > limit:
            raise ModelFileError(f"{self.path!r}: {label} declares {header.nbytes:,} bytes ({dtype} of shape "
                                 f"{shape}), more than the {limit:,} {allows}")
        if info.file_size != header.offset + header.nbytes:
            raise ModelFileError(f"{self.path!r}: {label} holds {info.file_size - header.offset:,} bytes of data, "
                                 f"its header declares {header.nbytes:,}")
        return header

    def read(self, header):
        """The array whose checked ``header`` :meth:`header` returned."""
        array = np.empty(math.prod(header.shape), header.dtype)
        self._read_into(header.info, header.offset, array.view(np.uint8))
        return array.reshape(header.shape, order="F" if header.fortran_order else "C")

    def _read_into(self, info, skip, out):
        """Fill the uint8 vector ``out`` with member ``info``'s bytes after its first ``skip``, 1 MiB at a time
        (zipfile checks the member's CRC once its last byte is read)."""
        try:
            with self._zip.open(info) as stream:
                stream.read(skip)
                filled = 0
                while filled < out.size:
                    n = stream.readinto(out[filled:filled + CHUNK])
                    if not n:
                        raise EOFError(f"the data ends after {filled:,} of {out.size:,} bytes")
                    filled += n
        except _READ_ERRORS as exc:
            label = self._label(info.filename[:-4])
            raise ModelFileError(f"{self.path!r}: {label} is corrupted ({one_line(exc)})") from None

    def __getitem__(self, key):
        """The array ``key``, once its header is checked and it fits in the host's memory."""
        header = self.header(key)
        require_host_memory(header.nbytes, self.path)
        return self.read(header)

    def close(self):
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_npz(path, what):
    """``path`` as an :class:`NpzArchive` (read without pickle); ModelFileError (naming ``what``) for a
    missing or unreadable file, anything but a regular file, and a bare ``.npy`` file."""
    return NpzArchive(os.fspath(path), what)


def require_host_memory(nbytes, path):
    """InsufficientMemory when reading ``nbytes`` of arrays from ``path`` would not fit in the host's memory."""
    get_backend("cpu").require_memory(nbytes, f"to read the arrays of {path!r}",
                                      "free memory, or read the file on a machine with more")
