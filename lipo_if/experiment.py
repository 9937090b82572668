"""``lipo-if run``: does influence-selected data beat the baseline? The whole mission, over seeds.

For every seed (the seed sets the split and the initialization):

1. train the Task-1 model — ``original``;
2. score the external molecules by influence on the **validation** set (and, as a diagnostic
   only, on the **test** set — ``oracle``, the ceiling of any selection; never a method), by
   :class:`lipo_if.influence.Influence` (``influence_backend="ntk"``: the same damped Gauss–Newton
   system solved in function space, solver ``function-space``);
3. select: ``influence`` (top-k with the configured guard, residual by default),
   ``influence_unguarded`` (plain first-order top-k) and the other guards of ``compare_guards``
   (``influence_greedy``: greedy group selection re-scored after each addition, see
   :mod:`lipo_if.select`; ``influence_residual``, ``influence_residual_greedy``), ``crossfit``
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
``predicted_vs_actual.png``, and per seed ``seed_<s>/`` (the original run, the influence solves,
the score tables and ``results.json``; finished runs, solves and seeds are reused when the
experiment is run again with the same settings, see :mod:`lipo_if.runcache`).

The headline k is chosen on **validation** RMSE of ``influence``; the test set is never used to
choose anything.

Modules: the strategies' names in :mod:`lipo_if.strategies`, the statistics in
:mod:`lipo_if.stats`, the prose and plots in :mod:`lipo_if.report`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .crossfit import crossfit_scores
from .data import load_dataset
from .ensemble import finetune
from .featurize import FeaturizerConfig
from .influence import InfluenceConfig, write_scores
from .io import atomic_write_json, atomic_write_text
from .pool import Pool
from .report import conclusion, plot_predicted_vs_actual, plot_rmse_vs_k, plot_score_hist, plot_score_vs_similarity, render_markdown
from .runcache import config_hash, fitted_influence, trained_run
from .suspicion import CLEAN_WEIGHT_POWER, check_weight_power, cross_fitted_clean_weights, suspicion_table
from .select import GUARDS, SelectionConfig, eligible, guarded_pool, random_k, residual_outliers, select, top_k, uses_greedy
from .stats import aggregate, fidelity
from .strategies import DIAGNOSTIC_NOTE, GUARD_STRATEGY, METHODS, METRICS, Selection
from .train import FinetuneConfig, Run, TrainConfig

log = logging.getLogger(__name__)


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
    filter_z: tuple[float, ...] = field(default=(1.5, 2.0, 2.5, 3.0), metadata={"help": "suspicion thresholds (lipo_if.suspicion: the "
                                                                      "residual in validation spreads) of the strategy 'filter': add every eligible row with "
                                                                      "suspicion ≤ z, z chosen per seed on validation among these — the strategy that paid on "
                                                                      "the pools of `lipo-if benchmark` (benchmarks/RESULTS.md); empty = off"})
    ensemble: int = field(default=1, metadata={"help": "models per seed: > 1 trains an ensemble (same split, other initializations); "
                                                       "influence is the members' mean score, retraining retrains every member"})
    min_similarity: float = field(default=InfluenceConfig.min_similarity, metadata={
        "help": "applicability domain (lipo_if.domain): external molecules whose nearest-neighbour Tanimoto similarity to the "
                "training set is below this are scored but never selected (0 = off)"})
    weighted: bool = field(default=True, metadata={"help": "also retrain the strategy 'weighted': every eligible row, each weighted in "
                                                           "the fine-tuning by its probability of a clean label (lipo_if.suspicion)"})
    weight_folds: int = field(default=2, metadata={"help": "'weighted' judges every row again by models fine-tuned on the other folds "
                                                           "of the pool (lipo_if.suspicion.cross_fitted_clean_weights; that many more "
                                                           "fine-tunings a seed); 0 = the base model's residuals alone"})
    weight_power: float = field(default=CLEAN_WEIGHT_POWER, metadata={"help": "'weighted': each row's weight is P(clean) to this power "
                                                                          "(0 < τ ≤ 1; 1 = the probability itself; lipo_if.suspicion.CLEAN_WEIGHT_POWER)"})
    method: str = field(default="weighted", metadata={"help": "the selection the report's 'influence' entry holds: weighted (every eligible "
                                                               "molecule weighted by P(clean), the winner of `lipo-if benchmark`), filter (the "
                                                               "suspicion filter) or influence_topk (top-k by influence, k chosen on validation)",
                                                               "choices": METHODS})

    def __post_init__(self) -> None:
        self.k = tuple(float(k) for k in self.k)
        self.filter_z = tuple(float(z) for z in self.filter_z)
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
            (self.ensemble >= 1, f"ensemble must be ≥ 1, got {self.ensemble}"),
            (all(z > 0 for z in self.filter_z), f"filter_z must be positive, got {list(self.filter_z)}"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.method != "filter" or bool(self.filter_z), "method filter needs filter_z thresholds"),
            (self.method != "weighted" or self.weighted, "method weighted needs the strategy weighted (--weighted)"),
            (self.weight_folds == 0 or self.weight_folds >= 2, f"weight_folds must be 0 (off) or ≥ 2, got {self.weight_folds}"),
        ]
        check_weight_power(self.weight_power)
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

    def influence_config(self, heldout: str, progress: bool = False) -> InfluenceConfig:
        """The :class:`~lipo_if.influence.InfluenceConfig` of one influence solve (the ntk backend is
        the solver ``function-space`` at the given damping)."""
        if self.influence_backend == "ntk":
            return InfluenceConfig(heldout=heldout, hessian="gauss-newton", solver="function-space",
                                   damping=float(self.influence_damping), min_similarity=self.min_similarity, progress=progress)
        return InfluenceConfig(
            heldout=heldout, hessian=self.influence_hessian, solver=self.influence_solver, damping=self.influence_damping,
            depth=self.influence_depth, repeats=self.influence_repeats, batch_size=self.influence_batch_size,
            max_iter=self.influence_max_iter, min_similarity=self.min_similarity, progress=progress,
        )


# --------------------------------------------------------------------------- one seed


def plan_selections(val_scores: pd.DataFrame, test_scores: pd.DataFrame | None, config: ExperimentConfig, seed: int,
                    group=None, crossfit_table: pd.DataFrame | None = None, weights: dict[int, float] | None = None) -> list[Selection]:
    """Every selection of one seed (``original`` is not a retraining and is not listed).

    ``group``: the :class:`~lipo_if.select.GroupModel` the greedy guards need; ``crossfit_table``:
    the cross-fitted scores (strategy ``crossfit``, residual-guarded like ``influence``);
    ``weights``: ``{row: P(clean)}`` of the strategy ``weighted`` (none without).
    """
    pool = eligible(val_scores)

    def chosen(guard: str, strategy: str = "top_k", k: float = 0.0) -> list[int]:
        return select(val_scores, SelectionConfig(strategy=strategy, k=k, guard=guard, guard_z=config.guard_z), group)

    plans = [Selection("baseline", None, []), Selection("all_external", None, [int(r) for r in pool["row"]])]
    if config.threshold_strategy:
        plans.append(Selection("influence_threshold", None, chosen(config.guard, "threshold")))
    for z in config.filter_z:  # retrained each; "filter" is the one of lowest validation RMSE (run_seed)
        plans.append(Selection(f"filter@{z:g}", None, [int(r) for r, v in zip(pool["row"], pool["suspicion"]) if v <= z]))
    if weights is not None:
        plans.append(Selection("weighted", None, list(weights), list(weights.values())))
    for k in config.k:
        plans.append(Selection("influence_topk", k, chosen(config.guard, k=k)))
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




def _metrics_row(metrics: dict, n_added: int) -> dict:
    return {**{m: float(metrics[m]) for m in METRICS}, "n_added": int(n_added)}


def _influence_table(run: Run, pool: Pool, config: InfluenceConfig, seed_dir: Path, name: str,
                     suspicion: bool = False) -> tuple[pd.DataFrame, dict, object]:
    """Fit (or reuse) the influence solve ``seed_dir/name`` on ``run``, score the pool in memory (with
    the wrong-label evidence when ``suspicion``) and write the table beside it (``name.csv``, histogram, summary)."""
    inf = fitted_influence(run, config, seed_dir / name)
    table = suspicion_table(inf, pool) if suspicion else inf.scores(pool)
    summary = write_scores(inf, table, seed_dir / f"{name}.csv", source=pool.source)
    return table, summary, inf


def run_seed(
    dataset, data_path: str, pool: Pool, seed_dir: Path, seed: int, config: ExperimentConfig,
    train_config: TrainConfig, finetune_config: FinetuneConfig, featurizer_config: FeaturizerConfig | None,
    progress: bool = True,
) -> tuple[dict, pd.DataFrame]:
    """Train, score, select and retrain for one seed; returns (and writes ``seed_dir/results.json``)
    the results, and the validation-influence scores table."""
    from tqdm.auto import tqdm

    base = trained_run(dataset, data_path, seed_dir / "original", TrainConfig(**{**asdict(train_config), "seed": seed}),
                       featurizer_config, progress=progress, members=config.ensemble)
    val_scores, val_summary, val_inf = _influence_table(base, pool, config.influence_config("validation", progress), seed_dir,
                                                        "influence_val", suspicion=bool(config.filter_z) or config.weighted)
    summaries = {"validation": val_summary}
    test_scores = None
    if config.oracle:
        # The solve warns that heldout=test makes test metrics optimistic: true, and the reason the
        # oracle is reported as a diagnostic only — so the warning is expected here and silenced.
        api_log = logging.getLogger("lipo_if.influence.api")
        level = api_log.level
        api_log.setLevel(logging.ERROR)
        try:
            test_scores, summaries["test"], _ = _influence_table(base, pool, config.influence_config("test", progress),
                                                                 seed_dir, "influence_test")
        finally:
            api_log.setLevel(level)

    group, group_info = None, None
    if config.guards_needing_group:
        clock = time.perf_counter()
        group = val_inf.group_model(val_scores, pool)
        group_info = {**group.info, "seconds": round(time.perf_counter() - clock, 1)}
    crossfit_table, crossfit_info = None, None
    if config.crossfit_folds:
        clock = time.perf_counter()
        crossfit_table, crossfit_info = crossfit_scores(
            dataset, data_path, base, val_scores, pool, seed_dir / "crossfit", config.crossfit_folds,
            config.influence_config("validation", progress), featurizer_config, progress)
        crossfit_info["seconds"] = round(time.perf_counter() - clock, 1)

    offset = float(val_summary.get("renormalization_offset") or 0.0)
    score_of = val_scores.set_index("row")["score"]
    ft_config = FinetuneConfig(**{**asdict(finetune_config), "seed": seed})
    weights = cross_fitted_clean_weights(base, pool, val_scores, ft_config, config.weight_folds, seed=seed,
                                         power=config.weight_power) if config.weighted else None
    plans = plan_selections(val_scores, test_scores, config, seed, group, crossfit_table, weights)
    results: list[dict] = [{"strategy": "original", "k": None, "rows": [], **_metrics_row(base.metrics, 0)}]
    baseline_val_mse = None
    done: dict[tuple, dict] = {}  # identical selections are retrained once
    for plan in tqdm(plans, desc=f"seed {seed}: retraining", disable=not progress, leave=False):
        key = plan.key()
        if key not in done:
            rows, row_weights = plan.ordered()
            new = finetune(base, pool, ft_config, progress=False, rows=rows, weights=row_weights)
            done[key] = {**_metrics_row(new.metrics, new.metrics["n_added"]), "val_mse": float(new.metrics["val_rmse"]) ** 2,
                         "best_epoch": new.metrics["best_epoch"]}
        val_mse = done[key]["val_mse"]
        if plan.strategy == "baseline":
            baseline_val_mse = val_mse
        weight = np.ones(len(plan.rows)) if plan.weights is None else np.asarray(plan.weights, dtype=float)
        predicted = float(np.dot(weight, score_of.loc[plan.rows].to_numpy(dtype=float) + offset)) if plan.rows else 0.0
        entry = {"strategy": plan.strategy, "k": plan.k, "rows": plan.rows, **done[key], "predicted_delta_val_mse": predicted}
        if plan.weights is not None:
            entry["weights"] = plan.weights
        if group is not None and plan.rows:
            entry["predicted_delta_val_mse_second_order"] = group.objective(plan.rows) + offset * len(plan.rows)
        results.append(entry)
    for r in results[1:]:
        r["actual_delta_val_mse"] = r["val_mse"] - baseline_val_mse if baseline_val_mse is not None else float("nan")
    filters = [r for r in results if r["strategy"].startswith("filter@")]
    if filters:  # the threshold of lowest validation RMSE — test-blind
        best = min(filters, key=lambda r: r["val_rmse"])
        results.append({**best, "strategy": "filter", "z": float(best["strategy"].split("@")[1])})
    outliers = residual_outliers(val_scores, config.guard_z)
    out = {
        "seed": seed, "results": results, "influence_summaries": {k: _digest(v) for k, v in summaries.items()},
        "guard_dropped_rows": [int(r) for r in val_scores.loc[outliers, "row"]],
        "n_eligible": int(len(eligible(val_scores))), "group_model": group_info, "crossfit": crossfit_info,
        "n_retrainings": len(done), "weights_mixture": val_scores.attrs.get("mixture") if weights is not None else None,
    }
    atomic_write_json(seed_dir / "results.json", out)
    return out, val_scores


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



# --------------------------------------------------------------------------- the experiment


def check_model_support(config: ExperimentConfig, train_config: TrainConfig) -> None:
    """ValueError for settings that need the MLP's function-space solve when the model is the D-MPNN
    (the ntk backend, the greedy guard); raised before any training."""
    if train_config.model == "mlp":
        return
    if config.influence_backend == "ntk":
        raise ValueError("influence_backend ntk solves in function space, which needs the MLP; with --model dmpnn use "
                         "--influence-backend pipeline (lissa or cg)")
    if config.guards_needing_group:
        raise ValueError("the greedy guard needs the MLP's function-space solve; with --model dmpnn leave greedy out of "
                         "--guard and --compare-guards (e.g. --compare-guards none)")


def run_experiment(
    data_path: str | os.PathLike,
    external_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: ExperimentConfig | None = None,
    train_config: TrainConfig | None = None,
    finetune_config: FinetuneConfig | None = None,
    featurizer_config: FeaturizerConfig | None = None,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """Run every seed (reusing finished ones), aggregate, write the report files; returns the report.
    ``strict``: an external label outside the plausible logD range fails the run instead of being excluded."""
    from tqdm.auto import tqdm

    config = config or ExperimentConfig()
    train_config = train_config or TrainConfig()
    finetune_config = finetune_config or FinetuneConfig()
    check_model_support(config, train_config)
    out = Path(out_dir)
    data_path = str(Path(data_path).resolve())
    external_path = str(Path(external_path).resolve())
    pool = Pool.read(external_path, strict=strict)  # parsed once for the whole experiment; a bad file fails here, named
    dataset = load_dataset(data_path)
    settings_hash = config_hash(config, train_config, finetune_config, featurizer_config)
    start = time.perf_counter()
    seed_results, first_table = [], None
    for seed in tqdm(config.seed_list, desc="seeds", disable=not progress):
        seed_dir = out / f"seed_{seed}"
        cached = seed_dir / "results.json"
        if cached.exists():
            previous = json.loads(cached.read_text())
            if previous.get("settings_hash") == settings_hash:
                log.info("seed %d: reusing %s", seed, cached)
                seed_results.append(previous)
                continue
        result, table = run_seed(dataset, data_path, pool, seed_dir, seed, config, train_config, finetune_config,
                                 featurizer_config, progress)
        result["settings_hash"] = settings_hash
        atomic_write_json(cached, result)
        seed_results.append(result)
        first_table = table if first_table is None and seed == config.seed_list[0] else first_table
    if first_table is None:  # the first seed was reused: its saved solve scores the pool again (no CSV read back)
        seed_dir = out / f"seed_{config.seed_list[0]}"
        base = trained_run(dataset, data_path, seed_dir / "original", TrainConfig(**{**asdict(train_config), "seed": config.seed_list[0]}),
                           featurizer_config, progress=progress, members=config.ensemble)
        first_table = fitted_influence(base, config.influence_config("validation"), seed_dir / "influence_val").scores(pool)

    report = aggregate(seed_results, config.k, config.method)
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
    plot_rmse_vs_k(report, config.k, out / "rmse_vs_k.png")
    plot_score_hist(first_table, config.guard, config.guard_z, report.get("headline_k"), out / "score_hist.png")
    plot_predicted_vs_actual(seed_results, report["fidelity"], out / "predicted_vs_actual.png")
    plot_score_vs_similarity(first_table, config.min_similarity, out / "score_vs_similarity.png")
    return report

