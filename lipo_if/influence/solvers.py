"""Inverse-Hessian-vector products ``s = (H + μI)⁻¹ v`` by LiSSA, conjugate gradients or a direct solve.

Damping convention (one meaning for every solver)
-------------------------------------------------
``damping = μ`` is an *absolute* Tikhonov term in Hessian units: every method solves::

    (H + μ I) s = v

LiSSA (Agarwal et al. 2016) is the recursion, on a fresh training minibatch ``B`` per step::

    h₀ = v,   hⱼ = v + (1 − d)·hⱼ₋₁ − H_B hⱼ₋₁ / scale,      result  s = h_depth / scale

Its fixed point satisfies ``h = v + (1−d)h − Hh/scale``, i.e. ``(H + d·scale·I) h = scale·v``,
so ``h* = scale·(H + d·scale·I)⁻¹ v`` and ``h*/scale = (H + d·scale·I)⁻¹ v``. The recursion's
own damping ``d`` is therefore set to ``d = μ / scale``: LiSSA, CG and the direct solve then
solve the *same* damped system whatever the scale, and changing ``scale`` only changes the
speed and stability of LiSSA, not its answer. (Codes that expose ``d`` directly solve a system
whose damping silently grows with the scale.)

LiSSA converges when all eigenvalues of ``(H_B + μI)/scale`` lie in ``(0, 2)``; the error then
contracts per step by ``1 − (λ_min + μ)/scale``, so about ``scale/(λ_min + μ)·ln(1/ε)`` steps
are needed. With minibatches the iterate keeps a noise floor set by the batch size;
``repeats`` independent chains are averaged to lower it.

The stopping tolerance ``tol`` is relative: LiSSA stops when ``‖hⱼ − hⱼ₋₁‖ ≤ tol·‖hⱼ‖`` (the
remaining error can be up to ``scale/(λ_min + μ)`` times larger), CG when ``‖r‖ ≤ tol·‖v‖``.
Every result reports the true relative residual ``‖(H + μI)s − v‖/‖v‖`` on the full training set.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from lipo_if.ops import lissa_step

from ..distributed import current
from .curvature import CurvatureOperator
from .data_parallel import data_parallel
from .function_space import FunctionSpaceSolver
from .hvp import DENSE_PARAM_LIMIT, HessianOperator, dense_hessian
from .mlp import MLP, mlp_unsupported_reason
from .native_hvp import HVP_BACKENDS, select_hvp
from .spectrum import SpectrumEstimate, dominant_eigenvalue, estimate_spectrum

log = logging.getLogger(__name__)

SolverMethod = Literal["lissa", "cg", "direct", "function-space"]
SOLVER_METHODS: tuple[str, ...] = ("lissa", "cg", "direct", "function-space")
AUTO = "auto"
#: ``damping="auto"`` means ``μ = AUTO_DAMPING_FRACTION · λ_max``.
AUTO_DAMPING_FRACTION = 0.02
#: ``scale="auto"`` means ``scale = AUTO_SCALE_MARGIN · (λ_max + μ)`` (full training set) …
AUTO_SCALE_MARGIN = 1.25
#: … but at least ``AUTO_BATCH_SCALE_MARGIN · (λ_max(H_B) + μ)`` over a few sampled minibatches,
#: since LiSSA diverges only when a minibatch eigenvalue exceeds ``2·scale − μ``.
AUTO_BATCH_SCALE_MARGIN = 0.75
AUTO_SCALE_BATCHES = 3
#: Slack on the LiSSA norm bound before declaring divergence (minibatch noise can exceed it briefly).
DIVERGENCE_SLACK = 10.0


class InfluenceSolverError(RuntimeError):
    """A solver could not produce a trustworthy ``(H + μI)⁻¹ v``; the message says what to change."""


class LissaDivergenceError(InfluenceSolverError):
    """The LiSSA recursion produced NaN/inf or grew past its bound."""


class NegativeCurvatureError(InfluenceSolverError):
    """CG met a direction with ``pᵀ(H + μI)p ≤ 0``: the damped system is not positive definite."""


def _float_or_auto(value: float | str, name: str) -> float | str:
    """Normalize a CLI value: the string ``"auto"`` or something float() accepts."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or 'auto', got {value!r}")
    return float(value)


@dataclass
class SolverConfig:
    """Settings of the inverse-HVP solvers (see the module docstring for the conventions)."""

    damping: float | str = field(
        default=AUTO,
        metadata={"help": "damping μ ≥ 0 added to the curvature; every solver solves (H + μI) s = v "
                          f"(Hessian units). 'auto' = {AUTO_DAMPING_FRACTION:g}·λmax"},
    )
    scale: float | str = field(
        default=AUTO,
        metadata={"help": "LiSSA scale, must exceed the largest eigenvalue of H + μI; 'auto' = "
                          f"{AUTO_SCALE_MARGIN:g}·(λmax + μ) by power iteration (larger = stabler but slower)"},
    )
    depth: int = field(default=1000, metadata={"help": "LiSSA recursion steps per repeat (stops earlier at tol)"})
    repeats: int = field(default=1, metadata={"help": "independent LiSSA chains averaged (lowers minibatch noise)"})
    batch_size: int = field(
        default=512, metadata={"help": "training rows per LiSSA step (≥ training size = full batch, deterministic)"}
    )
    tol: float = field(
        default=1e-6, metadata={"help": "relative stopping tolerance: LiSSA ‖hⱼ−hⱼ₋₁‖/‖hⱼ‖, CG ‖r‖/‖v‖"}
    )
    seed: int = field(default=0, metadata={"help": "seed of LiSSA minibatch sampling and power iteration"})
    max_iter: int = field(default=500, metadata={"help": "conjugate-gradient iteration limit"})
    power_iters: int = field(
        default=100, metadata={"help": "steps of the spectrum estimate for auto scale/damping: power iteration "
                                       "(gauss-newton) or Lanczos, at most 60 (exact)"}
    )
    max_params: int = field(
        default=DENSE_PARAM_LIMIT, metadata={"help": "direct solver refuses parameter blocks larger than this"}
    )
    check_definite: bool = field(
        default=True,
        metadata={"help": "LiSSA on the exact Hessian: estimate λmin by Lanczos (full-set products) and refuse an "
                          "indefinite H + μI up front; off skips that cost when damping and scale are given (the "
                          "divergence guard of the recursion still applies)"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar while solving"})
    hvp: str = field(
        default="auto",
        metadata={"help": "Hessian-vector products: auto (native explicit-matmul products of the package's MLP, "
                          "Gauss–Newton or exact, when all parameters vary, else autograd), native, or autograd "
                          "(jvp/vjp or double backward: the reference)", "choices": HVP_BACKENDS},
    )

    def __post_init__(self) -> None:
        self.damping = _float_or_auto(self.damping, "damping")
        self.scale = _float_or_auto(self.scale, "scale")
        if self.damping != AUTO and not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0 or 'auto', got {self.damping}")
        if self.scale != AUTO and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0 or 'auto', got {self.scale}")
        for name in ("depth", "repeats", "batch_size", "max_iter", "power_iters", "max_params"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a finite number ≥ 0, got {self.tol}")
        if self.hvp not in HVP_BACKENDS:
            raise ValueError(f"hvp must be one of {', '.join(HVP_BACKENDS)}, got {self.hvp!r}")


@dataclass
class SolveResult:
    """Outcome of :func:`solve`.

    Attributes:
        s: ``(H + μI)⁻¹ v`` ``[p]`` in the operator's dtype.
        method: "lissa", "cg" or "direct".
        iterations: LiSSA steps summed over repeats, CG iterations, or 0 for direct.
        trace: per-step monitoring records (LiSSA: chain, step, step_norm, h_norm in scaled units;
            CG: iter, relative residual).
        converged: stopping tolerance reached (LiSSA: by every chain); direct: always True.
        info: damping, scale, λ estimates, relative_residual, seconds, … (JSON-serializable).
    """

    s: torch.Tensor
    method: str
    iterations: int
    trace: list[dict]
    converged: bool
    info: dict

    def summary(self, max_trace: int = 200) -> dict:
        """JSON-serializable digest with the trace thinned to at most ``max_trace`` records."""
        stride = max(1, math.ceil(len(self.trace) / max_trace))
        thinned = self.trace[::stride]
        if self.trace and thinned[-1] is not self.trace[-1]:
            thinned.append(self.trace[-1])
        return {"method": self.method, "iterations": self.iterations, "converged": self.converged,
                "info": self.info, "trace": thinned}


# --------------------------------------------------------------------------- settings


@dataclass
class _Settings:
    damping: float
    scale: float | None
    spectrum: SpectrumEstimate | None
    batch_lambda_max: float | None = None


def _batch_lambda_max(op: HessianOperator, config: SolverConfig) -> float | None:
    """Largest dominant |eigenvalue| over a few LiSSA-sized minibatches (None for full batch)."""
    if config.batch_size >= op.n_train:
        return None
    gen = torch.Generator().manual_seed(config.seed + 1)
    iters = max(10, config.power_iters // 2)
    batches = [op.sample_batch(config.batch_size, gen) for _ in range(AUTO_SCALE_BATCHES)]
    return max(abs(dominant_eigenvalue(op, b, iters, seed=config.seed + 2 + k)[0]) for k, b in enumerate(batches))


def _resolve(op: HessianOperator, config: SolverConfig, method: str) -> _Settings:
    """Turn "auto" damping/scale into numbers, estimating the spectrum only when needed."""
    needs_scale = method == "lissa"
    needs_spectrum = config.damping == AUTO or (needs_scale and config.scale == AUTO) or (
        needs_scale and op.kind == "exact" and config.check_definite
    )
    spectrum = estimate_spectrum(op, iters=config.power_iters, seed=config.seed) if needs_spectrum else None
    damping = AUTO_DAMPING_FRACTION * abs(spectrum.lambda_max) if config.damping == AUTO else float(config.damping)
    if not needs_scale:
        return _Settings(damping, None, spectrum)
    if config.scale != AUTO:
        return _Settings(damping, float(config.scale), spectrum)
    batch_max = _batch_lambda_max(op, config)
    scale = AUTO_SCALE_MARGIN * (abs(spectrum.lambda_max) + damping)
    if batch_max is not None:
        scale = max(scale, AUTO_BATCH_SCALE_MARGIN * (batch_max + damping))
    return _Settings(damping, scale, spectrum, batch_max)


def _check_definite(settings: _Settings, op: HessianOperator) -> None:
    """Refuse LiSSA up front when the estimated ``λ_min + μ ≤ 0`` (it could only diverge)."""
    spec = settings.spectrum
    if spec is None or spec.lambda_min is None or spec.lambda_min + settings.damping > 0:
        return
    raise LissaDivergenceError(
        f"H + damping·I is not positive definite (estimated λmin = {spec.lambda_min:.4g}, damping = "
        f"{settings.damping:.4g}), so the LiSSA recursion would diverge: raise damping above "
        f"{-spec.lambda_min:.4g} or use hessian='gauss-newton' (the exact Hessian of a ReLU net is indefinite)"
    )


def _residual(op: HessianOperator, s: torch.Tensor, v: torch.Tensor, damping: float) -> float:
    """‖(H + μI)s − v‖ / ‖v‖ on the full training set."""
    r = op.matvec(s) + damping * s - v
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(v))


# --------------------------------------------------------------------------- LiSSA


def _divergence_message(chain: int, step: int, h_norm: float, bound: float, settings: _Settings) -> str:
    return (
        f"LiSSA diverged at step {step} of chain {chain} (‖h‖ = {h_norm:.4g}, allowed ≤ {bound:.4g}; "
        f"scale = {settings.scale:.4g}, damping = {settings.damping:.4g}): the recursion needs every eigenvalue "
        f"of the minibatch curvature + damping below 2·scale and above 0. Increase scale (or use scale='auto'), "
        f"increase damping, use a larger batch_size, lower depth, or use hessian='gauss-newton'"
    )


def _lissa_chain(
    op: CurvatureOperator, v: torch.Tensor, settings: _Settings, config: SolverConfig,
    gen: torch.Generator, chain: int, bar: tqdm, trace: list[dict],
) -> tuple[torch.Tensor, int, bool]:
    """One LiSSA chain; returns ``(h_final / scale [p], steps, converged)`` and appends to ``trace``."""
    scale, mu = settings.scale, settings.damping
    d = mu / scale  # recursion damping, see module docstring
    v_norm = float(torch.linalg.vector_norm(v))
    # With ‖I − (H_B + μ)/scale‖ ≤ 1 the iterate obeys ‖hⱼ‖ ≤ (j+1)‖v‖; for PSD curvature and μ > 0
    # also ‖hⱼ‖ ≤ (scale/μ)‖v‖. Growth well past that can only be divergence.
    psd_cap = scale / mu if (op.kind == "gauss-newton" and mu > 0) else math.inf
    # (G_B + λ)h/scale = G_B h/scale + (λ/scale) h: a λ the product left out joins the damping term.
    d_step = d + op.folded_weight_decay / scale
    v = op.to_solver_layout(v)
    h = v.clone()
    hv = None  # one product buffer for the whole chain (the native HVP writes into it)
    for step in range(1, config.depth + 1):
        idx = op.sample_indices(config.batch_size, gen)
        norms = op.fused_lissa_step(h, v, idx, d_step, scale) if idx is not None else None
        if norms is not None:  # product and update in one (h updated in place)
            step_norm, h_norm = norms
            h_new = h
        else:
            hv = op.solver_product(h, idx, out=hv if hv is not None else torch.empty_like(v))
            h_new, step_t = lissa_step(h, v, hv, d_step, scale)
            step_norm = float(step_t)
            h_norm = float(torch.linalg.vector_norm(h_new))
        trace.append({"chain": chain, "step": step, "step_norm": step_norm, "h_norm": h_norm})
        bound = DIVERGENCE_SLACK * min(step + 1, psd_cap) * v_norm
        if not (math.isfinite(h_norm) and math.isfinite(step_norm)) or h_norm > bound:
            raise LissaDivergenceError(_divergence_message(chain, step, h_norm, bound, settings))
        h = h_new
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(chain=chain, step=f"{step_norm:.2e}", h=f"{h_norm:.3e}", refresh=False)
        if step_norm <= config.tol * h_norm:
            return op.from_solver_layout(h).div_(scale), step, True
    return op.from_solver_layout(h).div_(scale), config.depth, False


def _lissa(op: CurvatureOperator, v: torch.Tensor, settings: _Settings, config: SolverConfig) -> SolveResult:
    _check_definite(settings, op)
    gen = torch.Generator().manual_seed(config.seed)
    trace: list[dict] = []
    estimates, steps, converged = [], [], []
    with tqdm(total=config.depth * config.repeats, desc="LiSSA", disable=not config.progress, leave=False) as bar:
        for chain in range(config.repeats):
            est, used, ok = _lissa_chain(op, v, settings, config, gen, chain, bar, trace)
            estimates.append(est)
            steps.append(used)
            converged.append(ok)
            bar.update(config.depth - used)  # skipped by the early stop
    stacked = torch.stack(estimates) if len(estimates) > 1 else None  # one copy of the chains, not two
    s = estimates[0] if stacked is None else stacked.mean(0)
    info = {"lissa_recursion_damping": settings.damping / settings.scale, "chain_steps": steps}
    if stacked is not None:
        spread = stacked.std(0)
        info["chain_relative_spread"] = float(torch.linalg.vector_norm(spread) / torch.linalg.vector_norm(s))
    return SolveResult(s, "lissa", sum(steps), trace, all(converged), info)


# --------------------------------------------------------------------------- CG and direct


def _cg(op: CurvatureOperator, v: torch.Tensor, settings: _Settings, config: SolverConfig) -> SolveResult:
    """Conjugate gradients on ``(H + μI)x = v`` with full-batch products, starting from 0."""
    mu = settings.damping
    shift = mu + op.folded_weight_decay  # (H + μI)p with a λ the product left out
    v = op.to_solver_layout(v)
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(r @ r)
    v_norm = math.sqrt(float(v @ v))
    trace: list[dict] = []
    with tqdm(total=config.max_iter, desc="CG", disable=not config.progress, leave=False) as bar:
        for it in range(1, config.max_iter + 1):
            ap = op.solver_product(p, None).add_(p, alpha=shift)
            curvature = float(p @ ap)
            if not curvature > 0:  # also catches NaN
                raise NegativeCurvatureError(
                    f"CG met non-positive curvature pᵀ(H + damping·I)p = {curvature:.4g} (‖p‖² = {float(p @ p):.4g}) "
                    f"at iteration {it}: H + damping·I is not positive definite (damping = {mu:.4g}). "
                    f"Increase damping or use hessian='gauss-newton'"
                )
            alpha = rs / curvature
            x += alpha * p
            r -= alpha * ap
            rs_new = float(r @ r)
            rel = math.sqrt(rs_new) / v_norm
            trace.append({"iter": it, "residual": rel})
            bar.update(1)
            bar.set_postfix(residual=f"{rel:.2e}", refresh=False)
            if rel <= config.tol:
                return SolveResult(op.from_solver_layout(x), "cg", it, trace, True, {})
            p = r + (rs_new / rs) * p
            rs = rs_new
    return SolveResult(op.from_solver_layout(x), "cg", config.max_iter, trace, False, {})


def _direct(op: HessianOperator, v: torch.Tensor, settings: _Settings, config: SolverConfig) -> SolveResult:
    """Explicit ``(H + μI)`` and ``torch.linalg.solve`` (refuses blocks above ``config.max_params``)."""
    H = dense_hessian(op, max_params=config.max_params)
    A = 0.5 * (H + H.T) + settings.damping * torch.eye(op.n_params, dtype=H.dtype)  # symmetrize rounding
    s = torch.linalg.solve(A, v)
    min_eig = float(torch.linalg.eigvalsh(A)[0])
    if min_eig <= 0:
        log.warning("direct solve: H + damping·I is indefinite (λmin = %.4g); s solves it but is not a minimum's "
                    "influence — increase damping or use gauss-newton", min_eig)
    return SolveResult(s, "direct", 0, [], True, {"min_eigenvalue": min_eig, "positive_definite": min_eig > 0})


def _function_space(op: CurvatureOperator, v: torch.Tensor, settings: _Settings, config: SolverConfig) -> SolveResult:
    """``(H + μI)⁻¹ v`` for the Gauss–Newton curvature of the package's MLP by the NTK/Woodbury identity
    (:mod:`.function_space`: one ``n × n`` Cholesky factorization, exact up to rounding)."""
    reference = op.reference  # the parameter block and training rows
    reason = mlp_unsupported_reason(reference.model)
    if reason is not None:
        raise ValueError(f"solver 'function-space' needs the package's MLP ({reason}); for a D-MPNN run use "
                         "solver='lissa' or 'cg'")
    if op.kind != "gauss-newton" or reference.frozen:
        raise ValueError("solver 'function-space' solves the Gauss–Newton system over all parameters of the package's "
                         "MLP: use hessian='gauss-newton' and no --params block (or solver='cg')")
    params = reference.param_dict()
    mlp = MLP.from_params({name: t.to(torch.float64) for name, t in params.items()})
    fs = FunctionSpaceSolver(mlp, reference.X, op.weight_decay, settings.damping)
    s = reference.block.flatten(dict(zip(reference.block.names, fs.solve(
        list(reference.block.unflatten(v.to(torch.float64)).values()))))).to(op.dtype)
    return SolveResult(s, "function-space", 0, [], True, {"n_train": fs.n})


_SOLVERS = {"lissa": _lissa, "cg": _cg, "direct": _direct, "function-space": _function_space}


def solve(
    op: HessianOperator, v: torch.Tensor, method: SolverMethod = "lissa", config: SolverConfig | None = None,
    check_residual: bool = True,
) -> SolveResult:
    """``s = (H + μI)⁻¹ v`` for the operator's curvature ``H`` (kind and parameter block of ``op``).

    Args:
        op: the curvature operator (its ``matvec`` includes the weight-decay term). With
            ``config.hvp`` "auto" (default) an operator (Gauss–Newton or exact) of the package's MLP
            over all parameters is swapped for :class:`~lipo_if.influence.native_hvp.NativeHessian`
            (explicit-matmul products, sparse first layer, cached activations); "autograd" keeps
            ``op.matvec``, the reference.
        v: right-hand side ``[p]``, e.g. the held-out loss gradient.
        method: "lissa" (stochastic, matrix-free), "cg" (full-batch, matrix-free) or "direct"
            (explicit matrix; small parameter blocks only).
        config: damping μ, LiSSA scale/depth/…; "auto" values are resolved by power iteration.
        check_residual: also compute ``‖(H + μI)s − v‖/‖v‖`` (one full-batch product) into ``info``.

    Raises:
        LissaDivergenceError, NegativeCurvatureError: with the knob to turn in the message.
        ValueError: unknown method, bad ``v``, or a too-large block for "direct".
    """
    if method not in _SOLVERS:
        raise ValueError(f"unknown solver {method!r}; choose from {', '.join(SOLVER_METHODS)}")
    config = config or SolverConfig()
    v = op.check_vec(v)
    start = time.perf_counter()
    # Native explicit-matmul products when supported (config.hvp), else autograd.
    op = select_hvp(op, config.hvp) if method != "direct" else op
    world = current()
    if method in ("lissa", "cg"):  # under torchrun: every product split over the ranks (a no-op alone)
        op = data_parallel(op, world)
    settings = _resolve(op, config, method)
    zero_rhs = float(torch.linalg.vector_norm(v)) == 0.0
    if zero_rhs:  # s = 0 exactly; LiSSA's relative criteria would divide by zero
        result = SolveResult(torch.zeros_like(v), method, 0, [], True, {})
    else:
        result = _SOLVERS[method](op, v, settings, config)
    world.broadcast_(result.s)  # every rank scores with rank 0's s, bit for bit
    result.info.update(
        damping=settings.damping,
        scale=settings.scale,
        lambda_max=settings.spectrum.lambda_max if settings.spectrum else None,
        lambda_min=settings.spectrum.lambda_min if settings.spectrum else None,
        batch_lambda_max=settings.batch_lambda_max,
        hessian=op.kind,
        n_params=op.n_params,
        hvp=op.backend,
    )
    if check_residual and not zero_rhs:
        result.info["relative_residual"] = _residual(op, result.s, v, settings.damping)
    result.info["seconds"] = time.perf_counter() - start
    return result
