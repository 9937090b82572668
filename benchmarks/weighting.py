"""The weighted selection's clean-label model, side by side: ``normal`` (the package's: a fitted
normal, ``lipo_if.suspicion.clean_probability``), ``t`` (a Student t fitted to the validation
residuals, held fixed) and ``refit`` (the normal mixture fitted again on residuals from models that
learnt, weighted, from the *other* folds of the pool: ``lipo_if.suspicion.cross_fitted_clean_weights``;
``refit`` 2 folds — the package's ``weighted`` since it won here —, ``refit4`` 4; as many more
fine-tunings a seed).

Reads a finished ``lipo-if benchmark`` folder (its per-seed ``results.json`` and base runs, package
defaults otherwise), and for every scenario and seed found there rebuilds the scenario and the
suspicion table from the saved base model, computes the weights of each ``--schemes`` entry and
fine-tunes θ̂ with them exactly as the benchmark does (same ``FinetuneConfig``, same seed, one
thread). Each scheme is paired by seed with the benchmark's own retrainings (nothing added, the
filter, the clean-pool oracle); the first seed's ``normal`` scheme is the benchmark's ``weighted``
and is checked to reproduce its test RMSE (it must: otherwise the pairing means nothing).

    python benchmarks/weighting.py runs/bench-lowdata --data-dir ../shared/data [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.stats import t as student_t

from lipo_if.benchmark import BenchmarkConfig
from lipo_if.data import load_dataset
from lipo_if.ensemble import finetune
from lipo_if.influence import Influence
from lipo_if.io import atomic_write_json
from lipo_if.rundir import load_run
from lipo_if.scenarios import build_scenario
from lipo_if.suspicion import clean_weights, cross_fitted_clean_weights, suspicion_table, validation_z
from lipo_if.train import FinetuneConfig, exact_gauss_newton_solver

SCHEMES = ("normal", "t", "refit", "refit4")


def interval(d: np.ndarray) -> list[float]:
    half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return [float(d.mean() - half), float(d.mean() + half)]


def seed_weights(base, scenario, table, scheme: str, ft: FinetuneConfig) -> dict[int, float]:
    if scheme.startswith("refit"):
        return cross_fitted_clean_weights(base, scenario.pool, table, ft, folds=int(scheme[len("refit"):] or 2), seed=scenario.seed)
    return clean_weights(table, validation_z(base) if scheme == "t" else None)


def run_seed(seed_dir: Path, dataset, data_path: str, scenario_name: str, seed: int, schemes: list[str], check: bool) -> dict:
    cached = json.loads((seed_dir / "results.json").read_text())
    scenario = build_scenario(scenario_name, dataset, seed)
    base = load_run(seed_dir / "base", data_path=data_path)
    inf = Influence(base, config=BenchmarkConfig().influence_config("validation", exact_gauss_newton_solver(base.config.model))).fit()
    table = suspicion_table(inf, scenario.pool)
    ft = FinetuneConfig(**{**asdict(FinetuneConfig()), "seed": seed, "from_scratch": False})
    out = {"seed": seed, "benchmark": {k: cached["results"][k] for k in ("baseline", "all", "filter", "weighted", "clean_oracle")}}
    for scheme in schemes:
        if scheme == "normal" and not check:
            continue
        weights = seed_weights(base, scenario, table, scheme, ft)
        rows = sorted(weights)
        clock = time.perf_counter()
        new = finetune(base, scenario.pool, ft, progress=False, rows=rows, weights=[weights[r] for r in rows])
        w = np.array([weights[r] for r in rows])
        bad = scenario.corrupted[rows]
        out[scheme] = {"test_rmse": float(new.metrics["test_rmse"]), "val_rmse": float(new.metrics["val_rmse"]),
                       "weight_clean": float(w[~bad].sum()), "weight_wrong": float(w[bad].sum()), "n_clean": int((~bad).sum()),
                       "mixture": table.attrs["mixture"], "seconds": round(time.perf_counter() - clock, 1)}
    if check:
        got, want = out["normal"]["test_rmse"], cached["results"]["weighted"]["test_rmse"]
        if abs(got - want) > 1e-9:
            raise SystemExit(f"{seed_dir}: the normal scheme gave test RMSE {got:.6f}, the benchmark's weighted {want:.6f}: "
                             "not the same retraining, so no pairing")
    out["normal"] = out.get("normal") or {"test_rmse": cached["results"]["weighted"]["test_rmse"],
                                          "val_rmse": cached["results"]["weighted"]["val_rmse"]}
    return out


def summarize(per_seed: list[dict], schemes: list[str]) -> dict:
    base = np.array([s["benchmark"]["baseline"]["test_rmse"] for s in per_seed])
    clean = np.array([s["benchmark"]["clean_oracle"]["test_rmse"] for s in per_seed]) - base
    out = {"n_seeds": len(per_seed), "clean_oracle_delta": float(clean.mean())}
    for name in ("filter", "all"):
        d = np.array([s["benchmark"][name]["test_rmse"] for s in per_seed]) - base
        out[name] = {"delta": float(d.mean()), "ci95": interval(d), "recovery": float(d.mean() / clean.mean())}
    schemes = ["normal", *[s for s in schemes if s != "normal"]]
    for scheme in schemes:
        test = np.array([s[scheme]["test_rmse"] for s in per_seed])
        val = np.array([s[scheme]["val_rmse"] for s in per_seed])
        d = test - base
        out[scheme] = {"delta": float(d.mean()), "ci95": interval(d), "recovery": float(d.mean() / clean.mean()),
                       "val_rmse_mean": float(val.mean())}
        for other in ("filter", "all"):
            diff = test - np.array([s["benchmark"][other]["test_rmse"] for s in per_seed])
            out[scheme][f"vs_{other}"] = {"mean": float(diff.mean()), "ci95": interval(diff), "n_better": int((diff < 0).sum())}
    normal = np.array([s["normal"]["test_rmse"] for s in per_seed])
    normal_val = np.array([s["normal"]["val_rmse"] for s in per_seed])
    for scheme in schemes:
        if scheme != "normal":
            diff = np.array([s[scheme]["test_rmse"] for s in per_seed]) - normal
            vdiff = np.array([s[scheme]["val_rmse"] for s in per_seed]) - normal_val
            out[scheme]["vs_normal"] = {"test_mean": float(diff.mean()), "test_ci95": interval(diff), "n_better": int((diff < 0).sum()),
                                        "val_mean": float(vdiff.mean()), "val_n_better": int((vdiff < 0).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a lipo-if benchmark output folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the benchmark ran (--threads 1): the same fine-tuning, number for number
    data_path = str(Path(args.data_dir) / "lipophilicity.csv")
    dataset = load_dataset(data_path)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bench": str(args.bench), "scenarios": {}}
    for scenario_dir in sorted(p for p in args.bench.iterdir() if p.is_dir()):
        seed_dirs = sorted(scenario_dir.glob("seed_*/results.json"), key=lambda p: int(p.parent.name.split("_")[1]))
        per_seed = [run_seed(p.parent, dataset, data_path, scenario_dir.name, int(p.parent.name.split("_")[1]), args.schemes, i == 0)
                    for i, p in enumerate(seed_dirs)]
        report["scenarios"][scenario_dir.name] = {"summary": summarize(per_seed, args.schemes), "per_seed": per_seed}
        summary = report["scenarios"][scenario_dir.name]["summary"]
        for name in ("all", "filter", *dict.fromkeys(s for s in ("normal", *args.schemes) if s in summary)):
            e = summary[name]
            extra = (f"; vs normal test {e['vs_normal']['test_mean']:+.4f} {e['vs_normal']['n_better']}/{summary['n_seeds']} better, "
                     f"val {e['vs_normal']['val_mean']:+.4f}") if "vs_normal" in e else ""
            print(f"{scenario_dir.name} {name}: Δ test {e['delta']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}], recovery {e['recovery']:.0%}{extra}",
                  flush=True)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
