"""Time two source checkouts of gpubp against each other on the CPU backend, in fresh processes.

For each checkout (``--a DIR`` and ``--b DIR``, each holding ``gpubp/`` and
``kernels/``) the script builds an importable package in a temporary folder
(``<tmp>/<label>/gpubp`` is a copy of ``DIR/gpubp`` with ``DIR/kernels`` copied
to ``<tmp>/<label>/gpubp/kernels``, the layout the installed package has), then
runs one child process per (round, checkout), alternating a, b, a, b, ... with a
1 s pause between children. Each child imports its version of gpubp and times,
for every cell of the grid (float32, CPU backend, the 784 -> [width] * depth ->
10 ReLU MLP with softmax cross-entropy of ``benchmarks/engines.py``, with plain
SGD(lr=0.01) and Adam(lr=1e-3)):

* ``step``: one training step on a batch already gathered into the model's batch
  plan: ``model.train_step(plan)`` where the model has the public step, else the
  older private ``model._train_step(plan)``; a version with neither is timed
  through ``model.train_on_batch(X, y)``. The JSON's ``step_api`` field says
  which call was timed.
* ``train_on_batch``: ``model.train_on_batch(X, y)`` on host NumPy arrays
  (float32 X, int64 labels), the user-facing call.

Per cell and call: 20 warm-up calls, then 7 repeats, each timing as many calls as
it takes to last at least 0.1 s (at least 3); the child reports the median
repeat in ms per call. The parent takes, per cell and version, the median of the
per-round medians and the ratio b/a, prints a table and writes everything
(per-round numbers included) to ``--out``.

Example::

    .venv/bin/python benchmarks/compare_versions.py --a /path/to/old --b . --rounds 5 --out compare.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

N_IN, N_OUT = 784, 10
LR_SGD, LR_ADAM = 0.01, 1e-3
GRID = [(64, 2, 32), (64, 2, 1024), (1024, 1, 32), (1024, 2, 128), (1024, 4, 512), (1024, 2, 2048)]
QUICK_GRID = [(64, 2, 32), (1024, 1, 32), (1024, 2, 128)]
OPTIMIZERS = ("sgd", "adam")
CALLS = ("step", "train_on_batch")
WARMUP_CALLS = 20
REPEATS = 7
MIN_REPEAT_S = 0.1
MIN_CALLS = 3
PAUSE_S = 1.0


# ============================================================================ child
def _layer_sizes(width, depth):
    sizes = [N_IN] + [width] * depth + [N_OUT]
    return list(zip(sizes[:-1], sizes[1:]))


def _initial_weights(width, depth, seed=0):
    """Glorot-uniform weights and zero biases, as in engines.initial_weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i, o in _layer_sizes(width, depth):
        a = np.sqrt(6.0 / (i + o))
        out.append(rng.uniform(-a, a, size=(i, o)).astype(np.float32))
        out.append(np.zeros(o, np.float32))
    return out


def _make_batch(batch, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, N_IN)).astype(np.float32), rng.integers(0, N_OUT, size=batch).astype(np.int64)


def _new_model(gb, width, depth, opt):
    layers = [gb.Dense(width, activation="relu") for _ in range(depth)] + [gb.Dense(N_OUT)]
    model = gb.Sequential(layers, input_dim=N_IN, backend="cpu", dtype="float32", seed=0)
    model.set_weights(_initial_weights(width, depth))
    optimizer = gb.optim.SGD(lr=LR_SGD) if opt == "sgd" else gb.optim.Adam(lr=LR_ADAM)
    model.compile(loss="softmax_cross_entropy", optimizer=optimizer)
    return model


def _step_call(model, X, y):
    """The pre-gathered training step, as engines.gpubp_engine builds it, or train_on_batch; and its name."""
    if hasattr(model, "batch_plan"):
        Xd, yd, _ = model.prepare(X, y)
        plan = model.batch_plan(X.shape[0], yd)
        plan.load(Xd, yd)
        return (lambda: model.train_step(plan)), "train_step(plan)"
    if hasattr(model, "_train_step"):
        try:
            Xd, yd = model._prepare(X, y)
            plan = model._plan(X.shape[0], yd)
            model.backend.xp.copyto(plan.x, Xd)
            model.backend.xp.copyto(plan.y, yd)
            return (lambda: model._train_step(plan)), "_train_step(plan)"
        except Exception as exc:  # the private plan API changed: time the public call instead
            return (lambda: model.train_on_batch(X, y)), f"train_on_batch (_train_step plan failed: {exc!r})"
    return (lambda: model.train_on_batch(X, y)), "train_on_batch (no _train_step)"


def _time_call(fn, sync):
    """ms per call: median of REPEATS repeats, each >= MIN_REPEAT_S and >= MIN_CALLS calls."""
    for _ in range(WARMUP_CALLS):
        fn()
    sync()
    clock = time.perf_counter
    per_call, n_calls = [], []
    for _ in range(REPEATS):
        n = 0
        t0 = clock()
        while True:
            fn()
            n += 1
            if n >= MIN_CALLS and clock() - t0 >= MIN_REPEAT_S:
                break
        sync()
        per_call.append((clock() - t0) / n * 1e3)
        n_calls.append(n)
    return statistics.median(per_call), per_call, n_calls


def _loss_value(loss):
    try:
        return float(loss.reshape(-1)[0]) if getattr(loss, "ndim", 0) else float(loss)
    except Exception:
        return None


def child_main(pkg_root, grid, out_path):
    sys.path.insert(0, pkg_root)
    import numpy as np

    import gpubp as gb
    import gpubp.kernels as gk

    where = {"gpubp": os.path.abspath(gb.__file__), "gpubp.kernels": os.path.abspath(gk.__file__)}
    for name, path in where.items():
        if not path.startswith(os.path.abspath(pkg_root) + os.sep):
            raise SystemExit(f"{name} was imported from {path}, not from {pkg_root}")

    cells = []
    for width, depth, batch in grid:
        X, y = _make_batch(batch)
        for opt in OPTIMIZERS:
            cell = {"width": width, "depth": depth, "batch": batch, "optimizer": opt}
            for call in CALLS:
                try:
                    model = _new_model(gb, width, depth, opt)
                    if call == "step":
                        fn, api = _step_call(model, X, y)
                        cell["step_api"] = api
                    else:
                        fn = lambda model=model: model.train_on_batch(X, y)  # noqa: E731
                    med, reps, n_calls = _time_call(fn, model.backend.synchronize)
                    cell[call] = {"ms": med, "repeats_ms": reps, "calls_per_repeat": n_calls,
                                  "final_loss": _loss_value(fn())}
                except Exception as exc:
                    cell[call] = {"ms": None, "error": repr(exc)}
                print(f"  {width:5d} x{depth} b{batch:<5d} {opt:4s} {call:15s} "
                      f"{cell[call]['ms'] if cell[call]['ms'] is None else round(cell[call]['ms'], 4)} ms",
                      file=sys.stderr, flush=True)
            cells.append(cell)

    result = {
        "imported_from": where,
        "numpy": np.__version__,
        "has__train_step": hasattr(gb.Sequential, "_train_step"),
        "has_train_step": hasattr(gb.Sequential, "train_step"),
        "cells": cells,
    }
    with open(out_path, "w") as fh:
        json.dump(result, fh)


# ============================================================================ parent
def make_package(src, dest):
    """Copy src/gpubp to dest/gpubp and src/kernels to dest/gpubp/kernels; returns dest."""
    src = os.path.abspath(src)
    for sub in ("gpubp", "kernels"):
        if not os.path.isdir(os.path.join(src, sub)):
            raise SystemExit(f"{src} has no {sub}/ folder")
    if os.path.exists(os.path.join(src, "gpubp", "kernels")):
        raise SystemExit(f"{src}/gpubp/kernels already exists; expected kernels/ at the top level only")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    shutil.copytree(os.path.join(src, "gpubp"), os.path.join(dest, "gpubp"), ignore=ignore)
    shutil.copytree(os.path.join(src, "kernels"), os.path.join(dest, "gpubp", "kernels"), ignore=ignore)
    return dest


def git_describe(src):
    try:
        out = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %s"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--", "gpubp", "kernels"],
                               capture_output=True, text=True, timeout=10)
        if out.returncode:
            return None
        return out.stdout.strip() + (" (+uncommitted changes)" if dirty.stdout.strip() else "")
    except Exception:
        return None


def cell_key(cell):
    return (cell["width"], cell["depth"], cell["batch"], cell["optimizer"])


def aggregate(rounds_by_label, grid):
    """Per cell and call: median over rounds of each version's per-round median, and b/a."""
    rows = []
    for width, depth, batch in grid:
        for opt in OPTIMIZERS:
            key = (width, depth, batch, opt)
            row = {"width": width, "depth": depth, "batch": batch, "optimizer": opt}
            for label in ("a", "b"):
                cells = [c for r in rounds_by_label[label] for c in r["cells"] if cell_key(c) == key]
                row[f"step_api_{label}"] = sorted({c.get("step_api", "?") for c in cells})
                for call in CALLS:
                    vals = [c[call]["ms"] for c in cells if c.get(call, {}).get("ms") is not None]
                    row[f"{call}_ms_{label}"] = statistics.median(vals) if vals else None
                    row[f"{call}_rounds_ms_{label}"] = vals
                    errors = sorted({c[call]["error"] for c in cells if "error" in c.get(call, {})})
                    if errors:
                        row[f"{call}_errors_{label}"] = errors
            for call in CALLS:
                a, b = row[f"{call}_ms_a"], row[f"{call}_ms_b"]
                row[f"{call}_ratio_b_over_a"] = b / a if a and b is not None else None
            rows.append(row)
    return rows


def _fmt(v, digits=3):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if v < 100 else f"{v:.1f}"


def print_table(rows):
    head = (f"{'width':>5} {'depth':>5} {'batch':>5} {'opt':<4} | {'step a':>9} {'step b':>9} {'b/a':>6} | "
            f"{'tob a':>9} {'tob b':>9} {'b/a':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "" if r["step_api_a"] == r["step_api_b"] else "  (step APIs differ)"
        print(f"{r['width']:>5} {r['depth']:>5} {r['batch']:>5} {r['optimizer']:<4} | "
              f"{_fmt(r['step_ms_a']):>9} {_fmt(r['step_ms_b']):>9} {_fmt(r['step_ratio_b_over_a']):>6} | "
              f"{_fmt(r['train_on_batch_ms_a']):>9} {_fmt(r['train_on_batch_ms_b']):>9} "
              f"{_fmt(r['train_on_batch_ratio_b_over_a']):>6}{mark}")
    for call in CALLS:
        ratios = [r[f"{call}_ratio_b_over_a"] for r in rows if r[f"{call}_ratio_b_over_a"]]
        if ratios:
            geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            print(f"geometric mean b/a, {call}: {geo:.3f} over {len(ratios)} cells")
    print("times are ms per call (median over rounds of per-round medians); tob = train_on_batch(X, y)")


def parent_main(args):
    grid = QUICK_GRID if args.quick else GRID
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="gpubp_compare_")
    try:
        roots = {label: make_package(src, os.path.join(tmp, label))
                 for label, src in (("a", args.a), ("b", args.b))}
        rounds = {"a": [], "b": []}
        child_s = {"a": [], "b": []}
        first = True
        for rnd in range(args.rounds):
            for label in ("a", "b"):
                if not first:
                    time.sleep(PAUSE_S)
                first = False
                print(f"round {rnd + 1}/{args.rounds}, version {label} ({getattr(args, label)})",
                      file=sys.stderr, flush=True)
                out_path = os.path.join(tmp, f"result_{rnd}_{label}.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", roots[label], "--child-out", out_path]
                if args.quick:
                    cmd.append("--quick")
                t0 = time.time()
                proc = subprocess.run(cmd, cwd=tmp)
                child_s[label].append(time.time() - t0)
                if proc.returncode:
                    raise SystemExit(f"child for version {label}, round {rnd + 1} failed (exit {proc.returncode})")
                with open(out_path) as fh:
                    res = json.load(fh)
                res["round"] = rnd
                rounds[label].append(res)
        rows = aggregate(rounds, grid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(rows)
    report = {
        "config": {
            "a": os.path.abspath(args.a), "b": os.path.abspath(args.b),
            "a_git": git_describe(args.a), "b_git": git_describe(args.b),
            "rounds": args.rounds, "quick": args.quick, "grid": grid, "optimizers": list(OPTIMIZERS),
            "lr": {"sgd": LR_SGD, "adam": LR_ADAM}, "n_in": N_IN, "n_out": N_OUT, "dtype": "float32",
            "backend": "cpu", "warmup_calls": WARMUP_CALLS, "repeats": REPEATS, "min_repeat_s": MIN_REPEAT_S,
            "min_calls": MIN_CALLS, "pause_s": PAUSE_S, "python": sys.executable,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("OMP_", "OPENBLAS_", "MKL_", "NUMBA_"))},
        },
        "total_s": time.time() - started,
        "child_s": child_s,
        "summary": rows,
        "rounds": rounds,
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {args.out} ({report['total_s']:.0f} s)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", help="first checkout (with gpubp/ and kernels/); ratios are b/a")
    p.add_argument("--b", help="second checkout")
    p.add_argument("--rounds", type=int, default=5, help="child processes per version (default 5)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--quick", action="store_true", help=f"2-cell grid {QUICK_GRID} instead of the full one")
    p.add_argument("--child", metavar="PKG_ROOT", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args.child, QUICK_GRID if args.quick else GRID, args.child_out)
        return
    if not args.a or not args.b:
        p.error("--a and --b are required")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    parent_main(args)


if __name__ == "__main__":
    main()
