"""Self-influence ``∇ℓ(z)ᵀ (H + μI)⁻¹ ∇ℓ(z)`` of many molecules without one solve per molecule.

Koh & Liang (2017, §5.4) rank training points by self-influence to find wrong labels: a point the
model can only fit by moving its parameters a long way has a large self-influence. For the
package's MLP and the Gauss–Newton curvature ``H = (2/n)JᵀJ + λI`` the per-sample gradient of
``ℓ = (f − y)²`` is ``∇ℓ(z) = 2 r_z J_zᵀ`` (``r_z = f(z) − y_z``), so::

    SI(z) = 4 r_z² · J_z (H + μI)⁻¹ J_zᵀ = 4 r_z² · L(z),
    L(z)  = (1/c) [K_zz − k_zᵀ (K + (c n/2) I)⁻¹ k_z],          c = λ + μ

with ``K`` the training NTK, ``k_z = J_train J_zᵀ`` and ``K_zz = ‖J_z‖²`` (the function-space form
of :mod:`.function_space`): one Cholesky factorization for every molecule, the pool's and the
training set's alike. ``L(z)`` is the molecule's *leverage* under the damped curvature — how far
the model can move its prediction for z per unit of added loss weight — so SI is the squared
residual weighted by leverage. Exact up to rounding (no low-rank or Arnoldi approximation), checked
against dense solves on a small model in the tests.
"""
from __future__ import annotations

import torch

from .function_space import FunctionSpaceSolver, ntk
from .mlp import MLP


def leverage(fs: FunctionSpaceSolver, mlp: MLP, X: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """``L(z) = J_z (H + μI)⁻¹ J_zᵀ`` ``[B]`` for every row of ``X`` ``[B, d]`` (float64)."""
    out = []
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk_size):
            _, factors = mlp.tangent_factors(X[start:start + chunk_size].to(torch.float64))
            diag = sum((d * d).sum(1) * ((a * a).sum(1) + 1.0) for a, d in factors)  # ‖J_z‖² per row
            k = ntk(fs.train_factors, factors)  # [n, b]
            solved = torch.cholesky_solve(k, fs.chol)
            out.append((diag - (k * solved).sum(0)) / fs.c)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def self_influence(fs: FunctionSpaceSolver, mlp: MLP, X: torch.Tensor, y: torch.Tensor,
                   chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(SI [B], leverage [B], residual [B])`` for rows ``X`` ``[B, d]`` with labels ``y`` ``[B]``
    (float64; SI in loss units per unit of loss weight, logD²)."""
    lev = leverage(fs, mlp, X, chunk_size)
    with torch.no_grad():
        pred = torch.cat([mlp.forward(X[i:i + chunk_size].to(torch.float64)).output[:, 0]
                          for i in range(0, X.shape[0], chunk_size)]) if X.shape[0] else torch.zeros(0, dtype=torch.float64)
    residual = pred - y.to(torch.float64)
    return 4.0 * residual ** 2 * lev, lev, residual
