"""The ``greedy`` guard: greedy group selection that re-scores every candidate after each addition.

Why. The first-order score of molecule ``j`` is ``score_j = v·d_j`` with ``v = ∇θ L_val(θ̂)`` and
``d_j = −(1/n)(H + μI)⁻¹ ∇θ ℓ(z_j)`` the Newton step that adding ``z_j`` (weight 1/n) induces. It is
linear in ``d_j`` and hence in the molecule's residual ``r_j = f(x_j) − y_j`` (``∇ℓ = 2 r_j J_j``), so

- a molecule whose label overshoots in the direction that would correct the validation errors
  gets a score ∝ r_j: the *wronger* the label, the *more helpful* it looks;
- the score of a group is the sum of its members' scores: k molecules that all correct the same
  validation error are credited k times, though the error can only be corrected once (the group
  overshoots; on the real data the top-50 group's first-order prediction overstated its actual
  gain ≈ 1.7×, see benchmarks/RESULTS.md).

Both failures are second order in the parameter change. Expanding the validation loss to second
order around θ̂ (Gauss–Newton curvature ``G = (2/m) J_valᵀ J_val``, the linearized-network
validation MSE is exactly this quadratic)::

    L_val(θ̂ + Δ) ≈ L_val(θ̂) + v·Δ + ½ Δᵀ G Δ,         Δ_S = Σ_{j∈S} d_j

gives the group objective (the second-order group influence of Basu, You & Feizi, ICML 2020,
restricted to the held-out curvature; the added points' own curvature is dropped)::

    Q(S) = Σ_{j∈S} score_j + ½ Σ_{i,j∈S} M_ij,           M_ij = d_iᵀ G d_j = (2/m) (J_val d_i)·(J_val d_j)

``J_val d_j`` is the change of the validation predictions that molecule j causes, so ``M_ij > 0``
when i and j move the validation predictions the same way (redundant: together they overshoot)
and ``M_jj = (2/m)‖J_val d_j‖² ∝ r_j²`` grows quadratically with a wrong label while the score
grows only linearly: for a fixed direction ``J_val d_j / r_j``, ``score_j + ½ M_jj = a·r_j + b·r_j²``
with ``b > 0``, so past ``|r_j| = |a|/b`` the molecule is predicted harmful, and the wronger the
label the more negative its first-order score *and* the more positive its second-order marginal:
a wildly wrong label is left out however helpful first order makes it look.

The greedy selection (:func:`greedy_select`) adds, one at a time, the molecule with the most
negative *marginal* change of Q,

    Δ_j(S) = Q(S ∪ {j}) − Q(S) = score_j + Σ_{i∈S} M_ij + ½ M_jj
           = ∇L_val(θ̂ + Δ_S)·d_j + ½ d_jᵀ G d_j      (the held-out gradient after the Newton update),

i.e. it re-scores every candidate against the held-out gradient updated by the step the
molecules chosen so far induce, and stops when no candidate is predicted to help (``Δ_j ≥ 0``)
or k are chosen. Greedy is the standard heuristic for this (non-submodular) quadratic subset
problem; each step costs O(N) with the N × N matrix M precomputed.

Computing M exactly, for the whole network. ``d_j`` needs ``(H + μI)⁻¹`` applied to every
candidate's gradient — N conjugate-gradient solves of the ≈ 1 M-parameter network. With the
Gauss–Newton curvature ``H = (2/n) JᵀJ + λI`` (J: the training Jacobian ``∂f/∂θ``, ``[n, p]``) the
Woodbury identity moves everything into function space: with ``c = λ + μ``::

    J_val (H + μI)⁻¹ J_candᵀ = (1/c) [K_vc − K_vT (K_TT + (c n/2) I)⁻¹ K_Tc]

where ``K_XY = J_X J_Yᵀ`` is the empirical neural tangent kernel. For an MLP it is a sum over
Linear layers of ``(δ_X δ_Yᵀ) ∘ (a_X a_Yᵀ + 1)`` (a: the layer's input, δ: ``∂f/∂(layer output)``),
so it costs one forward/backward pass per molecule and Gram products — no per-sample parameter
gradients, no iterative solve, one ``n × n`` Cholesky factorization (n ≈ 3,300 here: seconds).
``J_val d_j = −(2 r_j/n) · [that matrix]_{:, j}`` is then the change of the validation predictions
molecule j causes, ``M = (2/m) AᵀA`` with ``A = [J_val d_j]_j``, and the first-order scores
follow too, ``score_j = (2/m) e_valᵀ A_{:, j}`` (``e_val``: validation residuals) — the same numbers
the influence pipeline computes by CG on the same damped Gauss–Newton system; their agreement
is recorded in ``info`` as a check. The damping μ is the influence solve's, so ``d_j`` describes
the retraining the scores describe. (The exact, indefinite Hessian has no such form; the guard
always uses Gauss–Newton curvature.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch


@dataclass
class GroupModel:
    """What the greedy guard needs, for the eligible external rows.

    Attributes:
        rows: external ``row`` ids ``[N]`` (the order of the other arrays).
        scores: first-order scores ``[N]`` (held-out MSE units; negative = helpful), from the table.
        interactions: ``M`` ``[N, N]``, symmetric PSD: ``M_ij = d_iᵀ G d_j`` (see the module docstring).
        info: block, damping, sizes and diagnostics (JSON-serializable).
    """

    rows: np.ndarray
    scores: np.ndarray
    interactions: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=int)
        self.scores = np.asarray(self.scores, dtype=float)
        self.interactions = np.asarray(self.interactions, dtype=float)
        n = len(self.rows)
        if self.scores.shape != (n,) or self.interactions.shape != (n, n):
            raise ValueError(f"GroupModel: rows [{n}], scores {self.scores.shape}, interactions {self.interactions.shape} disagree")

    def position(self) -> dict[int, int]:
        return {int(r): i for i, r in enumerate(self.rows)}

    def objective(self, rows: Sequence[int]) -> float:
        """Q(S) = Σ scores + ½ Σ_{i,j∈S} M_ij: the second-order predicted change of validation MSE."""
        pos = self.position()
        idx = np.array([pos[int(r)] for r in rows], dtype=int)
        if idx.size == 0:
            return 0.0
        return float(self.scores[idx].sum() + 0.5 * self.interactions[np.ix_(idx, idx)].sum())

    def with_scores(self, table: pd.DataFrame) -> "GroupModel":
        """A copy whose first-order scores are taken from ``table`` (same rows, e.g. after a re-solve)."""
        score_of = table.set_index("row")["score"]
        return GroupModel(self.rows, score_of.loc[self.rows].to_numpy(dtype=float), self.interactions, dict(self.info))


def greedy_select(group: GroupModel, pool_rows: Sequence[int], k: int | None, threshold: float = 0.0) -> list[int]:
    """Greedy minimization of Q over ``pool_rows`` (a subset of ``group.rows``): external rows in the order added.

    Adds the row of smallest marginal ``score_j + Σ_{i∈S} M_ij + ½ M_jj`` while that marginal is
    ``< threshold`` (0: "predicted to lower the validation loss") and fewer than ``k`` rows are
    chosen (``k=None``: no cap). Ties go to the smaller row id.
    """
    pos = group.position()
    pool_rows = sorted(int(r) for r in pool_rows)
    missing = [r for r in pool_rows if r not in pos]
    if missing:
        raise ValueError(f"rows {missing[:5]} are not in the group model (it covers the eligible rows it was built for)")
    idx = np.array([pos[r] for r in pool_rows], dtype=int)
    if idx.size == 0 or (k is not None and k <= 0):
        return []
    scores = group.scores[idx]
    M = group.interactions[np.ix_(idx, idx)]
    marginal = scores + 0.5 * np.diag(M)
    available = np.ones(idx.size, dtype=bool)
    chosen: list[int] = []
    cap = idx.size if k is None else min(int(k), idx.size)
    while len(chosen) < cap:
        masked = np.where(available, marginal, np.inf)
        j = int(np.argmin(masked))  # argmin returns the first minimum: the smallest row id
        if not masked[j] < threshold:
            break
        chosen.append(pool_rows[j])
        available[j] = False
        marginal = marginal + M[j]
    return chosen


# --------------------------------------------------------------------------- building M from a run


def _layer_params(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(W_l, b_l)]`` of an MLPRegressor in float64 (Linear layers with ReLU between)."""
    named = {name: p.detach().to(torch.float64) for name, p in model.named_parameters()}
    layers = []
    while f"layers.{len(layers)}.weight" in named:
        layers.append((named[f"layers.{len(layers)}.weight"], named[f"layers.{len(layers)}.bias"]))
    if not layers or len(named) != 2 * len(layers):
        raise ValueError("the greedy guard needs an MLPRegressor (parameters layers.<l>.weight / layers.<l>.bias only)")
    return layers


def tangent_factors(layers: list[tuple[torch.Tensor, torch.Tensor]], X: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Predictions ``[B]`` and, per layer, ``(a_l [B, in], δ_l [B, out])``: the layer input and
    ``∂f/∂(layer output)``, so that ``∂f/∂W_l = δ_l ⊗ a_l`` and ``∂f/∂b_l = δ_l`` per molecule."""
    h = X.to(torch.float64)
    acts, pre = [], []
    for l, (W, b) in enumerate(layers):
        acts.append(h)
        z = h @ W.T + b
        pre.append(z)
        h = torch.relu(z) if l < len(layers) - 1 else z
    delta = torch.ones(h.shape[0], 1, dtype=torch.float64)
    factors = [None] * len(layers)
    for l in range(len(layers) - 1, -1, -1):
        factors[l] = (acts[l], delta)
        if l > 0:
            delta = (delta @ layers[l][0]) * (pre[l - 1] > 0)
    return h[:, 0], factors


def ntk(fx: list, fy: list) -> torch.Tensor:
    """Empirical NTK ``J_X J_Yᵀ`` ``[Bx, By]`` from :func:`tangent_factors` of two sets."""
    return sum((dx @ dy.T) * (ax @ ay.T + 1.0) for (ax, dx), (ay, dy) in zip(fx, fy))


def group_model(run, scores: pd.DataFrame, external_path, damping: float) -> GroupModel:
    """Build the :class:`GroupModel` of the eligible rows of ``scores`` (a table written by
    ``run_influence`` for ``run`` on the validation set, Gauss–Newton curvature at damping
    ``damping`` — the same system is solved here in function space; see the module docstring).

    ``info`` records ``first_order_pearson`` and ``first_order_max_rel_diff``: the agreement of the
    function-space first-order scores with the table's (1 and ≈ 0 when the table came from an
    accurate solve of the same system).
    """
    from .data import read_molecule_csv
    from .select import eligible

    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number ≥ 0, got {damping}")
    pool = eligible(scores)
    rows = pool["row"].to_numpy(dtype=int)
    if rows.size == 0:
        return GroupModel(rows, np.zeros(0), np.zeros((0, 0)), {"damping": damping, "n": 0})
    layers = _layer_params(run.model)
    X_train, _ = run.tensors("train")
    X_val, y_val = run.tensors("val")
    external = read_molecule_csv(external_path).set_index("row")
    X_c = run.featurize(external.loc[rows, "smiles"].tolist())
    y_c = torch.tensor(external.loc[rows, "label"].to_numpy(dtype=float), dtype=torch.float64)
    with torch.no_grad():
        _, f_train = tangent_factors(layers, X_train)
        pred_val, f_val = tangent_factors(layers, X_val)
        pred_c, f_c = tangent_factors(layers, X_c)
        n, m = X_train.shape[0], X_val.shape[0]
        c = float(run.config.weight_decay) + float(damping)
        if c <= 0:
            raise ValueError("weight decay + damping must be positive for the greedy guard's solve")
        K_TT = ntk(f_train, f_train)
        K_TT.diagonal().add_(c * n / 2.0)
        chol = torch.linalg.cholesky(K_TT)
        del K_TT
        K_Tv, K_Tc = ntk(f_train, f_val), ntk(f_train, f_c)
        P = (ntk(f_val, f_c) - K_Tv.T @ torch.cholesky_solve(K_Tc, chol)) / c  # J_val (H + μI)⁻¹ J_candᵀ [m, N]
        r_c = pred_c - y_c  # candidate residuals f − y
        A = -(2.0 / n) * P * r_c.unsqueeze(0)  # J_val d_j, column j [m, N]
        e_val = pred_val - y_val.to(torch.float64)
        kernel_scores = ((2.0 / m) * (e_val @ A)).numpy()
        M = ((2.0 / m) * (A.T @ A)).numpy()
    full_scores = pool["score"].to_numpy(dtype=float)
    agree = float(np.corrcoef(kernel_scores, full_scores)[0, 1]) if rows.size > 2 and np.std(full_scores) > 0 else float("nan")
    info = {
        "damping": float(damping), "n": int(rows.size), "n_train": int(n), "n_val": int(m),
        "first_order_pearson": agree,
        "first_order_max_rel_diff": float(np.max(np.abs(kernel_scores - full_scores)) / max(np.max(np.abs(full_scores)), 1e-300)),
        "self_term_median": float(np.median(0.5 * np.diag(M))),
        "score_median_abs": float(np.median(np.abs(full_scores))),
    }
    return GroupModel(rows, full_scores, M, info)


# --------------------------------------------------------------------------- influence scores in function space


def _theta_dot_jacobian(layers: list, factors: list) -> torch.Tensor:
    """``J_i · θ̂`` per molecule ``[B]`` (``Σ_l δ_lᵀ W_l a_l + δ_l · b_l``)."""
    return sum(((d @ W) * a).sum(dim=1) + d @ b for (W, b), (a, d) in zip(layers, factors))


def function_space_influence(run, external_path, heldout: str, damping: float, out_csv) -> dict:
    """The influence table of ``lipo_if.influence.run_influence`` (same rows, columns and exclusions)
    for the damped Gauss–Newton system, solved in function space instead of by CG.

    ``score(z) = −(1/n) ∇ℓ(z)ᵀ (H + μI)⁻¹ ∇L_heldout = (2/m) e_hoᵀ J_ho d_z`` with ``J_ho (H + μI)⁻¹ J_zᵀ``
    from the NTK/Woodbury identity of the module docstring: one ``n × n`` Cholesky factorization
    instead of ≈ 20 full-batch Hessian-vector products (same numbers to the CG tolerance; the
    renormalization offset ``−(λ/n) s·θ̂`` uses ``s = (1/c)(v − Jᵀ(K + cn/2)⁻¹ J v)``).
    Writes ``out_csv`` and ``<stem>_summary.json``; returns the summary.
    """
    import time

    from .data import atomic_write_json, atomic_write_text, read_molecule_csv
    from .influence.pipeline import HELDOUT_PARTS, OUTPUT_COLUMNS, _counts, _split_keys, exclusion_reasons, output_paths

    start = time.perf_counter()
    table = read_molecule_csv(external_path)
    reasons = exclusion_reasons(table, _split_keys(run))
    layers = _layer_params(run.model)
    X_train, _ = run.tensors("train")
    X_ho, y_ho = run.tensors(HELDOUT_PARTS[heldout])
    valid = (table["error"] == "").to_numpy()
    keep = np.array([r == "" for r in reasons])
    out = pd.DataFrame({"row": table["row"], "smiles": table["smiles_input"], "label": table["label"], "prediction": np.nan,
                        "residual": np.nan, "score": np.nan, "excluded": reasons})
    n, m = X_train.shape[0], X_ho.shape[0]
    c = float(run.config.weight_decay) + float(damping)
    with torch.no_grad():
        _, f_train = tangent_factors(layers, X_train)
        pred_ho, f_ho = tangent_factors(layers, X_ho)
        e_ho = pred_ho - y_ho.to(torch.float64)
        K = ntk(f_train, f_train)
        K.diagonal().add_(c * n / 2.0)
        chol = torch.linalg.cholesky(K)
        del K
        K_Tho = ntk(f_train, f_ho)
        Jv = (2.0 / m) * (K_Tho @ e_ho)  # J_train v
        theta_v = (2.0 / m) * float(e_ho @ _theta_dot_jacobian(layers, f_ho))  # θ̂·v
        theta_J = _theta_dot_jacobian(layers, f_train)  # J_train θ̂
        theta_s = (theta_v - float(theta_J @ torch.cholesky_solve(Jv.unsqueeze(1), chol)[:, 0])) / c
        offset = -(float(run.config.weight_decay) / n) * theta_s
        if valid.any():
            X_c = run.featurize(table.loc[valid, "smiles"].tolist())
            y_c = torch.tensor(table.loc[valid, "label"].to_numpy(dtype=float), dtype=torch.float64)
            pred_c, f_c = tangent_factors(layers, X_c)
            out.loc[valid, "prediction"] = pred_c.numpy()
            out.loc[valid, "residual"] = (pred_c - y_c).numpy()
            # J_ho (H+μI)⁻¹ J_cᵀ, contracted with e_ho first: (2/m) e_hoᵀ P  → [N]
            eP = ((2.0 / m) * (e_ho @ ntk(f_ho, f_c)) - Jv @ torch.cholesky_solve(ntk(f_train, f_c), chol)) / c
            scores = -(2.0 / n) * eP * (pred_c - y_c)
            sel = keep[valid]
            out.loc[keep & valid, "score"] = scores.numpy()[sel]
    paths = output_paths(out_csv)
    scored = out.loc[out["excluded"] == "", "score"].to_numpy(dtype=float)
    summary = {
        "external": str(external_path), "outputs": {k: str(p) for k, p in paths.items()},
        "settings": {"backend": "ntk", "heldout": heldout, "hessian": "gauss-newton", "damping": float(damping)},
        "heldout": heldout, "selection_saw_test_set": heldout == "test", "n_train": int(n), "n_heldout": int(m),
        "renormalization_offset": offset, "counts": _counts(reasons, scored),
        "solver": {"method": "ntk-cholesky", "converged": True, "info": {"damping": float(damping), "relative_residual": None}},
        "warnings": [], "timings": {"total_seconds": round(time.perf_counter() - start, 2)},
    }
    atomic_write_text(paths["csv"], out[OUTPUT_COLUMNS].to_csv(index=False, float_format="%.10g"))
    atomic_write_json(paths["summary"], summary)
    return summary
