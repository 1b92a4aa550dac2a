"""Command line: ``gpubp train``, ``lr-find``, ``predict``, ``evaluate`` and ``info``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from .version import __version__
from .errors import DistributedAbort, GpubpError, InvalidInputError, TrainingDiverged
from .output_paths import check_writable_directory, check_writable_file
from .task import decide_task

PREDICT_EXAMPLES = """examples:
  gpubp predict --model model.npz --input new.csv                 # CSV of predictions on stdout
  gpubp predict --model model.npz --input new.npz --output preds.csv
"""
EVALUATE_EXAMPLES = """examples:
  gpubp evaluate --model model.npz --data test.csv --target label
  gpubp evaluate --model model.npz --data digits
"""
TRAIN_EXAMPLES = """examples:
  gpubp train                                   # two moons, 2 tanh layers of 32, Adam, auto backend
  gpubp train --dataset digits --hidden 128 --activation relu --epochs 30
  gpubp train --dataset data.csv --target label --loss softmax_cross_entropy --save model.npz
  gpubp train --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov --backend cpu --dtype float64
  gpubp train --config run.toml --plot plots/ --checkpoint-dir ckpt/
  gpubp train --dataset digits --validation-split 0.2 --patience 5 --metrics f1,top_3_accuracy
  gpubp train --dataset regression --epochs 100          # reports test RMSE, MAE and R2
  mpiexec -n 2 gpubp train --distributed --backend cpu --save model.npz   # data-parallel over 2 processes
config files (TOML) take the same keys as the flags, e.g.  hidden = [64, 64]  lr = 0.005  batch-size = 128
"""
LR_FIND_EXAMPLES = """examples:
  gpubp lr-find                                 # two moons, the model and optimizer of gpubp train
  gpubp lr-find --dataset digits --hidden 128 --activation relu --optimizer sgd --momentum 0.9 --plot plots/
  gpubp lr-find --steps 300 --start-lr 1e-6 --end-lr 1 --batch-size 128 --json
then train with the suggestion:  gpubp train ... --lr <suggested>
"""


def _hidden_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("--hidden sizes must be >= 1")
    return sizes


def _add_data_arguments(command):
    """The data flags of ``gpubp train`` (and ``gpubp lr-find``)."""
    data = command.add_argument_group("data")
    data.add_argument("--dataset", default="moons",
                      help="moons, circles, spirals, xor, digits, regression, or a .npz (arrays X, y) / "
                           ".csv file, or a .npy file of features streamed from disk (default: moons)")
    data.add_argument("--target", help="label column of a .csv file; the .npy file of targets of a .npy --dataset")
    data.add_argument("--samples", type=int, default=2000, help="samples of the generated sets (default: 2000)")
    data.add_argument("--noise", type=float, default=0.2, help="noise of the generated sets (default: 0.2)")
    data.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    data.add_argument("--no-standardize", action="store_true", help="skip feature standardisation")


def _add_model_arguments(command, training=True):
    """The model and optimisation flags of ``gpubp train``; ``training=False`` leaves out --epochs."""
    net = command.add_argument_group("model")
    net.add_argument("--hidden", type=_hidden_sizes, default=[32, 32], help="hidden sizes, e.g. 64,64 (default: 32,32)")
    net.add_argument("--activation", default="tanh", help="sigmoid, tanh, relu, leaky_relu, elu, gelu, gelu_exact, "
                                                         "softplus, silu or linear (default: tanh)")
    net.add_argument("--loss", default=None,
                     help="softmax_cross_entropy, binary_cross_entropy, mse, huber or mae (default: mse when the "
                          "targets are not all whole numbers, else softmax_cross_entropy)")
    opt = command.add_argument_group("optimisation")
    opt.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "rmsprop"], help="(default: adam)")
    opt.add_argument("--lr", type=float, default=0.01,
                     help="learning rate (default: 0.01)" if training else
                          "ignored: the range test sets the learning rate (taken so that a gpubp train --config "
                          "file works here too)")
    opt.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    opt.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty on the weights (default: 0)")
    opt.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    if training:
        opt.add_argument("--epochs", type=int, default=50, help="(default: 50)")


def _add_run_arguments(command):
    """The device, precision and seed flags of ``gpubp train`` (and ``gpubp lr-find``); returns the group."""
    run = command.add_argument_group("run")
    run.add_argument("--backend", default="auto", help="auto, cpu or gpu (default: auto)")
    run.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="(default: float32)")
    run.add_argument("--matmul-precision", default="highest", choices=["highest", "high", "medium"],
                     help="float32 GEMMs on the GPU: highest (float32), high (TF32 tensor cores) or medium "
                          "(bf16 tensor cores, float32 master weights) (default: highest)")
    run.add_argument("--seed", type=int, default=0, help="seed of data split, init and shuffling (default: 0)")
    return run


def build_parser():
    parser = argparse.ArgumentParser(prog="gpubp", description="Train multi-layer perceptrons by backpropagation.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an MLP and report test accuracy",
                           epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_arguments(train)
    checks = train.add_argument_group("validation and metrics")
    checks.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                        help="hold out this fraction of the training split (never of the test split) as a "
                             "validation set, evaluated after every epoch (default: 0, none: only the test set "
                             "is scored, once, at the end)")
    checks.add_argument("--patience", type=int, metavar="N",
                        help="stop when the validation loss has not improved for N epochs and restore the "
                             "weights of the best epoch (needs --validation-split)")
    checks.add_argument("--metrics", metavar="A,B",
                        help="extra metrics, comma-separated: accuracy, precision, recall, f1, top_k_accuracy "
                             "(top_3_accuracy for k=3), rmse, mae, r2 (always reported: accuracy for "
                             "classification; rmse, mae and r2 for regression)")
    _add_model_arguments(train)
    run = _add_run_arguments(train)
    run.add_argument("--save", metavar="PATH", help="write the trained model to PATH (.npz)")
    run.add_argument("--checkpoint-dir", metavar="DIR", help="write a full training checkpoint into DIR after every "
                                                             "epoch (atomic, last 3 kept)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    run.add_argument("--plot", metavar="DIR", help="write loss/accuracy curves (and, for 2-D data, the decision "
                                                   "boundary) as PNG files into DIR (needs matplotlib)")
    run.add_argument("--distributed", action="store_true",
                     help="data-parallel training over the ranks of mpiexec -n N (needs the mpi extra; on GPUs "
                          "NCCL, one GPU per rank); --batch-size stays the global batch; rank 0 alone prints and "
                          "writes files")
    run.add_argument("--diagnose", action="store_true",
                     help="watch the gradient flow (gpubp.callbacks.GradientMonitor): per-layer gradient norms, "
                          "update sizes and saturated or dead units every --diagnose-every steps; print the "
                          "findings (vanishing or exploding gradients, ...) at the end, and with --plot write "
                          "gradient_flow.png")
    run.add_argument("--diagnose-every", type=int, default=50, metavar="N",
                     help="steps between the records of --diagnose (default: 50)")
    run.add_argument("--config", metavar="FILE", help="read defaults for these flags from a TOML file")
    run.add_argument("--quiet", action="store_true", help="print only the final result")
    run.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")

    lr_find = sub.add_parser("lr-find", help="suggest a learning rate (learning-rate range test)",
                             epilog=LR_FIND_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_data_arguments(lr_find)
    _add_model_arguments(lr_find, training=False)
    test = lr_find.add_argument_group("range test")
    test.add_argument("--start-lr", type=float, default=1e-7, help="learning rate of the first step (default: 1e-7)")
    test.add_argument("--end-lr", type=float, default=10.0, help="learning rate of the last step (default: 10)")
    test.add_argument("--steps", type=int, default=100,
                      help="steps, the learning rate growing by the same factor each (default: 100)")
    run = _add_run_arguments(lr_find)
    run.add_argument("--plot", metavar="DIR", help="write the loss against the learning rate as lr_finder.png into "
                                                   "DIR (needs matplotlib)")
    run.add_argument("--config", metavar="FILE", help="read defaults for these flags from a TOML file")
    run.add_argument("--quiet", action="store_true", help="print only the suggestion")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object")

    predict = sub.add_parser("predict", help="predict with a saved model", epilog=PREDICT_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--model", required=True,
                       help="model file written by gpubp train --save, a checkpoint, or a checkpoint directory")
    predict.add_argument("--input", required=True, help="features: .csv with a header row, or .npz with an array X")
    predict.add_argument("--output", help="write predictions to this .csv (default: stdout)")
    predict.add_argument("--backend", default="auto", help="auto, cpu or gpu (default: auto)")

    evaluate = sub.add_parser("evaluate", help="loss, accuracy and confusion matrix of a saved model",
                              epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--model", required=True,
                       help="model file written by gpubp train --save, a checkpoint, or a checkpoint directory")
    evaluate.add_argument("--data", required=True, help="a built-in data set name, or a .npz (X, y) / .csv file")
    evaluate.add_argument("--target", help="label column of a .csv file")
    split = evaluate.add_argument_group("built-in data sets: the samples and split gpubp train used")
    split.add_argument("--samples", type=int, default=2000, help="(default: 2000)")
    split.add_argument("--noise", type=float, default=0.2, help="(default: 0.2)")
    split.add_argument("--seed", type=int, default=0, help="(default: 0)")
    split.add_argument("--test-size", type=float, default=0.2, help="(default: 0.2)")
    split.add_argument("--all", action="store_true",
                       help="score every sample, the training ones too (default: only the held-out test split)")
    evaluate.add_argument("--backend", default="auto", help="auto, cpu or gpu (default: auto)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    sub.add_parser("info", help="show version, backends, devices, BLAS and threading",
                   epilog="example:\n  gpubp info", formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


#: Flags that take comma-separated lists, which a config file may give as TOML lists.
LIST_OPTIONS = ("hidden", "metrics")


def _apply_config(parser, argv):
    """Parse ``argv``; values from ``--config FILE`` (TOML, keys as the flags) become defaults."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(args.config, "rb") as f:
            config = tomllib.load(f)
    except OSError as exc:
        parser.error(f"--config: cannot read {args.config}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        parser.error(f"--config: {args.config} is not UTF-8 text ({exc.reason} at byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config: {args.config} is not valid TOML: {exc}")
    train = parser._subparsers._group_actions[0].choices[args.command]
    known = {a.dest: a for a in train._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in config.items():
        dest = key.replace("-", "_")
        if dest not in known:
            parser.error(f"--config: unknown key {key!r} in {args.config}; valid keys: "
                         + ", ".join(sorted(k.replace("_", "-") for k in known)))
        action = known[dest]
        if action.nargs == 0:  # on/off flags
            if not isinstance(value, bool):
                parser.error(f"--config: {key} must be true or false, got {value!r}")
        else:
            if isinstance(value, list) and dest in LIST_OPTIONS:  # hidden = [64, 64], metrics = ["f1", "recall"]
                value = ",".join(str(v) for v in value)
            elif isinstance(value, (list, dict)):
                parser.error(f"--config: {key} takes a single value, got {value!r}")
            try:
                value = action.type(str(value)) if action.type is not None else str(value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"--config: bad value for {key}: {value!r} ({exc})")
            if action.choices is not None and value not in action.choices:
                parser.error(f"--config: {key} must be one of {list(action.choices)}, got {value!r}")
        defaults[dest] = value
    train.set_defaults(**defaults)
    return parser.parse_args(argv)


def _metric_names(args, loss, compiled=()):
    """The metrics a run compiles: accuracy (classification) or rmse, mae and r2 (regression), then
    ``compiled`` (those a saved model has) and those of ``--metrics``."""
    from .losses import get_loss

    always = ["accuracy"] if get_loss(loss).is_classification else ["rmse", "mae", "r2"]
    asked = [name.strip() for name in (getattr(args, "metrics", None) or "").split(",") if name.strip()]
    return list(dict.fromkeys(always + list(compiled) + asked))


def _build_model(args, n_features, n_outputs):
    import gpubp as gb

    gb.set_float32_matmul_precision(args.matmul_precision)
    layers = [gb.Dense(h, activation=args.activation) for h in args.hidden] + [gb.Dense(n_outputs)]
    model = gb.Sequential(layers, input_dim=n_features, backend=args.backend, dtype=args.dtype, seed=args.seed)
    if args.optimizer == "sgd":
        optimizer = gb.optim.SGD(lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                 weight_decay=args.weight_decay)
    elif args.optimizer == "adam":
        optimizer = gb.optim.Adam(lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = gb.optim.RMSprop(lr=args.lr, weight_decay=args.weight_decay)
    model.compile(loss=args.loss, optimizer=optimizer, metrics=_metric_names(args, args.loss))
    return model


def _check_train_outputs(args):
    """Every path train will write, checked before any work: a bad one exits 2 at once, not after training."""
    if args.save:
        check_writable_file(args.save, "--save")
    for path, what in ((args.plot, "--plot"), (args.checkpoint_dir, "--checkpoint-dir")):
        if path:
            check_writable_directory(path, what)


def _save_or_fall_back(model, path):
    """``model.save(path)``; when that fails after training, save to a file in the temporary directory,
    say where on stderr, and return ``(saved path, False)``."""
    try:
        return model.save(path), True
    except (OSError, GpubpError) as exc:
        import os
        import tempfile

        fallback = os.path.join(tempfile.gettempdir(), f"gpubp-unsaved-{os.getpid()}.npz")
        saved = model.save(fallback)
        print(f"gpubp: error: could not save the model to {path!r} ({exc}); it was saved to {saved} instead",
              file=sys.stderr)
        return saved, False


def _written(write, path, what):
    """``(write(), True)``; when writing ``what`` to ``path`` fails once the work is done (a path that passed
    the checks before it, then failed): one line on stderr and ``(None, False)``, for an exit status of 1."""
    try:
        return write(), True
    except (OSError, GpubpError) as exc:
        print(f"gpubp: error: could not write {what} to {path!r} ({exc})", file=sys.stderr)
        return None, False


def _data_and_model(args, quiet):
    """Load the data set, decide the task, split it and build the model of the flags (with the training
    split's scaler and the labels); unless ``quiet``, say what was built. Returns ``(model, task, split,
    validation)``: ``split`` is ``(X_train, X_test, y_train, y_test)`` and ``validation`` ``(X_val, y_val)``,
    carved from the training split by ``--validation-split``, or None."""
    from .data import NpyDataset, StandardScaler, csv_feature_names, load_dataset, split_tail, train_test_split
    from .losses import get_loss

    X, y = load_dataset(args.dataset, n_samples=args.samples, noise=args.noise, seed=args.seed, target=args.target)
    task = decide_task(y, None if args.loss is None else get_loss(args.loss).name)
    args.loss = task.loss
    classes = None
    if task.loss == "softmax_cross_entropy" and np.ndim(y) == 1:
        classes, y = np.unique(y, return_inverse=True)  # any labels, as output indices 0 .. K-1
    # a .npy file (memory-mapped) is streamed by fit and its last rows held out, not drawn at random
    split_rows = split_tail if isinstance(X, np.memmap) else train_test_split
    split = split_rows(X, y, test_size=args.test_size, seed=args.seed)
    validation = None
    fraction = getattr(args, "validation_split", 0.0)
    if fraction:
        if not 0 < fraction < 1:
            raise InvalidInputError(f"--validation-split must lie in (0, 1), got {fraction!r}")
        X_fit, X_val, y_fit, y_val = split_rows(split[0], split[2], test_size=fraction, seed=args.seed)
        split, validation = (X_fit, split[1], y_fit, split[3]), (X_val, y_val)
    model = _build_model(args, X.shape[1], task.n_outputs)
    model.set_labels(csv_feature_names(args.dataset, args.target) if args.dataset.endswith(".csv") else None,
                     None if classes is None else classes.tolist())
    if not args.no_standardize:
        model.set_scaler(split[0].fit_scaler() if isinstance(split[0], NpyDataset)  # chunk by chunk
                         else StandardScaler().fit(split[0]))  # saved with the model; applied by predict
    if not quiet:
        held_out = "" if validation is None else f"{validation[0].shape[0]} validation / "
        print(f"gpubp {__version__}: {args.dataset} ({split[0].shape[0]} train / {held_out}{split[1].shape[0]} test "
              f"samples, {X.shape[1]} features) on {model.backend.name} ({model.backend.device_name}), {args.dtype}")
        print(task.description)
        print(model.summary())
    return model, task, split, validation


def cmd_train(args):
    from .checkpoint import checkpoint_files
    from .communicator import SingleProcess, agreed

    communicator = getattr(args, "communicator", None) or SingleProcess()
    root = communicator.is_root  # in data-parallel training, rank 0 alone checks its outputs, prints and writes

    def check_outputs():
        if not root:
            return
        _check_train_outputs(args)
        if args.checkpoint_dir and not args.resume and checkpoint_files(args.checkpoint_dir):
            raise InvalidInputError(f"--checkpoint-dir {args.checkpoint_dir!r} already holds checkpoints of an "
                                    f"earlier run: add --resume to continue it, or choose an empty directory")

    agreed(communicator, check_outputs)
    if args.diagnose_every < 1:
        raise InvalidInputError(f"--diagnose-every must be >= 1, got {args.diagnose_every}")
    if args.patience is not None and not args.validation_split:
        raise InvalidInputError("--patience stops on the validation loss: add --validation-split F to hold out a "
                                "validation set from the training split (the test set never chooses the model)")
    quiet = args.quiet or args.json or not root
    model, task, (X_train, X_test, y_train, y_test), validation = _data_and_model(args, quiet)
    callbacks, monitor, stopper = [], None, None
    if args.diagnose:
        from .callbacks import GradientMonitor

        monitor = GradientMonitor(every=args.diagnose_every, warn=False)  # its findings are printed at the end
        callbacks.append(monitor)
    if args.patience is not None:
        from .callbacks import EarlyStopping

        stopper = EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True)
        callbacks.append(stopper)
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=validation, verbose=0 if quiet else 1,
                        checkpoint_dir=args.checkpoint_dir, resume=args.resume, distributed=communicator,
                        callbacks=callbacks)
    seconds = time.perf_counter() - t0
    result = model.evaluate(X_test, y_test)  # the test set's only use: scored once, after training
    metrics = {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}
    metrics.update({f"test_{name}": value for name, value in result.items() if name not in ("loss", "accuracy")})
    val_result = None if validation is None else model.evaluate(*validation)
    if val_result is not None:
        metrics.update({f"val_{name}": value for name, value in val_result.items() if value is not None})
    metrics.update({"train_seconds": seconds, "epochs": len(history.epoch), "backend": model.backend.name,
                    "task": task.description,
                    "samples": {"train": int(X_train.shape[0]), "test": int(X_test.shape[0]),
                                "validation": 0 if validation is None else int(validation[0].shape[0])},
                    "history": {key: [float(v) for v in values] for key, values in history.history.items()}})
    if stopper is not None:
        metrics["early_stopping"] = _early_stopping_summary(stopper)
    if not root:
        return 130 if history.interrupted else 0
    save_path = args.save
    if history.interrupted:
        where = history.interrupted
        save_path = save_path or "gpubp-interrupted.npz"
        metrics["interrupted"] = where
        print(f"gpubp: interrupted by Ctrl-C after step {where['step']}/{where['steps_per_epoch']} of epoch "
              f"{where['epoch'] + 1}; the weights are those of that whole step", file=sys.stderr)
    saved_where_asked = plotted = True
    if save_path:
        metrics["saved"], saved_where_asked = _save_or_fall_back(model, save_path)
    if args.plot:  # after the save: a plot that cannot be written loses no model
        plots, plotted = _written(lambda: _write_plots(args.plot, model, history, X_test, y_test, monitor, seconds),
                                  args.plot, "the plots")
        if plotted:
            metrics["plots"] = plots
    if monitor is not None:
        metrics["diagnosis"] = {"steps": monitor.history["step"], "findings": monitor.findings}
    if args.json:
        print(json.dumps(metrics))
    else:
        if stopper is not None:
            print(_early_stopping_line(metrics["early_stopping"], args.patience))
        if val_result is not None:
            print(f"validation ({validation[0].shape[0]} samples held out of the training split): "
                  f"{_result_line(val_result, 'val')}")
        print(f"{_result_line(result, 'test')} - trained in {seconds:.2f}s")
        print(f"(test: the {X_test.shape[0]} held-out samples, scored once after training and used for nothing "
              f"else)")
        if monitor is not None:
            print(monitor.report())
        if save_path:
            print(f"model saved to {metrics['saved']}")
        for path in metrics.get("plots", []):
            print(f"plot written to {path}")
    if not (saved_where_asked and plotted):
        return 1
    return 130 if history.interrupted else 0


def _result_line(result, prefix):
    """``test loss 0.1234 - test accuracy 0.9650 - test f1 0.9641``: every value of an evaluate() dict."""
    return " - ".join(f"{prefix} {name} {value:.4f}" for name, value in result.items() if value is not None)


def _early_stopping_summary(stopper):
    """What ``--patience`` did, 1-based epochs: ``{"best_epoch", "best_val_loss", "stopped_epoch", "restored"}``."""
    stopped = stopper.stopped_epoch is not None
    return {"best_epoch": None if stopper.best_epoch is None else stopper.best_epoch + 1,
            "best_val_loss": None if stopper.best_epoch is None else float(stopper.best),
            "stopped_epoch": stopper.stopped_epoch + 1 if stopped else None,
            "restored": stopped and stopper.best_epoch is not None}


def _early_stopping_line(summary, patience):
    if summary["stopped_epoch"] is None:
        return (f"early stopping: never triggered (patience {patience}); the weights are those of the last "
                f"epoch; the best val_loss was {summary['best_val_loss']:.4f} at epoch {summary['best_epoch']}")
    return (f"early stopping: val_loss did not improve for {patience} epochs, stopped after epoch "
            f"{summary['stopped_epoch']}; restored the weights of epoch {summary['best_epoch']} "
            f"(val_loss {summary['best_val_loss']:.4f})")


def _write_plots(directory, model, history, X, y, monitor=None, seconds=None):
    import os

    from . import plot

    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "history.png")]
    regression = not model.loss.reports_accuracy(y, model.n_outputs)  # real-valued targets
    plot.history(history, path=paths[0], seconds=seconds,
                 predictions=(y, model.predict(X), "test set") if regression else None)
    if X.shape[1] == 2 and model.loss.is_classification:
        paths.append(os.path.join(directory, "decision_boundary.png"))
        plot.decision_boundary(model, X, y, path=paths[-1])
    if monitor is not None and monitor.history["step"]:
        paths.append(os.path.join(directory, "gradient_flow.png"))
        plot.gradient_flow(monitor, path=paths[-1])
    return paths


def cmd_lr_find(args):
    from .lr_finder import lr_find

    if args.plot:
        check_writable_directory(args.plot, "--plot")
    quiet = args.quiet or args.json
    model, _, (X_train, _, y_train, _), _ = _data_and_model(args, quiet)
    if not quiet:
        print(f"learning-rate range test: {args.steps} steps of {args.batch_size} rows, lr {args.start_lr:g} to "
              f"{args.end_lr:g}, {type(model.optimizer).__name__}")
    t0 = time.perf_counter()
    result = lr_find(model, X_train, y_train, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    output = {"suggested_lr": result.suggestion, "min_loss_lr": result.min_loss_lr, "steps": result.steps,
              "stopped_early": result.stopped_early, "seconds": seconds}
    plotted = True
    if args.plot:
        import os

        def plot():
            os.makedirs(args.plot, exist_ok=True)
            result.plot(path=os.path.join(args.plot, "lr_finder.png"))
            return os.path.join(args.plot, "lr_finder.png")

        output["plot"], plotted = _written(plot, args.plot, "the plot")
    if args.json:
        print(json.dumps(output))
    elif quiet:
        print(f"{result.suggestion:.3g}")
    else:
        print(result.summary())
        print(f"range test ran in {seconds:.2f}s; train with it: gpubp train ... --lr {result.suggestion:.3g}")
        if plotted and args.plot:
            print(f"plot written to {output['plot']}")
    return 0 if plotted else 1


def _columns_by_name(path, X, names, wanted):
    """The columns of ``X`` (named ``names``, from ``path``'s header) in the order of ``wanted`` (the model's
    feature names); InvalidInputError naming the columns that are missing or left over."""
    if wanted is None or names is None:
        return X
    missing, extra = [n for n in wanted if n not in names], [n for n in names if n not in wanted]
    if missing or extra:
        raise InvalidInputError(f"{path}: the model was trained on the columns {wanted}; "
                                + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                                              f"not used by the model {extra}" if extra else "")
                                            if part))
    return X[:, [names.index(n) for n in wanted]]


def _read_features(path, feature_names=None):
    """Features from a .csv (header row, numeric columns, matched by name to ``feature_names`` when the
    model has them) or a .npz (array X)."""
    from .data import csv_feature_names, load_csv_features

    if path.endswith(".npz"):
        from .npz_archive import open_npz

        with open_npz(path, "input file") as archive:
            if "X" not in archive.files:
                raise InvalidInputError(f"{path} must hold an array named X")
            return archive["X"]
    if path.endswith(".csv"):
        return _columns_by_name(path, load_csv_features(path), csv_feature_names(path), feature_names)
    raise InvalidInputError(f"{path}: input files must end in .csv or .npz")


def _load_model_or_checkpoint(path, backend):
    """The model in ``path``: a model file, a checkpoint, or a checkpoint directory (its newest checkpoint)."""
    import os

    from .checkpoint import latest_checkpoint
    from .errors import ModelFileError
    from .loading import load_checkpoint_model, load_model

    if os.path.isdir(path):
        newest = latest_checkpoint(path)
        if newest is None:
            raise InvalidInputError(f"--model {path!r} is a directory that holds no complete checkpoint")
        return load_checkpoint_model(newest, backend=backend)
    try:
        return load_model(path, backend=backend)
    except ModelFileError as not_a_model:
        try:
            return load_checkpoint_model(path, backend=backend)
        except ModelFileError:
            raise not_a_model from None


def cmd_predict(args):

    if args.output:
        check_writable_file(args.output, "--output")
    model = _load_model_or_checkpoint(args.model, args.backend)
    X = _read_features(args.input, model.feature_names)
    out = model.predict(X)
    header = []
    columns = []
    if model.loss is not None and model.loss.name == "softmax_cross_entropy":
        predicted = out.argmax(axis=1)
        header, columns = ["prediction"], [predicted if model.classes is None else
                                           np.array(model.classes, dtype=object)[predicted]]
    elif model.loss is not None and model.loss.name == "binary_cross_entropy" and out.shape[1] == 1:
        header, columns = ["prediction"], [(out[:, 0] > 0.5).astype(int)]
    prefix = "p" if model.loss is not None and model.loss.is_classification else "y"
    header += [f"{prefix}{k}" for k in range(out.shape[1])]
    columns += [out[:, k] for k in range(out.shape[1])]
    lines = [",".join(header)] + [",".join(_fmt(c[i]) for c in columns) for i in range(out.shape[0])]
    text = "\n".join(lines) + "\n"
    if args.output:
        def write():
            with open(args.output, "w") as f:
                f.write(text)

        if not _written(write, args.output, "the predictions")[1]:
            return 1
        print(f"{out.shape[0]} predictions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _fmt(value):
    if isinstance(value, str):
        return value
    return str(int(value)) if isinstance(value, (int, np.integer)) else f"{float(value):.6g}"


def confusion_matrix(y_true, y_pred, n_classes):
    """(n_classes, n_classes) counts; rows are true classes, columns predictions."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _class_indices(path, y, classes):
    """Labels ``y`` as indices into the model's ``classes`` (numbers compared as numbers, text as text)."""
    def key(label):
        return ("text", label) if isinstance(label, str) else ("number", float(label))

    index = {key(c): k for k, c in enumerate(classes)}
    keys = [key(label) for label in np.asarray(y).tolist()]
    unknown = sorted({k[1] for k in keys if k not in index}, key=str)
    if unknown:
        raise InvalidInputError(f"{path}: the labels {unknown[:10]} are not among the classes the model was "
                                f"trained on ({classes[:20]})")
    return np.array([index[k] for k in keys], dtype=np.int64)


def cmd_evaluate(args):
    from .data import BUILTIN, csv_feature_names, load_dataset, train_test_split

    model = _load_model_or_checkpoint(args.model, args.backend)
    if model.loss is None:
        raise InvalidInputError(f"{args.model} was saved before compile: it has no loss to evaluate")
    X, y = load_dataset(args.data, n_samples=args.samples, noise=args.noise, seed=args.seed, target=args.target)
    if args.data.endswith(".csv"):
        X = _columns_by_name(args.data, X, csv_feature_names(args.data, args.target), model.feature_names)
    if model.classes is not None and np.ndim(y) == 1:
        y = _class_indices(args.data, y, model.classes)
    scored = f"all {X.shape[0]} samples of {args.data}"
    if args.data in BUILTIN and not args.all:
        _, X, _, y = train_test_split(X, y, test_size=args.test_size, seed=args.seed)
        scored = (f"the {X.shape[0]} test samples of {args.data} that gpubp train --seed {args.seed} --test-size "
                  f"{args.test_size} holds out (--all scores the training samples too)")
    if not model.loss.reports_accuracy(y, model.n_outputs):  # real-valued targets: the regression metrics
        model.compile(loss=model.loss, optimizer=model.optimizer,
                      metrics=[m for m in _metric_names(args, model.loss, model.metrics) if m != "accuracy"])
    result = model.evaluate(X, y)
    metrics = {"samples": int(X.shape[0]), **result, "scored": scored}
    labels = np.asarray(y)
    if model.loss.name == "softmax_cross_entropy" or (model.loss.name == "binary_cross_entropy"
                                                      and model.n_outputs == 1):
        proba = model.predict(X)
        if model.n_outputs == 1:
            predicted, n_classes = (proba[:, 0] > 0.5).astype(int), 2
        else:
            predicted, n_classes = proba.argmax(axis=1), model.n_outputs
        if labels.ndim == 2:
            labels = labels.argmax(axis=1)
        metrics["confusion_matrix"] = confusion_matrix(labels.astype(int).ravel(), predicted, n_classes).tolist()
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"scored on {scored}")
    print(f"{metrics['samples']} samples - " + " - ".join(f"{name} {value:.4f}" for name, value in result.items()
                                                          if value is not None))
    if "confusion_matrix" in metrics:
        matrix = np.array(metrics["confusion_matrix"])
        width = max(5, len(str(matrix.max())) + 1)
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(" " * 6 + "".join(f"{k:>{width}}" for k in range(n_classes)))
        for k, row in enumerate(matrix):
            print(f"{k:>5} " + "".join(f"{v:>{width}}" for v in row))
    return 0


def cmd_info(args):
    import numba

    from .backend import get_float32_matmul_precision, gpu_library_versions, probe_gpu
    from .kernels import blas, cpu

    print(f"gpubp {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"numpy {np.__version__}, numba {numba.__version__}")
    try:
        blas_info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_name = f"{blas_info.get('name')} {blas_info.get('version', '')}".strip()
    except Exception:  # older NumPy without show_config(mode=...)
        blas_name = "unknown"
    threads = blas.num_threads()
    if blas.SERVES_ALL_GEMMS:
        step_blas = f"oneMKL {blas.LIBRARY.version or blas.LIBRARY.path} for every GEMM"
    elif blas.AVAILABLE:
        step_blas = "NumPy's OpenBLAS (direct CBLAS for the weight gradient)"
    else:
        step_blas = "NumPy's matmul (no direct CBLAS)"
    print(f"NumPy's BLAS: {blas_name}")
    print(f"training-step BLAS: {step_blas}, {threads if threads is not None else '?'} threads "
          f"(GPUBP_BLAS=openblas|mkl chooses; mkl needs the mkl extra)")
    parallel = "off" if cpu.PARALLEL_THRESHOLD >= 1 << 62 else f"from {cpu.PARALLEL_THRESHOLD} elements"
    print(f"numba: threading layer {numba.config.THREADING_LAYER}, {numba.get_num_threads()} threads, "
          f"parallel kernels {parallel}")
    print(f"float32 GEMM precision: {get_float32_matmul_precision()} (GPU only; CPU GEMMs are always float32)")
    backend, reason = probe_gpu()
    if backend is None:
        print(f"backends: cpu (gpu unavailable: {reason})")
    else:
        print(f"backends: cpu, gpu ({backend.device_name}, CuPy {backend.xp.__version__})")
    found, _ = gpu_library_versions()
    if found is not None:
        print("CUDA: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    return 0


class _ClosedStdoutGuard:
    """``sys.stdout`` for a command: once the reader of a pipe has gone (``gpubp train | head -1``), the
    output goes to os.devnull (as Python's docs on SIGPIPE advise) and the command goes on without it, so
    that the work it was asked to do (``--save``) is done; ``broken`` then says so, for an exit status of 1."""

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.closed_pipe()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.closed_pipe()

    def closed_pipe(self):
        self.broken = True
        try:  # the buffered rest, and the flush at exit, go to os.devnull, without an "Exception ignored" line
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (AttributeError, OSError, ValueError):  # a stream without a file descriptor: writes are dropped
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv=None):
    if sys.stdout is None:  # no standard output at all (pythonw)
        return _main(argv)
    guard = sys.stdout = _ClosedStdoutGuard(sys.stdout)
    try:
        status = _main(argv)
    except BrokenPipeError:  # through a reference to the stream taken before main
        guard.closed_pipe()
        status = None
    finally:  # --help and parse errors (SystemExit) too
        guard.flush()
        sys.stdout = guard.stream
    return 1 if guard.broken and not status else status


def _main(argv):
    args = _apply_config(build_parser(), argv)
    args.communicator = None
    try:
        if getattr(args, "distributed", False):
            from .backend import get_backend
            from .communicator import get_communicator

            # the backend first: on a GPU it picks this rank's device, which NCCL then binds to
            args.communicator = get_communicator("mpi", on_gpu=get_backend(args.backend).runtime is not None)
        return {"train": cmd_train, "lr-find": cmd_lr_find, "predict": cmd_predict, "evaluate": cmd_evaluate,
                "info": cmd_info}[args.command](args)
    except GpubpError as exc:
        rank = 0 if args.communicator is None else args.communicator.rank
        if rank == 0:
            print(f"gpubp: error: {exc}", file=sys.stderr)
        elif not isinstance(exc, (TrainingDiverged, DistributedAbort)):  # those, every rank raises together
            print(f"gpubp: rank {rank}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpubp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
