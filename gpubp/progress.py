"""Progress display for ``fit``: a tqdm bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
import time

from .callbacks import Callback


def _format_logs(logs):
    parts = []
    for key, value in logs.items():
        if value is None or key == "epoch_time":
            continue
        if key == "samples_per_sec":
            parts.append(f"{value:,.0f} samples/s")
        else:
            parts.append(f"{key} {value:.4f}")
    return " - ".join(parts)


class EpochProgress:
    """Shows training progress. ``verbose``: 0 silent, 1 bar (terminal) or line per epoch, 2 line per epoch."""

    def __init__(self, verbose, epochs, steps_per_epoch, stream=None):
        self.verbose = verbose
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.stream = stream or sys.stdout
        self.bar = None
        self._use_bar = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()
        if self._use_bar:
            try:
                from tqdm.auto import tqdm  # optional dependency: the "progress" extra
            except ImportError:
                self._use_bar = False
            else:
                self._tqdm = tqdm

    def start_epoch(self, epoch):
        self._t0 = time.perf_counter()
        if self._use_bar:
            self.bar = self._tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                                  unit="step", file=self.stream, leave=True, dynamic_ncols=True)

    def step(self, samples):
        if self.bar is not None:
            self.bar.update(1)

    def end_epoch(self, epoch, logs):
        if self.bar is not None:
            self.bar.set_postfix_str(_format_logs(logs), refresh=False)
            self.bar.close()
            self.bar = None
        elif self.verbose:
            t = logs["epoch_time"]
            took = f"{t * 1000:.0f}ms" if t < 1 else f"{t:.2f}s"
            print(f"epoch {epoch + 1}/{self.epochs} - {took} - {_format_logs(logs)}",
                  file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressLogger(Callback):
    """The progress display of ``fit`` as a callback (Keras' ``add_progbar``)."""

    def __init__(self, verbose, epochs, steps_per_epoch, stream=None):
        self.progress = EpochProgress(verbose, epochs, steps_per_epoch, stream)

    def on_epoch_begin(self, epoch, logs=None):
        self.progress.start_epoch(epoch)

    def on_batch_end(self, batch, logs=None):
        self.progress.step(logs["size"])

    def on_epoch_end(self, epoch, logs):
        self.progress.end_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        self.progress.close()
