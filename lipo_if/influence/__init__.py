"""Influence functions (Koh & Liang 2017) with LiSSA (Agarwal et al. 2016) for data selection.

Quantities (θ̂ = trained parameters, n training points, λ = weight decay)::

    R(θ)  = (1/n) Σᵢ (f(xᵢ;θ) − yᵢ)² + (λ/2)‖θ‖²     H = ∇²R(θ̂)   (or Gauss–Newton, λI included)
    v     = ∇θ L_heldout(θ̂)                          mean held-out squared error, no L2 term
    s     = (H + μI)⁻¹ v                              μ = damping, the same for every solver
    score(z) = −(1/n) s · ∇θ ℓ(z, θ̂)                 predicted Δ held-out loss; negative = helpful

The entry point is :class:`Influence` (:mod:`.api`): ``Influence(run, …).fit().scores(molecules)``.
Modules: :mod:`.mlp` (the MLP's forward/backward engine), :mod:`.curvature` (the operator
interface the solvers call), :mod:`.hvp` (autograd operator, the reference), :mod:`.native_hvp`
(explicit-matmul operator), :mod:`.spectrum` (power iteration / Lanczos), :mod:`.solvers`
(LiSSA / CG / direct / function-space), :mod:`.function_space` (NTK + Woodbury),
:mod:`.scores` (per-sample gradient dots), :mod:`.outputs` (the files of ``lipo-if influence``).
"""
from .api import HELDOUT_PARTS, OUTPUT_COLUMNS, Influence, InfluenceConfig, model_fingerprint
from .curvature import CurvatureOperator
from .hvp import HESSIAN_KINDS, HessianOperator, ParamBlock, dense_hessian, flatten_tensors, unflatten_vector
from .outputs import output_paths, write_scores
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
    "HELDOUT_PARTS", "HESSIAN_KINDS", "OUTPUT_COLUMNS", "SOLVER_METHODS", "CurvatureOperator", "HessianOperator",
    "Influence", "InfluenceConfig", "ParamBlock", "dense_hessian", "flatten_tensors",
    "model_fingerprint", "unflatten_vector", "output_paths", "write_scores", "grad_dot_fast", "grad_dot_reference",
    "influence_scores", "per_sample_grads", "renormalization_offset", "InfluenceSolverError", "LissaDivergenceError",
    "NegativeCurvatureError", "SolveResult", "SolverConfig", "solve", "SpectrumEstimate", "estimate_spectrum",
]
