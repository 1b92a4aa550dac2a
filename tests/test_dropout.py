"""The Dropout layer: its mask's statistics and keys, training-only behaviour, gradients given the drawn
mask, bit-identical resume, and captured (graph) steps that draw a new mask on every replay."""

import numpy as np
import pytest

import gpubp as gb
from gpubp.backend import simulator_enabled
from gpubp.kernels.philox import philox4x32
from helpers import requires_simulator


def test_philox_matches_the_random123_known_answers():
    u = np.uint64
    cases = [((0, 0, 0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 6, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for arguments, words in cases:
        assert tuple(int(w) for w in philox4x32(*(u(a) for a in arguments))) == words


def _ones_then_dropout(rates, width=64, backend="cpu", seed=0, dtype="float64"):
    """Per rate, a Dense whose output is all ones (W = 0, b = 1) and a Dropout; a Dense(1) last. The Dropout
    outputs (layers 1, 3, ...) are then exactly the masks times 1 / (1 - rate)."""
    layers = []
    for rate in rates:
        layers += [gb.Dense(width), gb.Dropout(rate)]
    model = gb.Sequential(layers + [gb.Dense(1)], input_dim=5, backend=backend, seed=seed, dtype=dtype)
    model.compile(loss="mse", optimizer=gb.optim.SGD(1e-12))  # the masks are read from the first forward
    weights = model.get_weights()
    for i in range(len(rates)):
        weights[2 * i], weights[2 * i + 1] = np.zeros_like(weights[2 * i]), np.ones_like(weights[2 * i + 1])
    model.set_weights(weights)
    return model


def _plan(model, n=256, seed=0):
    rng = np.random.default_rng(seed)
    X, y, _ = model.prepare(rng.normal(size=(n, model.input_dim)), rng.normal(size=(n, model.n_outputs)))
    plan = model.batch_plan(n, y)
    plan.load(X, y)
    return plan


def _dropout_outputs(model, plan):
    """One training step on ``plan``; the outputs of its Dropout layers as they were in the forward pass."""
    model.train_step(plan)
    return [model.backend.to_host(plan.outputs[i]).copy() for i, layer in enumerate(model.layers)
            if isinstance(layer, gb.Dropout)]


@pytest.mark.parametrize("rate", (0.1, 0.5, 0.8))
def test_a_unit_is_kept_with_probability_1_minus_rate_and_scaled_by_its_inverse(rate):
    model = _ones_then_dropout([rate])
    (out,) = _dropout_outputs(model, _plan(model))  # 256 x 64 = 16384 units: the fraction's sd is < 0.004
    kept = out != 0
    assert abs(kept.mean() - (1 - rate)) < 0.02
    np.testing.assert_array_equal(out[kept], 1 / (1 - rate))
    assert abs(out.mean() - 1) < 0.02 / (1 - rate)  # inverted dropout keeps the expected activation


def test_each_step_and_each_layer_draws_another_mask():
    model = _ones_then_dropout([0.5, 0.5])
    plan = _plan(model)
    first, second = _dropout_outputs(model, plan)
    again, _ = _dropout_outputs(model, plan)
    assert 0.4 < ((first != 0) == (second != 0)).mean() < 0.6  # independent halves agree half of the time
    assert 0.4 < ((first != 0) == (again != 0)).mean() < 0.6


def test_the_mask_is_the_same_on_every_device_and_dtype():
    plans = {}
    for backend, dtype in (("cpu", "float64"), ("cpu", "float32"), ("gpu-sim", "float32")):
        if backend == "gpu-sim" and not simulator_enabled():
            continue  # the simulator is off (a GPU runs the gpu tests): CPU float64 and float32 only
        model = _ones_then_dropout([0.3], width=4, backend=backend)
        plans[(backend, dtype)] = _dropout_outputs(model, _plan(model, n=6))[0] != 0
    masks = list(plans.values())
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])


def _with_and_without_dropout(rate, seed=3):
    with_dropout = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dropout(rate), gb.Dense(3)], input_dim=4,
                                 backend="cpu", seed=seed)
    plain = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dense(3)], input_dim=4, backend="cpu", seed=seed)
    for model in (with_dropout, plain):
        model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.01))
    return with_dropout, plain


def test_dropout_is_active_in_training_steps_only():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    with_dropout, plain = _with_and_without_dropout(0.5)
    np.testing.assert_array_equal(with_dropout.predict(X), plain.predict(X))
    assert with_dropout.evaluate(X, y) == plain.evaluate(X, y)
    with_dropout.fit(X, y, batch_size=10, epochs=1, verbose=0)
    plain.fit(X, y, batch_size=10, epochs=1, verbose=0)
    assert not np.array_equal(with_dropout.params, plain.params)  # the training steps did drop units


def test_rate_0_trains_exactly_as_without_dropout():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    with_dropout, plain = _with_and_without_dropout(0.0)
    h1 = with_dropout.fit(X, y, batch_size=10, epochs=2, verbose=0)
    h2 = plain.fit(X, y, batch_size=10, epochs=2, verbose=0)
    np.testing.assert_array_equal(with_dropout.params, plain.params)
    assert h1.history["loss"] == h2.history["loss"]


@pytest.mark.parametrize("first_layer_dropout", (False, True))
def test_gradient_given_the_drawn_mask_matches_finite_differences(first_layer_dropout):
    """With the step's mask fixed (the optimizer's step staged, not advanced), the loss is a smooth function
    of the parameters: backprop through the masks matches central differences in float64."""
    layers = [gb.Dense(6, activation="tanh"), gb.Dropout(0.5), gb.Dense(5, activation="sigmoid"),
              gb.Dropout(0.3), gb.Dense(3)]
    model = gb.Sequential(([gb.Dropout(0.2)] if first_layer_dropout else []) + layers, input_dim=4,
                          backend="cpu", dtype="float64", seed=7)
    model.compile(loss="softmax_cross_entropy", optimizer="sgd")
    rng = np.random.default_rng(2)
    X, y, _ = model.prepare(rng.normal(size=(9, 4)), rng.integers(0, 3, 9))
    plan = model.batch_plan(9, y)
    plan.load(X, y)
    model.optimizer.begin_step()  # stages step 0: its masks
    analytic = model.compute_gradients(plan, training=True)[0].copy()
    inference = model.compute_gradients(plan)[0].copy()
    assert np.abs(analytic - inference).max() > 1e-3  # the masks take part
    params, eps = model.params, 1e-6
    numeric = np.empty_like(analytic)
    for k in range(params.size):
        original = params[k]
        params[k] = original + eps
        plus = float(model.test_step(plan, training=True)[0])
        params[k] = original - eps
        minus = float(model.test_step(plan, training=True)[0])
        params[k] = original
        numeric[k] = (plus - minus) / (2 * eps)
    assert np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-3) < 1e-6


def _resume_model(seed):
    model = gb.Sequential([gb.Dense(16, activation="relu"), gb.Dropout(0.4), gb.Dense(8, activation="tanh"),
                           gb.Dropout(0.2), gb.Dense(2)], input_dim=4, backend="cpu", seed=seed)
    return model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.01))


def test_a_resumed_run_draws_the_same_masks_and_ends_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    straight = _resume_model(1)
    h_straight = straight.fit(X, y, batch_size=16, epochs=4, verbose=0)
    _resume_model(1).fit(X, y, batch_size=16, epochs=2, verbose=0, checkpoint_dir=tmp_path)
    resumed = _resume_model(None)  # another dropout seed: only the checkpoint's can give the same masks
    h_resumed = resumed.fit(X, y, batch_size=16, epochs=4, verbose=0, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, straight.params)
    assert h_resumed.history["loss"] == h_straight.history["loss"]
    assert resumed.state_dict()["dropout_seed"] == straight.state_dict()["dropout_seed"]


def test_dropout_round_trips_through_a_model_file(tmp_path):
    model = _resume_model(3)
    loaded = gb.load(model.save(tmp_path / "m"))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.get_config() == model.get_config()
    assert [layer.rate for layer in loaded.layers if isinstance(layer, gb.Dropout)] == [0.4, 0.2]
    X = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("rate, error", [(1.0, gb.InvalidInputError), (-0.1, gb.InvalidInputError),
                                         (float("nan"), gb.InvalidInputError), ("0.5", gb.InvalidTypeError)])
def test_a_rate_outside_0_1_is_refused(rate, error):
    with pytest.raises(error, match="rate"):
        gb.Dropout(rate)


def test_dropout_may_not_be_the_last_layer():
    with pytest.raises(gb.InvalidInputError, match="last layer must be a Dense"):
        gb.Sequential([gb.Dense(3), gb.Dropout(0.5)])


# --------------------------------------------------------------------------- the simulated GPU step


def _gpu_sim_fit(cuda_graphs, backend="gpu-sim", epochs=2):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    model = gb.Sequential([gb.Dense(6, "tanh"), gb.Dropout(0.5), gb.Dense(2)], backend=backend, seed=3)
    model.cuda_graphs = cuda_graphs
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.02))
    history = model.fit(X, y, batch_size=8, epochs=epochs, verbose=0)
    return history.history["loss"], model.params.copy()


@pytest.mark.gpu_sim
@requires_simulator
def test_a_captured_step_draws_a_new_mask_on_every_replay():
    """Replayed (graph) steps give the eager steps' losses and weights bit for bit, and the CPU's within
    float32 rounding: so each replay drew its own step's mask, the same one as on the CPU."""
    eager = _gpu_sim_fit(cuda_graphs=False)
    graphed = _gpu_sim_fit(cuda_graphs=True)
    assert graphed[0] == eager[0]
    np.testing.assert_array_equal(graphed[1], eager[1])
    cpu = _gpu_sim_fit(cuda_graphs=False, backend="cpu")
    np.testing.assert_allclose(graphed[1], cpu[1], rtol=1e-5, atol=1e-6)

    model = _ones_then_dropout([0.5], width=4, backend="gpu-sim", dtype="float32")
    plan = _plan(model, n=6)
    masks = [_dropout_outputs(model, plan)[0] != 0 for _ in range(5)]  # eager, capture, then replays
    assert plan.captured and all(type(graph).__name__ == "SimulatedGraph" for graph in plan.captured.values())
    assert len({mask.tobytes() for mask in masks[2:]}) == 3
