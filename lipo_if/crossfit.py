"""Cross-fitted influence: scores that do not over-fit one validation split.

Selecting by influence on one ≈ 410-molecule validation split over-fits it: the chosen molecules
lower *that* split's loss, and the gain does not transfer to the test set. Cross-fitting spreads
the held-out role over all of train ∪ validation:

1. pool the seed's training and validation molecules and cut them into K folds (seeded);
2. for each fold f, train a model on the other K − 1 folds (the run's training settings, fold f
   as its early-stopping set) and score the external molecules by influence on fold f — one
   model and one held-out gradient per fold;
3. standardize each fold's scores over the eligible molecules, ``z_f = (score_f − mean)/std``
   (fold models differ in scale), and average: ``score = (1/K) Σ_f z_f`` (negative = helpful on
   average over the folds; the unit is standard deviations, not logD²).

The selection then ranks by the averaged z-score; retraining is unchanged (the seed's original
model fine-tuned on its own train ∪ selected), and the test set is never touched. The columns
``z_fold_<f>`` keep each fold's z-scores and ``info["fold_spearman_mean"]`` the mean pairwise rank
agreement of the folds (low agreement = the ranking is a property of the model more than of the
molecule). Cost: K trainings and K influence solves per seed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .influence import InfluenceConfig
from .io import atomic_write_text, jsonable
from .pool import Pool
from .runcache import fitted_influence, trained_run
from .select import eligible, normalize_scores
from .train import Run

log = logging.getLogger(__name__)


def fold_splits(split, folds: int, seed: int) -> list:
    """K :class:`~lipo_if.data.Split` objects: fold f held out of the pooled train ∪ validation, test unchanged."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    pooled = np.array(sorted(list(split.train) + list(split.val)), dtype=int)
    if len(pooled) < folds * 2:
        raise ValueError(f"{len(pooled)} molecules cannot be cut into {folds} folds")
    rng = np.random.default_rng(10_007 * (seed + 1) + folds)
    assign = np.empty(len(pooled), dtype=int)
    assign[rng.permutation(len(pooled))] = np.arange(len(pooled)) % folds
    return [replace(split, train=[int(i) for i in pooled[assign != f]], val=[int(i) for i in pooled[assign == f]],
                    test=list(split.test), method=f"{split.method}+crossfit{folds}.{f}")
            for f in range(folds)]


def standardize(scores: pd.Series) -> pd.Series:
    """``(s − mean)/std`` (std with ddof=0; a constant column gives zeros)."""
    std = float(scores.std(ddof=0))
    return (scores - scores.mean()) / std if std > 0 else scores * 0.0


def combine(base: pd.DataFrame, fold_tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """The cross-fitted table: ``base`` (the seed's own validation-influence table: rows, residuals,
    exclusions) with ``score`` replaced by the mean of the folds' z-scores, plus ``z_fold_<f>``."""
    out = normalize_scores(base)
    common = set(eligible(out)["row"])
    for table in fold_tables:
        common &= set(eligible(table)["row"])
    rows = sorted(int(r) for r in common)
    zs = []
    for f, table in enumerate(fold_tables):
        z = standardize(table.set_index("row")["score"].loc[rows].astype(float))
        zs.append(z)
        out[f"z_fold_{f}"] = out["row"].map(z)
    mean_z = pd.concat(zs, axis=1).mean(axis=1) if zs else pd.Series(dtype=float)
    out["score_single_split"] = out["score"]
    out["score"] = out["row"].map(mean_z)  # rows outside the common eligible set get NaN → not eligible
    rhos = [float(spearmanr(a.to_numpy(), b.to_numpy())[0]) for a, b in combinations(zs, 2)] if len(rows) > 2 else []
    info = {"folds": len(fold_tables), "n_scored": len(rows), "fold_spearman": rhos,
            "fold_spearman_mean": float(np.mean(rhos)) if rhos else float("nan")}
    if len(rows) > 2:
        single = out.set_index("row")["score_single_split"].loc[rows].astype(float)
        info["spearman_vs_single_split"] = float(spearmanr(single.to_numpy(), mean_z.loc[rows].to_numpy())[0])
    return out, info


def crossfit_scores(dataset, data_path: str, base: Run, base_table: pd.DataFrame, pool: Pool, out_dir: Path, folds: int,
                    influence_config: InfluenceConfig, featurizer_config=None, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train the K fold models of ``base``'s seed, score the pool on each fold, combine.

    ``influence_config`` is the :class:`~lipo_if.influence.InfluenceConfig` of the validation solve
    (each fold model's "validation" part is its held-out fold). Writes ``out_dir/fold_<f>/`` (model),
    ``out_dir/fold_<f>_influence/`` (the solve), ``out_dir/influence_crossfit.csv`` and
    ``crossfit.json``; reuses finished folds and solves.
    """
    out_dir = Path(out_dir)
    tables, val_rmse = [], []
    for f, split in enumerate(fold_splits(base.split, folds, base.config.seed)):
        run = trained_run(dataset, data_path, out_dir / f"fold_{f}", base.config, featurizer_config, split=split, progress=progress)
        tables.append(fitted_influence(run, influence_config, out_dir / f"fold_{f}_influence").scores(pool))
        val_rmse.append(run.metrics.get("val_rmse"))
        log.info("cross-fitting fold %d/%d: val RMSE %.3f", f + 1, folds, run.metrics.get("val_rmse", float("nan")))
    table, info = combine(base_table, tables)
    info["fold_val_rmse"] = val_rmse
    atomic_write_text(out_dir / "influence_crossfit.csv", table.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out_dir / "crossfit.json", json.dumps(jsonable(info), indent=1))
    return table, info
