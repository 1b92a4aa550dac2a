"""The command line, end to end in a subprocess."""

import json
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
