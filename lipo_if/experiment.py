"""``lipo-if run``: does influence-selected data beat the baseline? The whole mission, over seeds.

For every seed (the seed sets the split and the initialization):

1. train the Task-1 model — ``original``;
2. score the external molecules by influence on the **validation** set (and, as a diagnostic
   only, on the **test** set — ``oracle``, the ceiling of any selection; never a method), by
   :mod:`lipo_if.influence` or (``influence_backend="ntk"``) by the same damped Gauss–Newton
   system solved in function space (:func:`lipo_if.group.function_space_influence`);
3. select: ``influence`` (top-k with the configured guard, residual by default),
   ``influence_unguarded`` (plain first-order top-k) and the other guards of ``compare_guards``
   (``influence_greedy``: greedy group selection re-scored after each addition, see
   :mod:`lipo_if.group`; ``influence_residual``, ``influence_residual_greedy``), ``crossfit``
   (top-k by cross-fitted influence, see :mod:`lipo_if.crossfit`; when ``crossfit_folds ≥ 2``),
   ``influence_threshold`` (all guarded rows with score < 0), ``random`` (k eligible rows),
   ``all_external`` (every eligible row), ``oracle`` (top-k by test influence);
4. retrain each selection the same way — fine-tune θ̂ at a low learning rate (or from scratch) —
   including ``baseline``: the same retraining with **nothing** added. Fine-tuning alone moves
   test RMSE, so every strategy is compared with ``baseline``, not with ``original``;
5. evaluate on validation and test, and aggregate over seeds: mean, std, the paired difference
   to ``baseline`` with a paired t-test and a Wilcoxon signed-rank p-value; and, for every
   test-blind method and k, how much of the oracle's gain it recovers (``recovery``), with the
   paired tests against the baseline and against the oracle and the smallest difference the
   number of seeds can resolve.

Identical selections within a seed (e.g. two guards choosing the same rows) are retrained once.

Outputs in ``OUT``: ``report.json``, ``report.md``, ``rmse_vs_k.png``, ``score_hist.png``,
``predicted_vs_actual.png``, and per seed ``seed_<s>/`` (the original run, the score tables and
``results.json``; a finished seed is reused when the experiment is run again with the same settings).
The headline k is chosen on **validation** RMSE of ``influence``; the test set is never used to
choose anything.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .data import atomic_write_bytes, atomic_write_json, atomic_write_text, load_dataset, read_molecule_csv
from .featurize import FeaturizerConfig
from .select import (GUARDS, SelectionConfig, eligible, guarded_pool, load_scores, random_k, residual_outliers,
                     select, top_k, uses_greedy)
from .train import FinetuneConfig, Run, TrainConfig, finetune_run, train_run

log = logging.getLogger(__name__)

METRICS = ("test_rmse", "test_mae", "test_r2", "val_rmse", "val_mae")
#: strategies measured at every k (the others are measured once per seed)
K_STRATEGIES = ("influence", "influence_unguarded", "influence_residual", "influence_greedy", "influence_residual_greedy",
                "crossfit", "random", "oracle")
#: strategy name of the top-k influence selection under each guard (besides ``influence``, the configured guard)
GUARD_STRATEGY = {"none": "influence_unguarded", "residual": "influence_residual", "greedy": "influence_greedy",
                  "residual+greedy": "influence_residual_greedy"}
#: the test-blind selections whose recovery of the oracle's gain is reported
TEST_BLIND = ("influence", "influence_unguarded", "influence_residual", "influence_greedy", "influence_residual_greedy", "crossfit", "random")
FIXED_STRATEGIES = ("original", "baseline", "all_external", "influence_threshold")
DIAGNOSTIC_NOTE = "diagnostic only: ranks by influence on the TEST set (leaky ceiling), never a selection method"


@dataclass
class ExperimentConfig:
    """Settings of ``lipo-if run`` (the baseline's own settings are TrainConfig's options)."""

    seeds: int = field(default=5, metadata={"help": "number of seeds (each: a new split and initialization)"})
    first_seed: int = field(default=0, metadata={"help": "seeds are first_seed, first_seed+1, …"})
    k: tuple[float, ...] = field(default=(25.0, 50.0, 100.0), metadata={"help": "how many molecules to add: counts (≥ 1) or fractions of the eligible rows (< 1)"})
    guard: str = field(default="residual", metadata={"help": "guard of the influence selection: none, residual (drop residual outliers), "
                                                             "greedy (greedy group selection re-scored after each addition) or residual+greedy", "choices": GUARDS})
    guard_z: float = field(default=3.5, metadata={"help": "residual guard: robust z-score above which a molecule is dropped"})
    compare_guards: tuple[str, ...] = field(default=("none", "greedy"), metadata={"help": "other guards whose top-k selections are also retrained and reported (influence_unguarded, influence_greedy, …)", "choices": GUARDS})
    threshold_strategy: bool = field(default=True, metadata={"help": "also retrain influence_threshold (every guarded row with score < 0)"})
    crossfit_folds: int = field(default=0, metadata={"help": "cross-fitted influence with this many folds of train+validation (0 = off; K trainings and solves per seed)"})
    oracle: bool = field(default=True, metadata={"help": "also run the test-set-influence oracle (diagnostic ceiling; one more influence solve per seed)"})
    influence_backend: str = field(default="pipeline", metadata={"help": "pipeline: lipo_if.influence (solver below); ntk: the same damped Gauss–Newton system solved in function space (exact, one n×n Cholesky; needs a numeric damping)", "choices": ("pipeline", "ntk")})
    influence_hessian: str = field(default="gauss-newton", metadata={"help": "curvature of the influence solve", "choices": ("gauss-newton", "exact")})
    influence_solver: str = field(default="lissa", metadata={"help": "inverse-HVP solver", "choices": ("lissa", "cg", "direct")})
    influence_damping: float | str = field(default="auto", metadata={"help": "damping μ of (H + μI)s = v ('auto' = 0.02·λmax)"})
    influence_depth: int = field(default=1000, metadata={"help": "LiSSA recursion steps"})
    influence_repeats: int = field(default=1, metadata={"help": "LiSSA chains averaged"})
    influence_batch_size: int = field(default=512, metadata={"help": "LiSSA minibatch size"})
    influence_max_iter: int = field(default=500, metadata={"help": "CG iteration limit"})

    def __post_init__(self) -> None:
        self.k = tuple(float(k) for k in self.k)
        self.compare_guards = tuple(dict.fromkeys(str(g) for g in self.compare_guards))
        checks = [
            (self.seeds >= 1, f"seeds must be ≥ 1, got {self.seeds}"),
            (self.first_seed >= 0, f"first_seed must be ≥ 0, got {self.first_seed}"),
            (len(self.k) >= 1 and all(k > 0 and (k < 1 or float(k).is_integer()) for k in self.k),
             f"k must be counts ≥ 1 or fractions in (0, 1), got {list(self.k)}"),
            (self.guard in GUARDS, f"guard must be one of {', '.join(GUARDS)}, got {self.guard!r}"),
            (all(g in GUARDS for g in self.compare_guards), f"compare_guards must be among {', '.join(GUARDS)}, got {list(self.compare_guards)}"),
            (self.crossfit_folds == 0 or self.crossfit_folds >= 2, f"crossfit_folds must be 0 (off) or ≥ 2, got {self.crossfit_folds}"),
            (self.influence_backend in ("pipeline", "ntk"), f"influence_backend must be pipeline or ntk, got {self.influence_backend!r}"),
            (self.influence_backend == "pipeline" or (self.influence_hessian == "gauss-newton" and not isinstance(self.influence_damping, str)),
             "influence_backend ntk solves the Gauss–Newton system at a fixed damping: use --influence-hessian gauss-newton and a numeric --influence-damping"),
            (self.guard_z > 0, f"guard_z must be positive, got {self.guard_z}"),
            (self.influence_depth >= 1 and self.influence_repeats >= 1 and self.influence_batch_size >= 1,
             "influence_depth, influence_repeats and influence_batch_size must be ≥ 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.influence_config("validation")  # validates damping/solver names early

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def guards_needing_group(self) -> bool:
        return uses_greedy(self.guard) or any(uses_greedy(g) for g in self.compare_guards)

    def influence_config(self, heldout: str, progress: bool = False):
        """The :class:`~lipo_if.influence.InfluenceConfig` of one influence solve (or, for the ntk
        backend, the :class:`FunctionSpaceSettings` that :func:`_influence` recognizes)."""
        from .influence import InfluenceConfig

        if self.influence_backend == "ntk":
            return FunctionSpaceSettings(heldout=heldout, damping=float(self.influence_damping))
        return InfluenceConfig(
            heldout=heldout, hessian=self.influence_hessian, solver=self.influence_solver, damping=self.influence_damping,
            depth=self.influence_depth, repeats=self.influence_repeats, batch_size=self.influence_batch_size,
            max_iter=self.influence_max_iter, progress=progress,
        )


@dataclass
class FunctionSpaceSettings:
    """Settings of an influence table computed by :func:`lipo_if.group.function_space_influence`."""

    heldout: str
    damping: float
    backend: str = "ntk"
    hessian: str = "gauss-newton"


def k_label(k: float) -> str:
    """Stable text form of a k: ``"50"`` for a count, ``"0.1"`` for a fraction."""
    return str(int(k)) if k >= 1 else f"{k:g}"


# --------------------------------------------------------------------------- one seed


@dataclass
class Selection:
    """One retraining to do: a strategy, its k (None for fixed strategies) and the external rows."""

    strategy: str
    k: float | None
    rows: list[int]


def plan_selections(val_scores: pd.DataFrame, test_scores: pd.DataFrame | None, config: ExperimentConfig, seed: int,
                    group=None, crossfit_table: pd.DataFrame | None = None) -> list[Selection]:
    """Every selection of one seed (``original`` is not a retraining and is not listed).

    ``group``: the :class:`~lipo_if.group.GroupModel` the greedy guards need; ``crossfit_table``:
    the cross-fitted scores (strategy ``crossfit``, residual-guarded like ``influence``).
    """
    pool = eligible(val_scores)

    def chosen(guard: str, strategy: str = "top_k", k: float = 0.0) -> list[int]:
        return select(val_scores, SelectionConfig(strategy=strategy, k=k, guard=guard, guard_z=config.guard_z), group)

    plans = [Selection("baseline", None, []), Selection("all_external", None, [int(r) for r in pool["row"]])]
    if config.threshold_strategy:
        plans.append(Selection("influence_threshold", None, chosen(config.guard, "threshold")))
    for k in config.k:
        plans.append(Selection("influence", k, chosen(config.guard, k=k)))
        for guard in config.compare_guards:
            if guard != config.guard:
                plans.append(Selection(GUARD_STRATEGY[guard], k, chosen(guard, k=k)))
        if crossfit_table is not None:
            cf_guard = "residual" if "residual" in config.guard else "none"
            plans.append(Selection("crossfit", k, top_k(guarded_pool(crossfit_table, cf_guard, config.guard_z), k)))
        # random draws depend on (seed, k) so that different k are independent draws
        plans.append(Selection("random", k, random_k(pool, k, seed=seed * 1000 + int(k if k >= 1 else k * 1000))))
        if test_scores is not None:
            test_pool = guarded_pool(test_scores, "residual" if "residual" in config.guard else "none", config.guard_z)
            plans.append(Selection("oracle", k, top_k(test_pool, k)))
    return plans


def _original_run(dataset, data_path: str, run_dir: Path, train_config: TrainConfig,
                  featurizer_config: FeaturizerConfig | None, progress: bool) -> Run:
    """Train the seed's original model, or reuse ``run_dir`` when it holds one trained with the same
    settings on the same data (an interrupted experiment resumes without retraining)."""
    from .train import load_run

    if (run_dir / "model.pt").exists():
        previous = load_run(run_dir, data_path=data_path)
        same_features = featurizer_config is None or previous.featurizer.config == featurizer_config
        if asdict(previous.config) == asdict(train_config) and same_features and previous.split.data_fingerprint == dataset.fingerprint():
            previous._dataset = dataset
            log.info("reusing the original run in %s", run_dir)
            return previous
    base = train_run(dataset, data_path, train_config, featurizer_config, progress=progress)
    base.save(run_dir)
    return base


def _influence(run: Run, external_path: str, config, out_csv: Path) -> dict:
    """:func:`run_influence`, or its saved summary when ``out_csv`` was written with the same settings for this run."""
    from .influence import output_paths, run_influence

    summary_path = output_paths(out_csv)["summary"]
    if out_csv.exists() and summary_path.exists() and run.run_dir is not None:
        previous = json.loads(summary_path.read_text())
        model_time = (Path(run.run_dir) / "model.pt").stat().st_mtime
        wanted = {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k != "progress"}
        if isinstance(config, FunctionSpaceSettings):
            wanted = {"backend": "ntk", "heldout": config.heldout, "hessian": "gauss-newton", "damping": config.damping}
        saved = {k: v for k, v in (previous.get("settings") or {}).items() if k != "progress"}
        if saved == wanted and out_csv.stat().st_mtime > model_time \
                and previous.get("external") == str(external_path):
            log.info("reusing influence scores %s", out_csv)
            return previous
    if isinstance(config, FunctionSpaceSettings):
        from .group import function_space_influence

        return function_space_influence(run, external_path, config.heldout, config.damping, out_csv)
    return run_influence(run, external_path, config, out_csv)


def _metrics_row(metrics: dict, n_added: int) -> dict:
    return {**{m: float(metrics[m]) for m in METRICS}, "n_added": int(n_added)}


def _config_hash(*configs: Any) -> str:
    """Hash of the settings a seed's results depend on (not how many seeds there are)."""
    dicts = [asdict(c) if c is not None else None for c in configs]
    for d in dicts:
        if d is not None:
            for key in ("seeds", "first_seed"):
                d.pop(key, None)
    text = json.dumps(dicts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_seed(
    dataset, data_path: str, external_path: str, seed_dir: Path, seed: int, config: ExperimentConfig,
    train_config: TrainConfig, finetune_config: FinetuneConfig, featurizer_config: FeaturizerConfig | None,
    progress: bool = True,
) -> dict:
    """Train, score, select and retrain for one seed; returns (and writes) ``seed_dir/results.json``."""
    from tqdm.auto import tqdm

    base = _original_run(dataset, data_path, seed_dir / "original", TrainConfig(**{**asdict(train_config), "seed": seed}),
                         featurizer_config, progress)
    summaries = {"validation": _influence(base, external_path, config.influence_config("validation", progress), seed_dir / "influence_val.csv")}
    val_scores = load_scores(seed_dir / "influence_val.csv")
    test_scores = None
    if config.oracle:
        # The pipeline warns that heldout=test makes test metrics optimistic: true, and the reason the
        # oracle is reported as a diagnostic only — so the warning is expected here and silenced.
        pipeline_log = logging.getLogger("lipo_if.influence.pipeline")
        level = pipeline_log.level
        pipeline_log.setLevel(logging.ERROR)
        try:
            summaries["test"] = _influence(base, external_path, config.influence_config("test", progress), seed_dir / "influence_test.csv")
        finally:
            pipeline_log.setLevel(level)
        test_scores = load_scores(seed_dir / "influence_test.csv")

    group, group_info = None, None
    if config.guards_needing_group:
        from .group import group_model

        clock = time.perf_counter()
        damping = float(summaries["validation"].get("solver", {}).get("info", {}).get("damping"))
        group = group_model(base, val_scores, external_path, damping)
        group_info = {**group.info, "seconds": round(time.perf_counter() - clock, 1)}
    crossfit_table, crossfit_info = None, None
    if config.crossfit_folds:
        from .crossfit import crossfit_scores

        clock = time.perf_counter()
        crossfit_table, crossfit_info = crossfit_scores(
            dataset, data_path, base, val_scores, external_path, seed_dir / "crossfit", config.crossfit_folds,
            config.influence_config("validation", progress), featurizer_config, progress)
        crossfit_info["seconds"] = round(time.perf_counter() - clock, 1)

    external = read_molecule_csv(external_path).set_index("row")
    offset = float(summaries["validation"].get("renormalization_offset") or 0.0)
    score_of = val_scores.set_index("row")["score"]
    plans = plan_selections(val_scores, test_scores, config, seed, group, crossfit_table)
    ft_config = FinetuneConfig(**{**asdict(finetune_config), "seed": seed})
    results: list[dict] = [{"strategy": "original", "k": None, "rows": [], **_metrics_row(base.metrics, 0)}]
    baseline_val_mse = None
    done: dict[tuple[int, ...], dict] = {}  # identical selections are retrained once
    for plan in tqdm(plans, desc=f"seed {seed}: retraining", disable=not progress, leave=False):
        key = tuple(sorted(plan.rows))
        if key not in done:
            smiles = external.loc[list(key), "smiles_input"].tolist() if key else []
            labels = external.loc[list(key), "label"].tolist() if key else []
            new = finetune_run(base, smiles, labels, ft_config, progress=False)
            done[key] = {**_metrics_row(new.metrics, new.metrics["n_added"]), "val_mse": float(new.metrics["val_rmse"]) ** 2,
                         "best_epoch": new.metrics["best_epoch"]}
        val_mse = done[key]["val_mse"]
        if plan.strategy == "baseline":
            baseline_val_mse = val_mse
        predicted = float(score_of.loc[plan.rows].sum()) + offset * len(plan.rows) if plan.rows else 0.0
        entry = {"strategy": plan.strategy, "k": plan.k, "rows": plan.rows, **done[key], "predicted_delta_val_mse": predicted}
        if group is not None and plan.rows:
            entry["predicted_delta_val_mse_second_order"] = group.objective(plan.rows) + offset * len(plan.rows)
        results.append(entry)
    for r in results[1:]:
        r["actual_delta_val_mse"] = r["val_mse"] - baseline_val_mse if baseline_val_mse is not None else float("nan")
    outliers = residual_outliers(val_scores, config.guard_z)
    out = {
        "seed": seed, "results": results, "influence_summaries": {k: _digest(v) for k, v in summaries.items()},
        "guard_dropped_rows": [int(r) for r in val_scores.loc[outliers, "row"]],
        "n_eligible": int(len(eligible(val_scores))), "group_model": group_info, "crossfit": crossfit_info,
        "n_retrainings": len(done),
    }
    atomic_write_json(seed_dir / "results.json", out)
    return out


def _digest(summary: dict) -> dict:
    """The parts of an influence summary worth keeping in the report."""
    solver = summary.get("solver", {})
    info = solver.get("info", {})
    return {
        "heldout": summary.get("heldout"), "counts": summary.get("counts"), "timings": summary.get("timings"),
        "damping": info.get("damping"), "scale": info.get("scale"), "lambda_max": info.get("lambda_max"),
        "relative_residual": info.get("relative_residual"), "converged": solver.get("converged"),
        "renormalization_offset": summary.get("renormalization_offset"), "warnings": summary.get("warnings"),
    }


# --------------------------------------------------------------------------- aggregation


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired difference ``a − b`` over seeds: mean, std, per-seed values, t-test and Wilcoxon p-values.

    p-values are NaN with fewer than 2 seeds (and Wilcoxon's when every difference is 0). With 5
    seeds the smallest two-sided Wilcoxon p is 0.0625, so the t-test p is the one to read.
    """
    from scipy.stats import ttest_1samp, wilcoxon

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    out = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
           "per_seed": d.tolist(), "p_ttest": float("nan"), "p_wilcoxon": float("nan"), "n_better": int((d < 0).sum())}
    if len(d) > 1 and np.any(d != 0):
        out["p_ttest"] = float(ttest_1samp(d, 0.0).pvalue) if d.std() > 0 else 0.0
        out["p_wilcoxon"] = float(wilcoxon(d).pvalue)
    return out


def _summarize(rows: list[dict], seeds: list[int], baseline: list[dict] | None) -> dict:
    """Mean/std of the metrics over seeds (rows in seed order) and the paired difference to baseline."""
    out: dict[str, Any] = {}
    for m in METRICS:
        values = np.array([r[m] for r in rows], dtype=float)
        out[f"{m}_mean"] = float(values.mean())
        out[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    out["n_added"] = float(np.mean([r["n_added"] for r in rows]))
    out["per_seed"] = [{"seed": s, **{m: r[m] for m in (*METRICS, "n_added")},
                        **{x: r[x] for x in ("predicted_delta_val_mse", "actual_delta_val_mse") if x in r}} for s, r in zip(seeds, rows)]
    if baseline is not None:
        out["test_rmse_diff_vs_baseline"] = paired_stats([r["test_rmse"] for r in rows], [r["test_rmse"] for r in baseline])
        out["val_rmse_diff_vs_baseline"] = paired_stats([r["val_rmse"] for r in rows], [r["val_rmse"] for r in baseline])
    return out


def aggregate(seed_results: list[dict], config: ExperimentConfig) -> dict:
    """The strategy entries of ``report.json`` from the per-seed results."""
    seeds = [s["seed"] for s in seed_results]

    def rows_of(strategy: str, k: float | None) -> list[dict]:
        picked = []
        for s in seed_results:
            match = [r for r in s["results"] if r["strategy"] == strategy and (k is None or r["k"] == k)]
            if not match:
                return []
            picked.append(match[0])
        return picked

    baseline = rows_of("baseline", None)
    report: dict[str, Any] = {}
    for name in FIXED_STRATEGIES:
        rows = rows_of(name, None)
        if rows:
            report[name] = _summarize(rows, seeds, None if name == "baseline" else baseline)
    by_k: dict[str, dict[str, dict]] = {}
    for name in K_STRATEGIES:
        for k in config.k:
            rows = rows_of(name, k)
            if rows:
                by_k.setdefault(name, {})[k_label(k)] = _summarize(rows, seeds, baseline)
    # The headline k: lowest mean validation RMSE of the influence selection (validation only).
    val_by_k = {label: entry["val_rmse_mean"] for label, entry in by_k.get("influence", {}).items()}
    headline = min(val_by_k, key=val_by_k.get) if val_by_k else None
    for name, entries in by_k.items():
        report[name] = {**entries[headline], "k": headline, "by_k": entries}
        if name != "random" and "random" in by_k:
            for label, entry in entries.items():
                entry["test_rmse_diff_vs_random"] = paired_stats(
                    [p["test_rmse"] for p in entry["per_seed"]], [p["test_rmse"] for p in by_k["random"][label]["per_seed"]])
            report[name]["test_rmse_diff_vs_random"] = entries[headline].get("test_rmse_diff_vs_random")
    if "oracle" in report:
        report["oracle"]["note"] = DIAGNOSTIC_NOTE
    report["headline_k"] = headline
    report["recovery"] = recovery(by_k)
    return report


def detectable_difference(std: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean paired difference a two-sided paired t-test at ``alpha`` detects with ``power``
    over ``n`` seeds when the per-seed differences have standard deviation ``std``."""
    from scipy.stats import t

    if n < 2 or not math.isfinite(std):
        return float("nan")
    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * std / math.sqrt(n))


def recovery(by_k: dict[str, dict[str, dict]]) -> dict:
    """How much of the oracle's test gain each test-blind selection recovers, per k.

    Per (method, k): ``delta`` = mean paired Δ test RMSE vs baseline (± std, t-test p, 95 %
    interval), ``oracle_delta`` the same for the oracle at that k, ``fraction`` = delta /
    oracle_delta (only when the oracle gained, i.e. oracle_delta < 0), the paired test of
    method − oracle, and ``detectable`` — the smallest Δ vs baseline these seeds resolve (α = 0.05,
    power 0.8). ``headline`` is the (method, k) with the lowest mean **validation** RMSE among the
    influence-based selections — chosen without the test set.
    """
    from scipy.stats import t

    rows = []
    for name in TEST_BLIND:
        for label, entry in by_k.get(name, {}).items():
            oracle = by_k.get("oracle", {}).get(label)
            d = entry.get("test_rmse_diff_vs_baseline")
            if not d or not oracle:
                continue
            n = len(d["per_seed"])
            half = float(t.ppf(0.975, n - 1) * d["std"] / math.sqrt(n)) if n > 1 and math.isfinite(d["std"]) else float("nan")
            o = oracle["test_rmse_diff_vs_baseline"]["mean"]
            vs_oracle = paired_stats([p["test_rmse"] for p in entry["per_seed"]], [p["test_rmse"] for p in oracle["per_seed"]])
            rows.append({
                "method": name, "k": label, "n_added": entry["n_added"], "delta": d["mean"], "delta_std": d["std"],
                "delta_ci95": [d["mean"] - half, d["mean"] + half], "p_vs_baseline": d["p_ttest"], "n_better": d["n_better"],
                "oracle_delta": o, "fraction": d["mean"] / o if o < 0 else float("nan"),
                "minus_oracle": vs_oracle["mean"], "p_vs_oracle": vs_oracle["p_ttest"],
                "detectable": detectable_difference(d["std"], n), "val_rmse_mean": entry["val_rmse_mean"],
                "val_delta": entry["val_rmse_diff_vs_baseline"]["mean"],
            })
    candidates = [r for r in rows if r["method"] != "random"]
    headline = min(candidates, key=lambda r: r["val_rmse_mean"]) if candidates else None
    return {"rows": rows, "headline": headline}


def fidelity(seed_results: list[dict]) -> dict:
    """Predicted (Σ first-order scores) vs actual change of validation MSE over every retrained group."""
    from scipy.stats import pearsonr, spearmanr

    pairs = [(r["predicted_delta_val_mse"], r["actual_delta_val_mse"], r["strategy"]) for s in seed_results
             for r in s["results"] if r["strategy"] not in ("original", "baseline") and r.get("actual_delta_val_mse") is not None]
    pred = np.array([p[0] for p in pairs], dtype=float)
    act = np.array([p[1] for p in pairs], dtype=float)
    ok = np.isfinite(pred) & np.isfinite(act)
    out = {"n_groups": int(ok.sum()), "pearson": float("nan"), "spearman": float("nan")}
    if ok.sum() >= 3 and np.std(pred[ok]) > 0 and np.std(act[ok]) > 0:
        out["pearson"] = float(pearsonr(pred[ok], act[ok])[0])
        out["spearman"] = float(spearmanr(pred[ok], act[ok])[0])
    second = [(r["predicted_delta_val_mse_second_order"], r["actual_delta_val_mse"]) for s in seed_results for r in s["results"]
              if r.get("predicted_delta_val_mse_second_order") is not None and r.get("actual_delta_val_mse") is not None]
    if len(second) >= 3:
        p2 = np.array(second, dtype=float)
        ok2 = np.isfinite(p2).all(axis=1)
        if ok2.sum() >= 3 and np.std(p2[ok2, 0]) > 0 and np.std(p2[ok2, 1]) > 0:
            out["second_order"] = {"n_groups": int(ok2.sum()), "pearson": float(pearsonr(p2[ok2, 0], p2[ok2, 1])[0]),
                                   "spearman": float(spearmanr(p2[ok2, 0], p2[ok2, 1])[0]),
                                   "mean_predicted": float(p2[ok2, 0].mean()), "mean_actual": float(p2[ok2, 1].mean()),
                                   "mean_predicted_first_order": float(np.mean([r["predicted_delta_val_mse"] for s in seed_results
                                                                               for r in s["results"] if r.get("predicted_delta_val_mse_second_order") is not None]))}
    return out


# --------------------------------------------------------------------------- the report


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_diff(d: dict | None) -> tuple[str, str]:
    if not d:
        return "–", "–"
    return f"{d['mean']:+.4f} ± {_fmt(d['std'], 4)}", _fmt(d["p_ttest"], 2)


def conclusion(report: dict) -> str:
    """The plain sentence(s) of what the numbers mean."""
    k = report.get("headline_k")
    inf, base = report.get("influence"), report.get("baseline")
    if not inf or not base:
        return "Not enough results to compare influence selection with the baseline."
    n = len(base["per_seed"])
    d = inf["test_rmse_diff_vs_baseline"]
    rnd, allx, orc = report.get("random"), report.get("all_external"), report.get("oracle")
    beats = {"the baseline": inf["test_rmse_mean"] < base["test_rmse_mean"]}
    if rnd:
        beats[f"random-{k}"] = inf["test_rmse_mean"] < rnd["test_rmse_mean"]
    if allx:
        beats["all-external"] = inf["test_rmse_mean"] < allx["test_rmse_mean"]
    won = [name for name, ok in beats.items() if ok]
    lost = [name for name, ok in beats.items() if not ok]
    significant = math.isfinite(d["p_ttest"]) and d["p_ttest"] < 0.05
    parts = [
        f"Adding the {k} most helpful external molecules by influence (k chosen on validation) changed test RMSE by "
        f"{d['mean']:+.4f} ± {_fmt(d['std'], 4)} vs the same fine-tuning with nothing added "
        f"(mean ± std over {n} seed{'s' if n != 1 else ''}, paired t-test p = {_fmt(d['p_ttest'], 2)})."
    ]
    if lost:
        parts.append(f"On mean test RMSE influence selection did **not** beat {', '.join(lost)}"
                     + (f" (it did beat {', '.join(won)})." if won else "."))
    else:
        parts.append(f"On mean test RMSE it beat {', '.join(won)}.")
    if not significant:
        parts.append("The difference to the baseline is not distinguishable from seed-to-seed noise at this number of seeds"
                     + ("." if n > 1 else " (one seed: no test possible)."))
    if rnd and rnd.get("test_rmse_diff_vs_baseline"):
        parts.append(f"Random-{k}: {rnd['test_rmse_diff_vs_baseline']['mean']:+.4f}.")
    if allx and allx.get("test_rmse_diff_vs_baseline"):
        parts.append(f"All external ({allx['n_added']:.0f} molecules): {allx['test_rmse_diff_vs_baseline']['mean']:+.4f}.")
    if orc and orc.get("test_rmse_diff_vs_baseline"):
        o = orc["test_rmse_diff_vs_baseline"]["mean"]
        if o >= 0:
            tail = " (no gain to recover)."
        elif d["mean"] >= 0:
            tail = "; influence selection recovered none of it."
        else:
            tail = f"; influence selection recovered {d['mean'] / o:.0%} of it."
        parts.append(f"The leaky oracle (ranks by influence on the test set; a ceiling, not a method) changed it by {o:+.4f}" + tail)
    return " ".join(parts)


def recovery_sentence(rec: dict) -> str:
    """One plain sentence on the validation-chosen test-blind selection vs the oracle."""
    h = rec.get("headline")
    if not h:
        return "No test-blind selection and oracle at a common k."
    lo, hi = h["delta_ci95"]
    text = (f"{h['method']} at k = {h['k']} (lowest validation RMSE of the influence selections) changed test RMSE by "
            f"{h['delta']:+.4f} (95 % interval [{_fmt(lo, 4)}, {_fmt(hi, 4)}], p = {_fmt(h['p_vs_baseline'], 2)}) where the leaky "
            f"oracle changed it by {h['oracle_delta']:+.4f}")
    if h["oracle_delta"] >= 0:
        text += ": the oracle itself gained nothing, so there was nothing to recover."
    elif h["delta"] >= 0:
        text += ": it recovered none of the oracle's gain"
    else:
        text += f": it recovered {h['fraction']:.0%} of the oracle's gain"
    if h["oracle_delta"] < 0:
        resolved = math.isfinite(h["p_vs_baseline"]) and h["p_vs_baseline"] < 0.05
        text += (f" (method − oracle {h['minus_oracle']:+.4f}, p = {_fmt(h['p_vs_oracle'], 2)}). "
                 + ("The gain over the baseline is distinguishable from noise." if resolved and h["delta"] < 0 else
                    f"Its difference to the baseline is not distinguishable from seed-to-seed noise: these seeds resolve only "
                    f"differences of about {_fmt(h['detectable'], 4)} RMSE."))
    return text


def render_markdown(report: dict) -> str:
    """``report.md``: one table and the plain-language conclusion."""
    meta = report["meta"]
    lines = [
        "# Does influence-selected external data improve the model?", "",
        f"{meta['n_seeds']} seeds ({meta['split']} split; seed = split + initialization), retraining: {meta['retraining']}; "
        f"influence on the validation set ({meta['influence']}). Δ = paired difference in test RMSE vs `baseline` "
        f"(the same retraining with nothing added); p = paired t-test over seeds.", "",
        "| strategy | k | added | test RMSE | Δ vs baseline | p | val RMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    order = ["original", "baseline", "influence", "influence_unguarded", "influence_residual", "influence_greedy",
             "influence_residual_greedy", "crossfit", "influence_threshold", "random", "all_external", "oracle"]
    for name in order:
        entry = report.get(name)
        if not entry:
            continue
        diff, p = _fmt_diff(entry.get("test_rmse_diff_vs_baseline"))
        label = f"{name} (diagnostic, sees test)" if name == "oracle" else name
        lines.append(f"| {label} | {entry.get('k', '–') if name in K_STRATEGIES else '–'} | {entry['n_added']:.0f} | "
                     f"{_fmt(entry['test_rmse_mean'])} ± {_fmt(entry['test_rmse_std'])} | {diff} | {p} | {_fmt(entry['val_rmse_mean'])} |")
    lines += ["", "**What it means.** " + report["conclusion"], ""]
    if any(len(report.get(n, {}).get("by_k", {})) > 1 for n in K_STRATEGIES):
        lines += ["## Every k", "", "| strategy | k | test RMSE | Δ vs baseline | p | Δ vs random | val RMSE |", "|---|---|---|---|---|---|---|"]
        for name in K_STRATEGIES:
            for label, entry in report.get(name, {}).get("by_k", {}).items():
                diff, p = _fmt_diff(entry.get("test_rmse_diff_vs_baseline"))
                vr, _ = _fmt_diff(entry.get("test_rmse_diff_vs_random"))
                lines.append(f"| {name} | {label} | {_fmt(entry['test_rmse_mean'])} ± {_fmt(entry['test_rmse_std'])} | {diff} | {p} | {vr} | {_fmt(entry['val_rmse_mean'])} |")
        lines.append("")
    rec = report.get("recovery") or {}
    if rec.get("rows"):
        lines += ["## How much of the oracle's gain does a test-blind selection recover?", "",
                  "Δ = paired test-RMSE difference vs `baseline` (mean ± std over seeds, 95 % interval, t-test p); oracle Δ at the "
                  "same k; fraction = Δ / oracle Δ (when the oracle gained; negative = the method moved test RMSE the wrong way); p vs oracle = paired t-test of method − oracle; "
                  "resolvable = the smallest Δ these seeds detect (α 0.05, power 0.8); val Δ = the same on validation.", "",
                  "| method | k | added | Δ test RMSE | 95 % interval | p | oracle Δ | fraction | p vs oracle | resolvable | val Δ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rec["rows"]:
            lo, hi = r["delta_ci95"]
            frac = "–" if r["fraction"] is None or not math.isfinite(r["fraction"]) else f"{r['fraction']:.0%}"
            lines.append(f"| {r['method']} | {r['k']} | {r['n_added']:.1f} | {r['delta']:+.4f} ± {_fmt(r['delta_std'], 4)} | "
                         f"[{_fmt(lo, 4)}, {_fmt(hi, 4)}] | {_fmt(r['p_vs_baseline'], 2)} | {r['oracle_delta']:+.4f} | {frac} | "
                         f"{_fmt(r['p_vs_oracle'], 2)} | {_fmt(r['detectable'], 4)} | {r['val_delta']:+.4f} |")
        lines += ["", "**Headline (chosen on validation).** " + recovery_sentence(rec), ""]
    fid = report.get("fidelity", {})
    lines += [
        f"Fidelity of the first-order prediction over all {fid.get('n_groups', 0)} retrained groups (predicted Σ scores vs actual "
        f"change of validation MSE): Pearson {_fmt(fid.get('pearson'), 2)}, Spearman {_fmt(fid.get('spearman'), 2)}."
        + (f" Second-order group prediction (the greedy guard's Q): Pearson {_fmt(fid['second_order']['pearson'], 2)}, "
           f"Spearman {_fmt(fid['second_order']['spearman'], 2)}; mean predicted {fid['second_order']['mean_predicted']:+.4f} "
           f"(first order {fid['second_order']['mean_predicted_first_order']:+.4f}) vs actual {fid['second_order']['mean_actual']:+.4f}."
           if fid.get("second_order") else ""), "",
        "Plots: `score_hist.png` (scores and the selection cut-off), `rmse_vs_k.png` (test RMSE vs k, error bars = std over seeds), "
        "`predicted_vs_actual.png` (predicted vs actual change of validation loss for the selected groups).", "",
    ]
    return "\n".join(lines)


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def plot_rmse_vs_k(report: dict, config: ExperimentConfig, path: Path) -> None:
    """Test RMSE vs k for the k-strategies (left) and the paired difference to baseline (right).

    Error bars are the std over seeds. The split changes the absolute RMSE far more than any
    selection does, so the paired panel is the one that shows whether a strategy helps.
    """
    fig = _figure(11.0, 4.4)
    ax_abs, ax_diff = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = np.arange(len(config.k))
    styles = {"influence": ("tab:blue", "o"), "influence_unguarded": ("tab:cyan", "s"), "influence_residual": ("tab:olive", "P"),
              "influence_greedy": ("tab:purple", "D"), "influence_residual_greedy": ("tab:pink", "v"), "crossfit": ("tab:orange", "*"),
              "random": ("tab:gray", "^"), "oracle": ("tab:red", "x")}
    for i, name in enumerate(K_STRATEGIES):
        entries = report.get(name, {}).get("by_k", {})
        if not entries:
            continue
        color, marker = styles[name]
        label = name + (" (diagnostic, sees test)" if name == "oracle" else "")
        shift = xs + (i - (len(K_STRATEGIES) - 1) / 2) * 0.03
        rows = [entries[k_label(k)] for k in config.k]
        ax_abs.errorbar(shift, [r["test_rmse_mean"] for r in rows], yerr=[np.nan_to_num(r["test_rmse_std"]) for r in rows],
                        color=color, marker=marker, capsize=3, label=label)
        diffs = [r.get("test_rmse_diff_vs_baseline") or {"mean": np.nan, "std": np.nan} for r in rows]
        ax_diff.errorbar(shift, [d["mean"] for d in diffs], yerr=[np.nan_to_num(d["std"]) for d in diffs],
                         color=color, marker=marker, capsize=3, label=label)
    for name, color in (("baseline", "black"), ("all_external", "tab:green")):
        if name in report:
            entry = report[name]
            label = "baseline (nothing added)" if name == "baseline" else f"{name} ({entry['n_added']:.0f} added)"
            m, s = entry["test_rmse_mean"], np.nan_to_num(entry["test_rmse_std"])
            ax_abs.axhline(m, color=color, lw=1, ls="--", label=label)
            ax_abs.axhspan(m - s, m + s, color=color, alpha=0.06)
            d = entry.get("test_rmse_diff_vs_baseline") or {"mean": 0.0, "std": 0.0}
            ax_diff.axhline(d["mean"], color=color, lw=1, ls="--", label=label)
            if name != "baseline":
                ax_diff.axhspan(d["mean"] - np.nan_to_num(d["std"]), d["mean"] + np.nan_to_num(d["std"]), color=color, alpha=0.08)
    for ax, ylabel in ((ax_abs, "test RMSE (logD)"), (ax_diff, "Δ test RMSE vs baseline (paired)")):
        ax.set_xticks(xs, [k_label(k) for k in config.k])
        ax.set_xlabel("k (molecules added)")
        ax.set_ylabel(ylabel)
    n = report["meta"]["n_seeds"]
    ax_abs.set_title(f"test RMSE — mean ± std over {n} seeds", fontsize=10)
    ax_diff.set_title("paired difference to the nothing-added baseline (< 0 = better)", fontsize=10)
    ax_diff.legend(fontsize=7)
    _save(fig, path)


def plot_score_hist(scores: pd.DataFrame, config: ExperimentConfig, headline_k: str | None, path: Path) -> None:
    """Validation-influence scores of one seed with the top-k cut-off and the guard's outliers."""
    fig = _figure()
    ax = fig.add_subplot()
    pool = eligible(scores)
    values = pool["score"].to_numpy(dtype=float)
    outliers = residual_outliers(scores, config.guard_z).loc[pool.index].to_numpy()
    bins = np.histogram_bin_edges(values, bins=min(50, max(5, len(values) // 4))) if len(values) else 10
    ax.hist(values[~outliers], bins=bins, color="tab:blue", alpha=0.8, label="eligible")
    if outliers.any() and config.guard != "none":
        ax.hist(values[outliers], bins=bins, color="tab:red", alpha=0.8, label="dropped by residual guard")
    if headline_k is not None and len(values):
        chosen = top_k(guarded_pool(scores, config.guard, config.guard_z), float(headline_k))
        if chosen:
            cut = float(pool.set_index("row").loc[chosen, "score"].max())
            ax.axvline(cut, color="black", ls="--", label=f"top-{headline_k} cut-off ({cut:.2g})")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xlabel("influence score: predicted Δ validation MSE (logD²); negative = helpful")
    ax.set_ylabel("external molecules")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_predicted_vs_actual(seed_results: list[dict], fid: dict, path: Path) -> None:
    """Σ first-order scores of each retrained group vs its actual change of validation MSE."""
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot()
    colors = {"influence": "tab:blue", "influence_unguarded": "tab:cyan", "influence_greedy": "tab:purple",
              "influence_residual_greedy": "tab:pink", "influence_residual": "tab:olive", "crossfit": "tab:orange",
              "random": "tab:gray", "oracle": "tab:red", "all_external": "tab:green", "influence_threshold": "tab:brown"}
    lo, hi = np.inf, -np.inf
    for name, color in colors.items():
        pts = [(r["predicted_delta_val_mse"], r["actual_delta_val_mse"]) for s in seed_results for r in s["results"]
               if r["strategy"] == name and r.get("actual_delta_val_mse") is not None]
        if pts:
            p = np.array(pts, dtype=float)
            ax.scatter(p[:, 0], p[:, 1], s=18, color=color, label=name, alpha=0.8)
            lo, hi = min(lo, np.nanmin(p)), max(hi, np.nanmax(p))
    if math.isfinite(lo) and math.isfinite(hi):
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="y = x")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel("predicted Δ validation MSE (Σ scores)")
    ax.set_ylabel("actual Δ validation MSE (vs baseline retraining)")
    ax.set_title(f"groups: Pearson {_fmt(fid.get('pearson'), 2)}, Spearman {_fmt(fid.get('spearman'), 2)}", fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


# --------------------------------------------------------------------------- the experiment


def run_experiment(
    data_path: str | os.PathLike,
    external_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ExperimentConfig | None = None,
    train_config: TrainConfig | None = None,
    finetune_config: FinetuneConfig | None = None,
    featurizer_config: FeaturizerConfig | None = None,
    progress: bool = True,
) -> dict:
    """Run every seed (reusing finished ones), aggregate, write the report files; returns the report."""
    from tqdm.auto import tqdm

    config = config or ExperimentConfig()
    train_config = train_config or TrainConfig()
    finetune_config = finetune_config or FinetuneConfig()
    out = Path(out_dir)
    data_path = str(Path(data_path).resolve())
    external_path = str(Path(external_path).resolve())
    read_molecule_csv(external_path)  # fail early, with the file's name, on a bad external file
    dataset = load_dataset(data_path)
    settings_hash = _config_hash(config, train_config, finetune_config, featurizer_config)
    start = time.perf_counter()
    seed_results = []
    for seed in tqdm(config.seed_list, desc="seeds", disable=not progress):
        seed_dir = out / f"seed_{seed}"
        cached = seed_dir / "results.json"
        if cached.exists():
            previous = json.loads(cached.read_text())
            if previous.get("settings_hash") == settings_hash:
                log.info("seed %d: reusing %s", seed, cached)
                seed_results.append(previous)
                continue
        result = run_seed(dataset, data_path, external_path, seed_dir, seed, config, train_config, finetune_config,
                          featurizer_config, progress)
        result["settings_hash"] = settings_hash
        atomic_write_json(cached, result)
        seed_results.append(result)

    report = aggregate(seed_results, config)
    report["fidelity"] = fidelity(seed_results)
    report["meta"] = {
        "data": data_path, "external": external_path, "n_seeds": len(seed_results), "seeds": config.seed_list,
        "split": train_config.split, "retraining": ("from scratch" if finetune_config.from_scratch else
                                                    f"fine-tune θ̂, lr {finetune_config.finetune_lr:g}, ≤ {finetune_config.finetune_epochs} epochs"
                                                    + (", best validation epoch" if finetune_config.early_stopping else "")),
        "influence": (f"{config.influence_hessian}, {config.influence_solver}, damping {config.influence_damping}" if config.influence_backend == "pipeline"
                      else f"gauss-newton, solved in function space (NTK + Cholesky), damping {config.influence_damping}"),
        "guard": f"{config.guard} (z > {config.guard_z:g})", "n_eligible": [s["n_eligible"] for s in seed_results],
        "guard_dropped": [len(s["guard_dropped_rows"]) for s in seed_results],
        "compare_guards": list(config.compare_guards), "crossfit_folds": config.crossfit_folds,
        "group_model": [s.get("group_model") for s in seed_results], "crossfit": [s.get("crossfit") for s in seed_results],
        "experiment_config": asdict(config), "train_config": asdict(train_config), "finetune_config": asdict(finetune_config),
        "featurizer_config": asdict(featurizer_config) if featurizer_config else None,
        "influence_solves": [s["influence_summaries"] for s in seed_results],
        "seconds": round(time.perf_counter() - start, 1),
        "selection_used_test_set": False, "oracle_note": DIAGNOSTIC_NOTE,
    }
    report["conclusion"] = conclusion(report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    plot_rmse_vs_k(report, config, out / "rmse_vs_k.png")
    first = out / f"seed_{seed_results[0]['seed']}" / "influence_val.csv"
    plot_score_hist(load_scores(first), config, report.get("headline_k"), out / "score_hist.png")
    plot_predicted_vs_actual(seed_results, report["fidelity"], out / "predicted_vs_actual.png")
    return report
