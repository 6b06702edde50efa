"""needle.distributed: data-parallel training on MPI (mpi4py with the MPICH wheel).

Run a script on N processes with `mpiexec -n N python script.py`; outside `mpiexec` it
runs as a world of one. See docs/distributed.md.
"""
from .collectives import (AllGather, AllReduce, Broadcast, ReduceScatter, all_gather, all_reduce, broadcast,
                          reduce_scatter)
from .fingerprint import GraphMismatch, check_same_graph
from .sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .training import DistributedOptimizer, broadcast_parameters
from .world import (abort, barrier, comm, init, is_initialized, local_rank, rank, stats,
                    under_mpiexec, world_size)

__all__ = ["init", "is_initialized", "under_mpiexec", "abort", "comm", "stats", "rank", "world_size", "local_rank", "barrier", "all_reduce", "broadcast",
           "all_gather", "reduce_scatter", "broadcast_parameters", "DistributedOptimizer", "GraphMismatch", "check_same_graph",
           "AllReduce", "Broadcast", "AllGather", "ReduceScatter", "SyncBatchNorm", "convert_sync_batchnorm"]
