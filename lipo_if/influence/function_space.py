"""The damped Gauss–Newton system solved in function space (empirical NTK + Woodbury).

With the Gauss–Newton curvature ``H = (2/n) JᵀJ + λI`` (``J = ∂f/∂θ`` of the ``n`` training rows,
``[n, p]``) and ``c = λ + μ``, the Woodbury identity gives::

    (H + μI)⁻¹ = (1/c) [I − Jᵀ (K + (c n/2) I)⁻¹ J],          K = J Jᵀ  (the empirical NTK, [n, n])

so one ``n × n`` Cholesky factorization replaces an iterative solve of the ≈ 1 M-parameter system.
For the MLP ``K_XY = Σ_l (δ_X δ_Yᵀ) ∘ (a_X a_Yᵀ + 1)`` over its Linear layers (``a``: a layer's
input, ``δ``: ``∂f/∂(layer output)``, :meth:`~lipo_if.influence.mlp.MLP.tangent_factors`) — one
forward/backward pass per row and Gram products, never a per-sample parameter gradient.

Two uses:

- :meth:`FunctionSpaceSolver.solve`: ``s = (H + μI)⁻¹ v`` as a parameter vector (the solver
  ``"function-space"`` of :class:`~lipo_if.influence.api.Influence`; exact up to rounding, so
  its scores equal a converged CG solve of the same system);
- :meth:`FunctionSpaceSolver.response`: ``J_X (H + μI)⁻¹ J_Yᵀ`` ``[|X|, |Y|]``, the change of the
  predictions on X that upweighting the rows Y causes — the second-order interactions of the
  greedy guard (:mod:`lipo_if.select`).

The exact (indefinite) Hessian has no such form; this solver is Gauss–Newton only.
"""
from __future__ import annotations

import math

import torch

from .mlp import MLP

Factors = list  # [(a_l [B, in_l], δ_l [B, out_l])] per layer


def ntk(fx: Factors, fy: Factors) -> torch.Tensor:
    """Empirical NTK ``J_X J_Yᵀ`` ``[Bx, By]`` from the tangent factors of two row sets."""
    return sum((dx @ dy.T) * (ax @ ay.T + 1.0) for (ax, dx), (ay, dy) in zip(fx, fy))


def jacobian_vector(factors: Factors, vec: list[torch.Tensor]) -> torch.Tensor:
    """``J v`` ``[B]``: every row's ``∇f · v`` for ``vec`` = one tensor per parameter (weight, bias per layer)."""
    return sum(((a @ vec[2 * l].T) * d).sum(1) + d @ vec[2 * l + 1] for l, (a, d) in enumerate(factors))


def jacobian_transpose(factors: Factors, weights: torch.Tensor) -> list[torch.Tensor]:
    """``Jᵀ w``: ``Σ_i w_i ∇f(x_i)`` as one tensor per parameter (weight ``[out, in]``, bias ``[out]``)."""
    out = []
    for a, d in factors:
        g = d * weights.unsqueeze(1)
        out += [g.T @ a, g.sum(0)]
    return out


class FunctionSpaceSolver:
    """``(H + μI)⁻¹`` for the Gauss–Newton curvature of an MLP's training objective.

    Args:
        mlp: the model at θ̂ (float64 tensors).
        X_train: ``[n, d]`` training inputs (the ``n`` of ``1/n``).
        weight_decay: λ ≥ 0; damping: μ ≥ 0 (absolute, Hessian units); ``λ + μ`` must be > 0.
    """

    def __init__(self, mlp: MLP, X_train: torch.Tensor, weight_decay: float, damping: float) -> None:
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {damping}")
        self.c = float(weight_decay) + float(damping)
        if self.c <= 0:
            raise ValueError("weight decay + damping must be positive for the function-space solve")
        self.mlp, self.damping, self.weight_decay = mlp, float(damping), float(weight_decay)
        self.n = int(X_train.shape[0])
        with torch.no_grad():
            _, self.train_factors = mlp.tangent_factors(X_train.to(torch.float64))
            K = ntk(self.train_factors, self.train_factors)
            K.diagonal().add_(self.c * self.n / 2.0)
            self.chol = torch.linalg.cholesky(K)

    def solve(self, vec: list[torch.Tensor]) -> list[torch.Tensor]:
        """``(H + μI)⁻¹ v`` for ``v`` given per parameter (weight, bias per layer); same layout out."""
        with torch.no_grad():
            Jv = jacobian_vector(self.train_factors, vec)
            w = torch.cholesky_solve(Jv.unsqueeze(1), self.chol)[:, 0]
            back = jacobian_transpose(self.train_factors, w)
            return [(v - b) / self.c for v, b in zip(vec, back)]

    def response(self, fx: Factors, fy: Factors) -> torch.Tensor:
        """``J_X (H + μI)⁻¹ J_Yᵀ`` ``[|X|, |Y|]`` from the tangent factors of X and Y."""
        with torch.no_grad():
            K_TX, K_TY = ntk(self.train_factors, fx), ntk(self.train_factors, fy)
            return (ntk(fx, fy) - K_TX.T @ torch.cholesky_solve(K_TY, self.chol)) / self.c
