"""gpubp.sklearn: scikit-learn's estimator checks, parity with sklearn.neural_network, and the fit options."""

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import make_classification, make_friedman1, make_multilabel_classification  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SklearnMLPRegressor  # noqa: E402
from sklearn.utils.estimator_checks import (  # noqa: E402
    check_sample_weight_equivalence_on_dense_data,
    parametrize_with_checks,
)

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

CHECKED = [
    MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, max_iter=100, random_state=0, backend="cpu"),
    MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=1e-2, max_iter=100, random_state=0, backend="cpu"),
]


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


#: float32 training: weighted and repeated rows agree to float32 rounding (~4e-6), not the check's rtol 1e-7;
#: the same check passes in float64 (test_sample_weight_equals_repeated_rows_in_float64)
FLOAT32_TOLERANCE = {"check_sample_weight_equivalence_on_dense_data": "float32 results agree to ~1e-6, not 1e-7"}


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda estimator: FLOAT32_TOLERANCE)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", CHECKED, ids=lambda e: type(e).__name__)
def test_sample_weight_equals_repeated_rows_in_float64(estimator):
    """scikit-learn's check: integer weights (zeros included) train as removed or repeated rows."""
    check_sample_weight_equivalence_on_dense_data(type(estimator).__name__,
                                                  clone(estimator).set_params(dtype="float64"))


@pytest.fixture(scope="module")
def classification():
    X, y = make_classification(n_samples=300, n_features=8, n_informative=5, n_classes=3, random_state=0)
    return X.astype(np.float32), y


def test_digits_accuracy_matches_sklearn(digits):
    Xtr, Xte, ytr, yte = digits
    settings = dict(hidden_layer_sizes=(64,), solver="adam", learning_rate_init=1e-3, batch_size=200,
                    max_iter=200, random_state=0)
    ours = MLPClassifier(backend="cpu", **settings).fit(Xtr, ytr).score(Xte, yte)
    theirs = SklearnMLPClassifier(**settings).fit(Xtr, ytr).score(Xte, yte)
    assert ours >= theirs - 0.01, (ours, theirs)


def test_regression_r2_matches_sklearn():
    X, y = make_friedman1(n_samples=1000, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0)
    settings = dict(hidden_layer_sizes=(64,), learning_rate_init=1e-2, max_iter=200, random_state=0)
    ours = MLPRegressor(backend="cpu", **settings).fit(Xtr, ytr).score(Xte, yte)
    theirs = SklearnMLPRegressor(**settings).fit(Xtr, ytr).score(Xte, yte)
    assert ours > 0.8 and ours >= theirs - 0.05, (ours, theirs)


def test_fitted_attributes_and_float32(classification):
    X, y = classification
    clf = MLPClassifier(hidden_layer_sizes=(12, 7), max_iter=5, random_state=0, backend="cpu")
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        clf.fit(X, y)
    assert clf.n_layers_ == 4 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert [W.shape for W in clf.coefs_] == [(8, 12), (12, 7), (7, 3)]
    assert all(a.dtype == np.float32 for a in clf.coefs_ + clf.intercepts_)
    assert clf.n_iter_ == 5 and clf.t_ == 5 * len(X) and len(clf.loss_curve_) == 5
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None
    proba = clf.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-5)
    assert MLPRegressor(max_iter=2, backend="cpu").fit(X, y.astype(float)).predict(X).dtype == np.float32
    reg64 = MLPRegressor(max_iter=2, backend="cpu", dtype="float64").fit(X, y.astype(float))
    assert reg64.predict(X).dtype == np.float64 and reg64.coefs_[0].dtype == np.float64


def test_binary_and_multilabel_outputs(classification):
    X, y = classification
    binary = MLPClassifier(max_iter=50, random_state=0, backend="cpu").fit(X, np.where(y == 1, "yes", "no"))
    assert binary.n_outputs_ == 1 and binary.out_activation_ == "logistic"
    assert binary.predict_proba(X).shape == (len(X), 2) and set(binary.predict(X)) <= {"yes", "no"}
    Xm, Ym = make_multilabel_classification(n_samples=200, n_classes=4, random_state=0)
    multilabel = MLPClassifier(max_iter=50, random_state=0, backend="cpu").fit(Xm, Ym)
    assert multilabel.out_activation_ == "logistic" and multilabel.predict(Xm).shape == Ym.shape


def test_loss_curve_matches_sklearn_definition():
    """Without shuffling, at learning rate ~0, the first epoch's loss is sklearn's (penalty included)."""
    X, y = make_classification(n_samples=100, n_features=5, n_classes=3, n_informative=3, random_state=1)
    Y = np.eye(3)[y][:, :2].astype(int)  # multilabel: the loss is summed over the outputs
    settings = dict(hidden_layer_sizes=(4,), alpha=1.0, learning_rate_init=1e-12, max_iter=1, shuffle=False,
                    random_state=0)
    ours = MLPClassifier(backend="cpu", dtype="float64", **settings).fit(X, Y)
    theirs = SklearnMLPClassifier(**settings).fit(X, Y)
    np.testing.assert_allclose(ours.coefs_[0], theirs.coefs_[0], rtol=1e-6)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-6)


@pytest.mark.parametrize("solver, rtol", [("sgd", 1e-9), ("adam", 1e-4)])
def test_sample_weight_steps_match_sklearn(solver, rtol):
    """One batch per epoch: the weighted steps (penalty included) are scikit-learn's, exactly for SGD; Adam
    differs only where it adds epsilon (see the class notes). At learning rate ~0, loss_ is scikit-learn's."""
    X, y = make_classification(n_samples=60, n_features=5, n_classes=3, n_informative=3, random_state=2)
    w = np.random.default_rng(0).uniform(0, 3, len(y))
    settings = dict(hidden_layer_sizes=(6,), solver=solver, alpha=0.5, batch_size=60, learning_rate_init=0.05,
                    momentum=0.0, max_iter=6, shuffle=False, random_state=0)
    ours = MLPClassifier(backend="cpu", dtype="float64", **settings).fit(X, y, sample_weight=w)
    theirs = SklearnMLPClassifier(**settings).fit(X, y, sample_weight=w)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-3)
    unweighted = MLPClassifier(backend="cpu", dtype="float64", **settings).fit(X, y)
    assert not np.allclose(unweighted.coefs_[0], ours.coefs_[0], rtol=1e-3)
    settings.update(learning_rate_init=1e-12, max_iter=1)
    ours = MLPClassifier(backend="cpu", dtype="float64", **settings).fit(X, y, sample_weight=w)
    theirs = SklearnMLPClassifier(**settings).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9)


def test_sample_weight_in_partial_fit_and_early_stopping(classification):
    X, y = classification
    w = np.where(y == 0, 0.0, 2.0)
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, random_state=0, backend="cpu")
    for _ in range(20):
        clf.partial_fit(X, y, sample_weight=w, classes=[0, 1, 2])
    assert clf.score(X[y > 0], y[y > 0]) > clf.score(X[y == 0], y[y == 0])
    reg = MLPRegressor(early_stopping=True, max_iter=5, random_state=0, backend="cpu")
    reg.fit(X, y.astype(float), sample_weight=np.ones(len(y)))
    assert len(reg.validation_scores_) == reg.n_iter_
    with pytest.raises(ValueError, match="non-zero"):
        reg.fit(X, y.astype(float), sample_weight=np.zeros(len(y)))
    with pytest.raises(ValueError):
        reg.fit(X, y.astype(float), sample_weight=-np.ones(len(y)))


def test_partial_fit(classification):
    X, y = classification
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, random_state=0, backend="cpu")
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    for _ in range(30):
        clf.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2])
    clf.partial_fit(X, y)
    assert list(clf.classes_) == [0, 1, 2] and clf.predict_proba(X).shape == (len(X), 3)
    assert clf.n_iter_ == 1 and clf.t_ == 30 * np.sum(y < 2) + len(X)
    assert clf.score(X[y < 2], y[y < 2]) > 0.8
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X, y + 1)
    reg = MLPRegressor(random_state=0, backend="cpu")
    losses = [reg.partial_fit(X, y.astype(float)).loss_ for _ in range(5)]
    assert losses[-1] < losses[0]


def test_warm_start_continues_from_the_fitted_weights(classification):
    X, y = classification
    clf = MLPClassifier(max_iter=10, warm_start=True, random_state=0, backend="cpu")
    clf.fit(X, y)
    first_curve = list(clf.loss_curve_)
    coefs = [W.copy() for W in clf.coefs_]
    clf.fit(X, y)
    assert len(clf.loss_curve_) == 20 and clf.loss_curve_[:10] == first_curve
    assert clf.loss_curve_[10] < first_curve[0]
    assert not np.array_equal(clf.coefs_[0], coefs[0])
    with pytest.raises(ValueError, match="warm_start"):
        clf.fit(X, y % 2)


def test_early_stopping(classification):
    X, y = classification
    clf = MLPClassifier(early_stopping=True, n_iter_no_change=3, learning_rate_init=1e-2, max_iter=200,
                        random_state=0, backend="cpu").fit(X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    reg = MLPRegressor(early_stopping=True, max_iter=20, random_state=0, backend="cpu")
    reg.fit(X, y.astype(float))
    assert len(reg.validation_scores_) == reg.n_iter_
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        reg.partial_fit(X, y.astype(float))


def test_adaptive_learning_rate_divides_by_five(classification, capsys):
    X, y = classification
    clf = MLPClassifier(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=10.0,
                        n_iter_no_change=2, max_iter=13, random_state=0, verbose=True, backend="cpu")
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    # as in scikit-learn: the rule fires once more than n_iter_no_change epochs in a row failed to
    # improve by tol (here every epoch after the first), i.e. after epochs 4, 7, 10 and 13
    assert clf.n_iter_ == 13 and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert capsys.readouterr().out.count("Setting learning rate to") == 4
    # with a constant rate the same rule stops training after epoch 4, without a ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        stopped = MLPClassifier(solver="sgd", tol=10.0, n_iter_no_change=2, max_iter=13, backend="cpu").fit(X, y)
    assert stopped.n_iter_ == 4


def test_pickle_round_trip(classification):
    X, y = classification
    clf = MLPClassifier(max_iter=20, random_state=0, backend="cpu")
    clf.fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    restored.partial_fit(X, y)
    assert restored.t_ == clf.t_ + len(X)


@pytest.mark.parametrize("param, value", [
    ("hidden_layer_sizes", (10, 0)), ("activation", "softmax"), ("solver", "lbfgs"), ("solver", "rmsprop"),
    ("alpha", -1.0), ("batch_size", 0), ("batch_size", "big"), ("learning_rate", "cosine"),
    ("learning_rate_init", 0.0), ("power_t", -0.5), ("max_iter", 0), ("tol", -1.0), ("momentum", 1.5),
    ("validation_fraction", 1.0), ("beta_1", 1.0), ("beta_2", -0.1), ("epsilon", 0.0),
    ("n_iter_no_change", 0), ("dtype", "float16"), ("shuffle", "yes"),
])
def test_bad_parameters_raise_value_error_naming_them(param, value, classification):
    X, y = classification
    with pytest.raises(ValueError, match=param):
        MLPClassifier(backend="cpu", **{param: value}).fit(X, y)


@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "gelu", "silu"])
def test_gpubp_hidden_activations_beyond_scikit_learns(activation, classification):
    """The estimators take gpubp's other hidden activations and learn with them about as well as with ReLU."""
    X, y = classification

    def fit(name):
        return MLPClassifier(hidden_layer_sizes=(16,), activation=name, learning_rate_init=1e-2, max_iter=60,
                             random_state=0, backend="cpu").fit(X, y)

    clf, relu = fit(activation), fit("relu")
    assert not np.allclose(clf.predict_proba(X), relu.predict_proba(X))  # another function was trained
    assert clf.score(X, y) > relu.score(X, y) - 0.1


def test_warm_start_refuses_another_architecture_and_huge_power_t_trains(classification):
    X, y = classification
    for change in ({"hidden_layer_sizes": (7,)}, {"activation": "tanh"}):
        clf = MLPClassifier(hidden_layer_sizes=(3, 4), max_iter=3, warm_start=True, random_state=0, backend="cpu")
        clf.fit(X, y)
        with pytest.raises(ValueError, match="continue the fitted network"):
            clf.set_params(**change).fit(X, y)
    # (t + 1) ** 1e6 overflows a float: the learning rate becomes ~0, training goes on
    reg = MLPRegressor(solver="sgd", learning_rate="invscaling", power_t=1e6, max_iter=3, random_state=0,
                       backend="cpu").fit(X, y.astype(float))
    assert reg.n_iter_ == 3 and np.isfinite(reg.loss_)
