"""The curvature products of the LiSSA and CG solves split over the ranks of a torch.distributed
group (:mod:`lipo_if.distributed`).

Every rank draws the same minibatch indices from the same seeded generator (the solvers' own
sampling), multiplies on its share of the rows (every ``size``-th, :func:`shard`), and the shares
are summed by ``all_reduce`` with weights ``|share| / |batch|``: the minibatch mean a single process
computes, up to the order of the floating-point sum. Memory per rank is unchanged (every rank holds
the training rows; it is the products that are split), so the solve scales with ranks where the
products dominate — a large training set or a large model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import World, current
from .curvature import Batch, CurvatureOperator, WrappedCurvature


def shard(idx: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of a batch ``idx`` ``[B]``: every ``size``-th from position ``rank``."""
    return idx[world.rank::world.size]


class DataParallelCurvature(WrappedCurvature):
    """``op``'s products split over the ranks of ``world``: each rank multiplies on its share of
    the rows, the weighted shares are all-reduced. Everything else is ``op``'s own (layout,
    sampling, facts); products on an explicit batch ``(X, y)`` (spectrum estimates) are computed
    whole on every rank, as they are cheap and must agree."""

    def __init__(self, op: CurvatureOperator, world: World):
        self.op, self.world = op, world
        self.kind, self.weight_decay, self.dtype, self.theta = op.kind, op.weight_decay, op.dtype, op.theta
        self.backend = f"{op.backend}, data-parallel over {world.size} ranks"
        self.folded_weight_decay = op.folded_weight_decay

    def matvec(self, vec: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        if batch is not None:
            return self.op.matvec(vec, batch)
        u = self.to_solver_layout(self.check_vec(vec))
        return self.from_solver_layout(self.solver_product(u, None).add_(u, alpha=self.folded_weight_decay))

    def to_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        return self.op.to_solver_layout(vec)

    def from_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        return self.op.from_solver_layout(vec)

    def solver_product(self, vec: torch.Tensor, idx: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = torch.arange(self.n_train) if idx is None else idx
        mine = shard(rows, self.world)
        if mine.numel():
            local = self.op.solver_product(vec, mine).mul_(mine.numel() / rows.numel())
        else:  # fewer rows than ranks: this rank adds nothing but still takes part
            local = torch.zeros_like(vec)
        dist.all_reduce(local)
        if out is not None:
            return out.copy_(local)
        return local


def data_parallel(op: CurvatureOperator, world: World | None = None) -> CurvatureOperator:
    """``op`` split over the active ranks (:class:`DataParallelCurvature`), or ``op`` itself when
    one process runs alone."""
    world = world or current()
    return DataParallelCurvature(op, world) if world.active else op
