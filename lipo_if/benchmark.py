"""``lipo-if benchmark``: does selection pay on pools that hold something to give?

For every scenario of :mod:`lipo_if.scenarios` and seed: train the base model on the scenario's
base split, score its pool (influence on validation, Gauss–Newton, function-space solve), compute
the wrong-label detectors (:mod:`lipo_if.suspicion`) and their AUC against the known corruptions,
select, retrain every selection the same way (fine-tuning θ̂, the experiment's retraining; the
nothing-added ``baseline`` included) and evaluate on validation and test. Strategies:

- controls: ``baseline`` (nothing), ``all`` (the whole pool), ``random`` (k rows),
  ``random_matched`` (as many rows as ``filter`` keeps);
- today's selections: ``influence`` (top-k, unguarded), ``influence_residual`` (top-k after the
  residual guard at z = 3.5);
- ``filter@z``: every pool row whose suspicion (robust z) is at most z, for each z of
  ``filter_z``; ``filter``: per seed the ``filter@z`` of lowest **validation** RMSE (test-blind);
  ``influence_filtered``: top-k by influence among the rows ``filter`` keeps;
- ``weighted``: every eligible pool row, each weighted in the fine-tuning's squared error by its
  probability of a clean label to the power τ (``weight_power``, ½ by default), judged by models
  that learnt from the other folds of the pool
  (:func:`lipo_if.suspicion.cross_fitted_clean_weights`; no threshold to choose); ``weighted_once``:
  the same from the base model's residuals alone (:func:`lipo_if.suspicion.clean_weights`);
- ceilings (know what a method cannot): ``clean_oracle`` (every uncorrupted row, known by
  construction) and ``test_oracle`` (top-k by influence on the *test* set, residual-guarded).

Everything is paired per seed against ``baseline``; ``recovery`` = Δ / Δ(clean_oracle). Outputs in
``OUT``: ``benchmark.json``, ``report.md`` and per scenario and seed ``<scenario>/seed_<s>/results.json``
(reused when run again with the same settings).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from .data import load_dataset
from .ensemble import finetune
from .featurize import FeaturizerConfig
from .influence import Influence, InfluenceConfig
from .io import atomic_write_json, atomic_write_text
from .report import new_figure, save_figure
from .runcache import config_hash, trained_run
from .scenarios import SCENARIOS, Scenario, build_scenario
from .select import eligible, guarded_pool, random_k, resolve_k, top_k
from .stats import paired_stats
from .strategies import Selection
from .suspicion import CLEAN_WEIGHT_POWER, DETECTORS, check_weight_power, clean_weights, cross_fitted_clean_weights, refit_residual_z, suspicion_table
from .train import FinetuneConfig, TrainConfig, exact_gauss_newton_solver

log = logging.getLogger(__name__)

CONTROLS = ("baseline", "all", "random", "random_matched")
CEILINGS = ("clean_oracle", "test_oracle")


@dataclass
class BenchmarkConfig:
    """Settings of ``lipo-if benchmark``."""

    scenarios: tuple[str, ...] = field(default=("noisy", "lowdata", "shift"), metadata={"help": "scenarios to run", "choices": tuple(SCENARIOS)})
    seeds: int = field(default=10, metadata={"help": "seeds per scenario (each: a new split, pool, corruption and initialization)"})
    first_seed: int = field(default=0, metadata={"help": "seeds are first_seed, first_seed+1, …"})
    k: float = field(default=0.25, metadata={"help": "size of the top-k selections: a count (≥ 1) or a fraction of the pool (< 1)"})
    filter_z: tuple[float, ...] = field(default=(1.5, 2.0, 2.5, 3.0), metadata={"help": "suspicion thresholds (robust z) of the filter strategies; the one of lowest validation RMSE is 'filter'"})
    detector: str = field(default="residual", metadata={"help": "the suspicion detector the filter uses", "choices": DETECTORS})
    damping: float | str = field(default="auto", metadata={"help": "damping μ of the influence solve ('auto' = 0.02·λmax)"})
    retrain: str = field(default="finetune", metadata={"help": "retraining of every selection: finetune (θ̂ at a low learning rate, "
                                                                 "the experiment's) or scratch (a fresh initialization)", "choices": ("finetune", "scratch")})
    ensemble: int = field(default=1, metadata={"help": "models per base run: > 1 trains an ensemble (mean score, its standard error; "
                                                       "strategy influence_ucb adds only the confidently helpful rows)"})
    min_similarity: float = field(default=InfluenceConfig.min_similarity, metadata={
        "help": "applicability domain: pool molecules below this nearest-neighbour Tanimoto similarity to the base training set are never selected (0 = off)"})
    weight_folds: int = field(default=2, metadata={"help": "folds of the second look behind 'weighted' (lipo_if.suspicion."
                                                           "cross_fitted_clean_weights: each row's P(clean) from models fine-tuned on the "
                                                           "other folds, weighted; that many more fine-tunings a seed); 0 = the base "
                                                           "model's residuals alone (then no 'weighted_once')"})
    weight_power: float = field(default=CLEAN_WEIGHT_POWER, metadata={"help": "'weighted' (and 'weighted_once'): each row's weight is "
                                                                          "P(clean) to this power (0 < τ ≤ 1; 1 = the probability itself)"})
    refit_folds: int = field(default=0, metadata={"help": "folds of the refit detector (lipo_if.suspicion.refit_residual_z) behind "
                                                          "the strategy filter_refit (2: 2 + len(filter_z) more retrainings a seed); "
                                                          "0 = off, the default: it did not pay (benchmarks/RESULTS.md)"})

    def __post_init__(self) -> None:
        self.scenarios = tuple(self.scenarios)
        self.filter_z = tuple(float(z) for z in self.filter_z)
        checks = [(all(s in SCENARIOS for s in self.scenarios), f"scenarios must be among {', '.join(SCENARIOS)}, got {list(self.scenarios)}"),
                  (self.seeds >= 1 and self.first_seed >= 0, "seeds must be ≥ 1 and first_seed ≥ 0"),
                  (self.k > 0, f"k must be positive, got {self.k}"), (len(self.filter_z) >= 1 and all(z > 0 for z in self.filter_z), "filter_z must be positive"),
                  (self.detector in DETECTORS, f"detector must be one of {', '.join(DETECTORS)}"),
                  (self.ensemble >= 1, f"ensemble must be ≥ 1, got {self.ensemble}"),
                  (self.refit_folds == 0 or self.refit_folds >= 2, f"refit_folds must be 0 (off) or ≥ 2, got {self.refit_folds}"),
                  (self.weight_folds == 0 or self.weight_folds >= 2, f"weight_folds must be 0 (off) or ≥ 2, got {self.weight_folds}"),
                  (self.retrain in ("finetune", "scratch"), f"retrain must be finetune or scratch, got {self.retrain!r}"),
                  (self.ensemble > 1 or self.detector != "ensemble_residual", "detector ensemble_residual needs ensemble > 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_weight_power(self.weight_power)

    def influence_config(self, heldout: str, solver: str = "function-space") -> InfluenceConfig:
        """The solve of a scenario: the exact damped Gauss–Newton system by ``solver``
        (:func:`~lipo_if.train.exact_gauss_newton_solver` of the base model's family)."""
        return InfluenceConfig(heldout=heldout, hessian="gauss-newton", solver=solver,
                               damping=self.damping, min_similarity=self.min_similarity, progress=False)


def _auc(truth: np.ndarray, values: np.ndarray) -> float:
    ok = np.isfinite(values)
    if ok.sum() < 2 or truth[ok].all() or not truth[ok].any():
        return float("nan")
    return float(roc_auc_score(truth[ok], values[ok]))


def detection(scenario: Scenario, table, extra: dict[str, np.ndarray] | None = None) -> dict:
    """AUC of every detector (and of −score, the influence ranking; and of each ``extra`` detector,
    values in pool order) for the known corruptions: all of them, shifts only and swaps only (each
    against the clean rows)."""
    kinds = np.array(scenario.kind)
    values = {name: table[f"{name}_suspicion"].to_numpy(dtype=float) for name in DETECTORS}
    values["influence_score"] = -table["score"].to_numpy(dtype=float)
    values.update(extra or {})
    return {subset: {name: _auc(scenario.corrupted[mask], v[mask]) for name, v in values.items()}
            for subset, mask in (("all", np.ones(len(kinds), bool)), ("shift", kinds != "swap"), ("swap", kinds != "shift"))}


def found_vs_inspected(scenario: Scenario, values: np.ndarray, points: int = 20) -> list[tuple[float, float]]:
    """(fraction of the pool inspected, fraction of the corrupted rows found) when rows are inspected
    in decreasing ``values``."""
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    hits = np.cumsum(scenario.corrupted[order]) / max(1, int(scenario.corrupted.sum()))
    idx = np.unique(np.linspace(0, len(order) - 1, points).astype(int))
    return [(float((i + 1) / len(order)), float(hits[i])) for i in idx]


def plan(scenario: Scenario, table, test_table, config: BenchmarkConfig, seed: int) -> dict[str, list[int]]:
    """Every selection of one seed except ``filter`` and those built on it (chosen after retraining)."""
    pool = eligible(table)
    k = resolve_k(config.k, len(pool))
    suspicion = table.set_index("row")["suspicion"]
    plans = {"baseline": [], "all": [int(r) for r in pool["row"]], "random": random_k(pool, k, seed=seed * 1000 + 1),
             "influence": top_k(pool, k), "influence_residual": top_k(guarded_pool(table, "residual", 3.5), k),
             "clean_oracle": [r for r in scenario.clean_rows if r in set(pool["row"])],
             "test_oracle": top_k(guarded_pool(test_table, "residual", 3.5), k)}
    for z in config.filter_z:
        plans[f"filter@{z:g}"] = [int(r) for r in pool["row"] if suspicion.loc[int(r)] <= z]
    return plans


def validation_suspicion(base, scenario: Scenario, config: BenchmarkConfig) -> tuple[Influence, pd.DataFrame]:
    """``(the fitted solve, the pool's suspicion table)`` of ``base`` (a run or an ensemble): the
    validation solve of the exact damped Gauss–Newton system (:meth:`BenchmarkConfig.influence_config`)
    and :func:`~lipo_if.suspicion.suspicion_table` with ``config.detector`` as ``suspicion`` — what
    every selection of a seed starts from."""
    inf = Influence(base, config=config.influence_config("validation", exact_gauss_newton_solver(base.config.model))).fit()
    return inf, suspicion_table(inf, scenario.pool, config.detector)


def run_benchmark_seed(dataset, data_path: str, scenario: Scenario, seed_dir: Path, config: BenchmarkConfig,
                       train_config: TrainConfig, finetune_config: FinetuneConfig, featurizer_config: FeaturizerConfig | None,
                       progress: bool) -> dict:
    """One scenario and seed: train, score, detect, select, retrain; returns (and writes) the results."""
    clock = time.perf_counter()
    base = trained_run(dataset, data_path, seed_dir / "base", train_config, featurizer_config, split=scenario.split, progress=progress,
                       members=config.ensemble)
    inf, table = validation_suspicion(base, scenario, config)
    test_table = Influence(base, config=config.influence_config("test", exact_gauss_newton_solver(train_config.model))).fit().scores(scenario.pool)
    plans = plan(scenario, table, test_table, config, scenario.seed)
    ft = FinetuneConfig(**{**asdict(finetune_config), "seed": scenario.seed, "from_scratch": config.retrain == "scratch"})
    done: dict[tuple, dict] = {}

    def retrain(rows: list[int], weights: list[float] | None = None) -> dict:
        selection = Selection("", None, rows, weights)
        key = selection.key()
        if key not in done:
            ordered_rows, ordered_weights = selection.ordered()
            new = finetune(base, scenario.pool, ft, progress=False, rows=ordered_rows, weights=ordered_weights)
            done[key] = {"n_added": new.metrics["n_added"], **{m: float(new.metrics[m]) for m in ("val_rmse", "test_rmse", "test_mae", "test_r2")}}
        return done[key]

    results = {name: {**retrain(rows), "rows": rows} for name, rows in plans.items()}
    chosen_z = min(config.filter_z, key=lambda z: results[f"filter@{z:g}"]["val_rmse"])  # validation only
    kept = plans[f"filter@{chosen_z:g}"]
    results["filter"] = {**results[f"filter@{chosen_z:g}"], "z": chosen_z}
    filtered = table[table["row"].isin(kept)]
    k = resolve_k(config.k, len(eligible(table)))
    extra = [("influence_filtered", top_k(eligible(filtered), k)),
             ("random_matched", random_k(eligible(table), len(kept), seed=scenario.seed * 1000 + 2))]
    if "score_ucb" in filtered:  # an ensemble: only the confidently helpful rows (upper bound < 0), most confident first
        bound = eligible(filtered.assign(score=filtered["score_ucb"]))
        extra.append(("influence_ucb", top_k(bound[bound["score"] < 0], k)))
    for name, rows in extra:
        results[name] = {**retrain(rows), "rows": rows}
    if config.weight_folds:  # the one-pass weights beside the default's cross-fitted ones
        once = clean_weights(table, power=config.weight_power)
        results["weighted_once"] = {**retrain(list(once), list(once.values())), "rows": list(once)}
    weights = cross_fitted_clean_weights(base, scenario.pool, table, ft, config.weight_folds, seed=scenario.seed,
                                         power=config.weight_power)
    results["weighted"] = {**retrain(list(weights), list(weights.values())), "rows": list(weights)}
    refit = None
    if config.refit_folds:  # a second look, by models that learnt from the rows the filter trusts
        pool_rows = eligible(table)["row"].to_numpy(dtype=int)
        z2 = refit_residual_z(base, scenario.pool, pool_rows, kept, ft, config.refit_folds, seed=scenario.seed)
        refit = table["row"].map(pd.Series(z2, index=pool_rows)).to_numpy(dtype=float)  # NaN: not eligible
        for z in config.filter_z:
            rows = [int(r) for r, v in zip(pool_rows, z2) if v <= z]
            results[f"filter_refit@{z:g}"] = {**retrain(rows), "rows": rows}
        z_refit = min(config.filter_z, key=lambda z: results[f"filter_refit@{z:g}"]["val_rmse"])  # validation only
        results["filter_refit"] = {**results[f"filter_refit@{z_refit:g}"], "z": z_refit}
    for entry in results.values():
        rows = entry.pop("rows")
        entry["corrupted_added"] = int(scenario.corrupted[rows].sum()) if rows else 0
    out = {"scenario": scenario.name, "seed": scenario.seed, "results": results, "detection": detection(scenario, table, {"refit_residual": refit} if refit is not None else None),
           "found_vs_inspected": {name: found_vs_inspected(scenario, table[f"{name}_suspicion"].to_numpy(dtype=float))
                                  for name in DETECTORS if np.isfinite(table[f"{name}_suspicion"].to_numpy(dtype=float)).any()},
           "n_pool": len(scenario.pool), "n_eligible": int(len(eligible(table))), "n_corrupted": int(scenario.corrupted.sum()), "n_base_train": len(scenario.split.train),
           "mixture": table.attrs.get("mixture"), "damping": inf.damping, "n_retrainings": len(done), "seconds": round(time.perf_counter() - clock, 1)}
    atomic_write_json(seed_dir / "results.json", out)
    return out


def summarize(seed_results: list[dict]) -> dict:
    """Per strategy: mean test/val RMSE, paired Δ vs baseline (95 % interval, t-test p), recovery of
    the clean oracle's gain; the detectors' mean AUC."""
    names = list(seed_results[0]["results"])
    base = [s["results"]["baseline"] for s in seed_results]
    clean = paired_stats([s["results"]["clean_oracle"]["test_rmse"] for s in seed_results], [b["test_rmse"] for b in base])
    out: dict = {"strategies": {}, "n_seeds": len(seed_results)}
    for name in names:
        rows = [s["results"][name] for s in seed_results]
        d = paired_stats([r["test_rmse"] for r in rows], [b["test_rmse"] for b in base])
        n = len(rows)
        half = float(student_t.ppf(0.975, n - 1) * d["std"] / math.sqrt(n)) if n > 1 and math.isfinite(d["std"]) else float("nan")
        out["strategies"][name] = {
            "n_added": float(np.mean([r["n_added"] for r in rows])), "corrupted_added": float(np.mean([r["corrupted_added"] for r in rows])),
            "test_rmse_mean": float(np.mean([r["test_rmse"] for r in rows])), "val_rmse_mean": float(np.mean([r["val_rmse"] for r in rows])),
            "delta": d["mean"], "delta_ci95": [d["mean"] - half, d["mean"] + half], "p": d["p_ttest"], "per_seed": d["per_seed"],
            "val_delta": float(np.mean([r["val_rmse"] - b["val_rmse"] for r, b in zip(rows, base)])),
            "recovery": d["mean"] / clean["mean"] if clean["mean"] < 0 else float("nan"),
        }
    for method in ("filter", "weighted", "weighted_once", "filter_refit"):
        for name in ("all", "random_matched", "random"):
            if method in out["strategies"]:
                out["strategies"][method][f"vs_{name}"] = paired_stats(
                    [s["results"][method]["test_rmse"] for s in seed_results], [s["results"][name]["test_rmse"] for s in seed_results])
    def mean_auc(values: list[float]) -> float:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    out["detection_auc"] = {subset: {name: mean_auc([s["detection"][subset][name] for s in seed_results])
                                     for name in seed_results[0]["detection"][subset]} for subset in ("all", "shift", "swap")}
    return out


def _verdict(name: str, summary: dict) -> str:
    """Per scenario in words: did the package's method (``weighted``, else ``filter``) pay — beat
    nothing added, all of the pool and as many random rows with 95 % confidence — and how much of the
    clean-pool oracle's gain did it recover."""
    s = summary["strategies"]
    method = "weighted" if "weighted" in s else "filter"
    f, a, r = s[method], s["all"], s["random_matched"]
    lo, hi = f["delta_ci95"]
    beats_all = f["vs_all"]["mean"] < 0 and f["vs_all"]["p_ttest"] < 0.05
    beats_random = f["vs_random_matched"]["mean"] < 0 and f["vs_random_matched"]["p_ttest"] < 0.05
    paid = hi < 0 and beats_all and beats_random
    what = ("`weighted` (every eligible row, weighted by its probability of a clean label to a power"
            + (", judged by models that learnt from the other folds of the pool)" if "weighted_once" in s else ")")
            if method == "weighted" else "`filter` (the suspicion filter, threshold chosen on validation)")
    text = (f"**{name}: selection {'paid' if paid else 'did not pay (by the goal of beating all-pool and random with 95 % confidence)'}.** "
            f"{what} changed test RMSE by {f['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] vs nothing added, and by "
            f"{f['vs_all']['mean']:+.4f} (p = {f['vs_all']['p_ttest']:.2g}) vs adding the whole pool ({a['delta']:+.4f}), "
            f"{f['vs_random_matched']['mean']:+.4f} (p = {f['vs_random_matched']['p_ttest']:.2g}) vs as many random rows as the "
            f"filter keeps ({r['delta']:+.4f}); it recovered {f['recovery']:.0%} of the clean-pool oracle's gain "
            f"({s['clean_oracle']['delta']:+.4f}).")
    if method == "weighted":
        once = s.get("weighted_once")
        text += (f" The base model's weights alone (`weighted_once`): {once['delta']:+.4f}, {once['recovery']:.0%}." if once else "")
        text += f" The hard filter: {s['filter']['delta']:+.4f}, {s['filter']['recovery']:.0%}."
    return text + (f" Today's influence top-k: {s['influence']['delta']:+.4f}, residual-guarded "
                   f"{s['influence_residual']['delta']:+.4f}.")


def plot_scenario(name: str, summary: dict, per_seed: list[dict], path: Path) -> None:
    """Left: Δ test RMSE vs nothing added per strategy (95 % intervals); right: the fraction of the
    wrong labels found against the fraction of the pool inspected, per detector (mean over seeds)."""
    fig = new_figure(12.0, 4.8)
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(summary["strategies"])
    deltas = [summary["strategies"][n]["delta"] for n in names]
    lo = [d - summary["strategies"][n]["delta_ci95"][0] for n, d in zip(names, deltas)]
    colors = ["tab:red" if n in CEILINGS else "tab:gray" if n in CONTROLS else "tab:blue" for n in names]
    ax.barh(range(len(names)), deltas, xerr=np.nan_to_num(lo), color=colors, alpha=0.8, capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ test RMSE vs nothing added (95 % interval); red = ceilings, gray = controls")
    ax.invert_yaxis()
    for detector in per_seed[0]["found_vs_inspected"]:
        if not math.isfinite(summary["detection_auc"]["all"].get(detector, float("nan"))):
            continue
        curves = np.array([s["found_vs_inspected"][detector] for s in per_seed], dtype=float)  # [seeds, points, 2]
        if np.isfinite(curves).all():
            ax2.plot(curves[:, :, 0].mean(0), curves[:, :, 1].mean(0), marker=".", label=detector)
    corrupted = np.mean([s["n_corrupted"] / s["n_pool"] for s in per_seed])
    ax2.plot([0, corrupted, 1], [0, 1, 1], color="black", lw=0.8, ls=":", label="perfect")
    ax2.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--", label="random")
    ax2.set_xlabel("fraction of the pool inspected (most suspicious first)")
    ax2.set_ylabel("fraction of the wrong labels found")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{name}: {summary['n_seeds']} seeds", fontsize=10)
    save_figure(fig, path)


def render(report: dict) -> str:
    retraining = ("fine-tuning θ̂ (the experiment's)" if report["meta"]["settings"].get("retrain", "finetune") == "finetune"
                  else "from scratch")
    lines = ["# Does selection pay on pools with something to give?", "",
             f"Scenarios built from Lipophilicity (see `lipo_if/scenarios.py`); {report['meta']['settings']['seeds']} seeds each; "
             f"retraining: {retraining}; Δ = paired difference in test RMSE vs the same retraining with nothing "
             "added (negative = better), 95 % t-interval over seeds; recovery = Δ / Δ(clean-pool oracle). Test-blind: everything but "
             "`clean_oracle` and `test_oracle`.", ""]
    for name, summary in report["scenarios"].items():
        lines += [f"## {name}", "", _verdict(name, summary), "", f"![{name}]({name}.png)", "",
                  "| strategy | added | corrupted added | Δ test RMSE | 95 % interval | p | recovery | Δ val RMSE |", "|---|---|---|---|---|---|---|---|"]
        for strategy, e in summary["strategies"].items():
            lo, hi = e["delta_ci95"]
            rec = "–" if not math.isfinite(e["recovery"]) else f"{e['recovery']:.0%}"
            lines.append(f"| {strategy} | {e['n_added']:.0f} | {e['corrupted_added']:.0f} | {e['delta']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                         f"{e['p']:.2g} | {rec} | {e['val_delta']:+.4f} |")
        shown = [d for d, v in summary["detection_auc"]["all"].items() if math.isfinite(v)]  # (ensemble_residual: ensembles only)
        lines += ["", "Wrong-label detection, mean AUC over seeds (corrupted vs clean rows):", "",
                  "| corruptions | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for subset, row in summary["detection_auc"].items():
            lines.append(f"| {subset} | " + " | ".join(f"{row[d]:.3f}" for d in shown) + " |")
        lines.append("")
    return "\n".join(lines)


def run_benchmark(data_path: str, out_dir: str | Path, config: BenchmarkConfig | None = None,
                  train_config: TrainConfig | None = None, finetune_config: FinetuneConfig | None = None,
                  featurizer_config: FeaturizerConfig | None = None, progress: bool = True) -> dict:
    """Every scenario × seed (finished ones reused), summarized; writes benchmark.json and report.md."""
    from tqdm.auto import tqdm

    config, train_config = config or BenchmarkConfig(), train_config or TrainConfig()
    finetune_config = finetune_config or FinetuneConfig()
    out = Path(out_dir)
    dataset = load_dataset(data_path)
    settings = config_hash(config, train_config, finetune_config, featurizer_config)
    report: dict = {"scenarios": {}, "per_seed": {}}
    jobs = [(name, seed) for name in config.scenarios for seed in range(config.first_seed, config.first_seed + config.seeds)]
    by_scenario: dict[str, list[dict]] = {name: [] for name in config.scenarios}
    for name, seed in tqdm(jobs, desc="benchmark", disable=not progress):
        seed_dir = out / name / f"seed_{seed}"
        cached = seed_dir / "results.json"
        if cached.exists() and json.loads(cached.read_text()).get("settings_hash") == settings:
            by_scenario[name].append(json.loads(cached.read_text()))
            continue
        scenario = build_scenario(name, dataset, seed)
        result = run_benchmark_seed(dataset, str(data_path), scenario, seed_dir, config,
                                    TrainConfig(**{**asdict(train_config), "seed": seed}), finetune_config, featurizer_config, progress)
        result["settings_hash"] = settings
        atomic_write_json(cached, result)
        by_scenario[name].append(result)
    for name, results in by_scenario.items():
        report["scenarios"][name] = summarize(results)
        report["per_seed"][name] = results
        plot_scenario(name, report["scenarios"][name], results, out / f"{name}.png")
    report["meta"] = {"settings": asdict(config), "train_config": asdict(train_config), "finetune_config": asdict(finetune_config),
                      "featurizer_config": asdict(featurizer_config) if featurizer_config else None}
    atomic_write_json(out / "benchmark.json", report)
    atomic_write_text(out / "report.md", render(report))
    return report
