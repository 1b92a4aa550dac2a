"""The activations of ``gb.Dense`` beyond linear/sigmoid/tanh/relu: leaky_relu, elu, gelu (tanh approximation),
gelu_exact (erf), softplus and silu.

Gradients against float64 finite differences, values and derivatives against PyTorch, their parameters
(validation, saved configuration), the pre-activation buffer of gelu/silu layers (memory estimates, a step
that allocates nothing on the simulated GPU) and the CPU and simulated-GPU training steps agreeing.
"""

import numpy as np
import pytest

import gpubp as gb
from gpubp.activations import ACTIVATIONS, DEFAULT_INIT, resolve_activation
from gpubp.buffers import BatchPlan, plan_bytes
from gpubp.errors import InvalidInputError, InvalidTypeError
from gpubp.kernels import contract, cpu
from gpubp.loading import load_checkpoint_model
from helpers import gpu_sim, random_batch

NEW = ("leaky_relu", "elu", "gelu", "gelu_exact", "softplus", "silu")
#: non-default parameters, as Dense keywords
PARAMETERS = {"leaky_relu": {"negative_slope": 0.2}, "elu": {"alpha": 0.5}}


def _dense(units, activation, **extra):
    return gb.Dense(units, activation=activation, **PARAMETERS.get(activation, {}), **extra)


# --------------------------------------------------------------------------- names, defaults, parameters


def test_every_activation_is_in_the_kernel_contract():
    assert set(ACTIVATIONS) == set(contract.ACTIVATIONS)
    assert set(DEFAULT_INIT) == set(ACTIVATIONS)


@pytest.mark.parametrize("alias, name", [("gelu_tanh", "gelu"), ("gelu_erf", "gelu_exact"), ("LeakyReLU", "leaky_relu"),
                                         ("SiLU", "silu"), ("ELU", "elu"), ("Softplus", "softplus")])
def test_aliases(alias, name):
    assert resolve_activation(alias) == name


def test_rectifiers_start_from_he_and_the_others_from_glorot():
    assert {a: gb.Dense(3, a).init for a in NEW} == {a: "he" for a in NEW}
    assert gb.Dense(3, "tanh").init == "glorot"


def test_parameters_default_to_pytorchs():
    assert gb.Dense(3, "leaky_relu").activation_parameter == 0.01
    assert gb.Dense(3, "elu").activation_parameter == 1.0
    assert gb.Dense(3, "gelu").activation_parameter is None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(activation="relu", negative_slope=0.1), InvalidInputError, "negative_slope is a parameter of "
                                                                     "activation='leaky_relu' only"),
    (dict(activation="leaky_relu", alpha=0.1), InvalidInputError, "alpha is a parameter of activation='elu'"),
    (dict(activation="leaky_relu", negative_slope=0.0), InvalidInputError, "negative_slope must be > 0"),
    (dict(activation="leaky_relu", negative_slope=-0.1), InvalidInputError, "negative_slope must be > 0"),
    (dict(activation="leaky_relu", negative_slope=float("nan")), InvalidInputError, "negative_slope must be a finite"),
    (dict(activation="elu", alpha=float("inf")), InvalidInputError, "alpha must be a finite"),
    (dict(activation="elu", alpha=1e39), InvalidInputError, "alpha must be <="),
    (dict(activation="elu", alpha="1"), InvalidTypeError, "alpha must be a finite number"),
    (dict(activation="elu", alpha=True), InvalidTypeError, "alpha must be a finite number"),
])
def test_bad_parameters_are_refused_naming_the_keyword(kwargs, error, match):
    with pytest.raises(error, match=match):
        gb.Dense(3, **kwargs)


def test_a_non_default_parameter_survives_a_model_file_and_a_checkpoint(tmp_path):
    X, y = random_batch(np.random.default_rng(0), 16, 3, 2, "softmax_cross_entropy")
    model = gb.Sequential([gb.Dense(5, "leaky_relu", negative_slope=0.3), gb.Dense(4, "elu", alpha=0.6),
                           gb.Dense(2)], input_dim=3, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    model.fit(X, y, batch_size=8, epochs=1, verbose=0, checkpoint_dir=tmp_path / "checkpoints")
    model.save(tmp_path / "model.npz")
    checkpoint = sorted((tmp_path / "checkpoints").glob("*.npz"))[-1]
    for loaded in (gb.load(tmp_path / "model.npz"), load_checkpoint_model(checkpoint, backend="cpu")):
        assert [layer.activation_parameter for layer in loaded.layers] == [0.3, 0.6, None]
        assert repr(loaded.layers[0]) == "Dense(5, activation='leaky_relu', negative_slope=0.3)"
        assert loaded.get_config()["layers"] == model.get_config()["layers"]
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("activation", NEW)
@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_gradients_match_finite_differences(activation, loss):
    """Two hidden layers of the activation (and, with MSE, the output layer too), in float64."""
    last = activation if loss == "mse" else None
    layers = [_dense(6, activation), _dense(5, activation), _dense(3, last)]
    model = gb.Sequential(layers, input_dim=4, backend="cpu", dtype="float64", seed=7)
    model.compile(loss=loss, optimizer="sgd")
    X, y = random_batch(np.random.default_rng(1), 9, 4, 3, loss)
    if activation in ("leaky_relu", "elu"):  # kinks at z = 0: keep every unit off them
        X = X + 0.01
    result = gb.gradcheck(model, X, y)
    assert result.max_relative_error < 1e-7, str(result)


def test_the_gradient_check_sees_a_backward_that_reads_the_output_as_the_pre_activation(monkeypatch):
    """gelu's derivative must come from z: handed its output y instead, the check fails."""
    from gpubp.layers import Dense

    model = gb.Sequential([gb.Dense(4, "gelu"), gb.Dense(2)], input_dim=3, backend="cpu", dtype="float64", seed=2)
    model.compile(loss="mse", optimizer="sgd")
    X, y = random_batch(np.random.default_rng(3), 5, 3, 2, "mse")
    assert gb.gradcheck(model, X, y).max_relative_error < 1e-7
    original = Dense.activation_backward_
    monkeypatch.setattr(Dense, "activation_backward_",
                        lambda self, kernels, dy, out, pre=None: original(self, kernels, dy, out, out.copy()))
    result = gb.gradcheck(model, X, y)
    assert result.errors["W1"][1] > 1e-3 and result.errors["W2"][1] < 1e-7


# --------------------------------------------------------------------------- against PyTorch


def _torch_activation(activation):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the comparison with its activations "
                                                "needs it")
    F = torch.nn.functional
    return torch, {
        "leaky_relu": lambda z: F.leaky_relu(z, negative_slope=0.2),
        "elu": lambda z: F.elu(z, alpha=0.5),
        "gelu": lambda z: F.gelu(z, approximate="tanh"),
        "gelu_exact": lambda z: F.gelu(z),
        "softplus": F.softplus,
        "silu": F.silu,
    }[activation]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("activation", NEW)
def test_values_and_derivatives_match_pytorch(activation, dtype, tolerance):
    torch, f = _torch_activation(activation)
    alpha = next(iter(PARAMETERS.get(activation, {None: None}).values()))
    z = np.concatenate([np.linspace(-12, 12, 97), [-30.0, 30.0, 1e-3, -1e-3]]).astype(dtype).reshape(-1, 1)
    dy = np.random.default_rng(0).normal(size=z.shape).astype(dtype)
    y, pre = z.copy(), np.empty_like(z)
    cpu.bias_activation_(y, np.zeros(1, dtype), activation, alpha, pre)
    dz = y.copy()
    cpu.activation_backward_(dy, dz, activation, alpha, pre)

    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    yt = f(zt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    scale = np.maximum(1.0, np.abs(yt.detach().numpy()))
    assert np.max(np.abs(y - yt.detach().numpy()) / scale) < tolerance
    scale = np.maximum(1.0, np.abs(zt.grad.numpy()))
    assert np.max(np.abs(dz - zt.grad.numpy()) / scale) < tolerance


# --------------------------------------------------------------------------- the pre-activation buffer


def test_plans_keep_pre_activations_only_where_needed_and_the_estimates_count_them():
    model = gb.Sequential([gb.Dense(7, "silu"), gb.Dense(5, "elu"), gb.Dense(6, "gelu_exact"), gb.Dense(3)],
                          input_dim=4, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer="sgd")
    targets = np.zeros(11, np.int64)
    plan = model.batch_plan(11, targets)
    assert [None if p is None else p.shape for p in plan.pre_activations] == [(11, 7), None, (11, 6), None]
    allocated = sum(a.nbytes for a in [plan.x, plan.y, plan.weights, plan.loss_grad, plan.loss, *plan.outputs]) \
        + plan.scratch[0].base.nbytes + sum(p.nbytes for p in plan.pre_activations if p is not None)
    assert model.inference_plan_bytes(11, targets) == allocated
    assert plan_bytes(11, 4, [7, 5, 6, 3], 4, (), 8) == allocated - 11 * (7 + 6) * 4
    predicting = BatchPlan(model.backend, 11, 4, [7, 5, 6, 3], model.dtype, keeps_pre_activation=[True] * 4)
    assert predicting.pre_activations == [None] * 4  # no backward pass follows a prediction


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_predict_needs_no_pre_activation_and_agrees_with_the_training_forward(activation):
    model = gb.Sequential([gb.Dense(6, activation), gb.Dense(2)], input_dim=3, backend="cpu", seed=4)
    model.compile(loss="mse", optimizer="sgd")
    X, y = random_batch(np.random.default_rng(5), 10, 3, 2, "mse")
    prepared_X, prepared_y, _ = model.prepare(X, y)
    plan = model.batch_plan(10, prepared_y)
    plan.load(prepared_X, prepared_y)
    model.test_step(plan)
    np.testing.assert_array_equal(model.predict(X), plan.outputs[-1])


# --------------------------------------------------------------------------- the simulated GPU


def _sim_data(n=12):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)


def _sim_model(backend, cuda_graphs=True):
    model = gb.Sequential([gb.Dense(5, "gelu"), gb.Dense(4, "leaky_relu", negative_slope=0.1),
                           gb.Dense(4, "silu"), gb.Dense(3)], backend=backend, seed=3)
    model.cuda_graphs = cuda_graphs
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.02))
    return model


@pytest.mark.parametrize("activations", [("gelu_exact", "elu"), ("softplus", "silu")], ids="-".join)
@pytest.mark.gpu_sim
@gpu_sim[1]
def test_fit_on_the_simulated_gpu_matches_the_cpu(activations):
    X, y = _sim_data()
    results = []
    for backend in ("cpu", "gpu-sim"):
        model = gb.Sequential([gb.Dense(5, activations[0]), gb.Dense(4, activations[1]), gb.Dense(3)],
                              backend=backend, seed=3)
        model.compile(loss="mse", optimizer=gb.optim.SGD(0.1))
        history = model.fit(X, np.eye(3)[y], batch_size=6, epochs=2, verbose=0)
        results.append((history.history["loss"], model.params.copy()))
    (cpu_losses, cpu_params), (gpu_losses, gpu_params) = results
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=2e-6)
    np.testing.assert_allclose(gpu_params, cpu_params, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu_sim
@gpu_sim[1]
def test_a_captured_step_with_pre_activations_allocates_nothing_and_matches_eager_steps():
    X, y = _sim_data()
    runs = []
    for cuda_graphs in (False, True):
        model = _sim_model("gpu-sim", cuda_graphs)
        model.build_for(X)
        Xd, yd, _ = model.prepare(X, y)
        plan = model.batch_plan(12, yd)
        rows = model.backend.asarray(np.arange(12))
        monitor = model.backend.runtime.monitor
        for step in range(5):
            if step == 3:  # warm (eager warm-up, capture, first replay done)
                allocations, host_reads = monitor.allocations, monitor.host_reads
            plan.gather(Xd, yd, rows)
            model.train_step(plan)
        assert (monitor.allocations - allocations, monitor.host_reads - host_reads) == (0, 0)
        runs.append(model.params.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    cpu_model = _sim_model("cpu")
    cpu_model.fit(X, y, batch_size=12, epochs=5, shuffle=False, verbose=0)
    np.testing.assert_allclose(runs[1], cpu_model.params, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu_sim
@gpu_sim[1]
def test_the_memory_estimate_counts_the_pre_activations_fit_allocates_on_the_gpu():
    from gpubp.train import training_bytes

    X, y = _sim_data(n=22)
    model = _sim_model("gpu-sim")
    model.fit(X[:5], y[:5], batch_size=5, verbose=0)  # parameters, optimizer state and placeholders exist
    monitor = model.backend.runtime.monitor
    before = monitor.allocated_bytes
    model.fit(X, y, batch_size=11, verbose=0)  # a batch size no other test uses: its scratch is new
    allocated = monitor.allocated_bytes - before
    estimate = training_bytes(model, [11], model.prepare(X, y)[1], 2)
    assert 11 * (5 + 4) * 4 < allocated <= estimate  # the gelu and silu layers' pre-activations among them
    assert estimate - allocated <= 8 * 8
