"""Training on data bigger than memory: an :class:`~gpubp.data.NpyDataset` streamed chunk by chunk.

``fit`` streams its training rows instead of copying them to the device when X
is a path, a memory-mapped array or an ``NpyDataset``. The rows are split into
chunks of ``chunk_rows`` rows (rounded down to a multiple of the batch size),
chunk ``c`` holding rows ``c * chunk_rows`` onwards in the file.

The order of an epoch (``shuffle=True``), all drawn from the model's seeded
shuffle generator: first the order of the chunks (a permutation, drawn only
when there are two chunks or more), then, chunk after chunk in that order, the
order of the rows within the chunk (a permutation of its rows). Batches never
straddle two chunks. This is not a permutation of the whole set: rows of one
chunk stay together within an epoch. A set of one chunk draws exactly the
in-memory path's permutation, and ``shuffle=False`` visits every row in file
order, so in both cases training is identical to that on the arrays in memory.
Every draw of an epoch is made before it ends, so a checkpoint's generator
state resumes bit-identically.

Double buffering: the device holds two chunks. While the steps train on one, a
reader thread reads the next from the file, checks it (finite values, values a
float32 can hold, labels) and writes it cast and standardised into the other
slot's host staging, from which the backend uploads it (``Backend.chunk_stage``:
on the CPU the slot itself, on a GPU pinned memory and an asynchronous copy on a
side stream). An error in the reader is raised by ``fit`` in the calling thread,
naming the file and the row.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .buffers import EpochBatches
from .data import NpyDataset
from .errors import InvalidInputError
from .validation import host_targets, write_features


def as_dataset(X, y):
    """The :class:`NpyDataset` ``fit`` streams for (X, y), with its targets; None for arrays in memory."""
    if isinstance(X, NpyDataset):
        if y is None:
            if X.y is None:
                raise InvalidInputError(f"{X!r} has no targets: pass y to fit, or give them to the NpyDataset")
            return X
        return X.with_targets(y)
    if isinstance(X, (str, os.PathLike, np.memmap)):
        if y is None:
            raise InvalidInputError("y is missing: pass the targets (an array, or a .npy file's path)")
        return NpyDataset(X, y)
    return None


class StreamedSet:
    """The training rows of a streamed data set, with the layout of their targets; ``fit`` uses it where
    it uses the device arrays of data in memory.

    Attributes
    ----------
    dataset : NpyDataset
    shape : (n_rows, n_features)
    target_row, target_dtype : shape and dtype of one row of targets in the loss kernel's layout
    """

    def __init__(self, dataset, target_row, target_dtype):
        self.dataset, self.shape = dataset, dataset.shape
        self.target_row, self.target_dtype = tuple(target_row), np.dtype(target_dtype)

    def fill(self, model, scaler, start, stop, x_out, y_out, raw=None):
        """Read rows ``start`` to ``stop - 1``, check them and write the first ``stop - start`` rows of the
        host arrays ``x_out`` (cast, standardised by ``scaler``) and ``y_out`` (the loss's targets)."""
        X, y = self.dataset.read(start, stop, raw)
        first = self.dataset.start + start
        n = stop - start
        where = f"rows {first} to {first + n - 1}"
        write_features(X, x_out[:n], f"{self.dataset.X.where}, {where},", scaler, first_row=first)
        y_out[:n] = _chunk_targets(model, y, f"{self.dataset.y.where}, {where},", first)

    def evaluate(self, model, with_accuracy):
        """The loss and metrics of ``model`` on these rows (as ``Sequential.evaluate_prepared``), a chunk at
        a time in file order: the chunks' sums add up to those of all rows."""
        backend, n = model.backend, self.shape[0]
        rows = min(self.dataset.chunk_rows, n)
        x = np.empty((rows, self.shape[1]), model.dtype)
        y = np.empty((rows,) + self.target_row, self.target_dtype)
        evaluation, sums = model.evaluation(with_accuracy), 0.0
        for start in range(0, n, rows):
            m = min(start + rows, n) - start
            self.fill(model, model.scaler, start, start + m, x, y)
            sums = sums + model.evaluation_sums(evaluation, backend.asarray(x[:m]), backend.asarray(y[:m]))
        return evaluation.result(sums)


def _chunk_targets(model, y, name, first_row):
    """The targets of a chunk's rows; an error of the loss names the first row that raises it."""
    def targets(rows):
        return host_targets(model.loss, rows, rows.shape[0], model.n_outputs, model.dtype, name, first_row)

    try:
        return targets(y)
    except InvalidInputError as exc:
        if "(first: row" in str(exc):
            raise
        good, bad = 0, y.shape[0]  # the first `good` rows pass, the first `bad` do not: bisect
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                targets(y[:middle])
                good = middle
            except InvalidInputError:
                bad = middle
        raise InvalidInputError(f"{exc} (first: row {first_row + bad - 1})") from None


def split_streamed(model, dataset, validation_data, validation_split):
    """``_split_validation`` of ``gpubp.train`` for a streamed set: ``(StreamedSet, targets, X_val, y_val,
    with_accuracy)``, where ``targets`` is a zero-stride array with the targets' shape and dtype (nothing is
    read but a row); the validation rows (``validation_split``: the last ones of the file) are in memory."""
    model.require_compiled()
    model.build_for(dataset)
    if dataset.shape[1] != model.input_dim:
        raise InvalidInputError(f"{dataset.X.where} has {dataset.shape[1]} features but the model expects "
                                f"{model.input_dim}")
    X_val = y_val = None
    if validation_split:
        n = len(dataset)
        n_val = int(round(n * validation_split))
        if n_val < 1 or n_val >= n:
            raise InvalidInputError(f"validation_split={validation_split} leaves {n_val} of {n} samples for "
                                    f"validation")
        X_val, y_val, _ = model.prepare(*dataset.read(n - n_val, n), name_x="the validation rows of X",
                                        name_y="the validation rows of y")
        dataset = dataset.rows(0, n - n_val)
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise InvalidInputError("validation_data must be a pair (X_val, y_val)")
        X_val, y_val, _ = model.prepare(*validation_data, name_x="validation_data X", name_y="validation_data y")
    first = dataset.read(0, 1)[1]
    row = _chunk_targets(model, first, f"{dataset.y.where}, row {dataset.start},", dataset.start)
    targets = np.broadcast_to(row[:1], (len(dataset),) + row.shape[1:])
    streamed = StreamedSet(dataset, row.shape[1:], row.dtype)
    return streamed, targets, X_val, y_val, model.loss.reports_accuracy(first, model.n_outputs)


def epoch_batches(model, X, y, batch_size, n_steps, weights=None):
    """The batches ``fit``'s steps gather from: :class:`ChunkStream` for a :class:`StreamedSet`, else
    :class:`~gpubp.buffers.EpochBatches` over the device arrays (X, y) and the rows' ``weights`` (or None)."""
    if isinstance(X, StreamedSet):
        return ChunkStream(model, X, batch_size, n_steps)
    return EpochBatches(model.backend, X, y, n_steps, weights)


class ChunkStream:
    """Two chunks of a :class:`StreamedSet` on the device, refilled by a reader thread; the steps use it as
    they use :class:`~gpubp.buffers.EpochBatches` (its ``select``, ``gather_``, ``store_loss_``, ``losses``).

    Positions are those of the file's rows: ``select(first, slot)`` with ``first`` in chunk ``c`` makes sure
    chunk ``c`` is on the device (the first time: waits for the reader, raising its error, lets the slot of
    the chunk before go and asks for the chunk after next into it), then selects the rows at position
    ``first - c * chunk_rows`` of that chunk's order.

    Memory: the device holds 2 chunks of X (model dtype) and targets, and 2 chunk orders (int64); the host
    adds, on a GPU, the 2 pinned staging slots, and the reader's buffer of 1 chunk of X as stored in the
    file. On the CPU the staging slot is the device slot, validated in place.
    """

    def __init__(self, model, streamed, batch_size, n_steps):
        backend, n = model.backend, streamed.shape[0]
        self.streamed, self.model, self.scaler = streamed, model, model.scaler
        self.chunk_rows = max(batch_size, streamed.dataset.chunk_rows // batch_size * batch_size)
        self.n_chunks = -(-n // self.chunk_rows)
        self.steps_per_chunk = self.chunk_rows // batch_size
        self.n_steps = n_steps
        slot = self.slot_rows = min(self.chunk_rows, n)
        row_bytes = (streamed.shape[1] * model.dtype.itemsize + 8
                     + int(np.prod(streamed.target_row, dtype=np.int64)) * streamed.target_dtype.itemsize)
        backend.require_memory(2 * slot * row_bytes, f"for two chunks of {slot:,} rows of the streamed data set",
                               "pass a smaller chunk_rows (gpubp.data.NpyDataset)")
        X = backend.empty((2 * slot, streamed.shape[1]), model.dtype)
        y = backend.empty((2 * slot,) + streamed.target_row, streamed.target_dtype)
        self.device = EpochBatches(backend, X, y, n_steps)
        self.losses, self.serial = self.device.losses, self.device.serial
        #: per slot, the staging of its X rows, its targets and its chunk's order
        self.stages = [[backend.chunk_stage(a[s * slot:(s + 1) * slot]) for a in (X, y, self.device.rows)]
                       for s in range(2)]
        self.raw = None  # the reader's buffer for the rows as stored in the file
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="gpubp-chunk-reader")
        self.pending = collections.deque()  # (chunk, slot, future) in the order the steps take them
        self.chunk = self.slot = None  # those the steps take now
        self.order, self.rng, self.visit = np.arange(self.n_chunks), None, 0

    def begin_epoch(self, rng=None):
        """Draw the epoch's chunk order from ``rng`` (None: file order, rows in order) and ask for the first
        two chunks. Returns the file-order indices of the batches in the order the steps take them."""
        self._settle()
        if rng is not None and self.n_chunks > 1:
            self.order = rng.permutation(self.n_chunks)
        else:
            self.order = np.arange(self.n_chunks)
        self.rng, self.visit = rng, -1
        for visit in range(min(2, self.n_chunks)):
            self._request(visit)
        spc = self.steps_per_chunk
        return np.concatenate([np.arange(c * spc, min((c + 1) * spc, self.n_steps)) for c in self.order])

    def select(self, first, slot):
        chunk = first // self.chunk_rows
        if chunk != self.chunk:
            self._enter(chunk)
        self.device.select(self.slot * self.slot_rows + first - chunk * self.chunk_rows, slot)

    def gather_(self, kernels, plan):
        self.device.gather_(kernels, plan)

    def store_loss_(self, kernels, loss):
        self.device.store_loss_(kernels, loss)

    def close(self):
        """Wait for the reads asked for and stop the reader thread."""
        self._settle()
        self.reader.shutdown(wait=True)

    def _request(self, visit):
        """Ask the reader for the chunk of ``visit`` (its order drawn now, in the caller's thread)."""
        chunk, slot = int(self.order[visit]), visit % 2
        start, stop = chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.streamed.shape[0])
        order = (np.arange(stop - start, dtype=np.int64) if self.rng is None
                 else self.rng.permutation(stop - start).astype(np.int64, copy=False))
        self.pending.append((chunk, slot, self.reader.submit(self._fill, start, stop, order, slot)))

    def _enter(self, chunk):
        expected, slot, future = self.pending.popleft()
        if expected != chunk:
            raise RuntimeError(f"the steps took chunk {chunk} where chunk {expected} was due")
        future.result()  # the reader's error, raised here
        for stage in self.stages[slot]:
            stage.wait_uploaded()
        self.visit += 1
        if self.slot is not None:
            for stage in self.stages[self.slot]:
                stage.release()
            if self.visit + 1 < self.n_chunks:
                self._request(self.visit + 1)
        self.chunk, self.slot = chunk, slot

    def _settle(self):
        """Wait for reads still pending (those of an epoch that stopped early; their errors are dropped)
        and let the slot in use go."""
        while self.pending:
            self.pending.popleft()[2].exception()
        if self.slot is not None:
            for stage in self.stages[self.slot]:
                stage.release()
        self.chunk = self.slot = None

    def _fill(self, start, stop, order, slot):
        """In the reader thread: rows ``start`` to ``stop - 1`` and their order into ``slot``'s staging, and
        uploaded."""
        x, y, rows = self.stages[slot]
        for stage in (x, y, rows):
            stage.wait_host()
        if self.raw is None:
            self.raw = np.empty(self.slot_rows * self.streamed.shape[1], self.streamed.dataset.X.dtype)
        self.streamed.fill(self.model, self.scaler, start, stop, x.host, y.host, self.raw)
        np.add(order, slot * self.slot_rows, out=rows.host[:stop - start])
        for stage in (x, y, rows):
            stage.upload(stop - start)
