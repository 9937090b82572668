"""TracIn-CP (Pruthi et al. 2020): influence traced along the training trajectory.

``tracin(z) = −Σ_k η_k ∇θℓ(z; θ_k) · ∇θL_heldout(θ_k)`` over the checkpoints ``θ_k`` that training
kept (``TrainConfig.checkpoint_every``; ``η_k`` = learning rate × epochs between checkpoints): the
first-order change of the held-out loss that the SGD steps on z along the trajectory caused —
negative = helpful, the sign convention of the influence score. No Hessian, no solve; every
product ``∇ℓ(z; θ_k)·v_k`` goes through the fused per-sample-gradient dot product of
:func:`~lipo_if.influence.scores.grad_dots` (per-sample gradients are never materialized). Adam
rescales its steps per parameter; like Pruthi et al. for adaptive optimizers, η_k is the nominal
learning rate.
"""
from __future__ import annotations

import copy

import torch

from .hvp import HessianOperator
from .scores import grad_dots


def checkpoint_operators(run, dtype: torch.dtype, chunk_size: int) -> list[tuple[HessianOperator, float]]:
    """``[(operator at θ_k, η_k)]`` for the run's checkpoints (ValueError when it kept none)."""
    if not run.checkpoints:
        raise ValueError("TracIn needs training checkpoints: train with --checkpoint-every N (TrainConfig.checkpoint_every)")
    X, y = run.tensors("train")
    out, previous = [], 0
    for ckpt in run.checkpoints:
        model = copy.deepcopy(run.model)
        model.load_state_dict(ckpt.state_dict)
        op = HessianOperator(model.eval(), X, y, float(run.config.weight_decay), chunk_size=chunk_size, dtype=dtype)
        out.append((op, float(ckpt.lr) * (ckpt.epoch - previous)))
        previous = ckpt.epoch
    return out


def tracin_scores(operators: list[tuple[HessianOperator, float]], heldout_grads: list[torch.Tensor],
                  X: torch.Tensor, y: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``−Σ_k η_k v_k·∇ℓ(zᵢ; θ_k)`` ``[B]`` for candidates ``X`` ``[B, d]``, ``y`` ``[B]``."""
    total = torch.zeros(X.shape[0], dtype=heldout_grads[0].dtype)
    for (op, eta), v in zip(operators, heldout_grads):
        total -= eta * grad_dots(op, v, X, y, "fast", chunk_size)[:, 0]
    return total
