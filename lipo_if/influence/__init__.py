"""Influence functions (Koh & Liang 2017) with LiSSA (Agarwal et al. 2016) for data selection.

Quantities (θ̂ = trained parameters, n training points, λ = weight decay)::

    R(θ)  = (1/n) Σᵢ (f(xᵢ;θ) − yᵢ)² + (λ/2)‖θ‖²     H = ∇²R(θ̂)   (or Gauss–Newton, λI included)
    v     = ∇θ L_heldout(θ̂)                          mean held-out squared error, no L2 term
    s     = (H + μI)⁻¹ v                              μ = damping, the same for every solver
    score(z) = −(1/n) s · ∇θ ℓ(z, θ̂)                 predicted Δ held-out loss; negative = helpful

Modules: :mod:`.hvp` (operators), :mod:`.spectrum` (power iteration), :mod:`.solvers`
(LiSSA / CG / direct), :mod:`.scores` (per-sample gradient dots), :mod:`.pipeline` (CSV in,
scores out).
"""
from .hvp import HESSIAN_KINDS, HessianOperator, ParamBlock, dense_hessian, flatten_tensors, unflatten_vector
from .pipeline import InfluenceConfig, exclusion_reasons, output_paths, run_influence
from .scores import grad_dot_fast, grad_dot_reference, influence_scores, per_sample_grads, renormalization_offset
from .solvers import (
    SOLVER_METHODS,
    InfluenceSolverError,
    LissaDivergenceError,
    NegativeCurvatureError,
    SolveResult,
    SolverConfig,
    solve,
)
from .spectrum import SpectrumEstimate, estimate_spectrum

__all__ = [
    "HESSIAN_KINDS", "SOLVER_METHODS", "HessianOperator", "ParamBlock", "dense_hessian", "flatten_tensors",
    "unflatten_vector", "InfluenceConfig", "exclusion_reasons", "output_paths", "run_influence", "grad_dot_fast",
    "grad_dot_reference", "influence_scores", "per_sample_grads", "renormalization_offset", "InfluenceSolverError",
    "LissaDivergenceError", "NegativeCurvatureError", "SolveResult", "SolverConfig", "solve", "SpectrumEstimate",
    "estimate_spectrum",
]
