"""Data-parallel training: ``mpiexec -n N`` runs of fit give the weights of one process on the whole batch.

The MPI runs launch ``tests/distributed_worker.py`` (and the CLI) with the ``mpiexec`` next to this
Python (the MPICH wheel of the ``mpi`` extra) or on PATH; they skip, with the reason, where it cannot start.
Each rank runs one BLAS/OpenMP/Numba thread (the machine's cores shared by the ranks).
"""

import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gpubp as gb
from gpubp.communicator import GradientAllReduce, SingleProcess, agreed, get_communicator
from gpubp.errors import DistributedAbort, InvalidInputError
from gpubp.train import share_of_rows
from gpubp.launch_environment import (LOCAL_RANK_VARIABLES, WORLD_SIZE_VARIABLES, device_for_this_rank,
                                      launched_ranks, node_local_rank)
from helpers import requires_gpu, requires_simulator

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from distributed_worker import train  # noqa: E402

TIMEOUT = 120  # seconds for one mpiexec run: a rank left waiting fails the test instead of hanging it
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@functools.lru_cache(maxsize=None)
def mpiexec():
    """The path of a working mpiexec, or the reason there is none."""
    local = pathlib.Path(sys.executable).parent / "mpiexec"
    path = str(local) if local.exists() else shutil.which("mpiexec")
    if path is None:
        return None, "no mpiexec (pip install 'gpubp[mpi]')"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install 'gpubp[mpi]')"
    try:
        done = subprocess.run([path, "-n", "2", sys.executable, "-c",
                               "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"mpiexec cannot start 2 ranks here ({exc})"
    if done.returncode != 0 or done.stdout.count("2") != 2:  # the ranks' lines may arrive merged
        return None, f"mpiexec cannot start 2 ranks here (exit {done.returncode}: {done.stderr.strip()[-300:]})"
    return path, None


def launch(ranks, args, cwd=HERE):
    path, reason = mpiexec()
    if path is None:
        pytest.skip(reason)
    env = dict(os.environ, **THREADS)
    return subprocess.run([path, "-n", str(ranks), sys.executable] + args, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=cwd)


def run_cases(ranks, cases, out):
    done = launch(ranks, [str(HERE / "distributed_worker.py"), str(out), json.dumps(cases)])
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def max_difference(result, reference):
    return float(np.abs(np.array(result["weights"]) - np.array(reference["weights"])).max())


def check_against_one_process(ranks, cases, tmp_path):
    per_rank = run_cases(ranks, cases, tmp_path)
    for i, case in enumerate(cases):
        reference = train(case)
        scale = np.abs(np.array(reference["weights"])).max()
        for rank, results in enumerate(per_rank):
            result, label = results[i], f"{case} on rank {rank} of {ranks}"
            if case["dtype"] == "float64":
                assert max_difference(result, reference) < 1e-12, label
                np.testing.assert_allclose(result["loss"], reference["loss"], rtol=1e-12, err_msg=label)
                np.testing.assert_allclose(result["val_loss"], reference["val_loss"], rtol=1e-12, err_msg=label)
            else:
                assert max_difference(result, reference) < 1e-6 * scale, label
                np.testing.assert_allclose(result["loss"], reference["loss"], rtol=1e-6, err_msg=label)
            assert result["val_accuracy"] == reference["val_accuracy"], label
            assert result["accuracy"] == reference["accuracy"], label
            assert result["weights"] == per_rank[0][i]["weights"], f"ranks hold different weights: {label}"
    return per_rank


def test_two_ranks_train_the_weights_of_one_process(tmp_path):
    """SGD with momentum, plain SGD (whose fused update must wait for the all-reduce) and Adam, float64 and
    float32, 400 rows in batches of 64 (6 of 32 rows per rank, then 8 each)."""
    cases = [{"optimizer": "sgd", "momentum": 0.9, "dtype": "float64", "n": 420, "batch_size": 64},
             {"optimizer": "sgd", "dtype": "float64", "n": 420, "batch_size": 64},
             {"optimizer": "adam", "dtype": "float64", "n": 420, "batch_size": 64},
             {"optimizer": "adam", "dtype": "float32", "n": 420, "batch_size": 64},
             {"optimizer": "sgd", "momentum": 0.9, "dtype": "float32", "n": 420, "batch_size": 64},
             {"optimizer": "adam", "dtype": "float64", "n": 420, "batch_size": 64, "dropout": 0.3},
             {"optimizer": "sgd", "momentum": 0.9, "dtype": "float64", "n": 420, "batch_size": 64, "weighted": True}]
    check_against_one_process(2, cases, tmp_path)


def test_three_ranks_with_uneven_and_empty_shares(tmp_path):
    """97 rows in batches of 32: shares of 11, 11 and 10 rows, and a last batch of one row that two ranks
    have no share of."""
    cases = [{"optimizer": "sgd", "momentum": 0.9, "dtype": "float64", "n": 117, "batch_size": 32},
             {"optimizer": "adam", "dtype": "float64", "n": 117, "batch_size": 32},
             {"optimizer": "adam", "dtype": "float32", "n": 117, "batch_size": 32},
             {"optimizer": "sgd", "momentum": 0.9, "dtype": "float64", "n": 117, "batch_size": 32, "dropout": 0.5},
             {"optimizer": "adam", "dtype": "float64", "n": 117, "batch_size": 32, "weighted": True}]
    check_against_one_process(3, cases, tmp_path)


@pytest.mark.gpu_sim
@requires_simulator
def test_two_ranks_with_nccl_on_the_simulated_gpu_train_the_weights_of_one_process(tmp_path):
    """The GPU path of data-parallel training: the NCCL communicator (through a test double of
    ``cupy.cuda.nccl`` that sums by MPI) inside the captured step of the simulated GPU backend, against the
    same backend in one process; the all-reduce runs once per step, on the step's stream, replayed by the
    captured graph, and the initial parameters and optimizer state go out by NCCL broadcasts."""
    cases = [{"optimizer": "adam", "dtype": "float64", "n": 100, "batch_size": 32, "backend": "gpu-sim",
              "nccl": True},
             {"optimizer": "sgd", "momentum": 0.9, "dtype": "float32", "n": 90, "batch_size": 32,
              "backend": "gpu-sim", "nccl": True}]
    per_rank = check_against_one_process(2, cases, tmp_path)
    for rank_results in per_rank:
        for case, result in zip(cases, rank_results):
            names = [name for name, *_ in result["nccl_calls"]]
            steps = 2 * -(-(case["n"] - 20) // case["batch_size"])
            assert names.count("allReduce") == steps, names
            assert names.count("bcast") == 1 + (2 if case["optimizer"] == "adam" else 1), names
            data_type = 8 if case["dtype"] == "float64" else 7
            assert all(call[2] == data_type for call in result["nccl_calls"]), result["nccl_calls"]


def test_only_rank_0_writes_checkpoints(tmp_path):
    """Every rank is given the directory; the checkpoints are rank 0's, and hold the trained weights."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    case = {"optimizer": "adam", "dtype": "float64", "n": 220, "batch_size": 50, "checkpoint_dir": str(directory)}
    per_rank = run_cases(2, [case], tmp_path)
    names = sorted(p.name for p in directory.iterdir() if p.name.startswith("ckpt-"))
    assert names == ["ckpt-epoch000001.npz", "ckpt-epoch000002.npz"]
    model = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(3)], input_dim=5, backend="cpu",
                          dtype="float64", seed=0).compile(optimizer=gb.optim.Adam(lr=0.01))
    from gpubp.checkpoint import restore_checkpoint

    restore_checkpoint(directory / names[-1], model)
    saved = np.concatenate([w.ravel() for w in model.get_weights()])
    assert np.array_equal(saved, per_rank[0][0]["weights"])


def test_a_run_of_two_ranks_resumes_on_three_and_matches_one_process(tmp_path):
    """2 epochs on 2 ranks with checkpoints, then a resume to 4 epochs on 3 ranks: the weights of 4 epochs
    in one process (the checkpoint is rank 0's, broadcast to every rank of the new run). The resumed run's
    models start from another seed, so only the checkpoint can make them match."""
    directory = tmp_path / "ckpt"
    case = {"optimizer": "adam", "dtype": "float64", "n": 117, "batch_size": 32, "checkpoint_dir": str(directory)}
    run_cases(2, [case], tmp_path)
    per_rank = run_cases(3, [dict(case, epochs=4, resume=True, seed=7)], tmp_path)
    reference = train(dict(case, epochs=4, checkpoint_dir=None))
    assert max_difference(train(dict(case, epochs=4, checkpoint_dir=None, seed=7)), reference) > 1e-3
    for results in per_rank:
        np.testing.assert_allclose(results[0]["loss"], reference["loss"], rtol=1e-12)
        assert max_difference(results[0], reference) < 1e-12
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith("ckpt-"))[-1] == "ckpt-epoch000004.npz"


def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 alone writes NaN into its weights before step 3: its loss is NaN, and both ranks raise
    TrainingDiverged for that step (no rank is left waiting: the run ends within the timeout)."""
    case = {"optimizer": "adam", "dtype": "float64", "n": 220, "batch_size": 40, "poison_rank": 1,
            "poison_batch": 2}
    per_rank = run_cases(2, [case], tmp_path)
    assert [results[0].get("diverged") for results in per_rank] == [{"iteration": 2, "epoch": 0, "step": 3}] * 2
    rank0, rank1 = (np.array(results[0]["weights"]) for results in per_rank)
    assert np.isfinite(rank0).all() and np.isnan(rank1[0])  # the NaN rank 1 wrote; no update applied it
    assert np.array_equal(rank0[1:], rank1[1:])


@pytest.mark.parametrize("method", ["on_batch_end", "on_epoch_end"])
def test_a_callback_that_raises_on_one_rank_stops_every_rank(tmp_path, method):
    """Rank 1's callback raises; rank 1 gets its error and rank 0 DistributedAbort, and neither is left
    waiting in a collective (the run ends within the timeout); both hold the same weights."""
    case = {"optimizer": "adam", "dtype": "float64", "n": 220, "batch_size": 50, "raise_rank": 1,
            "raise_in": method}
    per_rank = run_cases(2, [case], tmp_path)
    assert [results[0]["error"] for results in per_rank] == ["DistributedAbort", "KeyError"]
    assert per_rank[0][0]["weights"] == per_rank[1][0]["weights"]


def test_cli_distributed_prints_and_saves_on_rank_0_only(tmp_path):
    done = launch(2, ["-m", "gpubp", "train", "--distributed", "--backend", "cpu", "--epochs", "2", "--samples",
                      "300", "--json", "--save", str(tmp_path / "model.npz")], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    metrics = json.loads(lines[0])
    assert metrics["saved"] == str(tmp_path / "model.npz") and metrics["epochs"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_ctrl_c_to_mpiexec_stops_every_rank_after_the_same_step_and_saves(tmp_path):
    """mpiexec forwards Ctrl-C to the ranks; they agree to stop after one step, rank 0 saves the model."""
    path, reason = mpiexec()
    if path is None:
        pytest.skip(reason)
    process = subprocess.Popen(
        [path, "-n", "2", sys.executable, "-m", "gpubp", "train", "--distributed", "--backend", "cpu", "--epochs",
         "100000", "--samples", "2000", "--save", str(tmp_path / "model.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=dict(os.environ, **THREADS))
    try:
        for line in process.stdout:
            if line.startswith("epoch 3/"):
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert "interrupted by Ctrl-C after step" in err, out + err
    assert err.count("interrupted by Ctrl-C") == 1, err  # rank 0 alone reports
    assert "model saved to" in out and (tmp_path / "model.npz").exists(), out + err
    assert gb.load(tmp_path / "model.npz", backend="cpu").predict(np.zeros((1, 2))).shape == (1, 2)


# ---------------------------------------------------------------- in one process
def test_single_process_collectives_leave_their_arguments():
    comm = SingleProcess()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    flat = np.arange(5.0)
    comm.allreduce_mean_(flat)
    comm.allreduce_mean_(flat, weight=1.0)
    comm.broadcast_(flat)
    assert np.array_equal(flat, np.arange(5.0))
    assert comm.broadcast_object({"a": 1}) == {"a": 1}
    np.testing.assert_array_equal(comm.allreduce_scalars([1, 2.5]), [1.0, 2.5])
    assert comm.agree(True) is True and comm.agree(0) is False


def test_get_communicator():
    assert isinstance(get_communicator(None), SingleProcess)
    comm = SingleProcess()
    assert get_communicator(comm) is comm
    with pytest.raises(InvalidInputError, match="distributed must be"):
        get_communicator("gloo")


def test_agreed_reraises_the_error_of_this_rank():
    assert agreed(SingleProcess(), lambda: 3) == 3
    with pytest.raises(InvalidInputError, match="bad"):
        agreed(SingleProcess(), lambda: (_ for _ in ()).throw(InvalidInputError("bad")))

    class OtherRankFailed(SingleProcess):
        def agree(self, flag):
            return True

    with pytest.raises(DistributedAbort, match="another rank"):
        agreed(OtherRankFailed(), lambda: 3)


@pytest.mark.parametrize("rows, ranks", [(32, 3), (1, 3), (7, 2), (64, 2), (5, 5)])
def test_shares_cover_a_batch_once(rows, ranks):
    shares = [share_of_rows(rows, ranks, r) for r in range(ranks)]
    covered = [i for offset, count in shares for i in range(offset, offset + count)]
    assert covered == list(range(rows))
    assert max(c for _, c in shares) - min(c for _, c in shares) <= 1


def test_a_fit_in_one_process_is_unchanged_by_distributed_none_or_single_process():
    case = {"optimizer": "sgd", "dtype": "float64", "n": 120, "batch_size": 32}
    X, y = np.random.default_rng(0).normal(size=(100, 5)), np.arange(100) % 3

    def fit(distributed):
        model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(3)], input_dim=5, backend="cpu",
                              dtype="float64", seed=0).compile(optimizer="sgd")
        model.fit(X, y, batch_size=case["batch_size"], epochs=2, verbose=0, distributed=distributed)
        return model.get_weights()

    for a, b in zip(fit(None), fit(SingleProcess())):
        assert np.array_equal(a, b)


def test_the_all_reduce_hook_turns_off_plain_sgds_fused_update():
    model = gb.Sequential([gb.Dense(4), gb.Dense(2)], input_dim=3, backend="cpu").compile(optimizer="sgd")
    optimizer = model.optimizer
    assert optimizer.weight_gradient_targets(model.backend.kernels) is not None
    hook = GradientAllReduce(SingleProcess(), model.backend, model.status.array)
    optimizer.set_all_reduce(hook)
    assert optimizer.weight_gradient_targets(model.backend.kernels) is None
    assert [name for name, _ in model.gradient_hooks()] == ["all_reduce"]
    optimizer.set_all_reduce(None)
    assert model.gradient_hooks() == []


def _clear_launch_environment(monkeypatch):
    for name in WORLD_SIZE_VARIABLES + LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_launch_environment_gives_the_ranks_and_this_ranks_gpu(monkeypatch):
    _clear_launch_environment(monkeypatch)
    assert (launched_ranks(), node_local_rank(), device_for_this_rank(4)) == (1, 0, 0)
    monkeypatch.setenv("PMI_SIZE", "8")  # MPICH's Hydra: 8 ranks, this one the 6th on its node
    monkeypatch.setenv("MPI_LOCALRANKID", "5")
    assert (launched_ranks(), node_local_rank()) == (8, 5)
    assert (device_for_this_rank(8), device_for_this_rank(4), device_for_this_rank(1)) == (5, 1, 0)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "2")  # Open MPI's name comes first
    assert node_local_rank() == 2
    monkeypatch.setenv("MPI_LOCALRANKID", "not a number")
    monkeypatch.delenv("OMPI_COMM_WORLD_LOCAL_RANK")
    assert node_local_rank() == 0


def test_a_fit_in_one_of_several_launched_ranks_warns_that_copies_train(monkeypatch):
    _clear_launch_environment(monkeypatch)
    X, y = np.random.default_rng(0).normal(size=(40, 5)), np.arange(40) % 3
    model = gb.Sequential([gb.Dense(3)], input_dim=5, backend="cpu").compile(optimizer="sgd")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.warns(RuntimeWarning, match="4 independent copies are training"):
        model.fit(X, y, epochs=1, verbose=0)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, y, epochs=1, verbose=0)


@pytest.mark.gpu
@requires_gpu
def test_nccl_on_one_gpu_trains_as_one_process():
    """NCCL refuses two ranks on one GPU, so one GPU smoke-tests one rank: the all-reduce inside the
    captured step, through the real NCCL, leaves the weights of a run without it."""
    pytest.importorskip("mpi4py", reason="the NCCL communicator sends NCCL's id over MPI: pip install 'gpubp[mpi]'")
    from gpubp.communicator import NCCLCommunicator

    X, y = np.random.default_rng(0).normal(size=(300, 5)), np.arange(300) % 3

    def fit(distributed):
        model = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(3)], input_dim=5, backend="gpu",
                              dtype="float64", seed=0).compile(optimizer=gb.optim.Adam(lr=0.01))
        model.fit(X, y, batch_size=64, epochs=3, verbose=0, distributed=distributed)
        return np.concatenate([w.ravel() for w in model.get_weights()])

    np.testing.assert_array_equal(fit(NCCLCommunicator()), fit(None))


def test_the_scaling_model_counts_parameters_and_bounds_efficiency():
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import scaling_model

    assert scaling_model.parameters(784, 4096, 8, 10) == 784 * 4096 + 4096 + 7 * (4096 * 4096 + 4096) + 4096 * 10 + 10
    assert scaling_model.all_reduce_seconds(8e9, 8, 50e9) == pytest.approx(2 * 7 / 8 * 8e9 / 50e9)
    compute = 0.03
    for reduce in (0.001, 0.01, 0.02, 0.1):
        plain, overlapped = (scaling_model.efficiency(compute, reduce, overlap) for overlap in (False, True))
        assert 0 < plain < overlapped <= 1
    assert scaling_model.efficiency(compute, 0.01, True) == 1.0  # hidden behind the 20 ms backward pass
    assert "| medium (bf16) | InfiniBand" in scaling_model.table()
