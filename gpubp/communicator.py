"""Communicators for data-parallel training: N processes (ranks), each with the whole model and a share
of every global batch, combine their gradients before each update.

A :class:`Communicator` is the few collective operations training needs: an in-place all-reduce of the
flat gradient buffer, a broadcast of arrays (the initial parameters and optimizer state) and of small
objects, an all-reduce of a few host floats (losses, metrics, flags) and :meth:`~Communicator.agree`.

* :class:`SingleProcess`: one rank; every operation leaves its arguments as they are.
* :class:`MPICommunicator`: mpi4py on NumPy buffers (``Allreduce(MPI.IN_PLACE, ...)``), for the CPU
  backend; launch the ranks with ``mpiexec -n N``. Install it with ``pip install 'gpubp[mpi]'`` (mpi4py
  and the MPICH wheel, which brings ``mpiexec``), or build mpi4py against a site MPI.
* :class:`NCCLCommunicator`: NCCL (through ``cupy.cuda.nccl``) on GPU buffers, on the step's stream, so
  the all-reduce sits inside the captured step; MPI launches the ranks, sends NCCL's unique id and
  carries the few host numbers. One GPU per rank, chosen from the node-local rank (see
  :mod:`gpubp.launch_environment`). The pip MPI builds are not CUDA-aware, hence NCCL for device buffers.

:class:`GradientAllReduce` is the gradient hook that puts a communicator into the training step: it calls
the kernel ``all_reduce_mean_``, which weighs this rank's gradient on the device and hands the buffer to
:meth:`Communicator.allreduce_sum_`.
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

    def allreduce_sum_(self, buffer, stream=None):
        """Replace the contiguous ``buffer`` on every rank with the sum of all ranks' ``buffer``, in place.

        ``stream``: the device stream (an integer handle) the sum is queued on, for device buffers; None
        for host buffers, and for device buffers the default stream.
        """

    def allreduce_mean_(self, flat, weight=None):
        """Replace ``flat`` on every rank with the combination of all ranks' ``flat``, in place (host code;
        the training step weighs on the device instead, see ``all_reduce_mean_`` in the kernel contract).

        ``weight=None``: the mean (sum, then divide by :attr:`size`). Otherwise this rank's ``flat`` is
        scaled by ``weight`` before the sum, so with each rank's weight its share of the rows of a batch,
        the mean gradients of uneven shares combine into the mean gradient of the whole batch.
        """
        if weight is not None:
            flat *= weight
        self.allreduce_sum_(flat)
        if weight is None:
            flat *= 1.0 / self.size

    def broadcast_(self, array, root=0):
        """Copy ``root``'s array (host or device, as :meth:`allreduce_sum_` takes) into ``array`` on every
        other rank, in place."""

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

    def allreduce_sum_(self, buffer, stream=None):
        _check_host_buffer(buffer)
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

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


class NCCLCommunicator(MPICommunicator):
    """The ranks of an MPI communicator, with their GPU buffers combined by NCCL (``cupy.cuda.nccl``).

    One GPU per rank: the GPU backend has already chosen this rank's device from its node-local rank.
    Rank 0 makes NCCL's unique id and MPI broadcasts it; the sums and broadcasts of device buffers then go
    through NCCL on the stream they are given (the training step's), the host numbers of
    :meth:`allreduce_scalars` and :meth:`agree` through MPI. NCCL refuses two ranks on one GPU.

    ``nccl``: the NCCL API (default ``cupy.cuda.nccl``): ``get_unique_id()``, ``NcclCommunicator(size,
    unique_id, rank)`` with ``allReduce`` and ``bcast`` on device pointers, the ``NCCL_*`` constants; the
    tests pass a stand-in that works on host memory under the CUDA simulator.
    """

    def __init__(self, comm=None, nccl=None, limit_threads=False):
        if nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"GPU data-parallel training needs NCCL through CuPy ({exc}); install the GPU extra "
                    f"(pip install 'gpubp[cuda12]'), which brings the NCCL wheel") from None
            if not getattr(nccl, "available", True):
                raise BackendUnavailableError("CuPy finds no NCCL library (libnccl.so.2): pip install "
                                              "nvidia-nccl-cu12 (or -cu13), which the GPU extras bring")
        super().__init__(comm, limit_threads=limit_threads)
        self.nccl = nccl
        #: NCCL data type codes of the float dtypes
        self.data_types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        unique_id = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def __repr__(self):
        return f"NCCLCommunicator(rank={self.rank}, size={self.size})"

    def _pointer_and_type(self, buffer):
        interface = getattr(buffer, "__cuda_array_interface__", None)
        if interface is None and getattr(self.nccl, "accepts_host_memory", False):
            interface = getattr(buffer, "__array_interface__", None)
        data_type = self.data_types.get(np.dtype(getattr(buffer, "dtype", None) or np.uint8))
        if interface is None or data_type is None or not buffer.flags.c_contiguous:
            raise InvalidTypeError(f"the NCCL communicator works on contiguous float32/float64 GPU arrays, "
                                   f"got {type(buffer).__name__}")
        return interface["data"][0], data_type

    def allreduce_sum_(self, buffer, stream=None):
        pointer, data_type = self._pointer_and_type(buffer)
        self.nccl_comm.allReduce(pointer, pointer, buffer.size, data_type, self.nccl.NCCL_SUM, stream or 0)

    def broadcast_(self, array, root=0):
        pointer, data_type = self._pointer_and_type(array)
        self.nccl_comm.bcast(pointer, array.size, data_type, root, 0)


def _check_host_buffer(array):
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise InvalidTypeError(f"the MPI communicator works on contiguous NumPy arrays, got "
                               f"{type(array).__name__}; GPU buffers need the NCCL communicator")


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


def get_communicator(distributed, on_gpu=False):
    """The communicator of ``fit(distributed=...)``: None (one process), "mpi" (MPI; on a GPU model MPI
    with NCCL for the device buffers), "nccl" or a :class:`Communicator`."""
    if distributed is None or distributed is False:
        return SingleProcess()
    if isinstance(distributed, Communicator):
        return distributed
    name = distributed.lower() if isinstance(distributed, str) else None
    if name == "nccl" or (name == "mpi" and on_gpu):
        return NCCLCommunicator()
    if name == "mpi":
        return MPICommunicator()
    raise InvalidInputError(f"distributed must be None, 'mpi', 'nccl' or a gpubp.communicator.Communicator, "
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

    Runs first among the gradient hooks (before clipping and the guarded update), as the kernel
    ``all_reduce_mean_`` on the step's device. :attr:`weight` is this rank's share of the current global
    batch (its rows / the batch's rows), set by the training loop before each step and staged to the
    device (a captured step reads the current one). When this rank has already recorded a non-finite
    step in the model's divergence status (its loss), its gradient is sent as NaN, so that every rank's
    guarded update refuses the same step and no rank trains on while another stops.
    """

    def __init__(self, communicator, backend, status):
        self.communicator, self.status = communicator, status
        self._weight = backend.staged(np.full(1, 1.0 / communicator.size))
        self._weight.upload()

    @property
    def weight(self):
        return float(self._weight.host[0])

    @weight.setter
    def weight(self, value):
        if value != self._weight.host[0]:  # staged only when it changes: once per epoch at most
            self._weight.host[0] = value
            self._weight.upload()

    def __call__(self, kernels, g):
        kernels.all_reduce_mean_(g, self._weight.device, self.status, self.communicator)
