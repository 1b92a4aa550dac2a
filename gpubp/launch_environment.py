"""What a launcher (``mpiexec``, ``srun``, ``torchrun``) tells a process through its environment: how
many ranks it started and this process's rank among those on its node.

Read without importing MPI, so that the GPU backend can pick this rank's device before anything is
allocated on it, and a fit that was not asked to train data-parallel can warn that the launcher started
several independent copies.
"""

from __future__ import annotations

import os

#: Variables holding the number of ranks started: Open MPI, MPICH/Intel MPI (Hydra, PMI), MVAPICH, torchrun.
WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE")
#: Variables holding this process's rank among the ranks on its node: Open MPI, MPICH/Intel MPI (Hydra),
#: MVAPICH, Cray PALS, Slurm's srun, torchrun.
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                        "PALS_LOCAL_RANKID", "SLURM_LOCALID", "LOCAL_RANK")


def _first_integer(names):
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launched_ranks():
    """The number of ranks the launcher started (1 when this process was not started by one)."""
    return max(1, _first_integer(WORLD_SIZE_VARIABLES) or 1)


def node_local_rank():
    """This process's rank among the launcher's ranks on its node (0 when not launched by one)."""
    return _first_integer(LOCAL_RANK_VARIABLES) or 0


def device_for_this_rank(device_count):
    """The GPU index of this rank: its node-local rank modulo ``device_count`` (one GPU per rank when the
    node runs as many ranks as it has GPUs)."""
    return node_local_rank() % max(1, int(device_count))
