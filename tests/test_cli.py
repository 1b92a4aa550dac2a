"""The command line, end to end in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpubp as gb


def gpubp(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "gpubp", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"gpubp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_default_train_reaches_95_percent_on_moons(tmp_path):
    proc = gpubp("train", "--backend", "cpu", "--save", str(tmp_path / "moons.npz"))
    out = proc.stdout
    assert "moons (1600 train / 400 test samples, 2 features)" in out
    assert out.count("epoch ") == 50
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.95
    model = gb.load(tmp_path / "moons.npz", backend="cpu")
    assert model.input_dim == 2 and model.n_outputs == 2


def test_json_output_and_file_data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{t},{r[2]}" for r, t in zip(X, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    proc = gpubp("train", "--dataset", str(tmp_path / "d.csv"), "--target", "label", "--epochs", "20",
                 "--hidden", "8", "--backend", "cpu", "--json")
    metrics = json.loads(proc.stdout)
    assert metrics["test_accuracy"] >= 0.9 and metrics["epochs"] == 20 and metrics["backend"] == "cpu"
    # without --validation-split, fit gets no validation data: the test set is scored once, at the end
    assert metrics["samples"] == {"train": 240, "validation": 0, "test": 60}
    assert sorted(metrics["history"]) == ["accuracy", "epoch_time", "loss", "samples_per_sec"]


def test_bad_csv_value_names_line_and_column(tmp_path):
    (tmp_path / "bad.csv").write_text("x,y\n1,0\nfoo,1\n")
    proc = gpubp("train", "--dataset", str(tmp_path / "bad.csv"), "--target", "y", check=False)
    assert proc.returncode == 2
    assert "line 3, column 'x': 'foo' is not a number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_errors_exit_2_without_traceback():
    proc = gpubp("train", "--activation", "swish", "--epochs", "1", check=False)
    assert proc.returncode == 2 and "valid names" in proc.stderr and "Traceback" not in proc.stderr
    proc = gpubp("train", "--hidden", "a,b", check=False)
    assert proc.returncode == 2 and "--hidden takes comma-separated integers" in proc.stderr


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["info"]])
def test_help_and_info(command):
    out = gpubp(*command).stdout
    assert "gpubp" in out
    if command == ["train", "--help"]:
        assert "examples:" in out and "--batch-size" in out
    if command == ["info"]:
        assert "backends: cpu" in out


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "moons.npz"
    gpubp("train", "--backend", "cpu", "--epochs", "20", "--quiet", "--save", str(path))
    return path


def test_saved_model_carries_the_scaler(trained_model):
    from gpubp.data import load_builtin, train_test_split

    model = gb.load(trained_model, backend="cpu")
    assert model.scaler is not None
    X, y = load_builtin("moons", 2000, 0.2, 0)
    _, Xte, _, yte = train_test_split(X, y, 0.2, seed=0)
    assert (model.predict(Xte).argmax(1) == yte).mean() >= 0.95  # raw features: the model standardises


def test_predict_writes_csv(trained_model, tmp_path):
    X = np.array([[-1.0, 0.5], [2.0, 0.0], [0.0, 0.3]])
    (tmp_path / "new.csv").write_text("x0,x1\n" + "\n".join(f"{a},{b}" for a, b in X) + "\n")
    gpubp("predict", "--model", str(trained_model), "--input", str(tmp_path / "new.csv"),
          "--output", str(tmp_path / "preds.csv"), "--backend", "cpu")
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == "prediction,p0,p1" and len(lines) == 4
    expected = gb.load(trained_model, backend="cpu").predict(X)
    for line, row in zip(lines[1:], expected):
        values = line.split(",")
        assert int(values[0]) == row.argmax() and float(values[2]) == pytest.approx(row[1], abs=1e-5)
    np.savez(tmp_path / "new.npz", X=X)
    out = gpubp("predict", "--model", str(trained_model), "--input", str(tmp_path / "new.npz")).stdout
    assert out.splitlines()[1:] == lines[1:]


def test_evaluate_prints_confusion_matrix(trained_model, tmp_path):
    out = gpubp("evaluate", "--model", str(trained_model), "--data", "moons", "--backend", "cpu").stdout
    assert "400 samples" in out and "confusion matrix" in out  # the held-out split of a built-in set
    metrics = json.loads(gpubp("evaluate", "--model", str(trained_model), "--data", "moons", "--json").stdout)
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.sum() == 400
    assert np.trace(matrix) / 400 == pytest.approx(metrics["accuracy"])


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    (tmp_path / "run.toml").write_text('hidden = [8]\nepochs = 3\nlr = 0.05\nactivation = "relu"\n')
    metrics = json.loads(gpubp("train", "--config", str(tmp_path / "run.toml"), "--epochs", "2",
                               "--backend", "cpu", "--json").stdout)
    assert metrics["epochs"] == 2
    (tmp_path / "bad.toml").write_text("learning_rate = 0.1\n")
    proc = gpubp("train", "--config", str(tmp_path / "bad.toml"), check=False)
    assert proc.returncode == 2 and "unknown key 'learning_rate'" in proc.stderr
    (tmp_path / "choice.toml").write_text('optimizer = "Adam"\n')
    proc = gpubp("train", "--config", str(tmp_path / "choice.toml"), check=False)
    assert proc.returncode == 2 and "optimizer must be one of ['sgd', 'adam', 'rmsprop']" in proc.stderr
    (tmp_path / "int.toml").write_text("hidden = 16\nepochs = 2\nquiet = true\n")
    assert "test accuracy" in gpubp("train", "--config", str(tmp_path / "int.toml"), "--backend", "cpu").stdout


def test_checkpoints_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    gpubp("train", "--epochs", "5", "--backend", "cpu", "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt"),
          "--plot", str(tmp_path / "plots"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [".gpubp.lock",
        "ckpt-epoch000003.npz", "ckpt-epoch000004.npz", "ckpt-epoch000005.npz"]
    from gpubp.loading import load_checkpoint_model

    load_checkpoint_model(tmp_path / "ckpt" / "ckpt-epoch000005.npz", backend="cpu")
    for name in ("history.png", "decision_boundary.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


def test_resume_from_checkpoints_matches_an_uninterrupted_run(tmp_path):
    straight = json.loads(gpubp("train", "--epochs", "6", "--backend", "cpu", "--json").stdout)
    gpubp("train", "--epochs", "3", "--backend", "cpu", "--quiet", "--checkpoint-dir", str(tmp_path))
    resumed = json.loads(gpubp("train", "--epochs", "6", "--backend", "cpu", "--json", "--checkpoint-dir",
                               str(tmp_path), "--resume").stdout)
    assert resumed["test_loss"] == straight["test_loss"] and resumed["epochs"] == 6


def test_ctrl_c_stops_after_the_step_and_saves(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "gpubp", "train", "--epochs", "100000", "--backend", "cpu",
                             "--save", str(tmp_path / "m.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until training has started
        line = proc.stdout.readline()
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted by Ctrl-C after step" in err and "Traceback" not in err
    assert "model saved to" in out
    model = gb.load(tmp_path / "m.npz", backend="cpu")
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("flags, message", [
    (["--save", "/nonexistent/d/m.npz"], "--save '/nonexistent/d/m.npz': the directory '/nonexistent/d' does not exist"),
    (["--save", "."], "is a directory"),
    (["--plot", "{tmp}/file"], "/file' is a file"),
    (["--checkpoint-dir", "{tmp}/file/ckpt"], "cannot be created"),
])
def test_train_checks_every_output_path_before_it_trains(tmp_path, flags, message):
    (tmp_path / "file").write_text("not a directory")
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    proc = gpubp("train", "--backend", "cpu", "--epochs", "500", *flags, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("gpubp: error: ")
    assert message in proc.stderr and "test accuracy" not in proc.stdout


def test_predict_checks_its_output_path_first(tmp_path):
    gpubp("train", "--backend", "cpu", "--epochs", "1", "--quiet", "--save", str(tmp_path / "m.npz"))
    proc = gpubp("predict", "--model", str(tmp_path / "m.npz"), "--input", "/nonexistent.csv", "--output",
                 "/nonexistent/out.csv", check=False)
    assert proc.returncode == 2 and "--output '/nonexistent/out.csv'" in proc.stderr


def test_a_save_that_fails_after_training_keeps_the_model(tmp_path, capsys):
    from gpubp.cli import _save_or_fall_back

    model = gb.Sequential([gb.Dense(2)], input_dim=3, backend="cpu", seed=0)
    saved, ok = _save_or_fall_back(model, str(tmp_path / "gone" / "m.npz"))
    assert not ok and "could not save the model" in capsys.readouterr().err
    np.testing.assert_array_equal(gb.load(saved, backend="cpu").params, model.params)
    os.unlink(saved)


# --------------------------------------------------------------------------- the task, decided and said
@pytest.mark.parametrize("y, loss, expected", [
    (np.array([0, 1, 1, 0]), None, "task: classification into 2 classes (the target holds 2 distinct"),
    (np.array([0.0, 2.0, 1.0]), None, "task: classification into 3 classes"),
    (np.arange(500) * 7 + 100_000, None, "task: regression, 1 output (the target has 500 distinct whole numbers "
                                         "up to 103493, not class labels 0..99"),
    (np.array([1.0, 170_000.0]), None, "task: regression"),
    (np.array([-1, 0, 1]), None, "task: regression, 1 output (the target has 3 distinct whole numbers including "
                                 "negative ones"),
    (np.array([0.5, 1.5]), None, "task: regression, 1 output (the target has fractional values"),
    (np.array([0, 1, 1]), "mse", "task: regression, 1 output (as --loss asks)"),
    (np.ones((3, 2)), "binary_cross_entropy", "task: classification, 2 outputs"),
])
def test_the_task_is_decided_from_the_targets_and_said(y, loss, expected):
    from gpubp.task import decide_task

    task = decide_task(y, loss)
    assert task.description.startswith(expected)
    assert task.loss == (loss or ("softmax_cross_entropy" if "classification" in expected else "mse"))


def test_large_regression_targets_are_named_and_absurd_class_counts_refused():
    from gpubp.task import decide_task

    assert "targets reach 1.7e+05 and are used as given" in decide_task(np.array([1.0, 170_000.0])).description
    for y, phrase in ((np.arange(20_000), "20,000-way softmax"), (np.array([0.5, 1.5]), "fractional values"),
                      (np.zeros(3, int), "at least two classes")):
        with pytest.raises(gb.InvalidInputError, match=phrase):
            decide_task(y, "softmax_cross_entropy")
    with pytest.raises(gb.InvalidInputError, match="text labels, which only softmax"):
        decide_task(np.array(["a", "b"]), "mse")
    task = decide_task(np.array(["cat", "dog", "cat"]))  # text labels are classes
    assert (task.loss, task.n_outputs) == ("softmax_cross_entropy", 2)
    assert decide_task(np.array([0, 100_000_000]), "softmax_cross_entropy").n_outputs == 2  # labels, mapped


def test_a_whole_number_price_column_trains_as_regression(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((300, 2))
    price = np.round(100_000 + 50_000 * X[:, 0] + 20_000 * X[:, 1])
    path = tmp_path / "houses.csv"
    np.savetxt(path, np.column_stack([X, price]), delimiter=",", header="a,b,price", comments="", fmt="%.6f")
    out = json.loads(gpubp("train", "--dataset", str(path), "--target", "price", "--epochs", "2", "--backend",
                           "cpu", "--json").stdout)
    assert out["task"].startswith("task: regression") and out["test_accuracy"] is None


def test_a_used_checkpoint_directory_points_to_the_resume_flag(tmp_path):
    gpubp("train", "--epochs", "1", "--backend", "cpu", "--quiet", "--checkpoint-dir", str(tmp_path))
    proc = gpubp("train", "--epochs", "2", "--backend", "cpu", "--quiet", "--checkpoint-dir", str(tmp_path),
                 check=False)
    assert proc.returncode == 2 and "add --resume" in proc.stderr and "resume=True" not in proc.stderr


def test_evaluate_on_a_built_in_set_scores_the_held_out_split_and_says_so(tmp_path):
    trained = json.loads(gpubp("train", "--epochs", "5", "--backend", "cpu", "--json", "--save",
                               str(tmp_path / "m.npz")).stdout)
    held_out = json.loads(gpubp("evaluate", "--model", str(tmp_path / "m.npz"), "--data", "moons", "--backend",
                                "cpu", "--json").stdout)
    assert held_out["samples"] == 400 and "test samples of moons" in held_out["scored"]
    assert held_out["accuracy"] == pytest.approx(trained["test_accuracy"])
    everything = json.loads(gpubp("evaluate", "--model", str(tmp_path / "m.npz"), "--data", "moons", "--all",
                                  "--backend", "cpu", "--json").stdout)
    assert everything["samples"] == 2000 and everything["scored"] == "all 2000 samples of moons"


def _config_refused(proc, phrase):
    """A --config error: argparse's usage line, then one error line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and lines[-1].startswith("gpubp: error: ")
    assert phrase in lines[-1], lines[-1]


def test_config_errors_are_one_line_and_toml_lists_work_for_list_flags(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b"\xff")
    _config_refused(gpubp("train", "--config", str(tmp_path / "latin1.toml"), check=False),
                    f"--config: {tmp_path / 'latin1.toml'} is not UTF-8 text")
    (tmp_path / "lists.toml").write_text('metrics = ["f1", "precision"]\nhidden = [8, 8]\nepochs = 2\n')
    metrics = json.loads(gpubp("train", "--config", str(tmp_path / "lists.toml"), "--samples", "200",
                               "--backend", "cpu", "--json").stdout)
    assert "test_f1" in metrics and "test_precision" in metrics and metrics["epochs"] == 2
    (tmp_path / "scalar.toml").write_text("lr = [0.1]\n")
    _config_refused(gpubp("train", "--config", str(tmp_path / "scalar.toml"), check=False),
                    "--config: lr takes a single value, got [0.1]")


def test_empty_data_sets_and_missing_labels_are_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "e.npz", X=np.zeros((0, 3)), y=np.zeros(0, int))
    _refused_in_one_line(gpubp("train", "--dataset", str(tmp_path / "e.npz"), "--backend", "cpu", check=False),
                         f"{tmp_path / 'e.npz'}: the data set is empty: it has no samples")
    (tmp_path / "l.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)) + "7,nan\n")
    _refused_in_one_line(gpubp("train", "--dataset", str(tmp_path / "l.csv"), "--target", "y", "--backend", "cpu",
                               check=False), "line 22, column 'y': 'nan' is not a finite number or a label")


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path, command):
    """``gpubp train ... | head -1``: no BrokenPipeError traceback, exit status 1, and the model still saved."""
    if command == "train":
        args = ["train", "--epochs", "40", "--samples", "200", "--backend", "cpu", "--save", str(tmp_path / "m.npz")]
    else:
        gpubp("train", "--epochs", "1", "--samples", "200", "--backend", "cpu", "--quiet", "--save",
              str(tmp_path / "m.npz"))
        np.savetxt(tmp_path / "x.csv", np.zeros((20000, 2)), delimiter=",", header="x0,x1", comments="")
        args = ["predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.csv")]
    if command == "train":
        (tmp_path / "m.npz").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "gpubp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as head -1 does
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=300)
    assert err == "", err
    # predict writes its CSV in one write, which CPython cuts short without an error once the reader has gone
    assert status == 1 if command == "train" else status in (0, 1)
    assert gb.load(tmp_path / "m.npz", backend="cpu").input_dim == 2


def test_data_file_errors_name_the_real_fault(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_bytes(b"a,b,y\n1,2,0\n3,\xff4,1\n5,6,0\n")
    proc = gpubp("train", "--dataset", str(csv_path), "--target", "y", "--backend", "cpu", check=False)
    assert proc.returncode == 2 and "line 3" in proc.stderr and "not valid UTF-8" in proc.stderr
    npz_path = tmp_path / "cube.npz"
    np.savez(npz_path, X=np.zeros((4, 2, 2)), y=np.zeros(4))
    proc = gpubp("train", "--dataset", str(npz_path), "--backend", "cpu", check=False)
    assert proc.returncode == 2 and "X must be a 2-D (samples, features) array" in proc.stderr


def test_predict_and_evaluate_take_checkpoints_and_checkpoint_directories(tmp_path):
    gpubp("train", "--epochs", "3", "--backend", "cpu", "--quiet", "--checkpoint-dir", str(tmp_path / "ck"),
          "--save", str(tmp_path / "m.npz"))
    from_model = json.loads(gpubp("evaluate", "--model", str(tmp_path / "m.npz"), "--data", "moons", "--backend",
                                  "cpu", "--json").stdout)
    for model in (tmp_path / "ck", tmp_path / "ck" / "ckpt-epoch000003.npz"):
        from_checkpoint = json.loads(gpubp("evaluate", "--model", str(model), "--data", "moons", "--backend", "cpu",
                                           "--json").stdout)
        assert from_checkpoint["loss"] == from_model["loss"]
    np.savetxt(tmp_path / "x.csv", np.zeros((2, 2)), delimiter=",", header="a,b", comments="")
    out = gpubp("predict", "--model", str(tmp_path / "ck"), "--input", str(tmp_path / "x.csv"), "--backend", "cpu")
    assert len(out.stdout.strip().splitlines()) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = gpubp("predict", "--model", str(empty), "--input", str(tmp_path / "x.csv"), check=False)
    assert proc.returncode == 2 and "holds no complete checkpoint" in proc.stderr


def test_text_labels_and_named_columns_travel_with_the_model(tmp_path):
    """Class names are learnt as classes and predicted as names; predict and evaluate match the columns by
    name (any order), and refuse a file that lacks one or brings another."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 2))
    species = np.where(X[:, 0] > 0.3 * X[:, 1], "setosa", "virginica")
    lines = ["width,length,species"] + [f"{a:.5f},{b:.5f},{s}" for (a, b), s in zip(X, species)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    out = json.loads(gpubp("train", "--dataset", str(tmp_path / "train.csv"), "--target", "species", "--epochs",
                           "30", "--backend", "cpu", "--json", "--save", str(tmp_path / "m.npz")).stdout)
    assert out["task"].startswith("task: classification into 2 classes (the target holds text labels")
    model = gb.load(tmp_path / "m.npz", backend="cpu")
    assert model.feature_names == ["width", "length"] and model.classes == ["setosa", "virginica"]
    swapped = ["length,width"] + [f"{b:.5f},{a:.5f}" for a, b in X[:20]]
    (tmp_path / "new.csv").write_text("\n".join(swapped) + "\n")
    predicted = gpubp("predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "new.csv"),
                      "--backend", "cpu").stdout.splitlines()
    assert predicted[0].startswith("prediction,")
    names = [line.split(",")[0] for line in predicted[1:]]
    assert np.mean(np.array(names) == species[:20]) >= 0.9
    scored = json.loads(gpubp("evaluate", "--model", str(tmp_path / "m.npz"), "--data", str(tmp_path / "train.csv"),
                              "--target", "species", "--backend", "cpu", "--json").stdout)
    assert scored["accuracy"] >= 0.9
    (tmp_path / "other.csv").write_text("width,height\n1,2\n")
    proc = gpubp("predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "other.csv"), check=False)
    assert proc.returncode == 2 and "missing ['length']" in proc.stderr and "not used by the model ['height']" \
        in proc.stderr


def test_lr_find_prints_a_suggestion_and_writes_its_plot(tmp_path):
    out = gpubp("lr-find", "--backend", "cpu", "--samples", "600", "--plot", str(tmp_path)).stdout
    suggested = float(out.split("suggested learning rate: ")[1].split()[0])
    assert 1e-5 < suggested < 1 and "Sequential on cpu" in out and "gpubp train ... --lr" in out
    assert (tmp_path / "lr_finder.png").stat().st_size > 10_000
    result = json.loads(gpubp("lr-find", "--backend", "cpu", "--samples", "600", "--dataset", "circles",
                              "--optimizer", "sgd", "--momentum", "0.9", "--steps", "80", "--json").stdout)
    assert 0 < result["suggested_lr"] < result["min_loss_lr"] and result["steps"] <= 80


def test_train_diagnose_prints_the_gradient_flow_and_writes_its_plot(tmp_path):
    proc = gpubp("train", "--backend", "cpu", "--epochs", "2", "--samples", "600", "--hidden", "16,16,16,16,16,16,16,16",
                 "--activation", "sigmoid", "--diagnose", "--diagnose-every", "10", "--plot", str(tmp_path), "--quiet")
    assert "gradient flow at step" in proc.stdout and "vanishing gradients at step 0" in proc.stdout
    assert (tmp_path / "gradient_flow.png").stat().st_size > 20_000
    metrics = json.loads(gpubp("train", "--backend", "cpu", "--epochs", "2", "--samples", "600", "--activation",
                               "relu", "--diagnose", "--json").stdout)
    assert metrics["diagnosis"] == {"steps": [0], "findings": []}


# --------------------------------------------------------------------------- validation, metrics, plots
def test_validation_split_patience_and_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    out = json.loads(gpubp("train", "--backend", "cpu", "--epochs", "60", "--lr", "0.3", "--validation-split", "0.25",
                           "--patience", "1", "--metrics", "f1,recall", "--json", "--save", str(tmp_path / "m.npz"),
                           "--plot", str(tmp_path / "plots")).stdout)
    assert out["samples"] == {"train": 1200, "validation": 400, "test": 400}  # carved from the training split
    history = out["history"]
    assert {"f1", "recall", "val_loss", "val_accuracy", "val_f1", "val_recall"} <= set(history)
    stopped = out["early_stopping"]
    assert stopped["stopped_epoch"] == out["epochs"] < 60 and stopped["restored"]
    assert history["val_loss"][stopped["best_epoch"] - 1] == pytest.approx(min(history["val_loss"]))
    assert out["val_loss"] == pytest.approx(stopped["best_val_loss"], rel=1e-5)  # the best weights, restored
    assert out["val_loss"] != pytest.approx(history["val_loss"][-1], rel=1e-5)
    assert 0.8 <= out["test_f1"] <= 1 and 0.8 <= out["test_recall"] <= 1
    assert gb.load(tmp_path / "m.npz", backend="cpu").metrics == ["accuracy", "f1", "recall"]
    assert (tmp_path / "plots" / "history.png").stat().st_size > 10_000

    proc = gpubp("train", "--backend", "cpu", "--epochs", "2", "--patience", "3", check=False)
    assert proc.returncode == 2 and "add --validation-split" in proc.stderr
    proc = gpubp("train", "--backend", "cpu", "--epochs", "2", "--metrics", "f1,auc", check=False)
    assert proc.returncode == 2 and "unknown metrics ['auc']" in proc.stderr


def test_a_regression_run_reports_rmse_mae_and_r2(tmp_path):
    pytest.importorskip("matplotlib")
    proc = gpubp("train", "--backend", "cpu", "--dataset", "regression", "--epochs", "4", "--plot", str(tmp_path))
    out = proc.stdout
    assert out.count("epoch ") == 4 and "n/a" not in out and "accuracy" not in out
    last = [line for line in out.splitlines() if line.startswith("test loss")][0]
    assert " - test rmse " in last and " - test mae " in last and " - test r2 " in last
    assert "scored once after training" in out
    assert (tmp_path / "history.png").stat().st_size > 10_000
    proc = gpubp("train", "--backend", "cpu", "--dataset", "regression", "--epochs", "1", "--metrics", "precision",
                 check=False)
    assert proc.returncode == 2 and "metric 'precision' needs class labels" in proc.stderr


# --------------------------------------------------------------------------- resumes that must be refused
def _checkpoint_files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.startswith("ckpt-")}


def _refused_in_one_line(proc, *phrases):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("gpubp: error: "), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_a_resume_with_another_model_is_refused_and_keeps_the_checkpoints(tmp_path):
    ck = str(tmp_path / "ck")
    gpubp("train", "--epochs", "2", "--samples", "400", "--backend", "cpu", "--quiet", "--checkpoint-dir", ck)
    before = _checkpoint_files(tmp_path / "ck")
    assert sorted(before) == ["ckpt-epoch000001.npz", "ckpt-epoch000002.npz"]
    proc = gpubp("train", "--epochs", "3", "--samples", "400", "--backend", "cpu", "--quiet", "--checkpoint-dir", ck,
                 "--resume", "--hidden", "64", check=False)
    _refused_in_one_line(proc, "does not match the model's configuration (layers: checkpoint", "'units': 64")
    assert _checkpoint_files(tmp_path / "ck") == before


def test_a_resume_on_another_data_set_and_batch_size_is_refused(tmp_path):
    ck = str(tmp_path / "ck")
    gpubp("train", "--dataset", "moons", "--epochs", "2", "--backend", "cpu", "--quiet", "--checkpoint-dir", ck)
    before = _checkpoint_files(tmp_path / "ck")
    proc = gpubp("train", "--dataset", "circles", "--batch-size", "7", "--epochs", "3", "--backend", "cpu", "--quiet",
                 "--checkpoint-dir", ck, "--resume", check=False)
    _refused_in_one_line(proc, "batch size: checkpoint 64 vs this run 7", "steps per epoch: checkpoint 25 vs this "
                                                                          "run 229")
    assert _checkpoint_files(tmp_path / "ck") == before


# --------------------------------------------------------------------------- outputs that fail after the work
def _main(monkeypatch, capsys, *args):
    """``gpubp.cli.main(args)`` in this process with the up-front path checks switched off, as for a path that
    passed them and failed later: ``(exit status, stdout, stderr)``."""
    from gpubp import cli

    monkeypatch.setattr(cli, "check_writable_file", lambda path, what: None)
    monkeypatch.setattr(cli, "check_writable_directory", lambda path, what: None)
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_plots_that_cannot_be_written_after_training_keep_the_model_and_exit_1(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("a file, not a directory")
    status, out, err = _main(monkeypatch, capsys, "train", "--epochs", "1", "--samples", "200", "--backend", "cpu",
                             "--quiet", "--save", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "file" / "plots"))
    assert status == 1 and "test accuracy" in out and f"model saved to {tmp_path / 'm.npz'}" in out
    assert len(err.splitlines()) == 1 and "Not a directory" in err
    assert err.startswith(f"gpubp: error: could not write the plots to {str(tmp_path / 'file' / 'plots')!r} (")
    assert gb.load(tmp_path / "m.npz", backend="cpu").input_dim == 2
    status, _, err = _main(monkeypatch, capsys, "lr-find", "--samples", "200", "--steps", "10", "--backend", "cpu",
                           "--quiet", "--plot", str(tmp_path / "file" / "plots"))
    assert status == 1 and len(err.splitlines()) == 1 and "could not write the plot to" in err


def test_predictions_that_cannot_be_written_exit_1_in_one_line(tmp_path, monkeypatch, capsys):
    gpubp("train", "--backend", "cpu", "--epochs", "1", "--samples", "200", "--quiet", "--save", str(tmp_path / "m.npz"))
    np.savetxt(tmp_path / "x.csv", np.zeros((3, 2)), delimiter=",", header="x0,x1", comments="")
    status, out, err = _main(monkeypatch, capsys, "predict", "--model", str(tmp_path / "m.npz"), "--input",
                             str(tmp_path / "x.csv"), "--output", str(tmp_path / "gone" / "p.csv"))
    assert status == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"gpubp: error: could not write the predictions to {str(tmp_path / 'gone' / 'p.csv')!r}")
    status, _, _ = _main(monkeypatch, capsys, "predict", "--model", str(tmp_path / "m.npz"), "--input",
                         str(tmp_path / "x.csv"), "--output", str(tmp_path / "p.csv"))
    assert status == 0 and len((tmp_path / "p.csv").read_text().splitlines()) == 4


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.isdir("/proc/self"),
                    reason="/proc passes the writability check only for root")
def test_a_path_under_proc_passes_the_check_and_fails_at_the_write_without_a_traceback(tmp_path):
    proc = gpubp("train", "--epochs", "1", "--samples", "200", "--backend", "cpu", "--quiet", "--save",
                 str(tmp_path / "m.npz"), "--plot", "/proc/gpubp-test-plots", check=False)
    assert proc.returncode == 1 and "model saved to" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "gpubp: error: could not write the plots to '/proc/gpubp-test-plots' ([Errno 2] No such file or directory: "
        "'/proc/gpubp-test-plots')"]
    np.savetxt(tmp_path / "x.csv", np.zeros((2, 2)), delimiter=",", header="x0,x1", comments="")
    proc = gpubp("predict", "--model", str(tmp_path / "m.npz"), "--input", str(tmp_path / "x.csv"), "--output",
                 "/proc/gpubp-test-predictions.csv", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "could not write the predictions to '/proc/gpubp-test-predictions.csv'" in proc.stderr
