"""Work across processes and machines with torch.distributed: who this process is among the ranks.

``lipo-if influence`` started under ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK`` and the
rendezvous variables) joins the process group (:func:`init_from_env`): gloo for CPU tensors, NCCL
for CUDA tensors when CUDA is present. Then

- the pool's chunks are dealt round-robin over the ranks (:meth:`World.owns`; see
  :mod:`lipo_if.stream`), and rank 0 merges the parts into the file one process would write;
- the solve is data-parallel (:mod:`lipo_if.influence.data_parallel`, swapped in by the solvers
  whenever a group of more than one rank is active), and its solution is broadcast from rank 0,
  so every rank scores with the same ``s`` bit for bit;
- an ensemble with at least as many members as ranks puts its members on ranks instead: member
  ``i`` is solved by rank ``i mod size`` alone (inside :func:`alone`) and its fitted state is
  broadcast from there (:meth:`lipo_if.influence.Influence.fit`) — M whole solves in parallel
  rather than M solves one after another, each split M ways.

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing here changes anything.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

#: How long a rank waits at a barrier for the others (rank 0 waits there for the slowest shard
#: before merging). torchrun stops every rank when one fails, so a long wait cannot hang a run
#: whose peer died.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (``rank`` 0 … ``size`` − 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when more than one rank takes part (collectives are needed)."""
        return self.size > 1

    def owns(self, chunk_index: int) -> bool:
        """Whether chunk ``chunk_index`` (0-based, in file order) is this rank's to score."""
        return chunk_index % self.size == self.rank

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (each rank must call this)."""
        if not self.active:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on all), in rank order."""
        if not self.active:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(out, tensor)
        return out

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``tensor`` overwritten in place with rank ``src``'s values (returned)."""
        if self.active:
            dist.broadcast(tensor, src=src)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (any picklable object; CPU tensors inside) on every rank; the other
        ranks' ``obj`` is ignored."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]


#: > 0 inside :func:`alone`: this process works by itself although it is one of several ranks.
_alone_depth = 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Within this block :func:`current` answers a single process, so work a rank does by itself
    (one ensemble member's solve) issues no collectives; the other ranks need not take part."""
    global _alone_depth
    _alone_depth += 1
    try:
        yield
    finally:
        _alone_depth -= 1


def current() -> World:
    """The :class:`World` of the active process group (one rank when there is none)."""
    if not _alone_depth and dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE`` > 1), else
    stay a single process; returns :func:`current`."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return current()


def shutdown(graceful: bool = True) -> None:
    """Leave the process group (if this process joined one). ``graceful``: first wait for every
    rank to get here (tearing gloo down while a peer still talks to it aborts the process); a rank
    that failed leaves at once (torchrun then stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if graceful:
            dist.barrier()
        dist.destroy_process_group()
