"""A test double of ``cupy.cuda.nccl`` for data-parallel runs under the CUDA simulator.

The calls :class:`gpubp.communicator.NCCLCommunicator` makes, with NCCL's argument conventions (device
pointers as integers, element counts, NCCL data type and operation codes, a stream handle), carried out
by MPI on the host memory the simulator's "device" arrays live in. It checks what NCCL would refuse: a
unique id that differs between ranks, a rank or size that does not match the launch, an unknown data type.
"""

import ctypes

import numpy as np
from mpi4py import MPI

NCCL_SUM = 0
NCCL_FLOAT32, NCCL_FLOAT64 = 7, 8
NCCL_UNIQUE_ID_BYTES = 128
available = True
#: the simulator's device arrays are NumPy arrays: take their host addresses
accepts_host_memory = True
_DTYPES = {NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
#: every collective call of this process: (name, count, data type, stream)
calls = []


def get_unique_id():
    return tuple(int(b) for b in np.random.default_rng().integers(-128, 128, NCCL_UNIQUE_ID_BYTES))


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        world = MPI.COMM_WORLD
        if len(commId) != NCCL_UNIQUE_ID_BYTES or any(other != tuple(commId) for other in world.allgather(tuple(commId))):
            raise RuntimeError("NCCL_ERROR_INVALID_ARGUMENT: the ranks were given different unique ids")
        if ndev != world.Get_size() or rank != world.Get_rank():
            raise RuntimeError(f"NCCL_ERROR_INVALID_RANK: rank {rank} of {ndev} in a launch of {world.Get_size()}")
        self.comm = world.Dup()

    @staticmethod
    def _memory(pointer, count, datatype):
        dtype = np.dtype(_DTYPES[datatype])
        return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(pointer), dtype, count)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        if op != NCCL_SUM or not isinstance(stream, int):
            raise RuntimeError(f"NCCL_ERROR_INVALID_ARGUMENT: op {op}, stream {stream!r}")
        calls.append(("allReduce", count, datatype, stream))
        recv = self._memory(recvbuf, count, datatype)
        if sendbuf == recvbuf:
            self.comm.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM)
        else:
            self.comm.Allreduce(self._memory(sendbuf, count, datatype), recv, op=MPI.SUM)

    def bcast(self, buff, count, datatype, root, stream):
        calls.append(("bcast", count, datatype, stream))
        self.comm.Bcast(self._memory(buff, count, datatype), root=root)
