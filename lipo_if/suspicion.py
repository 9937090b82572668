"""Which labels look wrong: detectors of wrong labels, and the ``suspicion`` of every molecule.

A molecule whose label is far from what the model predicts is either a hard molecule or a wrong
label; first-order influence cannot tell them apart and ranks a wrong label that pulls the model
towards the held-out errors as *most helpful* (see :mod:`lipo_if.select`). The detectors, each
"higher = more suspicious", computed for every scored row of a pool (or of the training set):

- ``residual``: ``|r − median(r)| / σ_val``, the residual's distance from the pool's median residual
  (which absorbs a systematic offset between a pool's labels and the model) in units of the model's
  robust residual spread on its own *validation* set, ``σ_val = 1.4826·MAD(r_val)``: the spread a
  clean label of this model has — unlike the pool's own spread, not inflated when many of the
  pool's labels are wrong;
- ``self_influence``: the robust z-score of ``√SI``, ``SI = ∇ℓᵀ(H + μI)⁻¹∇ℓ = 4 r² L``
  (Koh & Liang §5.4; :mod:`lipo_if.influence.self_influence`): the residual weighted by the
  molecule's leverage ``L``;
- ``leverage``: the robust z-score of ``L`` alone (out-of-domain molecules, not wrong labels —
  a reference);
- ``ensemble_residual`` (ensembles only): ``|r̄ − median| / √(σ_val² + s²)`` with ``r̄`` the ensemble
  mean's residual and ``s`` the members' spread of predictions for the molecule — the residual in
  units of what the ensemble itself is unsure of.

For an ensemble, leverage and self-influence are the members' means.

``suspicion`` is the robust z of the chosen detector (:data:`DEFAULT_DETECTOR`, the one that
won the measurement in benchmarks/RESULTS.md); the suspicion filter of :mod:`lipo_if.benchmark`
keeps the rows with suspicion ≤ z.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .ensemble import Ensemble, finetune
from .influence import Influence
from .influence.self_influence import self_influence
from .influence.mlp import mlp_unsupported_reason
from .pool import Molecules, Pool
from .select import MAD_TO_SD, eligible
from .train import FinetuneConfig, Run, exact_gauss_newton_solver, predict_tensor

DETECTORS: tuple[str, ...] = ("residual", "self_influence", "leverage", "ensemble_residual")
DEFAULT_DETECTOR = "residual"
#: The exponent τ of the ``weighted`` selection's fine-tuning weight ``P(clean)^τ``, chosen on
#: validation RMSE over the 10 seeds of ``noisy`` and ``lowdata`` among τ ∈ {1, ½, ¼} (benchmarks/
#: RESULTS.md, "Pools that hold value"). Why not 1: the two-normal mixture cannot tell a clean
#: label's heavy tail from a wrong label and over-states the wrong fraction (≈ 0.5 where 0.3 is
#: wrong), so clean rows keep only ≈ 65 % of their weight — and giving clean rows their full weight
#: is what the clean-pool oracle's gain needs most. √P tempers that (clean rows ≈ 79 %, wrong rows
#: 15 → 21 %); a density ratio to the validation residuals, calibrated, let too many wrong labels in.
CLEAN_WEIGHT_POWER = 0.5
#: The columns ``lipo-if inspect`` writes: the verdict, then its evidence.
INSPECT_COLUMNS = ["row", "smiles", "label", "suspicion", "smiles_standardized", "prediction", "residual", "residual_z", "leverage",
                   "self_influence_raw", *(f"{name}_suspicion" for name in DETECTORS), "score", "nn_similarity", "n_neighbors",
                   "in_domain", "excluded"]


def validation_residuals(run: Run | Ensemble) -> np.ndarray:
    """The run's (or the ensemble mean's) validation residuals, prediction − label, logD ``[n_val]``."""
    x, y = run.tensors("val")
    return _predict(run, x) - y.double().numpy()


def validation_spread(run: Run | Ensemble) -> float:
    """``1.4826·MAD`` of the run's validation residuals (logD): the residual spread of clean labels."""
    r = validation_residuals(run)
    return float(MAD_TO_SD * np.median(np.abs(r - np.median(r))))


def robust_z(values: np.ndarray, signed: bool = False) -> np.ndarray:
    """``(x − median)/(1.4826·MAD)`` of the finite ``values`` (absolute unless ``signed``); the
    standard deviation stands in when MAD is 0, and zeros when that is 0 too. NaN stays NaN."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if finite.sum() == 0:
        return out
    center = float(np.median(values[finite]))
    spread = MAD_TO_SD * float(np.median(np.abs(values[finite] - center))) or float(np.std(values[finite]))
    dev = values - center
    out[finite] = (dev[finite] if signed else np.abs(dev[finite])) / spread if spread > 0 else 0.0
    return out


def inspect(run, molecules: Molecules | None = None, damping: float | str = "auto", detector: str = DEFAULT_DETECTOR,
            progress: bool = False) -> pd.DataFrame:
    """Suspicion of every row of ``molecules`` — or, with ``molecules=None``, of the run's own
    training molecules (to flag suspect training labels) — with its evidence (see
    :func:`suspicion_table`). The influence solve is validation-held-out, Gauss–Newton, function space."""
    training = molecules is None
    if training:
        molecules = Pool.from_smiles(run.smiles("train"), run.labels("train"))
    inf = Influence(run, heldout="validation", hessian="gauss-newton", solver="function-space", damping=damping,
                    exclude_overlap=not training, progress=progress).fit()
    return suspicion_table(inf, molecules, detector)


def suspicion_table(inf: Influence, molecules: Molecules, detector: str = DEFAULT_DETECTOR) -> pd.DataFrame:
    """``inf.scores(molecules)`` with the evidence of every detector and ``suspicion`` (the robust z
    of ``detector``); NaN where a row is excluded. Leverage and self-influence use the
    function-space form at the fit's damping (Gauss–Newton curvature) — the MLP's only: for a
    D-MPNN run those two columns are NaN."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if detector == "ensemble_residual" and inf.members is None:
        raise ValueError("detector 'ensemble_residual' needs an ensemble (lipo-if train --ensemble M)")
    members = inf.members if inf.members is not None else [inf]
    function_space = mlp_unsupported_reason(members[0].run.model) is None
    if detector in ("self_influence", "leverage") and not function_space:
        raise ValueError(f"detector {detector!r} needs the function-space solve of the package's MLP; a D-MPNN run "
                         "has the residual detectors (residual, ensemble_residual)")
    pool = Pool.coerce(molecules, inf.config.smiles_col, inf.config.label_col)
    table = inf.scores(pool)
    rows = table.loc[table["excluded"] == "", "row"].to_numpy(dtype=int)
    evidence = {name: np.full(len(table), np.nan) for name in ("leverage", "self_influence_raw")}
    if rows.size and function_space:  # (a D-MPNN run: leverage and self-influence stay empty)
        X, _ = pool.rows_features(inf.run.featurizer, rows)
        labels = torch.from_numpy(pool.labels_of(rows))
        si_sum, lev_sum = 0.0, 0.0
        for member in members:
            mlp, fs = member.function_space()
            si, lev, _ = self_influence(fs, mlp, X, labels)
            si_sum, lev_sum = si_sum + si.numpy(), lev_sum + lev.numpy()
        scored = (table["excluded"] == "").to_numpy()
        evidence["leverage"][scored] = lev_sum / len(members)
        evidence["self_influence_raw"][scored] = si_sum / len(members)
    out = table.copy()
    out["leverage"] = evidence["leverage"]
    out["self_influence_raw"] = evidence["self_influence_raw"]
    residual = np.where(out["excluded"] == "", out["residual"].to_numpy(dtype=float), np.nan)
    spread = validation_spread(inf.run)
    out["residual_z"] = (residual - np.nanmedian(residual)) / spread
    detectors = {"residual": np.abs(out["residual_z"].to_numpy()),  # both directions of a wrong label
                 "self_influence": robust_z(np.sqrt(out["self_influence_raw"].to_numpy()), signed=True),  # large = suspicious
                 "leverage": robust_z(out["leverage"].to_numpy(), signed=True),
                 "ensemble_residual": (np.abs(residual - np.nanmedian(residual)) / np.sqrt(spread ** 2 + out["prediction_spread"].to_numpy() ** 2)
                                       if "prediction_spread" in out else np.full(len(out), np.nan))}
    for name, values in detectors.items():
        out[f"{name}_suspicion"] = values
    out["suspicion"] = out[f"{detector}_suspicion"]
    return out


def _predict(run: Run | Ensemble, x: torch.Tensor) -> np.ndarray:
    return run.predict_tensor(x) if isinstance(run, Ensemble) else predict_tensor(run.model, x)


def refit_residual_z(run: Run | Ensemble, pool: Pool, rows: Sequence[int], kept: Sequence[int],
                     config: FinetuneConfig, folds: int = 2, seed: int = 0, weights: dict[int, float] | None = None) -> np.ndarray:
    """Cross-fitted residual suspicion of ``rows`` from models that have learnt from the pool's
    trusted rows: ``|r − median(r)| / σ_val`` (as ``residual``), where a row's residual comes from
    ``run`` fine-tuned on the ``kept`` rows of the *other* folds (so no row's own label is in the
    model that judges it) and ``σ_val`` is that model's validation spread.

    Why: the base model judges the pool from the base training set alone; a model that has also
    learnt from the pool rows a first filter trusts predicts the pool better (most of all where the
    base set is small), which narrows the clean rows' residuals and separates the wrong labels
    further. ``rows``: ``row`` ids to judge; ``kept`` ⊆ ``rows``: the trusted ones; ``weights``
    (optional, ``{row: weight}`` over ``kept``): each trusted row's weight in those fine-tunings (the
    ``weighted`` selection's); ``folds ≥ 2`` fine-tunings. Returns float64 ``[len(rows)]``, in the
    order of ``rows``."""
    rows = np.asarray([int(r) for r in rows])
    if folds < 2 or len(rows) < folds:
        raise ValueError(f"refit_residual_z needs folds ≥ 2 and at least that many rows, got folds={folds}, {len(rows)} rows")
    kept_set = {int(r) for r in kept}
    fold_of = np.random.default_rng(seed).permutation(len(rows)) % folds
    residual, spread = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for f in range(folds):
        judged = fold_of == f
        trusted = [int(r) for r in rows[~judged] if int(r) in kept_set]
        model = finetune(run, pool, config, progress=False, rows=trusted,
                         weights=None if weights is None else [weights[r] for r in trusted])
        x, y = pool.rows_features(run.featurizer, rows[judged])
        residual[judged] = _predict(model, x) - y.double().numpy()
        spread[judged] = validation_spread(model)
    return np.abs(residual - np.median(residual)) / spread


def validation_z(run: Run | Ensemble) -> np.ndarray:
    """The run's validation residuals in its validation spreads, ``(r − median r) / σ_val`` ``[n_val]``:
    what the residual z of a clean label looks like for this model."""
    return robust_z(validation_residuals(run), signed=True)


def clean_probability(residual_z: np.ndarray, clean_reference: np.ndarray | None = None, iterations: int = 200,
                      tol: float = 1e-8) -> tuple[np.ndarray, dict]:
    """``P(clean | z)`` of every row from a two-component mixture of its residual in validation
    spreads (``residual_z`` of :func:`suspicion_table`, signed): clean labels with density ``f_c``,
    wrong labels ``N(0, σ_w²)`` with ``σ_w`` above the clean spread, and the fraction of wrong labels
    ``π``, fitted by EM on the pool itself.

    ``f_c``: without ``clean_reference``, ``N(0, σ_c²)`` with σ_c fitted too (starting at 1 — what
    validation says a clean label's residual spreads); with ``clean_reference`` (the z of residuals
    known to be clean: the model's validation residuals, :func:`validation_z`), a Student t fitted to
    them and held fixed — its heavier tails keep a hard but clean molecule from looking wrong, and
    only ``π`` and ``σ_w`` are left to the pool.

    Why: a hard threshold treats a row just inside it as surely clean and one just outside as
    surely wrong; the weight of a row in the fine-tuning is better its probability of being clean
    (the M-step of EM on this mixture weights each row's squared error by it). NaN rows (excluded)
    get NaN. Returns ``(p_clean [N] float64, {"clean": "normal" | "t (validation)", "sigma_clean",
    "t_df", "sigma_wrong", "wrong_fraction", "iterations"})``."""
    from scipy import stats

    z = np.asarray(residual_z, dtype=float)
    ok = np.isfinite(z)
    out = np.full(z.shape, np.nan)
    x = z[ok]
    fixed = clean_reference is not None
    info = {"clean": "t (validation)" if fixed else "normal", "sigma_clean": 1.0, "t_df": None, "sigma_wrong": 3.0,
            "wrong_fraction": 0.2, "iterations": 0}
    if x.size < 3:
        out[ok] = 1.0
        return out, info
    s_c = 1.0
    if fixed:
        reference = np.asarray(clean_reference, dtype=float)
        df, _, scale = stats.t.fit(reference[np.isfinite(reference)], floc=0.0)
        df = float(np.clip(df, 1.0, 100.0))
        log_clean = stats.t.logpdf(x, df, 0.0, scale)
        s_c, info["t_df"] = float(scale), df
    s_w, pi = max(3.0 * s_c, 1.5 * float(np.std(x))), 0.2

    def log_densities(s_c: float, s_w: float, pi: float) -> tuple[np.ndarray, np.ndarray]:
        clean = log_clean if fixed else -np.log(s_c) - 0.5 * (x / s_c) ** 2 - 0.5 * np.log(2 * np.pi)
        return np.log1p(-pi) + clean, np.log(pi) - np.log(s_w) - 0.5 * (x / s_w) ** 2 - 0.5 * np.log(2 * np.pi)

    it = 0
    for it in range(1, iterations + 1):
        log_c, log_w = log_densities(s_c, s_w, pi)
        p_c = 1.0 / (1.0 + np.exp(np.clip(log_w - log_c, -700, 700)))
        new_pi = float(np.clip(1.0 - p_c.mean(), 1e-4, 0.9))
        new_c = s_c if fixed else max(float(np.sqrt(np.sum(p_c * x ** 2) / max(p_c.sum(), 1e-12))), 1e-3)
        new_w = float(np.sqrt(np.sum((1 - p_c) * x ** 2) / max((1 - p_c).sum(), 1e-12)))
        new_w = max(new_w, 1.05 * new_c)  # the wrong component stays the wide one
        done = abs(new_pi - pi) + abs(new_c - s_c) + abs(new_w - s_w) < tol
        s_c, s_w, pi = new_c, new_w, new_pi
        if done:
            break
    log_c, log_w = log_densities(s_c, s_w, pi)
    out[ok] = 1.0 / (1.0 + np.exp(np.clip(log_w - log_c, -700, 700)))
    info.update(sigma_clean=s_c, sigma_wrong=s_w, wrong_fraction=pi, iterations=it)
    return out, info


def check_weight_power(power: float) -> float:
    """``power`` if it is a valid exponent of P(clean) (0 < τ ≤ 1), else :class:`ValueError` naming it."""
    if not (np.isfinite(power) and 0 < power <= 1):
        raise ValueError(f"weight power must be in (0, 1] (1 = P(clean) itself), got {power}")
    return float(power)


def clean_weights(table: pd.DataFrame, clean_reference: np.ndarray | None = None,
                  power: float = CLEAN_WEIGHT_POWER) -> dict[int, float]:
    """``{row: P(clean)^power}`` for the eligible rows of a :func:`suspicion_table` (in table order):
    the weights of the ``weighted`` selection — every eligible pool molecule added, each weighted in
    the fine-tuning's squared error by :func:`clean_probability` of its residual (fitted on the
    eligible rows; ``clean_reference``: see there) raised to ``power`` (see
    :data:`CLEAN_WEIGHT_POWER`; 1 = the probability itself). The mixture's fit is left in
    ``table.attrs["mixture"]``, with ``power``."""
    power = check_weight_power(power)
    pool = eligible(table)  # (the mixture is fitted on these rows only: out-of-domain rows are never added)
    p_clean, mixture = clean_probability(pool["residual_z"].to_numpy(dtype=float), clean_reference)
    table.attrs["mixture"] = {**mixture, "power": power}
    return {int(r): float(p) ** power for r, p in zip(pool["row"], p_clean)}


def cross_fitted_clean_weights(run: Run | Ensemble, pool: Pool, table: pd.DataFrame, config: FinetuneConfig,
                               folds: int = 2, seed: int = 0, power: float = CLEAN_WEIGHT_POWER) -> dict[int, float]:
    """The ``weighted`` selection's weights, judged a second time: :func:`clean_weights` of the
    residuals that :func:`refit_residual_z` gives — each eligible row judged by ``run`` fine-tuned on
    the *other* folds' rows, weighted by the first :func:`clean_weights` (so no row is judged by a
    model that saw its label). A model that has learnt from the pool's likely-clean rows predicts the
    pool better, which narrows the clean rows' residuals and separates the wrong ones further
    (``folds`` more fine-tunings). ``table``: a :func:`suspicion_table` of ``pool`` by ``run``;
    both mixtures' fits are left in ``table.attrs["mixture"]`` (``"first"`` the one of the base
    model's residuals). ``folds=0`` (or fewer eligible rows than folds): the first weights alone.
    ``power``: both passes' weights are ``P(clean)^power`` (:func:`clean_weights`).
    Returns ``{row: P(clean)^power}`` over the eligible rows."""
    first = clean_weights(table, power=power)
    first_mixture = table.attrs["mixture"]
    rows = list(first)
    if folds == 0 or len(rows) < folds:
        return first
    z = refit_residual_z(run, pool, rows, rows, config, folds, seed=seed, weights=first)
    judged = table.copy()
    judged["residual_z"] = judged["row"].map(dict(zip(rows, z)))  # (|z|: the mixture is symmetric in z)
    weights = clean_weights(judged, power=power)
    table.attrs["mixture"] = {**judged.attrs["mixture"], "folds": folds, "first": first_mixture}
    return weights


#: The columns of the table :func:`weigh_pool` returns (and ``lipo-if finetune --weighted`` writes).
WEIGHT_COLUMNS = ["row", "smiles", "label", "weight", "prediction", "residual", "residual_z", "nn_similarity", "in_domain", "excluded"]


def weigh_pool(run: Run | Ensemble, molecules: Molecules, config: FinetuneConfig | None = None, folds: int = 2,
               damping: float | str = "auto", progress: bool = False, power: float = CLEAN_WEIGHT_POWER) -> pd.DataFrame:
    """The ``weighted`` selection of ``molecules`` for ``run`` — what won ``lipo-if benchmark``: one row
    per input molecule with ``weight`` = its probability of a clean label to the ``power``
    (:data:`CLEAN_WEIGHT_POWER`; every eligible row,
    :func:`cross_fitted_clean_weights` with ``folds`` judges fine-tuned by ``config``;
    ``folds=0``: :func:`clean_weights` of the base model's residuals alone), 0 where the row is not
    eligible (``excluded`` says why, or out of the applicability domain). Pass the rows and weights
    to :func:`lipo_if.finetune`::

        pool = lipo_if.Pool.read("pool.csv")
        chosen = weigh_pool(run, pool).query("weight > 0")
        new = lipo_if.finetune(run, pool, rows=chosen["row"].tolist(), weights=chosen["weight"].tolist())

    The mixture's fit is in ``table.attrs["mixture"]``."""
    config = config or FinetuneConfig()
    pool = Pool.coerce(molecules)
    inf = Influence(run, heldout="validation", hessian="gauss-newton", solver=exact_gauss_newton_solver(run.config.model), damping=damping,
                    progress=progress).fit()
    table = suspicion_table(inf, pool)
    weights = cross_fitted_clean_weights(run, pool, table, config, folds, seed=max(config.seed, 0), power=power)
    out = table.copy()
    out["weight"] = out["row"].map(weights).fillna(0.0).to_numpy(dtype=float)
    out.attrs["mixture"] = table.attrs.get("mixture")
    return out
