"""Communicators for data-parallel training: N processes (ranks), each with the whole model and a share
of every global batch, combine their gradients before each update.

A :class:`Communicator` is the few collective operations training needs: an in-place all-reduce of the
flat gradient buffer, a broadcast of arrays (the initial parameters and optimizer state) and of small
objects, an all-reduce of a few host floats (losses, metrics, flags) and :meth:`~Communicator.agree`.

* :class:`SingleProcess`: one rank; every operation leaves its arguments as they are.
* :class:`MPICommunicator`: mpi4py on NumPy buffers (``Allreduce(MPI.IN_PLACE, ...)``), for the CPU
  backend; launch the ranks with ``mpiexec -n N``. Install it with ``pip install 'gpubp[mpi]'`` (mpi4py
  and the MPICH wheel, which brings ``mpiexec``), or build mpi4py against a site MPI.

GPU buffers are not handled yet: an all-reduce of CuPy buffers needs NCCL (the pip MPI builds are not
CUDA-aware), so data-parallel training runs on the CPU backend only for now.

:class:`GradientAllReduce` is the gradient hook that puts a communicator into the training step.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import BackendUnavailableError, DistributedAbort, InvalidInputError, InvalidTypeError

#: The environment variables that set the threads of the BLAS, OpenMP and Numba thread pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class Communicator:
    """The collective operations of data-parallel training (the base class is one rank alone).

    Attributes
    ----------
    rank : int
        This process's index, 0 .. size - 1; rank 0 (the root) writes files and prints.
    size : int
        The number of ranks.
    """

    rank = 0
    size = 1

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce_mean_(self, flat, weight=None):
        """Replace the host array ``flat`` on every rank with the combination of all ranks' ``flat``, in place.

        ``weight=None``: the mean (sum, then divide by :attr:`size`). Otherwise this rank's ``flat`` is
        scaled by ``weight`` before the sum, so with each rank's weight its share of the rows of a batch,
        the mean gradients of uneven shares combine into the mean gradient of the whole batch.
        """

    def broadcast_(self, array, root=0):
        """Copy ``root``'s host array into ``array`` on every other rank, in place."""

    def broadcast_object(self, obj, root=0):
        """``root``'s ``obj`` (a small picklable value) on every rank."""
        return obj

    def allreduce_scalars(self, values):
        """The element-wise sum over ranks of a few host numbers, as a float64 NumPy array."""
        return np.array(values, dtype=np.float64)

    def agree(self, flag):
        """True on every rank when ``flag`` is true on any rank."""
        return bool(flag)


class SingleProcess(Communicator):
    """One process: rank 0 of 1, and every collective operation leaves its arguments as they are."""

    def __repr__(self):
        return "SingleProcess()"


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (default ``MPI.COMM_WORLD``) through mpi4py, on NumPy buffers.

    ``limit_threads``: set this process's BLAS, OpenMP and Numba threads to its share of the node's
    cores (cores / ranks on the node, at least 1), unless the user set one of :data:`THREAD_VARIABLES`.
    """

    def __init__(self, comm=None, limit_threads=True):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise BackendUnavailableError(
                f"distributed training needs mpi4py ({exc}): pip install 'gpubp[mpi]' and launch with "
                f"mpiexec -n N") from None
        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        #: ranks of this communicator on this node (they share its cores)
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.threads = limit_threads_to_share(self.local_size) if limit_threads else None

    def __repr__(self):
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    def allreduce_mean_(self, flat, weight=None):
        _check_host_buffer(flat)
        if weight is not None:
            np.multiply(flat, weight, out=flat)
        self.comm.Allreduce(self._mpi.IN_PLACE, flat, op=self._mpi.SUM)
        if weight is None:
            np.multiply(flat, 1.0 / self.size, out=flat)

    def broadcast_(self, array, root=0):
        _check_host_buffer(array)
        self.comm.Bcast(array, root=root)

    def broadcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allreduce_scalars(self, values):
        buffer = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        return buffer

    def agree(self, flag):
        return bool(self.allreduce_scalars([1.0 if flag else 0.0])[0] > 0)


def _check_host_buffer(array):
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise InvalidTypeError(f"the MPI communicator works on contiguous NumPy arrays, got "
                               f"{type(array).__name__}; GPU buffers need NCCL, which is not supported yet")


def limit_threads_to_share(ranks_on_node):
    """Set this process's BLAS/OpenMP (through threadpoolctl, when installed) and Numba threads to
    ``cores // ranks_on_node`` (at least 1), unless one of :data:`THREAD_VARIABLES` is set; returns the
    count set, or None when left to the user."""
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, ranks_on_node))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(limits=threads)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def get_communicator(distributed):
    """The communicator of ``fit(distributed=...)``: None (one process), "mpi" or a :class:`Communicator`."""
    if distributed is None or distributed is False:
        return SingleProcess()
    if isinstance(distributed, Communicator):
        return distributed
    if isinstance(distributed, str) and distributed.lower() == "mpi":
        return MPICommunicator()
    raise InvalidInputError(f"distributed must be None, 'mpi' or a gpubp.communicator.Communicator, "
                            f"got {distributed!r}")


def agreed(communicator, work):
    """``work()`` on every rank; when it raises on any rank, it raises on every rank (the others raise
    :class:`DistributedAbort`), so that no rank goes on to wait in a collective operation for one that left."""
    try:
        result, error = work(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the ranks have agreed
        result, error = None, exc
    if communicator.agree(error is not None):
        if error is not None:
            raise error
        raise DistributedAbort("another rank stopped with an error (reported by that rank)")
    return result


class GradientAllReduce:
    """The gradient hook of a data-parallel training step: all-reduces the flat gradient in place.

    Runs first among the gradient hooks (before clipping and the guarded update). :attr:`weight` is this
    rank's share of the current global batch (its rows / the batch's rows), set by the training loop
    before each step. When this rank has already recorded a non-finite step in the model's divergence
    status (its loss), its gradient is sent as NaN, so that every rank's guarded update refuses the same
    step and no rank trains on while another stops.

    Works on buffers in host memory (``backend.host_view``): the CPU backend.
    """

    def __init__(self, communicator, backend, status):
        self.communicator, self.backend = communicator, backend
        self.status = backend.host_view(status)
        if self.status is None:
            raise BackendUnavailableError(
                f"data-parallel training runs on the CPU backend only for now (GPU buffers need NCCL); "
                f"this model is on {backend.name}")
        self.weight = 1.0 / communicator.size

    def __call__(self, kernels, g):
        flat = self.backend.host_view(g)
        if self.status[0] != 0:
            flat.fill(np.nan)
        self.communicator.allreduce_mean_(flat, self.weight)
