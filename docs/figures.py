"""Draw the README's figures of the two diagnostic tools: ``python docs/figures.py [OUT]`` (default
``docs/images``; needs matplotlib and scikit-learn, the ``plot`` and ``data`` extras).

* ``lr_finder.png``: the learning-rate range test on digits (64 ReLU units, Adam, batch 64);
* ``gradient_flow_sigmoid.png`` / ``gradient_flow_relu.png``: the gradient-flow monitor on two 10-layer
  nets (nine hidden layers of 32) on two moons, SGD lr 0.1, 4 epochs: sigmoid with ``init="normal"``
  (N(0, 0.01²)) and ReLU with He initialisation.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import gpubp as gb
from gpubp.data import StandardScaler, load_builtin, train_test_split
from gpubp.gradient_monitor import GradientFlowWarning


def lr_finder_figure(out):
    X, y = load_builtin("digits")
    X_train, _, y_train, _ = train_test_split(StandardScaler().fit_transform(X), y, 0.2, seed=0)
    model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(10)], input_dim=X.shape[1], seed=0)
    model.compile(optimizer=gb.optim.Adam())
    result = gb.lr_find(model, X_train, y_train, start_lr=1e-7, end_lr=10, steps=100, batch_size=64)
    result.plot(out / "lr_finder.png", title="Learning-rate range test: digits, 64 ReLU, Adam, batch 64")
    return result.summary()


def gradient_flow_figure(out, activation, init):
    X, y = load_builtin("moons", n_samples=600, noise=0.2, seed=0)
    X = StandardScaler().fit_transform(X)
    layers = [gb.Dense(32, activation=activation, init=init) for _ in range(9)] + [gb.Dense(2)]
    model = gb.Sequential(layers, input_dim=2, seed=0).compile(optimizer=gb.optim.SGD(lr=0.1))
    monitor = gb.callbacks.GradientMonitor(every=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientFlowWarning)  # the report below says it all
        model.fit(X, y, batch_size=32, epochs=4, callbacks=[monitor], verbose=0)
    monitor.plot(out / f"gradient_flow_{activation}.png",
                 title=f"10 layers, {activation}, init={init!r}: gradient flow on two moons")
    return monitor.report()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else Path(__file__).resolve().parent / "images")
    out.mkdir(parents=True, exist_ok=True)
    print(lr_finder_figure(out))
    for activation, init in (("sigmoid", "normal"), ("relu", "he")):
        print(gradient_flow_figure(out, activation, init))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()
