"""Progress display for ``fit``: one live display for the whole run on a terminal, one line per epoch otherwise.

On a terminal (``verbose=1``) two lines are redrawn in place, never wider than 80 columns (or the
terminal, when narrower)::

    epoch 12/50 ━━━━━━━━━━━━━━╸─────────────────────  23% step 2,765/12,500  ETA 0:01:12
    loss 0.2134 · 125,311 samples/s · last val: loss 0.2100 accuracy 0.9500

a bar over every step of the run with the overall ETA, then the running loss, the throughput and the
latest validation metrics (those that fit; the rest are in the History). The running loss is read from
the device at most every :data:`READ_INTERVAL` seconds (each read waits for the device), and replaced by
the epoch's mean loss at the end of each epoch. Elsewhere (a file, a pipe, ``verbose=2``) every epoch
prints one line with every logged value.
"""

from __future__ import annotations

import math
import shutil
import sys
import time

from .callbacks import Callback

#: Most columns the live display takes.
MAX_WIDTH = 80
#: Seconds between reads of the running loss from the device (each read is a host sync on a GPU).
READ_INTERVAL = 0.3
#: Seconds between redraws of the live display.
REDRAW_INTERVAL = 0.1


def _number(value):
    """Four decimals, or four significant digits where four decimals would show 0.0000 (a small learning
    rate, a tiny loss)."""
    return f"{value:.4f}" if value == 0 or not abs(value) < 5e-5 else f"{value:.4g}"


def _format_logs(logs):
    parts = []
    for key, value in logs.items():
        if value is None or key == "epoch_time":
            continue
        if key == "samples_per_sec":
            parts.append(f"{value:,.0f} samples/s")
        else:
            parts.append(f"{key} {_number(value)}")
    return " - ".join(parts)


def _clock(seconds):
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _fit(parts, width, separator=" · "):
    """Join ``parts`` with ``separator``, leaving out whole trailing parts that would pass ``width``."""
    line = ""
    for part in parts:
        candidate = part if not line else line + separator + part
        if len(candidate) > width:
            break
        line = candidate
    return line


class EpochProgress:
    """Shows training progress. ``verbose``: 0 silent, 1 live display (terminal) or line per epoch, 2 line
    per epoch. ``stream`` defaults to standard output; ``width`` to the terminal's, at most 80 columns."""

    def __init__(self, verbose, epochs, steps_per_epoch, stream=None, width=None):
        self.verbose = verbose
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()
        if width is None:
            width = shutil.get_terminal_size((MAX_WIDTH, 24)).columns if self.live else MAX_WIDTH
        self.width = max(20, min(MAX_WIDTH, width))
        self.epoch = 0
        self.first_step = None  # the run's step count where this display started (after a resume: not 0)
        self.step_count = 0
        self.samples = 0
        self.loss = None
        self.val = {}
        self.drawn = False
        self._t0 = self._last_draw = self._last_read = 0.0

    # ------------------------------------------------------------- events
    def start_epoch(self, epoch):
        self.epoch = epoch
        now = time.perf_counter()
        self._epoch_t0 = now
        if self.first_step is None:
            self.first_step = self.step_count = epoch * self.steps
            self._t0 = now
        self._epoch_losses = []

    def step(self, samples, loss=None, read=None):
        """A step of ``samples`` rows; ``loss`` its (1,) device loss and ``read`` the function that reads it
        on the host (both optional): read only every :data:`READ_INTERVAL` seconds."""
        self.step_count += 1
        self.samples += samples
        if not self.live:
            return
        now = time.perf_counter()
        if loss is not None and read is not None and now - self._last_read >= READ_INTERVAL:
            value = float(read(loss)[0])
            self.loss = value if self.loss is None or not self._epoch_losses else 0.7 * self.loss + 0.3 * value
            self._epoch_losses.append(value)
            self._last_read = now
        if now - self._last_draw >= REDRAW_INTERVAL:
            self._draw(now)

    def end_epoch(self, epoch, logs):
        if self.live:
            self.loss = logs.get("loss", self.loss)
            self.val = {key[4:]: value for key, value in logs.items() if key.startswith("val_") and value is not None}
            self._draw(time.perf_counter())
        elif self.verbose:
            t = logs["epoch_time"]
            took = f"{t * 1000:.0f}ms" if t < 1 else f"{t:.2f}s"
            print(f"epoch {epoch + 1}/{self.epochs} - {took} - {_format_logs(logs)}",
                  file=self.stream, flush=True)

    def close(self):
        if self.live and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    # ------------------------------------------------------------ drawing
    def lines(self, now=None):
        """The two lines of the live display as they stand (each at most ``width`` columns)."""
        now = time.perf_counter() if now is None else now
        total = self.epochs * self.steps
        done = min(self.step_count, total)
        elapsed = now - self._t0
        run_steps = done - (self.first_step or 0)
        remaining = total - done
        eta = elapsed / run_steps * remaining if run_steps > 0 else math.inf
        head = f"epoch {min(self.epoch + 1, self.epochs)}/{self.epochs} "
        tail = f" {100 * done / total:3.0f}% step {done:,}/{total:,}  ETA {_clock(eta)}"
        room = self.width - len(head) - len(tail)
        if room >= 10:
            filled = room * done / total
            whole = int(filled)
            bar = "━" * whole + ("╸" if whole < room and filled - whole >= 0.5 else "")
            first = head + bar + "─" * (room - len(bar)) + tail
        else:
            first = (head + tail.strip())[:self.width]
        parts = [f"loss {_number(self.loss)}" if self.loss is not None else "loss ..."]
        if elapsed > 0 and self.samples:
            parts.append(f"{self.samples / elapsed:,.0f} samples/s")
        second = _fit(parts, self.width)
        if self.val:  # as many of the latest validation metrics as fit, in the order logged
            kept = _fit([f"{name} {_number(value)}" for name, value in self.val.items()],
                        self.width - len(second) - len(" · last val: "), " ")
            if kept:
                second += " · last val: " + kept
        return first, second

    def _draw(self, now):
        first, second = self.lines(now)
        if self.drawn:  # back to the start of the first line, then redraw both
            self.stream.write("\r\x1b[1A")
        self.stream.write("\x1b[2K" + first + "\n\x1b[2K" + second)
        self.stream.flush()
        self.drawn = True
        self._last_draw = now


class ProgressLogger(Callback):
    """The progress display of ``fit`` as a callback (Keras' ``add_progbar``)."""

    def __init__(self, verbose, epochs, steps_per_epoch, stream=None):
        self.progress = EpochProgress(verbose, epochs, steps_per_epoch, stream)

    def _read(self, loss):
        return self.model.backend.to_host(loss)

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.start_epoch(epoch)

    def on_batch_end(self, batch, logs=None):
        self.progress.step(logs["size"], logs.get("loss"), self._read if self.model is not None else None)

    def on_epoch_end(self, epoch, logs):
        self.progress.end_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        self.progress.close()
