"""``fit`` of gpubp's scikit-learn MLPClassifier beside scikit-learn's own on the 8x8 digits.

Identical settings: one hidden ReLU layer of 64, Adam (lr 1e-3), batch 200, 30 epochs with
``tol=0`` so both run every epoch, stratified 75/25 split of the digits scaled to [0, 1].
Each round fits a fresh estimator; extra_info records the engine and the test accuracy.
"""

import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLPClassifier  # noqa: E402

from gpubp.backend import probe_cupy  # noqa: E402
from gpubp.sklearn import MLPClassifier  # noqa: E402

SETTINGS = dict(hidden_layer_sizes=(64,), solver="adam", learning_rate_init=1e-3, batch_size=200,
                max_iter=30, tol=0.0, random_state=0)
ENGINES = {
    "gpubp-cpu": lambda: MLPClassifier(backend="cpu", **SETTINGS),
    "gpubp-gpu": lambda: MLPClassifier(backend="gpu", **SETTINGS),
    "sklearn": lambda: SklearnMLPClassifier(**SETTINGS),
}
_cupy, _GPU_MISSING = probe_cupy()


def _fit(estimator, X, y):
    return estimator.fit(X, y)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


@pytest.mark.parametrize("engine", [
    "gpubp-cpu",
    pytest.param("gpubp-gpu", marks=pytest.mark.skipif(_cupy is None, reason=f"no GPU backend: {_GPU_MISSING}")),
    "sklearn",
])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_digits_fit(benchmark, digits_split, engine):
    Xtr, Xte, ytr, yte = digits_split

    def fresh_estimator():
        return (ENGINES[engine](), Xtr, ytr), {}

    benchmark.group = "sklearn digits fit"
    # the warm-up round keeps kernel compilation and cold caches out of the timing
    fitted = benchmark.pedantic(_fit, setup=fresh_estimator, rounds=5, warmup_rounds=1)
    accuracy = fitted.score(Xte, yte)
    benchmark.extra_info.update({"engine": engine, "accuracy": accuracy, "epochs": fitted.n_iter_})
    assert fitted.n_iter_ == SETTINGS["max_iter"] and accuracy > 0.9
