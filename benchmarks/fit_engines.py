"""Whole training runs of the same MLP in each engine, as its users write them, ready to time.

A run trains a fresh model for some epochs on the same data, shuffling every
epoch and gathering each mini-batch (float32, Adam with lr 1e-3, softmax
cross-entropy, no per-epoch metrics): gpubp's ``fit``; a PyTorch loop over
``torch.randperm`` batches; JAX with optax, the data on the device and one
jitted step that gathers its batch; Keras 3's ``fit`` on its JAX backend; and
scikit-learn's ``MLPClassifier`` (one ``partial_fit`` per epoch, which
shuffles, as ``fit`` does). Each engine is built and warmed up (kernels
compiled, one step run) before a run is timed.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engines import has

LR = 1e-3


@dataclass(frozen=True)
class FitConfig:
    """An MLP ``784 -> hidden -> 10`` with one activation, trained at one batch size."""

    hidden: tuple
    activation: str  # "relu" or "sigmoid"
    batch: int

    @property
    def name(self):
        return f"{'-'.join(map(str, self.hidden))} {self.activation} b{self.batch}"


@dataclass
class FitEngine:
    """``run(X, y, epochs)`` trains a fresh model and returns it; ``accuracy(model, X, y)`` scores it."""

    name: str
    run: Callable
    accuracy: Callable


def synthetic_data(n_train=20480, n_test=4096, n_features=784, n_classes=10, seed=0):
    """A 10-class problem of 784 standardised float32 features (scikit-learn's ``make_classification``:
    40 informative features in clusters, the rest noise), split into train and test."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n_train + n_test, n_features=n_features, n_informative=40,
                               n_redundant=0, n_classes=n_classes, n_clusters_per_class=2, class_sep=2.0,
                               flip_y=0.0, random_state=seed)
    X = ((X - X[:n_train].mean(0)) / X[:n_train].std(0)).astype(np.float32)
    return X[:n_train], y[:n_train].astype(np.int64), X[n_train:], y[n_train:].astype(np.int64)


def available(engine):
    """None when ``engine`` can run here, else why not."""
    needs = {"torch": "torch", "jax": "optax", "keras": "keras", "sklearn": "sklearn"}.get(engine)
    if needs is not None and not has(needs):
        return f"{needs} is not installed (pip install 'gpubp[bench]')"
    if engine == "gpubp-mkl":
        from gpubp.kernels import blas

        if blas.name() == "mkl" or blas.load_mkl() is None:
            return "oneMKL is not installed (pip install 'gpubp[mkl]') or is gpubp's BLAS already"
    return None


# ----------------------------------------------------------------------------- gpubp
def gpubp_engine(config, blas_library=None):
    """gpubp's ``fit``; ``blas_library`` ("openblas", "mkl") serves its GEMMs during each run (default:
    the process's choice, NumPy's OpenBLAS unless ``GPUBP_BLAS=mkl``)."""
    import gpubp as gb
    from gpubp.kernels import blas

    library = blas_library or blas.name()

    def build():
        layers = [gb.Dense(h, activation=config.activation) for h in config.hidden] + [gb.Dense(10)]
        return gb.Sequential(layers, input_dim=784, backend="cpu", dtype="float32", seed=0).compile(
            optimizer=gb.optim.Adam(lr=LR))

    def run(X, y, epochs):
        chosen = blas.name()
        blas.use(library)
        try:
            model = build()
            model.fit(X, y, batch_size=config.batch, epochs=epochs, verbose=0)
        finally:
            blas.use(chosen)
        return model

    run(np.zeros((2 * config.batch, 784), np.float32), np.arange(2 * config.batch) % 10, 1)  # compile kernels
    name = "gpubp" if blas_library is None else f"gpubp-{blas_library}"
    return FitEngine(name, run, lambda model, X, y: float(np.mean(model.predict(X).argmax(1) == y)))


def gpubp_mkl_engine(config):
    """gpubp's ``fit`` with oneMKL serving every GEMM (the ``mkl`` extra and ``GPUBP_BLAS=mkl``)."""
    return gpubp_engine(config, "mkl")


# ----------------------------------------------------------------------------- PyTorch
def torch_engine(config):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    activation = torch.nn.ReLU if config.activation == "relu" else torch.nn.Sigmoid

    def run(X, y, epochs):
        torch.manual_seed(0)
        widths = (784,) + config.hidden
        modules = [m for i, o in zip(widths, widths[1:]) for m in (torch.nn.Linear(i, o), activation())]
        model = torch.nn.Sequential(*modules, torch.nn.Linear(widths[-1], 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = torch.nn.CrossEntropyLoss()
        X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
        for _ in range(epochs):
            order = torch.randperm(X_t.shape[0])
            for start in range(0, X_t.shape[0], config.batch):
                rows = order[start:start + config.batch]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(X_t[rows]), y_t[rows]).backward()
                optimizer.step()
        return model

    def accuracy(model, X, y):
        with torch.no_grad():
            return float((model(torch.from_numpy(X)).argmax(1).numpy() == y).mean())

    run(np.zeros((config.batch, 784), np.float32), np.zeros(config.batch, np.int64), 1)
    return FitEngine("torch", run, accuracy)


# ----------------------------------------------------------------------------- JAX + optax
def jax_engine(config):
    import jax
    import jax.numpy as jnp
    import optax

    activation = jax.nn.relu if config.activation == "relu" else jax.nn.sigmoid
    optimizer = optax.adam(LR)

    def forward(params, x):
        for W, b in params[:-1]:
            x = activation(x @ W + b)
        return x @ params[-1][0] + params[-1][1]

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    @jax.jit
    def step(params, state, X, y, rows):
        x, t = jnp.take(X, rows, axis=0), jnp.take(y, rows, axis=0)
        grads = jax.grad(loss_fn)(params, x, t)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def init(seed):
        widths = (784,) + config.hidden + (10,)
        keys = jax.random.split(jax.random.PRNGKey(seed), len(widths) - 1)
        return [(jax.random.uniform(k, (i, o), jnp.float32, -1, 1) * jnp.sqrt(6.0 / (i + o)), jnp.zeros(o))
                for k, i, o in zip(keys, widths, widths[1:])]

    def run(X, y, epochs):
        params = init(0)
        state = optimizer.init(params)
        X_d, y_d = jnp.asarray(X), jnp.asarray(y)
        rng = np.random.default_rng(0)
        n = X.shape[0]
        for _ in range(epochs):
            order = jnp.asarray(rng.permutation(n))
            for start in range(0, n, config.batch):
                params, state = step(params, state, X_d, y_d, order[start:start + config.batch])
        jax.block_until_ready(params)
        return params

    def accuracy(params, X, y):
        return float((np.asarray(forward(params, jnp.asarray(X))).argmax(1) == y).mean())

    run(np.zeros((config.batch, 784), np.float32), np.zeros(config.batch, np.int64), 1)
    return FitEngine("jax", run, accuracy)


# ----------------------------------------------------------------------------- Keras 3 (JAX backend)
def keras_engine(config):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    def build():
        keras.utils.set_random_seed(0)
        layers = [keras.Input((784,))] + [keras.layers.Dense(h, activation=config.activation)
                                          for h in config.hidden] + [keras.layers.Dense(10)]
        model = keras.Sequential(layers)
        model.compile(optimizer=keras.optimizers.Adam(LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def run(X, y, epochs):
        model = build()
        model.fit(X, y, batch_size=config.batch, epochs=epochs, shuffle=True, verbose=0)
        return model

    def accuracy(model, X, y):
        return float((model.predict(X, batch_size=4096, verbose=0).argmax(1) == y).mean())

    run(np.zeros((config.batch, 784), np.float32), np.zeros(config.batch, np.int64), 1)
    return FitEngine("keras", run, accuracy)


# ----------------------------------------------------------------------------- scikit-learn
def sklearn_engine(config):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    def run(X, y, epochs):
        model = MLPClassifier(hidden_layer_sizes=config.hidden,
                              activation="relu" if config.activation == "relu" else "logistic", solver="adam",
                              alpha=0.0, batch_size=config.batch, learning_rate_init=LR, random_state=0)
        classes = np.arange(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in range(epochs):
                model.partial_fit(X, y, classes=classes)
        return model

    return FitEngine("sklearn", run, lambda model, X, y: float(model.score(X, y)))


BUILDERS = {"gpubp": gpubp_engine, "gpubp-mkl": gpubp_mkl_engine, "torch": torch_engine, "jax": jax_engine, "keras": keras_engine,
            "sklearn": sklearn_engine}


def alternating_runs(engines, X, y, epochs, rounds, settle_seconds=1.0):
    """Seconds per epoch of each ``{name: FitEngine}``: ``rounds`` rounds, in each one run of ``epochs``
    epochs per engine in turn, the order rotated by one engine per round (A B C, B C A, C A B, ...) so that
    no engine always follows the same one, and a pause of ``settle_seconds`` before each run so that the
    previous engine's worker threads have gone quiet. Returns ``({name: [seconds per epoch per round]},
    {name: last model})``."""
    times, models = {name: [] for name in engines}, {}
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            engine = engines[name]
            time.sleep(settle_seconds)
            t0 = time.perf_counter()
            models[name] = engine.run(X, y, epochs)
            times[name].append((time.perf_counter() - t0) / epochs)
    return times, models
