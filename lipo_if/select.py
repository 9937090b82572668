"""Choosing external molecules from an influence-scores table.

The table is the CSV written by :func:`lipo_if.influence.run_influence` (columns ``row, smiles,
label, prediction, residual, score, excluded``). ``score`` is the first-order predicted change of
the held-out mean squared error (logD²) from adding the molecule — **negative = helpful**.
Rows with a non-empty ``excluded`` (invalid SMILES, molecules already in a split, repeated rows)
are never selected, by any strategy, including the controls.

Strategies (each returns external ``row`` ids, most helpful first where a ranking exists):

- ``top_k``       — the k most negative scores;
- ``threshold``   — every row with ``score < threshold`` (default 0: all predicted-helpful rows);
- ``top_fraction``— the most helpful ``fraction`` of the eligible rows;
- ``random``      — k eligible rows drawn with a seeded generator (control);
- ``all``         — every eligible row (control);
- ``none``        — nothing (control: the same retraining with no molecule added).

k is a count (``k ≥ 1``) or a fraction of the eligible rows (``0 < k < 1``).

The guard. First-order influence is linear in a molecule's residual ``f(x) − y``: a molecule whose
label is wildly off — in the direction that would pull the model towards the held-out errors —
scores as *most helpful*, though adding it hurts (the effect is second order in the residual). The
residual itself exposes such labels, so ``guard="residual"`` removes, before ranking, every row
whose residual is a robust outlier: ``|r − median(r)| / (1.4826·MAD(r)) > guard_z`` over the eligible
rows (the median absorbs a systematic offset between the external labels and the model).

``guard="greedy"`` replaces the ranking by greedy group selection that re-scores every candidate
after each addition against a second-order model of the validation loss (see "The greedy
guard" below): it stops when no candidate is predicted to help any more, so it may choose
fewer than k rows, and it leaves out a wildly wrong label because that molecule's second-order
self-term grows with the square of its residual while its first-order score grows only linearly.
``guard="residual+greedy"`` applies the residual filter first, then the greedy selection. Both
need a :class:`GroupModel` (``select(..., group=...)``), which
:meth:`lipo_if.influence.Influence.group_model` builds.

The greedy guard
----------------

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
the influence solvers compute on the same damped Gauss–Newton system; their agreement
is recorded in ``info`` as a check. The damping μ is the influence solve's, so ``d_j`` describes
the retraining the scores describe. (The exact, indefinite Hessian has no such form; the guard
always uses Gauss–Newton curvature.)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd

from .data import DataError

STRATEGIES: tuple[str, ...] = ("top_k", "threshold", "top_fraction", "random", "all", "none")
GUARDS: tuple[str, ...] = ("none", "residual", "greedy", "residual+greedy")
#: MAD → standard deviation for normally distributed residuals.
MAD_TO_SD = 1.4826
SCORE_COLUMNS = ("row", "score", "residual", "excluded")


@dataclass
class SelectionConfig:
    """Which external rows to add (every field is a command-line option where selection is offered)."""

    strategy: str = field(default="top_k", metadata={"help": "selection strategy", "choices": STRATEGIES})
    k: float = field(default=50.0, metadata={"help": "how many rows: a count (≥ 1) or a fraction of the eligible rows (0 < k < 1)"})
    threshold: float = field(default=0.0, metadata={"help": "strategy threshold: select every row with score < threshold"})
    fraction: float = field(default=0.1, metadata={"help": "strategy top_fraction: the most helpful fraction of eligible rows"})
    seed: int = field(default=0, metadata={"help": "strategy random: seed of the draw"})
    guard: str = field(default="residual", metadata={"help": "residual: drop residual outliers before ranking; greedy: greedy group selection re-scored "
                                                                    "after each addition (second order); residual+greedy: both; none", "choices": GUARDS})
    guard_z: float = field(default=3.5, metadata={"help": "robust z-score of the residual above which a row is an outlier"})

    def __post_init__(self) -> None:
        checks = [
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.guard in GUARDS, f"guard must be one of {', '.join(GUARDS)}, got {self.guard!r}"),
            (math.isfinite(self.k) and (self.k >= 1 and float(self.k).is_integer() or 0 <= self.k < 1),
             f"k must be a whole count ≥ 1 or a fraction in [0, 1), got {self.k}"),
            (0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}"),
            (math.isfinite(self.threshold), f"threshold must be finite, got {self.threshold}"),
            (self.guard_z > 0, f"guard_z must be positive, got {self.guard_z}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# --------------------------------------------------------------------------- the table


def load_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read an influence-scores CSV written by ``lipo-if influence``; ``excluded`` comes back as
    strings ("" = eligible)."""
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values={"score": [""], "residual": [""], "prediction": [""]})
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    missing = [c for c in SCORE_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not an influence-scores table (missing columns {missing}); write one with 'lipo-if influence'")
    return normalize_scores(table)


def normalize_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Copy with ``excluded`` as str ("" = eligible) and numeric ``score``/``residual``."""
    out = table.copy()
    out["excluded"] = out["excluded"].fillna("").astype(str).replace({"nan": ""})
    for column in ("score", "residual"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def eligible(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that may be selected: not excluded, with a finite score and — where the table has the
    column — in the run's applicability domain (``in_domain``, :mod:`lipo_if.domain`), in table order."""
    table = normalize_scores(table)
    mask = (table["excluded"] == "") & np.isfinite(table["score"].to_numpy(dtype=float))
    if "in_domain" in table:
        mask &= table["in_domain"].astype(bool).to_numpy()
    return table[mask]


def resolve_k(k: float, n_eligible: int) -> int:
    """A count (k ≥ 1) or a fraction (0 ≤ k < 1) of ``n_eligible`` → a count in [0, n_eligible]."""
    if k < 0 or not math.isfinite(k):
        raise ValueError(f"k must be ≥ 0, got {k}")
    count = int(round(k * n_eligible)) if k < 1 else int(k)
    return min(count, n_eligible)


# --------------------------------------------------------------------------- the guard


def residual_outliers(table: pd.DataFrame, z: float = 3.5) -> pd.Series:
    """Boolean mask over ``table`` (index-aligned): eligible rows whose residual is a robust outlier.

    Robust z = ``|r − median| / (1.4826·MAD)`` over the eligible rows; when MAD is 0 (almost all
    residuals equal) the standard deviation stands in, and when that is 0 too nothing is an outlier.
    """
    pool = eligible(table)
    mask = pd.Series(False, index=table.index)
    residuals = pool["residual"].to_numpy(dtype=float)
    finite = np.isfinite(residuals)
    if finite.sum() < 3:
        return mask
    center = float(np.median(residuals[finite]))
    spread = MAD_TO_SD * float(np.median(np.abs(residuals[finite] - center)))
    if spread <= 0:
        spread = float(np.std(residuals[finite]))
    if spread <= 0:
        return mask
    robust_z = np.abs(residuals - center) / spread
    mask.loc[pool.index] = ~finite | (robust_z > z)  # a missing residual cannot be vouched for
    return mask


def guarded_pool(table: pd.DataFrame, guard: str = "residual", guard_z: float = 3.5) -> pd.DataFrame:
    """Eligible rows that survive ``guard`` ("none" keeps all)."""
    if guard not in GUARDS:
        raise ValueError(f"guard must be one of {', '.join(GUARDS)}, got {guard!r}")
    pool = eligible(table)
    if "residual" in guard:
        pool = pool[~residual_outliers(table, guard_z).loc[pool.index]]
    return pool


def uses_greedy(guard: str) -> bool:
    """Whether ``guard`` includes the greedy group selection (and so needs a GroupModel)."""
    return "greedy" in guard


# --------------------------------------------------------------------------- the greedy guard


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


# --------------------------------------------------------------------------- strategies


def _rows(frame: pd.DataFrame) -> list[int]:
    return [int(r) for r in frame["row"].tolist()]


def _ranked(pool: pd.DataFrame) -> pd.DataFrame:
    """Most helpful first; ties broken by row id so the order is reproducible."""
    return pool.sort_values(["score", "row"], kind="mergesort")


def top_k(pool: pd.DataFrame, k: float) -> list[int]:
    """Rows of the ``k`` most negative scores (k a count or a fraction of ``pool``)."""
    return _rows(_ranked(pool).head(resolve_k(k, len(pool))))


def below_threshold(pool: pd.DataFrame, threshold: float = 0.0) -> list[int]:
    """Rows with ``score < threshold``, most helpful first."""
    return _rows(_ranked(pool[pool["score"] < threshold]))


def top_fraction(pool: pd.DataFrame, fraction: float) -> list[int]:
    """The most helpful ``fraction`` (0 < fraction ≤ 1) of ``pool``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return _rows(_ranked(pool).head(int(round(fraction * len(pool)))))


def random_k(pool: pd.DataFrame, k: float, seed: int) -> list[int]:
    """``k`` rows of ``pool`` drawn without replacement by ``numpy.random.default_rng(seed)``."""
    count = resolve_k(k, len(pool))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=count, replace=False) if count else np.array([], dtype=int)
    return _rows(pool.iloc[np.sort(picks)])


def select(table: pd.DataFrame, config: SelectionConfig | None = None, group=None) -> list[int]:
    """External ``row`` ids chosen by ``config`` from a scores table.

    The guard applies to the score-based strategies only (``top_k``, ``threshold``,
    ``top_fraction``); the controls (``random``, ``all``, ``none``) draw from every eligible row,
    since they stand for "what if we ignored the scores". The greedy guards need ``group``, a
    :class:`GroupModel` built for this table (:meth:`lipo_if.influence.Influence.group_model`).
    """
    config = config or SelectionConfig()
    if config.strategy == "none":
        return []
    if config.strategy in ("random", "all"):
        pool = eligible(table)
        return _rows(pool) if config.strategy == "all" else random_k(pool, config.k, config.seed)
    pool = guarded_pool(table, config.guard, config.guard_z)
    if uses_greedy(config.guard):
        if group is None:
            raise ValueError(f"guard {config.guard!r} needs a GroupModel: build one with Influence.group_model(table, molecules)")
        group = group.with_scores(table)
        rows = _rows(pool)
        if config.strategy == "top_k":
            return greedy_select(group, rows, resolve_k(config.k, len(pool)))
        if config.strategy == "threshold":
            return greedy_select(group, rows, None, threshold=config.threshold)
        return greedy_select(group, rows, int(round(config.fraction * len(pool))))
    if config.strategy == "top_k":
        return top_k(pool, config.k)
    if config.strategy == "threshold":
        return below_threshold(pool, config.threshold)
    return top_fraction(pool, config.fraction)


def sweep(table: pd.DataFrame, ks: Sequence[float], config: SelectionConfig | None = None, group=None) -> dict[float, list[int]]:
    """``{k: select(table, config with that k)}`` for each k (strategy ``top_k`` or ``random``)."""
    config = config or SelectionConfig()
    return {k: select(table, replace(config, k=k), group) for k in ks}
