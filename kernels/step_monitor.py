"""What a CUDA training step must never do, counted: allocations and host reads (each a device sync).

Both CUDA runtimes report to a :class:`Monitor`; inside :meth:`Monitor.capturing`
(a step being captured as a CUDA graph) either one raises
:class:`CaptureViolation`, since a real capture would fail or freeze it.
"""

import contextlib


class CaptureViolation(RuntimeError):
    """An allocation or a host read inside a captured region."""


class Monitor:
    """Counters of allocations and host reads, and the capture-safety switch."""

    def __init__(self):
        self.allocations = 0
        self.allocated_bytes = 0
        self.host_reads = 0
        self._capturing = False

    def allocation(self, what, nbytes=0):
        if self._capturing:
            raise CaptureViolation(f"allocation inside a captured step: {what}")
        self.allocations += 1
        self.allocated_bytes += nbytes

    def host_read(self, what):
        if self._capturing:
            raise CaptureViolation(f"host read (a device sync) inside a captured step: {what}")
        self.host_reads += 1

    @contextlib.contextmanager
    def capturing(self):
        """Any allocation or host read reported inside this block raises :class:`CaptureViolation`."""
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False
