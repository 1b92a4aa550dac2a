"""Command line: ``gpubp train`` and ``gpubp info``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np

from . import __version__
from .errors import GpubpError

TRAIN_EXAMPLES = """examples:
  gpubp train                                   # two moons, 2 tanh layers of 32, Adam, auto backend
  gpubp train --dataset digits --hidden 128 --activation relu --epochs 30
  gpubp train --dataset data.csv --target label --loss softmax_cross_entropy --save model.npz
  gpubp train --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov --backend cpu --dtype float64
"""


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("--hidden sizes must be >= 1")
    return sizes


def build_parser():
    parser = argparse.ArgumentParser(prog="gpubp", description="Train multi-layer perceptrons by backpropagation.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an MLP and report test accuracy",
                           epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = train.add_argument_group("data")
    data.add_argument("--dataset", default="moons",
                      help="moons, circles, digits, or a .npz (arrays X, y) / .csv file (default: moons)")
    data.add_argument("--target", help="label column of a .csv file")
    data.add_argument("--samples", type=int, default=2000, help="samples of moons/circles (default: 2000)")
    data.add_argument("--noise", type=float, default=0.2, help="noise of moons/circles (default: 0.2)")
    data.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    data.add_argument("--no-standardize", action="store_true", help="skip feature standardisation")
    net = train.add_argument_group("model")
    net.add_argument("--hidden", type=_hidden_sizes, default=[32, 32], help="hidden sizes, e.g. 64,64 (default: 32,32)")
    net.add_argument("--activation", default="tanh", help="sigmoid, tanh, relu or linear (default: tanh)")
    net.add_argument("--loss", default="softmax_cross_entropy",
                     help="softmax_cross_entropy, binary_cross_entropy or mse (default: softmax_cross_entropy)")
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "rmsprop"], help="(default: adam)")
    opt.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01)")
    opt.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty on the weights (default: 0)")
    opt.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    opt.add_argument("--epochs", type=int, default=50, help="(default: 50)")
    run = train.add_argument_group("run")
    run.add_argument("--backend", default="auto", help="auto, cpu or gpu (default: auto)")
    run.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="(default: float32)")
    run.add_argument("--seed", type=int, default=0, help="seed of data split, init and shuffling (default: 0)")
    run.add_argument("--save", metavar="PATH", help="write the trained model to PATH (.npz)")
    run.add_argument("--quiet", action="store_true", help="print only the final result")
    run.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")

    sub.add_parser("info", help="show version, backends and devices")
    return parser


def _build_model(args, n_features, n_outputs):
    import gpubp as gb

    layers = [gb.Dense(h, activation=args.activation) for h in args.hidden] + [gb.Dense(n_outputs)]
    model = gb.Sequential(layers, input_dim=n_features, backend=args.backend, dtype=args.dtype, seed=args.seed)
    if args.optimizer == "sgd":
        optimizer = gb.optim.SGD(lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                 weight_decay=args.weight_decay)
    elif args.optimizer == "adam":
        optimizer = gb.optim.Adam(lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = gb.optim.RMSprop(lr=args.lr, weight_decay=args.weight_decay)
    model.compile(loss=args.loss, optimizer=optimizer)
    return model


def cmd_train(args):
    from .data import StandardScaler, load_dataset, train_test_split
    from .losses import get_loss

    X, y = load_dataset(args.dataset, n_samples=args.samples, noise=args.noise, seed=args.seed, target=args.target)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    if not args.no_standardize:
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    loss_name = get_loss(args.loss).name
    if loss_name == "binary_cross_entropy" or (loss_name == "mse" and np.asarray(y).dtype.kind == "f"):
        n_outputs = 1 if np.ndim(y) == 1 else np.shape(y)[1]
    else:
        n_outputs = int(np.max(y)) + 1
    model = _build_model(args, X.shape[1], n_outputs)
    if not args.quiet and not args.json:
        print(f"gpubp {__version__}: {args.dataset} ({X_train.shape[0]} train / {X_test.shape[0]} test samples, "
              f"{X.shape[1]} features) on {model.backend.name} ({model.backend.device_name}), {args.dtype}")
        print(model.summary())
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(X_test, y_test), verbose=0 if (args.quiet or args.json) else 1)
    seconds = time.perf_counter() - t0
    result = model.evaluate(X_test, y_test)
    metrics = {"test_loss": result["loss"], "test_accuracy": result["accuracy"], "train_seconds": seconds,
               "epochs": len(history.epoch), "backend": model.backend.name}
    if args.save:
        metrics["saved"] = model.save(args.save)
    if args.json:
        print(json.dumps(metrics))
    else:
        acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
        print(f"test loss {result['loss']:.4f} - test accuracy {acc} - trained in {seconds:.2f}s")
        if args.save:
            print(f"model saved to {metrics['saved']}")
    return 0


def cmd_info(args):
    import numba

    from .backend import probe_cupy

    print(f"gpubp {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"numpy {np.__version__}, numba {numba.__version__}")
    cupy, reason = probe_cupy()
    if cupy is None:
        print(f"backends: cpu (gpu unavailable: {reason})")
    else:
        from .backend import get_backend

        gpu = get_backend("gpu")
        print(f"backends: cpu, gpu ({gpu.device_name}, CuPy {cupy.__version__}, "
              f"CUDA driver {cupy.cuda.runtime.driverGetVersion()})")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "info": cmd_info}[args.command](args)
    except GpubpError as exc:
        print(f"gpubp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpubp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
