"""scikit-learn estimators trained by gpubp: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take the parameters of ``sklearn.neural_network.MLPClassifier`` /
``MLPRegressor`` (with the same names, defaults and meaning, less the
``"lbfgs"`` solver), follow the same training recipe
(Glorot-uniform initialisation, mini-batch SGD or Adam, the same stopping
rule and learning-rate schedules) and expose the same fitted attributes, but
every epoch runs on gpubp's fused kernels, on the CPU or a CUDA GPU::

    from gpubp.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), backend="auto").fit(X, y)
    clf.predict_proba(X_test)

This module needs scikit-learn (``pip install 'gpubp[data]'``); ``import gpubp``
does not import it.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, check_scalar, column_or_1d, validate_data

from . import optim, schedules
from .backend import get_backend
from .callbacks import Callback
from .layers import Dense
from .model import Sequential

__all__ = ["MLPClassifier", "MLPRegressor"]

#: scikit-learn activation names -> gpubp activation names, then gpubp's own hidden activations beyond them
#: (with their default slope and alpha)
HIDDEN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                      "leaky_relu": "leaky_relu", "elu": "elu", "gelu": "gelu", "gelu_exact": "gelu_exact",
                      "softplus": "softplus", "silu": "silu"}
SOLVERS = ("sgd", "adam")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
#: the "adaptive" schedule stops once the learning rate has fallen to this (as in scikit-learn)
MIN_ADAPTIVE_LR = 1e-6
INPUT_DTYPES = (np.float64, np.float32)


def _finite(value):
    """Whether a real number is finite as a float (an int beyond float's range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_count(name, value):
    """scikit-learn's check of an integer parameter >= 1 (a bool or an array is none)."""
    if isinstance(value, (bool, np.bool_, np.ndarray)):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_scalar(value, name, numbers.Integral, min_val=1)


class _EpochEnd(Callback):
    """Hands each epoch's training loss to ``end_epoch`` and stops training when it returns True."""

    def __init__(self, end_epoch):
        self.end_epoch = end_epoch
        self.stopped = False

    def on_epoch_end(self, epoch, logs):
        if self.end_epoch(logs["loss"]):
            self.stopped = self.model.stop_training = True


class _BaseMLP(BaseEstimator):
    """Shared parameters, training loop and inference of the two estimators.

    Notes
    -----
    scikit-learn's weight gradient on a batch of B rows is ``(x^T delta + alpha W) / B``;
    gpubp's losses are batch means, so the same step is gpubp's gradient with
    ``weight_decay = alpha / B``, with B the batch size of the ``fit`` (or first
    ``partial_fit``) call that created the optimizer; only a shorter last batch of
    an epoch sees a slightly weaker penalty than in scikit-learn. With several
    logistic outputs (multilabel) scikit-learn sums the log-loss over the outputs
    while gpubp averages it, so the loss is scaled back by the number of outputs:
    the SGD learning rate is multiplied by it and the weight decay and Adam's
    epsilon are divided by it. The updates are then scikit-learn's, except that
    gpubp's Adam adds epsilon after the bias correction of ``v``, and its SGD
    velocity holds gradients rather than learning-rate-scaled steps (which only
    shows when the learning rate changes).
    ``loss_`` and ``loss_curve_`` are scikit-learn's loss, L2 penalty included
    (with the weights at the end of each epoch).

    With ``sample_weight`` scikit-learn divides each batch's weighted gradient and
    penalty by the batch's sum of weights S; gpubp divides by B. The weights are
    therefore handed to gpubp divided by their mean m over the training rows, and
    the weight decay is ``alpha / (B m)``: the step is scikit-learn's exactly when
    every batch's weights sum to B m (one batch per epoch, or evenly spread
    weights) and close to it otherwise. The early-stopping score is weighted too.

    A fitted estimator pickles without its gpubp model, which is rebuilt from
    ``coefs_`` and ``intercepts_`` on first use; the optimizer state (momenta,
    Adam moments) is not kept, so ``partial_fit`` after unpickling starts it afresh.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate="constant", learning_rate_init=1e-3, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, backend="auto",
                 dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        """Raise ValueError (TypeError for a wrong type) naming the first invalid parameter."""

        def one_of(name, options):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")

        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.verbose, np.ndarray) or not isinstance(self.verbose, numbers.Integral):
            raise ValueError(f"verbose must be True, False or an integer, got {self.verbose!r}")
        self._hidden_sizes()
        try:
            check_random_state(self.random_state)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"random_state must be None, an integer from 0 to 2**32 - 1 or a RandomState, got "
                             f"{self.random_state!r} ({exc})") from None
        one_of("activation", HIDDEN_ACTIVATIONS)
        if isinstance(self.solver, str) and self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by gpubp, which trains with mini-batches; "
                             "use solver='adam' or 'sgd' (or sklearn.neural_network for L-BFGS)")
        one_of("solver", SOLVERS)
        one_of("learning_rate", LEARNING_RATES)
        one_of("dtype", ("float32", "float64"))
        if isinstance(self.batch_size, str) and self.batch_size != "auto":
            raise ValueError(f"batch_size must be 'auto' or an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.batch_size, str):
            _check_count("batch_size", self.batch_size)
        for name, kind, low, high, closed in [
            ("alpha", numbers.Real, 0, None, "left"),
            ("learning_rate_init", numbers.Real, 0, None, "neither"),
            ("power_t", numbers.Real, 0, None, "left"),
            ("max_iter", numbers.Integral, 1, None, "left"),
            ("tol", numbers.Real, 0, None, "left"),
            ("momentum", numbers.Real, 0, 1, "left"),
            ("validation_fraction", numbers.Real, 0, 1, "neither" if self.early_stopping else "left"),
            ("beta_1", numbers.Real, 0, 1, "left"),
            ("beta_2", numbers.Real, 0, 1, "left"),
            ("epsilon", numbers.Real, 0, None, "neither"),
        ]:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Real) and not _finite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            check_scalar(value, name, kind, min_val=low, max_val=high, include_boundaries=closed)
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == np.inf):
            _check_count("n_iter_no_change", self.n_iter_no_change)

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        try:
            sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        except TypeError:  # not a sequence
            sizes = [None]
        if isinstance(self.hidden_layer_sizes, (str, bytes, dict)) or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    # ------------------------------------------------------------ the gpubp model
    def _initialize(self, n_features, n_outputs, rng):
        """Build the gpubp model with scikit-learn's initial weights and reset the fitted attributes."""
        hidden = self._hidden_sizes()
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_outputs
        self.n_layers_ = len(hidden) + 2
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
        else:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf
        # Glorot uniform for weights and biases, factor 2 for logistic units (as in scikit-learn)
        factor = 2.0 if self.activation == "logistic" else 6.0
        units = [n_features] + hidden + [n_outputs]
        params = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(units[:-1], units[1:]))
        get_backend(self.backend).require_memory(  # before the float64 draw below: a size that fits nowhere
            16 * params, f"for the {params:,} parameters of hidden_layer_sizes={self.hidden_layer_sizes!r}",
            "use smaller hidden_layer_sizes")
        weights = []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            bound = math.sqrt(factor / (fan_in + fan_out))
            weights += [rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)]
        self._model = self._new_model(weights, seed=int(rng.randint(np.iinfo(np.int32).max)))
        self._fitted_activation = self.activation

    def _new_model(self, weights, seed=None):
        activation = HIDDEN_ACTIVATIONS[self.activation]
        layers = [Dense(w.shape[1], activation=activation) for w in weights[0:-2:2]] + [Dense(weights[-2].shape[1])]
        model = Sequential(layers, input_dim=weights[0].shape[0], backend=self.backend, dtype=self.dtype, seed=seed)
        model.set_weights(weights)
        return model

    def _network(self):
        """The gpubp model; after unpickling, rebuilt from ``coefs_``/``intercepts_`` with a fresh optimizer."""
        if getattr(self, "_model", None) is None:
            weights = [w for pair in zip(self.coefs_, self.intercepts_) for w in pair]
            self._model = self._new_model(weights)
            self._compile(self._optimizer_batch_size)
        return self._model

    def _compile(self, batch_size):
        """Give the model its loss and a fresh optimizer matching scikit-learn's updates (see the class notes)."""
        scale = self._loss_scale
        weight_decay = self._weight_decay(batch_size)
        if self.solver == "sgd":
            optimizer = optim.SGD(lr=self._learning_rate * scale, momentum=self.momentum,
                                  nesterov=self.nesterovs_momentum and self.momentum > 0,
                                  weight_decay=weight_decay)
        else:
            optimizer = optim.Adam(lr=self.learning_rate_init, beta1=self.beta_1, beta2=self.beta_2,
                                   eps=self.epsilon / scale, weight_decay=weight_decay)
        self._model.compile(loss=self._gpubp_loss, optimizer=optimizer)
        self._optimizer_batch_size = batch_size

    def _weight_decay(self, batch_size):
        """scikit-learn's L2 penalty ``alpha / S`` per batch as gpubp's weight decay (see the class notes)."""
        return self.alpha / (batch_size * self._loss_scale * getattr(self, "_mean_sample_weight", 1.0))

    def _set_learning_rate(self, lr):
        self._learning_rate = lr
        self._model.optimizer.schedule = schedules.Constant(lr * self._loss_scale)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_model", None)  # holds the backend's modules and device buffers
        return state

    # ------------------------------------------------------------ training
    def fit(self, X, y, sample_weight=None):
        """Fit the model to ``X`` (n_samples, n_features) and ``y``, each row's loss weighted by
        ``sample_weight`` (n_samples,) when given; returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental):
        self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        rng = check_random_state(self.random_state)
        if first_pass:
            self._set_output(Y)
            self._initialize(X.shape[1], Y.shape[1], rng)
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs but the model was fitted with {self.n_outputs_}")
        else:
            fitted = ([W.shape[1] for W in self.coefs_[:-1]], getattr(self, "_fitted_activation", self.activation))
            if fitted != (self._hidden_sizes(), self.activation):
                raise ValueError(f"warm_start and partial_fit continue the fitted network, with hidden layers "
                                 f"{tuple(fitted[0])} and activation {fitted[1]!r}, but the parameters now say "
                                 f"{tuple(self._hidden_sizes())} and {self.activation!r}: set them back, or fit "
                                 f"with warm_start=False to start afresh")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")

        X_val = Y_val = weight_val = None
        if self.early_stopping:
            stratify = Y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
            X, X_val, Y, Y_val, *weights = train_test_split(*arrays, random_state=rng,
                                                            test_size=self.validation_fraction, stratify=stratify)
            if weights:
                sample_weight, weight_val = weights
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
        self._mean_sample_weight = 1.0 if sample_weight is None else float(sample_weight.mean())
        if self._mean_sample_weight == 0:
            raise ValueError("The sample weights of the training rows are all zero: nothing to learn from.")
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        model = self._network()
        if not incremental or model.optimizer is None:
            self._learning_rate = self.learning_rate_init
            self._compile(batch_size)
        else:
            model.optimizer.weight_decay = self._weight_decay(self._optimizer_batch_size)
        self.n_iter_ = 0
        n_batches = -(-n_samples // batch_size)
        self._best_weights = None

        def end_epoch(train_loss):
            return self._end_epoch(train_loss, n_samples, n_batches, X_val, Y_val, weight_val)

        monitor = _EpochEnd(end_epoch)
        model.fit(X, self._gpubp_targets(Y), batch_size=batch_size, epochs=1 if incremental else self.max_iter,
                  shuffle=self.shuffle, callbacks=[monitor], verbose=0,
                  sample_weight=None if sample_weight is None else sample_weight / self._mean_sample_weight)
        if not incremental and not monitor.stopped:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning)
        if self._best_weights is not None:
            model.set_weights(self._best_weights)
        self._best_weights = None
        weights = model.get_weights()
        if not all(np.isfinite(w).all() for w in weights):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        self.coefs_, self.intercepts_ = weights[0::2], weights[1::2]
        return self

    def _end_epoch(self, train_loss, n_samples, n_batches, X_val, Y_val, weight_val):
        """scikit-learn's end-of-epoch bookkeeping; returns True when training should stop."""
        self.n_iter_ += 1
        self.t_ += n_samples
        self.loss_ = train_loss * self._loss_scale
        if self.alpha > 0:
            squared_norm = sum(float(np.dot(W.ravel(), W.ravel())) for W in self._model.get_weights()[0::2])
            self.loss_ += 0.5 * self.alpha * squared_norm * n_batches / (n_samples * self._mean_sample_weight)
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")

        if self.early_stopping:
            score = self._validation_score(X_val, Y_val, weight_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            improved = not score < self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_weights = self._model.get_weights()
            what = "Validation score"
        else:
            improved = not self.loss_ > self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, self.loss_)
            what = "Training loss"
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1

        adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            # (t + 1) ** power_t, capped where it would overflow a float (the rate is then ~0 anyway)
            self._set_learning_rate(self.learning_rate_init / math.exp(min(self.power_t * math.log(self.t_ + 1),
                                                                            700.0)))
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        message = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
        if adaptive and self._learning_rate > MIN_ADAPTIVE_LR:
            self._set_learning_rate(self._learning_rate / 5.0)
            self._no_improvement_count = 0
            if self.verbose:
                print(f"{message} Setting learning rate to {self._learning_rate:f}")
            return False
        if self.verbose:
            print(f"{message} {'Learning rate too small. ' if adaptive else ''}Stopping.")
        return True

    def _forward(self, X):
        """Validated ``X`` through the fitted network: (n_samples, n_outputs_) NumPy array in ``dtype``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=INPUT_DTYPES, reset=False)
        return self._network().predict(X)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by gpubp (log-loss, SGD or Adam).

    Two classes use one logistic output and binary cross-entropy, more classes a
    softmax output, a multilabel indicator ``y`` one logistic output per label.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, learning_rate_init,
    power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
    early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change
        As in ``sklearn.neural_network.MLPClassifier``, except that ``solver`` is
        "adam" or "sgd" (no "lbfgs"). ``learning_rate`` applies to "sgd" only;
        "adaptive" divides it by 5 each time the stopping rule fires (as
        scikit-learn's code does), "invscaling" sets it to
        ``learning_rate_init / (t_ + 1) ** power_t`` after every epoch.
    backend : {"auto", "cpu", "gpu"}
        Where gpubp trains and predicts.
    dtype : {"float32", "float64"}
        Precision of the weights, the training and the returned probabilities.

    Attributes
    ----------
    classes_, loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_, t_, n_layers_, n_outputs_,
    out_activation_
        As in scikit-learn; ``coefs_`` and ``intercepts_`` are NumPy arrays in ``dtype``.
    """

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y) with optional per-row ``sample_weight``; ``classes`` (all labels) is
        required on the first call."""
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._check_params()
            binarizer = LabelBinarizer()
            self._label_binarizer = binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        """Validated X and the binarized targets, (n_samples, n_outputs) of 0/1."""
        X, y = validate_data(self, X, y, multi_output=True, dtype=INPUT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y)

    def _set_output(self, Y):
        if self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_, self._gpubp_loss, self._loss_scale = "softmax", "softmax_cross_entropy", 1
        else:
            self.out_activation_, self._gpubp_loss, self._loss_scale = "logistic", "binary_cross_entropy", Y.shape[1]

    def _gpubp_targets(self, Y):
        return Y.argmax(axis=1) if self.out_activation_ == "softmax" else Y

    def _validation_score(self, X_val, Y_val, weight_val):
        return accuracy_score(self._label_binarizer.inverse_transform(Y_val),
                              self._label_binarizer.inverse_transform(self._network().predict(X_val)),
                              sample_weight=weight_val)

    def predict(self, X):
        """Predicted class labels (an indicator matrix for multilabel targets)."""
        proba = self._forward(X)
        return self._label_binarizer.inverse_transform(proba)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_``."""
        proba = self._forward(X)
        if self.n_outputs_ == 1:
            return np.hstack([1 - proba, proba])
        return proba

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        proba = self.predict_proba(X)
        return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by gpubp (half squared error, SGD or Adam).

    The output layer is linear ("identity") and the loss is gpubp's "mse",
    ``1/(2B) sum (o - t)^2``, scikit-learn's squared error.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate, learning_rate_init,
    power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
    early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, backend, dtype
        As in :class:`MLPClassifier`.

    Attributes
    ----------
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_, coefs_, intercepts_,
    n_features_in_, feature_names_in_, n_iter_, t_, n_layers_, n_outputs_, out_activation_
        As in ``sklearn.neural_network.MLPRegressor``.
    """

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y) with optional per-row ``sample_weight``."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        """Validated X and the targets as (n_samples, n_outputs)."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=INPUT_DTYPES, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y.reshape(y.shape[0], -1)

    def _set_output(self, Y):
        self.out_activation_, self._gpubp_loss, self._loss_scale = "identity", "mse", 1

    def _gpubp_targets(self, Y):
        return Y

    def _validation_score(self, X_val, Y_val, weight_val):
        return r2_score(Y_val, self._network().predict(X_val), sample_weight=weight_val)

    def predict(self, X):
        """Predicted values, (n_samples,) for one target, else (n_samples, n_outputs)."""
        y = self._forward(X)
        return y.ravel() if y.shape[1] == 1 else y
