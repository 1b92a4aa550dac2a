"""The device-side record of the first training step that was not finite.

Every guarded kernel of the step (the loss check and the optimizer updates,
see ``gpubp.kernels.contract``) reads and writes one (4,) int64 device array
``[code, step, scratch, scratch]``: while it is clear the step runs normally; the first NaN/Inf
sets it, and from then on no update is applied, so the parameters and the
optimizer state stay those from before that step. The host reads it when the
training loop chooses (every step on the CPU, where a read is free; once per
epoch or every N steps on a GPU), never inside a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels.contract import STATUS_CLEAR, STATUS_MEANING


@dataclass(frozen=True)
class Divergence:
    """What the status recorded: the optimizer step (0-based count) and what was not finite."""

    iteration: int
    code: int

    @property
    def reason(self):
        return STATUS_MEANING.get(self.code, f"unknown status code {self.code}")


class DivergenceStatus:
    """The (4,) int64 ``[code, step, scratch, scratch]`` device array of one model, and its one host read."""

    def __init__(self, backend):
        self.backend = backend
        self.array = backend.zeros(4, np.int64)

    def read(self):
        """The recorded :class:`Divergence`, or None while clear (one device-to-host read)."""
        code, iteration = (int(v) for v in self.backend.to_host(self.array)[:2])
        return None if code == STATUS_CLEAR else Divergence(iteration, code)

    def clear(self):
        """Clear the record (a device write, no read)."""
        self.array.fill(0)
