"""Fits small models for the data-parallel tests (``test_distributed.py``).

``train(case)`` fits one case in this process; run as a script under ``mpiexec -n N`` it fits every
case of a JSON list with ``distributed="mpi"`` and writes each rank's results to ``OUT/rank<r>.json``:
``python distributed_worker.py OUT '[{"optimizer": "adam", "dtype": "float64", ...}, ...]'``.
"""

import json
import pathlib
import sys

import numpy as np

import gpubp as gb
from gpubp.callbacks import Callback
from gpubp.errors import DistributedAbort


def data(n, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = ((X[:, 0] + X[:, 1] ** 2 > 0.5).astype(np.int64) + (X[:, 2] > 1.0)).astype(np.int64)
    return X, y


def optimizer(case):
    if case["optimizer"] == "adam":
        return gb.optim.Adam(lr=0.01)
    return gb.optim.SGD(lr=0.1, momentum=case.get("momentum", 0.0))


def train(case, distributed=None):
    """Fit ``case`` and return ``{"weights", "loss", "val_loss", "accuracy", ...}`` (lists of floats)."""
    X, y = data(case["n"])
    dropout = [gb.Dropout(case["dropout"])] if case.get("dropout") else []
    model = gb.Sequential([gb.Dense(16, activation="tanh")] + dropout + [gb.Dense(3)], input_dim=5,
                          backend=case.get("backend", "cpu"),
                          dtype=case["dtype"], seed=case.get("seed", 0))
    model.compile(optimizer=optimizer(case), metrics=["accuracy"])
    callbacks = []
    if case.get("poison_rank") is not None:
        callbacks.append(_Poison(case["poison_rank"], case.get("poison_batch", 2)))
    if case.get("raise_rank") is not None:
        callbacks.append(_Raise(case["raise_rank"], case["raise_in"]))
    result = {}
    weights = {}
    validation_data = (X[-20:], y[-20:])
    if case.get("weighted"):  # sample weights (some zero) times balanced class weights, weighted validation
        w = np.random.default_rng(2).uniform(0.0, 2.0, len(y)).round(1)
        weights = {"sample_weight": w[:-20], "class_weight": "balanced"}
        validation_data += (w[-20:],)
    try:
        history = model.fit(X[:-20], y[:-20], batch_size=case["batch_size"], epochs=case.get("epochs", 2),
                            validation_data=validation_data, verbose=0, callbacks=callbacks, **weights,
                            checkpoint_dir=case.get("checkpoint_dir"), resume=case.get("resume", False),
                            distributed=distributed)
    except gb.TrainingDiverged as exc:
        result["diverged"] = {"iteration": exc.iteration, "epoch": exc.epoch, "step": exc.step}
    except (LookupError, DistributedAbort) as exc:
        result["error"] = type(exc).__name__
    else:
        result.update({key: [float(v) for v in values] for key, values in history.history.items()})
    result["weights"] = np.concatenate([w.ravel() for w in model.get_weights()]).astype(np.float64).tolist()
    return result


class _Raise(Callback):
    """On rank ``rank`` only, raises KeyError in ``on_batch_end`` (batch 1 of the first epoch) or in
    ``on_epoch_end`` (the first epoch): ``method`` says which."""

    def __init__(self, rank, method):
        super().__init__()
        self.failing_rank, self.method = rank, method  # fit sets ``self.rank`` to this process's rank

    def _fail(self, method):
        if self.rank == self.failing_rank and method == self.method:
            raise KeyError(f"{method} failed on rank {self.rank}")

    def on_batch_end(self, batch, logs=None):
        if batch == 1:
            self._fail("on_batch_end")

    def on_epoch_end(self, epoch, logs):
        self._fail("on_epoch_end")


class _Poison(Callback):
    """On rank ``rank`` only, writes NaN into the first weight before batch ``batch`` of the first epoch."""

    def __init__(self, rank, batch):
        super().__init__()
        self.poisoned_rank, self.batch, self.epoch = rank, batch, None  # fit sets ``self.rank``

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_begin(self, batch, logs=None):
        if self.rank == self.poisoned_rank and self.epoch == 0 and batch == self.batch:
            self.model.params[0] = np.nan


def communicator(case):
    """``fit``'s ``distributed`` for ``case``: "mpi", or NCCL through its test double (``"nccl": true``)."""
    if not case.get("nccl"):
        return "mpi"
    import nccl_double
    from gpubp.communicator import NCCLCommunicator

    return NCCLCommunicator(nccl=nccl_double)


def train_distributed(case):
    """Fit ``case`` on this rank; with NCCL, the result also counts the double's all-reduce calls."""
    if not case.get("nccl"):
        return train(case, distributed="mpi")
    import nccl_double

    before = len(nccl_double.calls)
    result = train(case, distributed=communicator(case))
    result["nccl_calls"] = [list(call) for call in nccl_double.calls[before:]]
    return result


if __name__ == "__main__":
    from mpi4py import MPI

    if gb.backend.simulator_enabled():
        sys.setswitchinterval(1e-4)  # as the tests' conftest does: the simulator's threads meet at barriers
    out = pathlib.Path(sys.argv[1])
    results = [train_distributed(case) for case in json.loads(sys.argv[2])]
    (out / f"rank{MPI.COMM_WORLD.Get_rank()}.json").write_text(json.dumps(results))
