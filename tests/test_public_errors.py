"""Bad arguments to the public constructors and calls raise the documented error, naming the argument.

Each case asserts the error class (InvalidInputError for a bad value, InvalidTypeError
for a wrong type, both GpubpErrors) and a message that names the argument and what
was expected. Random values are thrown at the same calls in ``test_input_properties.py``.
"""

import math
import re
import warnings

import numpy as np
import pytest

import gpubp as gb
from gpubp import schedules
from gpubp.callbacks import ModelCheckpoint
from gpubp.data import StandardScaler

NAN = float("nan")
X = np.random.default_rng(0).normal(size=(6, 2))
Y = np.array([0, 1, 2, 0, 1, 2])


def model(n_out=3, loss="softmax_cross_entropy", input_dim=2):
    m = gb.Sequential([gb.Dense(4, activation="tanh"), gb.Dense(n_out)], input_dim=input_dim, backend="cpu", seed=0)
    return m.compile(loss=loss, optimizer="sgd")


def unbuilt():
    return gb.Sequential([gb.Dense(4, activation="tanh"), gb.Dense(3)], backend="cpu", seed=0).compile(optimizer="sgd")


def raises(error, fn, *patterns):
    """``fn()`` raises ``error`` (a GpubpError) whose message matches every regex in ``patterns``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error) as info:
            fn()
    assert isinstance(info.value, gb.GpubpError)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    return info.value


# ---------------------------------------------------------------- schedules
VALID_SCHEDULES = {
    schedules.Constant: {"lr": 0.1},
    schedules.StepDecay: {"lr": 0.1, "step_size": 2, "gamma": 0.5},
    schedules.ExponentialDecay: {"lr": 0.1, "decay_steps": 10, "decay_rate": 0.5},
    schedules.InverseScaling: {"lr": 0.1, "power_t": 0.5},
    schedules.Cosine: {"lr": 0.1, "total_steps": 10, "min_lr": 0.01},
}
SCHEDULE_CASES = [(cls, name, bad) for cls, kwargs in VALID_SCHEDULES.items() for name in kwargs
                  for bad in ["x", None, NAN, math.inf, -1, 0, True, [0.1], 10 ** 400]
                  if not (name == "min_lr" and bad == 0)
                  and not (name in ("step_size", "total_steps") and bad == 10 ** 400)]


@pytest.mark.parametrize("cls,name,bad", SCHEDULE_CASES,
                         ids=[f"{c.__name__}-{n}-{b!r:.8}" for c, n, b in SCHEDULE_CASES])
def test_schedules_refuse_bad_arguments(cls, name, bad):
    raises(gb.InvalidInputError, lambda: cls(**{**VALID_SCHEDULES[cls], name: bad}), rf"\b{name}\b")


def test_cosine_min_lr_above_lr_and_valid_edges():
    raises(gb.InvalidInputError, lambda: schedules.Cosine(0.1, 10, min_lr=0.2), r"min_lr.*\[0, 0\.1\]")
    assert schedules.Cosine(0.1, 10, min_lr=0)(10) == 0.0
    assert schedules.Cosine(0.1, 10, min_lr=0.1)(5) == pytest.approx(0.1)


def test_a_function_is_no_schedule():
    raises(gb.InvalidTypeError, lambda: gb.optim.SGD(lr=lambda step: 0.1), r"\blr\b.*Schedule")


@pytest.mark.parametrize("config", [None, {}, {"name": "Nope"}, {"name": "Constant"}, {"name": "Constant", "x": 1}])
def test_schedule_from_config_refuses_bad_configs(config):
    raises(gb.InvalidInputError, lambda: schedules.schedule_from_config(config), "config")


# ---------------------------------------------------------------- EarlyStopping and ModelCheckpoint
@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"min_delta": "x"}, gb.InvalidTypeError, "min_delta must be a finite number"),
    ({"min_delta": NAN}, gb.InvalidInputError, "min_delta must be a finite number"),
    ({"min_delta": math.inf}, gb.InvalidInputError, "min_delta"),
    ({"min_delta": None}, gb.InvalidTypeError, "min_delta"),
    ({"monitor": None}, gb.InvalidTypeError, "monitor must be the name of a logged metric"),
    ({"monitor": 3}, gb.InvalidTypeError, "monitor"),
    ({"monitor": ""}, gb.InvalidInputError, "monitor"),
    ({"patience": -1}, gb.InvalidInputError, "patience must be an integer >= 0"),
    ({"patience": 2.0}, gb.InvalidInputError, "patience"),
    ({"patience": True}, gb.InvalidInputError, "patience"),
    ({"mode": "x"}, gb.InvalidInputError, "mode must be 'auto', 'min' or 'max'"),
    ({"mode": None}, gb.InvalidInputError, "mode"),
    ({"mode": np.array(["min", "max"])}, gb.InvalidInputError, "mode"),
    ({"restore_best_weights": "no"}, gb.InvalidTypeError, "restore_best_weights must be True or False"),
    ({"restore_best_weights": None}, gb.InvalidTypeError, "restore_best_weights"),
])
def test_early_stopping_refuses_bad_arguments(kwargs, error, pattern):
    raises(error, lambda: gb.EarlyStopping(**kwargs), pattern)


def test_early_stopping_accepts_numpy_integers_and_takes_abs_of_min_delta():
    stop = gb.EarlyStopping(patience=np.int64(2), min_delta=-0.5, restore_best_weights=np.bool_(False))
    assert stop.patience == 2 and stop.min_delta == 0.5 and stop.restore_best_weights is False


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"path": 123}, gb.InvalidTypeError, "path must be a path"),
    ({"path": None}, gb.InvalidTypeError, "path"),
    ({"path": ""}, gb.InvalidInputError, "path must be a non-empty file path"),
    ({"path": "m.npz", "save_freq": 0}, gb.InvalidInputError, "save_freq must be 'epoch' or an integer >= 1"),
    ({"path": "m.npz", "save_freq": "batch"}, gb.InvalidInputError, "save_freq"),
    ({"path": "m.npz", "save_best_only": "yes"}, gb.InvalidTypeError, "save_best_only must be True or False"),
    ({"path": "m.npz", "mode": "best"}, gb.InvalidInputError, "mode must be 'auto', 'min' or 'max'"),
    ({"path": "m.npz", "monitor": 3}, gb.InvalidTypeError, "monitor"),
])
def test_model_checkpoint_refuses_bad_arguments(kwargs, error, pattern):
    raises(error, lambda: ModelCheckpoint(**kwargs), pattern)


# ---------------------------------------------------------------- fit's keyword arguments
@pytest.mark.parametrize("callbacks,pattern", [
    ([object()], r"callbacks\[0\] must be a gpubp.callbacks.Callback"),
    ([gb.EarlyStopping(monitor="loss"), "stop"], r"callbacks\[1\]"),
    ("early", "callbacks must be a list"),
    (3, "callbacks must be a list"),
    ({"a": gb.EarlyStopping()}, "callbacks must be a list"),
])
def test_fit_refuses_what_is_no_callback(callbacks, pattern):
    raises(gb.InvalidTypeError, lambda: model().fit(X, Y, verbose=0, callbacks=callbacks), pattern)


def test_fit_takes_a_single_callback_as_a_one_element_list():
    stop = gb.EarlyStopping(monitor="loss", patience=0, min_delta=100.0)
    history = model().fit(X, Y, epochs=5, verbose=0, callbacks=stop)
    assert stop.stopped_epoch == 1 and len(history.epoch) == 2
    history = model().fit(X, Y, epochs=1, verbose=0, callbacks=(gb.EarlyStopping(monitor="loss"),))
    assert len(history.epoch) == 1


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"checkpoint_dir": 123}, gb.InvalidTypeError, "checkpoint_dir must be a path"),
    ({"checkpoint_dir": b"dir"}, gb.InvalidTypeError, "checkpoint_dir must be a path"),
    ({"checkpoint_dir": ""}, gb.InvalidInputError, "checkpoint_dir must be a non-empty directory path"),
    ({"checkpoint_dir": "a\0b"}, gb.InvalidInputError, "checkpoint_dir"),
    ({"shuffle": "no"}, gb.InvalidTypeError, "shuffle must be True or False"),
    ({"shuffle": 0}, gb.InvalidTypeError, "shuffle"),
    ({"shuffle": None}, gb.InvalidTypeError, "shuffle"),
    ({"resume": "yes"}, gb.InvalidTypeError, "resume must be True or False"),
    ({"verbose": 1j}, gb.InvalidInputError, "verbose must be 0, 1 or 2"),
    ({"on_divergence": np.array(["raise", "stop"])}, gb.InvalidInputError, "on_divergence"),
    ({"on_divergence": None}, gb.InvalidInputError, "on_divergence"),
    ({"checkpoint_every": 0}, gb.InvalidInputError, "checkpoint_every"),
    ({"checkpoint_keep": "3"}, gb.InvalidInputError, "checkpoint_keep"),
    ({"check_every": -2}, gb.InvalidInputError, "check_every"),
])
def test_fit_refuses_bad_keyword_arguments(kwargs, error, pattern):
    raises(error, lambda: model().fit(X, Y, **{"verbose": 0, **kwargs}), pattern)


def test_fit_refuses_a_checkpoint_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    raises(gb.InvalidInputError, lambda: model().fit(X, Y, verbose=0, checkpoint_dir=path),
           "checkpoint_dir .* is a file, not a directory")


def test_fit_accepts_numpy_bools():
    history = model().fit(X, Y, verbose=np.bool_(False), shuffle=np.bool_(False))
    assert len(history.epoch) == 1


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"eps": 0}, gb.InvalidInputError, "eps must be > 0"),
    ({"eps": -1e-6}, gb.InvalidInputError, "eps must be > 0"),
    ({"eps": NAN}, gb.InvalidInputError, "eps must be a finite number"),
    ({"eps": "x"}, gb.InvalidTypeError, "eps must be a finite number"),
    ({"eps": 10.0}, gb.InvalidInputError, "eps must be <= 1"),
    ({"max_entries": 0}, gb.InvalidInputError, "max_entries must be an integer >= 1"),
    ({"max_entries": 2.5}, gb.InvalidInputError, "max_entries"),
    ({"max_entries": True}, gb.InvalidInputError, "max_entries"),
    ({"tolerance": -1}, gb.InvalidInputError, "tolerance must be >= 0"),
    ({"tolerance": NAN}, gb.InvalidInputError, "tolerance"),
    ({"tolerance": None}, gb.InvalidTypeError, "tolerance"),
    ({"seed": -1}, gb.InvalidInputError, "seed must be a non-negative integer"),
    ({"seed": "x"}, gb.InvalidInputError, "seed"),
])
def test_gradcheck_refuses_bad_arguments(kwargs, error, pattern):
    m = model(loss="mse")
    raises(error, lambda: gb.gradcheck(m, X, np.eye(3)[Y], **kwargs), pattern)


def test_gradcheck_refuses_what_is_no_model_or_has_no_weights():
    raises(gb.InvalidTypeError, lambda: gb.gradcheck("model", X, Y), "model must be a gpubp.Sequential")
    raises(gb.NotCompiledError, lambda: gb.gradcheck(unbuilt(), X, Y), "no weights yet")
    assert gb.gradcheck(model(), X, Y, max_entries=1, seed=np.int64(3)).ok


# ---------------------------------------------------------------- set_scaler
@pytest.mark.parametrize("scaler,error,pattern", [
    (StandardScaler(), gb.InvalidInputError, "the scaler is not fitted"),
    (StandardScaler().fit(np.zeros((4, 5))), gb.InvalidInputError, "fitted on 5 features but the model expects 2"),
    (StandardScaler().fit(np.arange(4.0)), gb.InvalidInputError, "fitted on a 1-D vector"),
    ("scaler", gb.InvalidTypeError, "scaler must be a gpubp.data.StandardScaler"),
    ({"mean": [0, 0], "scale": [1, 1]}, gb.InvalidTypeError, "scaler must be"),
])
def test_set_scaler_refuses_bad_scalers(scaler, error, pattern):
    m = model()
    raises(error, lambda: m.set_scaler(scaler), pattern)
    assert m.scaler is None


def test_set_scaler_refuses_a_scaler_whose_values_were_broken():
    scaler = StandardScaler().fit(X)
    scaler.scale_ = np.array([1.0, 0.0])
    raises(gb.InvalidInputError, lambda: model().set_scaler(scaler), "scale_ > 0")
    scaler.scale_ = np.array([1.0, 1.0, 1.0])
    raises(gb.InvalidInputError, lambda: model().set_scaler(scaler), "same shape")


def test_set_scaler_on_an_unbuilt_model_builds_it_for_the_scaler_width():
    m = unbuilt().set_scaler(StandardScaler().fit(np.zeros((4, 5))))
    assert m.built and m.input_dim == 5
    raises(gb.InvalidInputError, lambda: m.fit(X, Y, verbose=0), "X has 2 features but the model expects 5")
    m = unbuilt()
    raises(gb.InvalidInputError, lambda: m.set_scaler(StandardScaler().fit(np.arange(4.0))), "1-D vector")
    assert not m.built
    m = unbuilt().set_scaler(StandardScaler().fit(X))
    assert m.fit(X, Y, verbose=0).history["loss"][0] > 0
    assert m.set_scaler(None).scaler is None


# ---------------------------------------------------------------- set_weights
def test_set_weights_on_an_unbuilt_model_checks_everything_before_building():
    good = model().get_weights()
    for weights, error, pattern in [
        ([[[1.0, 2.0], [3.0]]] + good[1:], gb.InvalidInputError, r"weights\[0\] \(W_1\) cannot be converted"),
        (good[:3], gb.InvalidInputError, "expects 4 arrays"),
        (good + good, gb.InvalidInputError, "expects 4 arrays"),
        ([np.zeros((0, 4))] + good[1:], gb.InvalidInputError, r"weights\[0\] \(W_1\) must have shape \(input_dim, 4\)"),
        ([np.zeros(4)] + good[1:], gb.InvalidInputError, r"W_1\) must have shape \(input_dim, 4\)"),
        ([np.zeros((2, 5))] + good[1:], gb.InvalidInputError, r"W_1\) must have shape \(2, 4\), got \(2, 5\)"),
        (good[:2] + [good[2].T, good[3]], gb.InvalidInputError, r"weights\[2\] \(W_2\) must have shape \(4, 3\)"),
        (good[:3] + [np.zeros(2)], gb.InvalidInputError, r"weights\[3\] \(b_2\) must have shape \(3,\)"),
        (good[:3] + [[1.0, "x", 2.0]], gb.InvalidTypeError, r"weights\[3\] \(b_2\) must hold numbers"),
        (good[:3] + [np.array([0.0, np.nan, 0.0])], gb.InvalidInputError, r"b_2\) holds NaN or Inf"),
        ("abc", gb.InvalidTypeError, "set_weights expects a list of arrays"),
        (None, gb.InvalidTypeError, "set_weights expects a list of arrays"),
    ]:
        m = unbuilt()
        raises(error, lambda: m.set_weights(weights), pattern)
        assert not m.built, pattern
    m = unbuilt()
    m.set_weights(good)
    assert m.input_dim == 2
    for a, b in zip(m.get_weights(), good):
        np.testing.assert_array_equal(a, b)


def test_set_weights_on_a_built_model_changes_nothing_when_refused():
    m = model()
    good = m.get_weights()
    for weights, pattern in [
        ([[[1.0, 2.0, 3.0, 4.0], [3.0]]] + good[1:], r"weights\[0\] \(W_1\) cannot be converted"),
        (good[:3], "expects 4 arrays"),
        ([good[0].T] + good[1:], r"weights\[0\] \(W_1\) must have shape \(2, 4\), got \(4, 2\)"),
        ([w + 1 for w in good[:3]] + [np.zeros((3, 1))], r"weights\[3\] \(b_2\) must have shape"),
    ]:
        raises(gb.InvalidInputError, lambda: m.set_weights(weights), pattern)
        for a, b in zip(m.get_weights(), good):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- custom initialisers
def init_returning(make):
    def custom(rng, fan_in, fan_out):
        return make(fan_in, fan_out)
    return custom


@pytest.mark.parametrize("make,error,pattern", [
    (lambda i, o: np.zeros((o, i)), gb.InvalidInputError, r"has shape \(4, 2\); expected \(fan_in, units\) = \(2, 4\)"),
    (lambda i, o: np.zeros(i * o), gb.InvalidInputError, "has shape"),
    (lambda i, o: np.full((i, o), np.nan), gb.InvalidInputError, "holds NaN or Inf"),
    (lambda i, o: np.full((i, o), 1e39), gb.InvalidInputError, "too large for float32"),
    (lambda i, o: np.full((i, o), np.inf, dtype=np.float32), gb.InvalidInputError, "NaN or Inf"),
    (lambda i, o: "weights", gb.InvalidTypeError, "must hold numbers"),
    (lambda i, o: None, gb.InvalidTypeError, "must hold numbers"),
    (lambda i, o: [[0.1] * o, [0.1]], gb.InvalidInputError, "cannot be converted"),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_custom_init_results_are_checked_naming_the_layer(make, error, pattern, dtype):
    dense = gb.Dense(4, activation="tanh", init=init_returning(make))
    exc = raises(error, lambda: gb.Sequential([dense, gb.Dense(3)], input_dim=2, backend="cpu", dtype=dtype), pattern)
    assert "init 'custom'" in str(exc) and "Dense(4, activation='tanh')" in str(exc) and "fan_in 2" in str(exc)


def test_custom_init_with_a_wrong_signature_is_refused_at_once():
    raises(gb.InvalidTypeError, lambda: gb.Dense(3, init=lambda: np.zeros((2, 3))),
           "init must be the name of an initialiser or a callable \\(rng, fan_in, fan_out\\)")
    raises(gb.InvalidTypeError, lambda: gb.Dense(3, init=lambda rng, fan_in: None), "init must be")


def test_custom_init_returning_a_list_or_ints_works():
    model_ = gb.Sequential([gb.Dense(2, init=lambda rng, i, o: [[1] * o] * i)], input_dim=3, backend="cpu")
    np.testing.assert_array_equal(model_.get_weights()[0], np.ones((3, 2)))


@pytest.mark.parametrize("activation", [np.array(["relu", "tanh"]), {}, 3, ["relu"]])
def test_dense_refuses_activation_that_is_no_name(activation):
    raises(gb.InvalidInputError, lambda: gb.Dense(3, activation=activation), "unknown activation")


# ---------------------------------------------------------------- compile
def test_compile_takes_a_single_metric_name_and_none():
    assert model().compile(metrics="accuracy").metrics == ["accuracy"]
    assert model().compile(metrics=None).metrics == []
    assert model().compile(metrics=("accuracy", "accuracy")).metrics == ["accuracy"]
    history = model().compile(metrics="accuracy").fit(X, Y, verbose=0)
    assert "accuracy" in history.history


@pytest.mark.parametrize("metrics,error,pattern", [
    ("acc", gb.InvalidInputError, r"unknown metrics \['acc'\]; valid: \['accuracy', 'precision'"),
    (["accuracy", "f2"], gb.InvalidInputError, r"unknown metrics \['f2'\]"),
    ([["accuracy"]], gb.InvalidInputError, "unknown metrics"),
    (3, gb.InvalidTypeError, "metrics must be a list of metric names"),
    ({"accuracy": 1}, gb.InvalidTypeError, "metrics must be a list"),
])
def test_compile_refuses_unknown_metrics_and_changes_nothing(metrics, error, pattern):
    m = model()
    loss, optimizer = m.loss, m.optimizer
    raises(error, lambda: m.compile(loss="mse", optimizer="adam", metrics=metrics), pattern)
    assert m.loss is loss and m.optimizer is optimizer and m.metrics == []


@pytest.mark.parametrize("built", [True, False])
def test_softmax_cross_entropy_needs_two_outputs(built):
    m = gb.Sequential([gb.Dense(4, activation="tanh"), gb.Dense(1)], input_dim=2 if built else None, backend="cpu")
    raises(gb.InvalidInputError, lambda: m.compile(loss="softmax_cross_entropy"),
           "softmax_cross_entropy loss needs a last Dense layer with one unit per class", "binary_cross_entropy")
    assert m.loss is None
    m.compile(loss="binary_cross_entropy")
    assert m.fit(X, Y % 2, verbose=0).history["loss"][0] > 0


# ---------------------------------------------------------------- optimizers (checks shared with schedules)
@pytest.mark.parametrize("kwargs", [{"clip_norm": 10 ** 400}, {"clip_value": -1}, {"lr": 10 ** 400}])
def test_optimizer_arguments_checked_by_the_shared_checks(kwargs):
    name = next(iter(kwargs))
    raises(gb.InvalidInputError, lambda: gb.optim.Adam(**kwargs), rf"\b{name}\b")


# ---------------------------------------------------------------- values the checks above do not reach
@pytest.mark.parametrize("layers", [3, None, object()], ids=["int", "none", "object"])
def test_sequential_refuses_layers_that_are_no_list(layers):
    raises(gb.InvalidTypeError, lambda: gb.Sequential(layers, backend="cpu"), "layers")


@pytest.mark.parametrize("cls,name", [(gb.optim.SGD, "weight_decay"), (gb.optim.SGD, "momentum"),
                                      (gb.optim.Adam, "eps"), (gb.optim.RMSprop, "rho")])
def test_optimizers_refuse_ints_beyond_float_range(cls, name):
    raises(gb.InvalidInputError, lambda: cls(**{name: 10 ** 400}), name)


def test_sgd_refuses_a_nesterov_that_is_no_bool():
    raises(gb.InvalidTypeError, lambda: gb.optim.SGD(lr=0.1, momentum=0.9, nesterov="no"), "nesterov")


@pytest.mark.parametrize("where", ["input_dim", "units"])
def test_sizes_beyond_float_range_are_refused(where):
    size = 10 ** 400
    layers = [gb.Dense(size if where == "units" else 2)]
    raises(gb.InsufficientMemory, lambda: gb.Sequential(layers, input_dim=size if where == "input_dim" else 2,
                                                        backend="cpu"))


def test_a_refused_initialiser_leaves_the_model_unbuilt():
    bad = gb.Dense(4, init=init_returning(lambda i, o: np.full((i, o), np.nan)))
    m = gb.Sequential([bad, gb.Dense(3)], backend="cpu").compile(optimizer="sgd")
    raises(gb.InvalidInputError, lambda: m.fit(X, Y, verbose=0), "NaN")
    assert not m.built


# ---------------------------------------------------------------- save and load
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = model()
    path = tmp_path_factory.mktemp("saved") / "m.npz"
    m.save(path)
    m.fit(X, Y, verbose=0, checkpoint_dir=path.parent / "ck")
    return path, next((path.parent / "ck").glob("ckpt-*.npz"))


@pytest.mark.parametrize("path,error,pattern", [
    (5, gb.InvalidTypeError, r"path must be a path \(str or os.PathLike\), got int"),
    (None, gb.InvalidTypeError, "path must be a path"),
    (b"m.npz", gb.InvalidTypeError, "path must be a path .*got bytes"),
    ("", gb.InvalidInputError, "path must be a non-empty file path"),
    ("m\0.npz", gb.InvalidInputError, "path must be a non-empty file path without NUL"),
])
def test_save_and_load_refuse_a_path_that_is_no_path(path, error, pattern):
    from gpubp.loading import load_checkpoint_model

    raises(error, lambda: model().save(path), pattern)
    raises(error, lambda: gb.load(path), pattern)
    raises(error, lambda: load_checkpoint_model(path), pattern)


@pytest.mark.parametrize("backend,error,pattern", [
    (5, gb.InvalidTypeError, r"backend must be a string such as 'auto', 'cpu' or 'gpu', got int"),
    (None, gb.InvalidTypeError, "backend must be a string"),
    ("tpu", gb.InvalidInputError, r"unknown backend 'tpu'; valid names are"),
])
def test_load_refuses_a_bad_backend_naming_it_not_the_file(saved, backend, error, pattern):
    from gpubp.loading import load_checkpoint_model

    for load, path in ((gb.load, saved[0]), (load_checkpoint_model, saved[1])):
        exc = raises(error, lambda: load(path, backend=backend), pattern)
        assert "configuration" not in str(exc)
    assert gb.load(saved[0], backend=gb.get_backend("cpu")).input_dim == 2  # a Backend object is taken as it is


@pytest.mark.parametrize("steps", [2 ** 40, 10 ** 30])
def test_lr_find_refuses_more_steps_than_memory_holds(steps):
    raises(gb.InsufficientMemory, lambda: gb.lr_find(model(), X, Y, steps=steps), r"MiB .*steps")


@pytest.mark.parametrize("make,name", [(gb.Dropout, "rate"), (gb.SoftmaxCrossEntropy, "label_smoothing")])
@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)], ids=["10**400", "-10**400"])
def test_rates_beyond_float_range_are_refused(make, name, value):
    raises(gb.InvalidInputError, lambda: make(value), name)


@pytest.mark.parametrize("name", ["top_two", "", 5, np.array(["a", "b"]), "top_3_accuracy"])
def test_top_k_accuracy_refuses_a_name_the_model_cannot_keep(name):
    raises(gb.InvalidInputError, lambda: gb.metrics.TopKAccuracy(2, name=name), r"\bname\b")


def test_top_k_accuracy_takes_its_own_names():
    for k, name in [(2, "top_2_accuracy"), (5, "top_k_accuracy"), (3, None)]:
        metric = gb.metrics.TopKAccuracy(k, name=name)
        m = model().compile(metrics=[metric])
        assert 0 <= m.evaluate(X, Y)[metric.name] <= 1
