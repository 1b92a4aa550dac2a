"""The training step never reads a device value on the host.

An instrumented backend runs the CPU kernels on arrays that count every way
a device value can reach the host (``float()``, ``int()``, ``bool()``,
``.item()``, ``.tolist()``, ``Backend.to_host``) and behaves like a GPU
backend in the one respect the training loop asks about: reads are not free.
"""

import numpy as np
import pytest

import gpubp as gb
from gpubp.backend import Backend
from gpubp.kernels import cpu
from helpers import random_batch


class Reads:
    count = 0


class DeviceArray(np.ndarray):
    """A NumPy array that counts host reads of its values."""

    def __float__(self):
        Reads.count += 1
        return super().__float__()

    def __int__(self):
        Reads.count += 1
        return super().__int__()

    def __bool__(self):
        Reads.count += 1
        return super().__bool__()

    def item(self, *args):
        Reads.count += 1
        return super().item(*args)

    def tolist(self):
        Reads.count += 1
        return super().tolist()


class InstrumentedBackend(Backend):
    def __init__(self):
        super().__init__("cpu", np, cpu, "instrumented CPU")

    @property
    def reads_are_free(self):
        return False

    def empty(self, shape, dtype):
        return np.empty(shape, dtype).view(DeviceArray)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype).view(DeviceArray)

    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(np.asarray(a, dtype=dtype)).view(DeviceArray)

    def to_host(self, a):
        Reads.count += 1
        return np.asarray(a).view(np.ndarray)


@pytest.fixture
def counted():
    Reads.count = 0
    return Reads


OPTIMIZERS = [lambda: gb.optim.SGD(lr=0.01), lambda: gb.optim.SGD(lr=0.01, momentum=0.9, weight_decay=1e-4),
              lambda: gb.optim.Adam(clip_norm=1.0, clip_value=0.5), lambda: gb.optim.RMSprop()]


def make_model(optimizer, loss="softmax_cross_entropy"):
    model = gb.Sequential([gb.Dense(32, activation="relu"), gb.Dense(16, activation="sigmoid"),
                           gb.Dense(3 if loss != "binary_cross_entropy" else 1)],
                          input_dim=8, backend=InstrumentedBackend(), seed=0)
    return model.compile(loss=loss, optimizer=optimizer)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy", "mse"])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_a_training_step_reads_nothing_on_the_host(counted, make_optimizer, loss):
    model = make_model(make_optimizer(), loss)
    X, y = random_batch(np.random.default_rng(0), 64, 8, model.n_outputs, loss)
    X, y, _ = model.prepare(X, y)
    plan = model.batch_plan(64, y)
    plan.gather(X, y, model.backend.asarray(np.arange(64)))
    assert isinstance(plan.x, DeviceArray) and isinstance(model.status.array, DeviceArray)
    counted.count = 0
    for _ in range(50):
        model.train_step(plan)
    assert counted.count == 0
    assert model.read_divergence() is None and counted.count == 1  # the instrument does count


def test_fit_reads_the_device_a_fixed_number_of_times_per_epoch(counted):
    """Per epoch: the divergence record and the epoch loss, however many steps the epoch has; plus one
    read of the record when fit starts (a failure an aborted run left unread)."""
    X, y = random_batch(np.random.default_rng(0), 640, 8, 3, "softmax_cross_entropy")
    reads = {}
    for batch_size in (64, 16):
        model = make_model(gb.optim.Adam())
        counted.count = 0
        model.fit(X, y, batch_size=batch_size, epochs=3, verbose=0)
        reads[batch_size] = counted.count
    assert reads[16] == reads[64] == 1 + 3 * 2


def test_check_every_sets_how_often_the_record_is_read(counted):
    X, y = random_batch(np.random.default_rng(0), 640, 8, 3, "softmax_cross_entropy")
    model = make_model(gb.optim.Adam())
    model.fit(X, y, batch_size=64, epochs=1, verbose=0, check_every=2)
    assert counted.count == 1 + 10 // 2 + 1  # at the start, 5 reads of the record, one of the epoch loss
