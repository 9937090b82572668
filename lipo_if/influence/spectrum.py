"""Extreme eigenvalues of the curvature operator by power iteration.

LiSSA needs ``scale`` above the largest eigenvalue of ``H + μI`` (or the recursion diverges)
and, for the exact Hessian, ``H + μI`` positive definite; both are checked from these estimates.
The estimates are Rayleigh quotients / Ritz values, so ``lambda_max`` is a lower bound of the
true largest eigenvalue (approached from below) and ``lambda_min`` an upper bound of the true
smallest — the ``auto`` scale therefore keeps a safety margin.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .hvp import Batch, HessianOperator

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SpectrumEstimate:
    """Eigenvalue estimates of ``H`` (λ·I included; Hessian units: loss / parameter²).

    ``lambda_min`` is None for Gauss–Newton, which is PSD by construction (its smallest
    eigenvalue is ≥ weight_decay).
    """

    lambda_max: float
    lambda_min: float | None
    iterations: int

    def to_dict(self) -> dict:
        return asdict(self)


def power_iteration(
    matvec: MatVec, dim: int, iters: int, tol: float, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> tuple[float, torch.Tensor, int]:
    """Dominant eigenpair (largest |eigenvalue|) of a symmetric operator.

    Returns ``(eigenvalue, unit eigenvector [dim], iterations used)``; stops when the Rayleigh
    quotient changes by less than ``tol`` relative. The eigenvalue keeps its sign.
    """
    x = torch.randn(dim, generator=generator, dtype=dtype)
    x /= torch.linalg.vector_norm(x)
    eig = 0.0
    for it in range(1, iters + 1):
        hx = matvec(x)
        new_eig = float(x @ hx)  # Rayleigh quotient, x is unit
        norm = float(torch.linalg.vector_norm(hx))
        if norm == 0.0:
            return 0.0, x, it
        x = hx / norm
        if it > 1 and abs(new_eig - eig) <= tol * abs(new_eig):
            return new_eig, x, it
        eig = new_eig
    return eig, x, iters


def dominant_eigenvalue(
    op: HessianOperator, batch: Batch | None = None, iters: int = 50, tol: float = 1e-4, seed: int = 0
) -> tuple[float, int]:
    """Largest-|λ| eigenvalue of ``H_B`` (sign kept) and the iterations used; default: full training set."""
    gen = torch.Generator().manual_seed(seed)
    eig, _, used = power_iteration(lambda x: op.matvec(x, batch), op.n_params, iters, tol, gen, op.dtype)
    return eig, used


def lanczos_extremes(matvec: MatVec, dim: int, steps: int, generator: torch.Generator,
                     dtype: torch.dtype = torch.float64) -> tuple[float, float, int]:
    """Smallest and largest Ritz values of a symmetric operator after ``steps`` Lanczos steps.

    Full re-orthogonalization (keeps ``steps`` vectors of length ``dim``). Ritz values lie inside
    the spectrum, so the results bound it from inside: ``λ_min ≤ ritz_min`` and ``ritz_max ≤ λ_max``.
    Unlike power iteration on a shifted operator, Lanczos finds *both* ends quickly even when
    the spectrum is clustered near one of them (as the exact Hessian's is, near 0).
    Returns ``(ritz_min, ritz_max, steps used)``.
    """
    q = torch.randn(dim, generator=generator, dtype=dtype)
    basis = [q / torch.linalg.vector_norm(q)]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, dim)):
        w = matvec(basis[-1])
        alphas.append(float(basis[-1] @ w))
        Q = torch.stack(basis)
        for _ in range(2):  # classical Gram–Schmidt twice: orthogonal to working precision
            w = w - Q.T @ (Q @ w)
        beta = float(torch.linalg.vector_norm(w))
        if beta <= 1e-10 * max(abs(a) for a in alphas):  # invariant subspace found: Ritz values exact
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    T += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(T)
    return float(ritz[0]), float(ritz[-1]), k


#: Lanczos keeps this many vectors at most (memory: LANCZOS_MAX_STEPS · p · 8 bytes).
LANCZOS_MAX_STEPS = 60


def estimate_spectrum(
    op: HessianOperator, iters: int = 50, tol: float = 1e-4, seed: int = 0, batch: Batch | None = None
) -> SpectrumEstimate:
    """Largest (and, for the exact Hessian, smallest) eigenvalue of ``H_B`` (default: full training set).

    Gauss–Newton: power iteration (``iters`` steps at most, relative tolerance ``tol``).
    Exact: Lanczos with ``min(iters, LANCZOS_MAX_STEPS)`` steps for both ends — the smallest
    eigenvalue is what decides whether ``H + μI`` is positive definite.
    """
    if op.kind == "gauss-newton":
        dom, used = dominant_eigenvalue(op, batch, iters, tol, seed)
        return SpectrumEstimate(lambda_max=dom, lambda_min=None, iterations=used)
    gen = torch.Generator().manual_seed(seed)
    low, high, used = lanczos_extremes(lambda x: op.matvec(x, batch), op.n_params,
                                       min(iters, LANCZOS_MAX_STEPS), gen, op.dtype)
    return SpectrumEstimate(lambda_max=high, lambda_min=low, iterations=used)
