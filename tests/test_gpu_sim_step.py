"""The whole GPU training step, run in Numba's CUDA simulator (``backend="gpu-sim"``).

Same kernels and same step code as on a GPU, with NumPy arrays: fit on the
simulated GPU must give the CPU's losses and weights within float32
tolerance, for every optimizer and loss; the step must allocate nothing and
read nothing back once warm; captured steps (the simulator's stand-in for a
CUDA graph records the kernel calls once and replays them) must see the
current learning rate and step; a capture that fails falls back to eager.
"""

import logging

import numpy as np
import pytest

import gpubp as gb
from gpubp.errors import TrainingDiverged
from gpubp.kernels.contract import KERNELS
from helpers import gpu_sim

pytestmark = gpu_sim

OPTIMIZERS = {
    "sgd": lambda: gb.optim.SGD(0.2),
    "sgd_momentum_clipped": lambda: gb.optim.SGD(0.1, momentum=0.9, nesterov=True, clip_norm=0.5, clip_value=0.3,
                                                  weight_decay=0.01),
    "adam": lambda: gb.optim.Adam(0.02, weight_decay=0.01),
    "rmsprop": lambda: gb.optim.RMSprop(0.01),
}


def _data(loss, n=20, n_in=5, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    if loss == "softmax_cross_entropy":
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    elif loss == "binary_cross_entropy":
        y = (X[:, :n_out] > 0).astype(np.float32)
    else:
        y = X[:, :n_out] @ rng.standard_normal((n_out, n_out)).astype(np.float32)
    return X, y


def _weighting(weighting, loss, n=20):
    """fit's keyword arguments for ``weighting``: none, per-row ``sample_weight`` (some rows weigh 0), or
    ``class_weight`` with ``sample_weight`` and a weighted ``validation_data`` triple."""
    if weighting is None:
        return {}
    rng = np.random.default_rng(5)
    kwargs = {"sample_weight": np.where(np.arange(n) % 7 == 3, 0.0, rng.uniform(0.25, 2.0, n))}
    if weighting == "class_and_validation":
        kwargs["class_weight"] = {0: 2.5, 2: 0.5}
        X_val, y_val = _data(loss, n=9, seed=1)
        kwargs["validation_data"] = (X_val, y_val, rng.uniform(0.0, 3.0, 9))
    return kwargs


def _fit(backend, loss, optimizer, cuda_graphs=True, epochs=2, weighting=None):
    """The training losses of each epoch (then the validation losses, when there are) and the weights."""
    X, y = _data(loss)
    model = gb.Sequential([gb.Dense(6, "tanh"), gb.Dense(4, "relu"), gb.Dense(3)], backend=backend, seed=3)
    model.cuda_graphs = cuda_graphs
    model.compile(loss=loss, optimizer=optimizer)
    history = model.fit(X, y, batch_size=8, epochs=epochs, verbose=0,  # 8, 8, then a partial batch of 4
                        **_weighting(weighting, loss))
    return history.history["loss"] + history.history.get("val_loss", []), model.params.copy()


@pytest.mark.parametrize("loss, optimizer, weighting",
                         [("softmax_cross_entropy", name, None) for name in OPTIMIZERS]
                         + [("binary_cross_entropy", "adam", None), ("mse", "sgd_momentum_clipped", None),
                            ("huber", "adam", None), ("mae", "sgd", None),
                            ("softmax_cross_entropy", "adam", "class_and_validation"),
                            ("binary_cross_entropy", "rmsprop", "sample"), ("huber", "sgd", "sample"),
                            ("mae", "sgd_momentum_clipped", "sample")])
def test_fit_on_the_simulated_gpu_matches_the_cpu(loss, optimizer, weighting):
    cpu_losses, cpu_params = _fit("cpu", loss, OPTIMIZERS[optimizer](), weighting=weighting)
    gpu_losses, gpu_params = _fit("gpu-sim", loss, OPTIMIZERS[optimizer](), weighting=weighting)
    assert len(gpu_losses) == (4 if weighting == "class_and_validation" else 2)  # val_loss per epoch too
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-6)
    np.testing.assert_allclose(gpu_params, cpu_params, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(gpu_params, _fit("gpu-sim", loss, OPTIMIZERS[optimizer](), epochs=1,
                                               weighting=weighting)[1])
    if weighting is not None:  # the weights changed the training: the unweighted fit ends elsewhere
        unweighted = _fit("cpu", loss, OPTIMIZERS[optimizer]())[1]
        assert np.max(np.abs(gpu_params - unweighted)) > 1e-4


def test_captured_steps_see_the_current_learning_rate_and_step():
    """A schedule that changes lr every step, and Adam's per-step bias corrections: replayed steps must match
    eager steps bit for bit (a graph that froze lr or the step would not)."""
    schedule = gb.schedules.StepDecay(0.05, step_size=1, gamma=0.5)
    eager = _fit("gpu-sim", "softmax_cross_entropy", gb.optim.Adam(schedule), cuda_graphs=False, epochs=3)
    graphed = _fit("gpu-sim", "softmax_cross_entropy", gb.optim.Adam(schedule), cuda_graphs=True, epochs=3)
    assert eager[0] == graphed[0]
    np.testing.assert_array_equal(eager[1], graphed[1])


def _warm_model(optimizer, cuda_graphs):
    X, y = _data("softmax_cross_entropy", n=8)
    model = gb.Sequential([gb.Dense(4, "sigmoid"), gb.Dense(3)], backend="gpu-sim", seed=0)
    model.cuda_graphs = cuda_graphs
    model.compile(optimizer=optimizer)
    model.build_for(X)
    Xd, yd, _ = model.prepare(X, y)
    plan = model.batch_plan(8, yd)
    rows = model.backend.asarray(np.arange(8))
    for _ in range(3):  # eager warm-up, capture, first replay
        plan.gather(Xd, yd, rows)
        model.train_step(plan)
    return model, plan, Xd, yd, rows


@pytest.mark.parametrize("cuda_graphs", (True, False), ids=("graph", "eager"))
@pytest.mark.parametrize("optimizer", ("sgd", "sgd_momentum_clipped", "adam"))
def test_a_steady_state_step_allocates_nothing_and_reads_nothing_back(optimizer, cuda_graphs):
    model, plan, Xd, yd, rows = _warm_model(OPTIMIZERS[optimizer](), cuda_graphs)
    monitor = model.backend.runtime.monitor
    allocations, host_reads = monitor.allocations, monitor.host_reads
    before = model.params.copy()
    for _ in range(4):
        plan.gather(Xd, yd, rows)
        model.train_step(plan)
    assert (monitor.allocations - allocations, monitor.host_reads - host_reads) == (0, 0)
    assert not np.array_equal(model.params, before)  # the steps did run
    assert model.read_divergence() is None


def test_a_captured_step_records_each_kernel_once_and_replays_them():
    model, plan, *_ = _warm_model(OPTIMIZERS["adam"](), cuda_graphs=True)
    (graph,) = plan.captured.values()
    names = [kernel.__name__ for kernel, _ in graph.calls]
    assert names[:2] == ["linear_", "bias_activation_"] and names[-1] == "adam_update_"
    assert names.count("adam_update_") == 1 and names.count("weight_gradient_") == 2


class _CountLaunchesFromEpoch(gb.Callback):
    """From epoch ``epoch`` on, counts calls of every kernel made outside a captured step's replay."""

    def __init__(self, kernels, epoch, monkeypatch):
        super().__init__()
        self.kernels, self.epoch, self.monkeypatch, self.calls = kernels, epoch, monkeypatch, []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:
            return
        for name in KERNELS:
            kernel = getattr(self.kernels, name)
            self.monkeypatch.setattr(self.kernels, name,
                                     lambda *args, _k=kernel, _n=name: (self.calls.append(_n), _k(*args))[1])


def test_fit_captures_the_whole_step_gather_to_loss_as_one_graph(monkeypatch):
    """fit's step, from the batch gather to storing its loss, is one captured graph per plan: once warm, no
    kernel runs outside the replays, and the losses and weights are the eager run's, bit for bit."""
    from gpubp.kernels import cuda

    eager = _fit("gpu-sim", "softmax_cross_entropy", OPTIMIZERS["adam"](), cuda_graphs=False, epochs=4)
    counter = _CountLaunchesFromEpoch(cuda, 2, monkeypatch)
    X, y = _data("softmax_cross_entropy")
    model = gb.Sequential([gb.Dense(6, "tanh"), gb.Dense(4, "relu"), gb.Dense(3)], backend="gpu-sim", seed=3)
    model.compile(loss="softmax_cross_entropy", optimizer=OPTIMIZERS["adam"]())
    history = model.fit(X, y, batch_size=8, epochs=4, verbose=0, callbacks=[counter])
    assert counter.calls == []
    assert history.history["loss"] == eager[0]
    np.testing.assert_array_equal(model.params, eager[1])
    for plan in model._plans.values():
        (graph,) = plan.captured.values()
        names = [kernel.__name__ for kernel, _ in graph.calls]
        assert names[:2] == ["gather_rows_", "gather_rows_"] and names[-1] == "store_at_"


def test_inside_a_capture_a_host_read_or_an_allocation_raises():
    from gpubp.kernels.step_monitor import CaptureViolation

    backend = gb.get_backend("gpu-sim")
    with backend.runtime.monitor.capturing():
        with pytest.raises(CaptureViolation, match="host read"):
            backend.to_host(np.zeros(3))
        with pytest.raises(CaptureViolation, match="allocation"):
            backend.empty((3,), np.float32)


def test_a_failed_capture_falls_back_to_eager_steps(monkeypatch, caplog):
    def refuse(kernels, body):
        raise RuntimeError("capture refused")

    backend = gb.get_backend("gpu-sim")
    monkeypatch.setattr(backend.runtime, "capture", refuse)
    with caplog.at_level(logging.WARNING, logger="gpubp"):
        losses, params = _fit("gpu-sim", "softmax_cross_entropy", OPTIMIZERS["adam"]())
    assert "CUDA graph capture failed" in caplog.text
    np.testing.assert_allclose(params, _fit("cpu", "softmax_cross_entropy", OPTIMIZERS["adam"]())[1], rtol=1e-5,
                               atol=1e-6)


def test_divergence_on_the_simulated_gpu_keeps_the_weights():
    X, y = _data("softmax_cross_entropy", n=8)
    model = gb.Sequential([gb.Dense(4, "relu"), gb.Dense(3)], backend="gpu-sim", seed=0)
    model.compile(optimizer=gb.optim.SGD(1e38, momentum=0.5))
    model.build_for(X)
    before = model.params.copy()
    with pytest.raises(TrainingDiverged):
        for _ in range(3):
            model.train_on_batch(X * 1e3, y)
    np.testing.assert_array_equal(model.params, before)


@pytest.fixture
def matmul_precision():
    yield gb.set_float32_matmul_precision
    gb.set_float32_matmul_precision("highest")


def _moons_accuracy(backend):
    from gpubp.data import StandardScaler, load_builtin, train_test_split

    X, y = load_builtin("moons", 240, 0.15, 0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, 0.25, seed=0)
    scaler = StandardScaler().fit(Xtr)
    model = gb.Sequential([gb.Dense(12, "tanh"), gb.Dense(12, "tanh"), gb.Dense(2)], input_dim=2, backend=backend,
                          seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.08))
    model.fit(scaler.transform(Xtr), ytr, batch_size=90, epochs=8, verbose=0)
    return model.evaluate(scaler.transform(Xte), yte, batch_size=90), model.params.copy()


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_tf32_and_bf16_matmuls_train_to_the_same_accuracy(matmul_precision, precision):
    """TF32 ("high") and bf16 ("medium", float32 master weights) GEMMs, emulated by rounding the operands,
    train two moons to the accuracy of full float32 GEMMs; the weights show the rounding took effect."""
    full, full_params = _moons_accuracy("cpu")
    matmul_precision(precision)
    assert gb.get_backend("cpu").kernels.matmul_precision() == "highest"
    assert gb.get_backend("gpu-sim").kernels.matmul_precision() == precision
    reduced, reduced_params = _moons_accuracy("gpu-sim")
    assert full["accuracy"] >= 0.95 and reduced["accuracy"] >= full["accuracy"] - 1 / 60
    assert reduced["loss"] == pytest.approx(full["loss"], rel=0.05)
    assert np.max(np.abs(reduced_params - full_params)) > 1e-4


def test_an_unknown_matmul_precision_is_refused(matmul_precision):
    with pytest.raises(gb.InvalidInputError, match="'highest', 'high', 'medium'"):
        matmul_precision("tf32")
    assert gb.get_float32_matmul_precision() == "highest"


def test_the_memory_estimate_counts_every_buffer_fit_allocates_on_the_gpu():
    """Every byte the simulated GPU path allocates inside fit (batch plans, the epoch's order and losses,
    the kernels' scratch) is in ``training_bytes``, the figure the InsufficientMemory check uses."""
    from gpubp.train import training_bytes

    X, y = _data("softmax_cross_entropy", n=26)
    model = gb.Sequential([gb.Dense(5, "relu"), gb.Dense(3)], backend="gpu-sim", seed=0)
    model.compile(optimizer=OPTIMIZERS["sgd_momentum_clipped"]())
    model.fit(X[:5], y[:5], batch_size=5, verbose=0)  # parameters and optimizer state exist from here on
    monitor = model.backend.runtime.monitor
    before = monitor.allocated_bytes
    model.fit(X, y, batch_size=13, verbose=0)  # a batch size no other test uses: its scratch is new
    allocated = monitor.allocated_bytes - before
    _, yd = model.prepare(X, y)[:2]
    estimate = training_bytes(model, [13], yd, 2)
    assert 0 < allocated <= estimate
    assert estimate - allocated <= 8 * 8  # nothing large is counted that is not made
