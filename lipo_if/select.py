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
after each addition against a second-order model of the validation loss (see
:mod:`lipo_if.group`): it stops when no candidate is predicted to help any more, so it may choose
fewer than k rows, and it leaves out a wildly wrong label because that molecule's second-order
self-term grows with the square of its residual while its first-order score grows only linearly.
``guard="residual+greedy"`` applies the residual filter first, then the greedy selection. Both
need a :class:`lipo_if.group.GroupModel` (``select(..., group=...)``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

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
    """Read an influence-scores CSV; ``excluded`` comes back as strings ("" = eligible)."""
    from .data import DataError

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
    """Rows that may be selected: not excluded and with a finite score, in table order."""
    table = normalize_scores(table)
    mask = (table["excluded"] == "") & np.isfinite(table["score"].to_numpy(dtype=float))
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
    :class:`lipo_if.group.GroupModel` built for this table (:func:`lipo_if.group.group_model`).
    """
    config = config or SelectionConfig()
    if config.strategy == "none":
        return []
    if config.strategy in ("random", "all"):
        pool = eligible(table)
        return _rows(pool) if config.strategy == "all" else random_k(pool, config.k, config.seed)
    pool = guarded_pool(table, config.guard, config.guard_z)
    if uses_greedy(config.guard):
        from .group import greedy_select

        if group is None:
            raise ValueError(f"guard {config.guard!r} needs a GroupModel: build one with lipo_if.group.group_model(run, scores, ...)")
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
    from dataclasses import replace

    config = config or SelectionConfig()
    return {k: select(table, replace(config, k=k), group) for k in ks}
