"""Whole training runs, what users time: gpubp's ``fit`` beside a PyTorch loop, JAX + optax (jitted
step), Keras 3's ``fit`` (JAX backend) and scikit-learn's ``MLPClassifier`` on the same data.

Per config, every available engine runs ``EPOCHS`` epochs from a fresh model, engines alternating run by
run over ``ROUNDS`` rounds with a pause before each run (see ``fit_engines.alternating_runs``): the
median seconds per epoch and the test accuracy of each engine go into every test's ``extra_info``
(``fit_seconds_per_epoch``, ``fit_accuracy``), and pytest-benchmark times this engine's own run. With
benchmarks disabled (the default test run) each engine trains one epoch on a small slice, as a test.
"""

import math

import pytest

from fit_engines import BUILDERS, FitConfig, alternating_runs, available, synthetic_data

CONFIGS = [FitConfig((256, 128), "relu", 128), FitConfig((64, 64), "sigmoid", 32),
           FitConfig((1024, 1024, 1024), "relu", 1024), FitConfig((128,) * 6, "sigmoid", 128)]
EPOCHS, ROUNDS = 3, 3
#: scikit-learn takes tens of seconds per epoch on the 1024-wide net; it is left out there
SKIPPED = {("sklearn", (1024, 1024, 1024)): "scikit-learn's MLP is too slow for three 1024-wide layers"}

pytest.importorskip("sklearn")  # the synthetic data comes from scikit-learn


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


_ALTERNATING = {}


def alternating(config, data):
    """Median seconds per epoch and test accuracy of every engine for ``config``, measured once."""
    if config not in _ALTERNATING:
        X, y, X_test, y_test = data
        engines = {name: build(config) for name, build in BUILDERS.items()
                   if available(name) is None and (name, config.hidden) not in SKIPPED}
        times, models = alternating_runs(engines, X, y, EPOCHS, ROUNDS)
        _ALTERNATING[config] = {
            "seconds_per_epoch": {name: sorted(t)[len(t) // 2] for name, t in times.items()},
            "accuracy": {name: engines[name].accuracy(models[name], X_test, y_test) for name in engines}}
    return _ALTERNATING[config]


@pytest.mark.parametrize("engine", sorted(BUILDERS))
@pytest.mark.parametrize("config", CONFIGS, ids=[c.name.replace(" ", "-") for c in CONFIGS])
def test_fit_run(benchmark, data, config, engine):
    reason = available(engine) or SKIPPED.get((engine, config.hidden))
    if reason:
        pytest.skip(reason)
    X, y, X_test, y_test = data
    benchmark.group = f"fit {config.name}"
    if benchmark.disabled and config != CONFIGS[0]:
        pytest.skip("the smoke pass runs every engine on the first config; all run with --benchmark-enable")
    if benchmark.disabled:  # a smoke pass: one epoch on a slice
        fit_engine = BUILDERS[engine](config)
        model = fit_engine.run(X[:4 * config.batch], y[:4 * config.batch], 1)
        assert 0.0 <= fit_engine.accuracy(model, X_test[:256], y_test[:256]) <= 1.0
        return
    fit_engine = BUILDERS[engine](config)
    model = benchmark.pedantic(fit_engine.run, args=(X, y, EPOCHS), rounds=1, iterations=1)
    accuracy = fit_engine.accuracy(model, X_test, y_test)
    assert math.isfinite(accuracy)
    result = alternating(config, data)
    benchmark.extra_info.update({
        "engine": engine, "config": config.name, "epochs": EPOCHS, "accuracy": accuracy,
        "fit_seconds_per_epoch": result["seconds_per_epoch"], "fit_accuracy": result["accuracy"]})
