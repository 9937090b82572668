"""The weighted selection's weights, side by side: each scheme is (how the residuals are judged,
the power τ of P(clean) — ``lipo_if.suspicion.clean_weights``): ``once`` (the base model's
residuals, τ = 1), ``refit`` (cross-fitted: each row judged by θ̂ fine-tuned, weighted, on the
other of 2 folds of the pool — ``lipo_if.suspicion.cross_fitted_clean_weights`` — τ = 1),
``refit-sqrt`` (τ = ½, the package's ``weighted`` since it won here on validation),
``refit-quarter`` (τ = ¼), ``once-sqrt`` (base residuals, τ = ½). Each cross-fitted scheme is 2 more
fine-tunings a seed. Two diagnostics that know the corruptions (``DIAGNOSTICS``) split the gap
between ``refit`` and the clean-pool oracle into the clean rows' missing weight and the wrong
rows' weight.

Reads a finished ``lipo-if benchmark`` folder (its per-seed ``results.json`` and base runs, package
defaults otherwise), and for every scenario and seed found there rebuilds the scenario and the
suspicion table from the saved base model, computes the weights of each ``--schemes`` entry and
fine-tunes θ̂ with them exactly as the benchmark does (same ``FinetuneConfig``, same seed, one
thread). Each scheme is paired by seed with the benchmark's own retrainings (nothing added, the
filter, the clean-pool oracle); the first seed's ``once`` scheme must reproduce the test RMSE of
the benchmark's one-pass weights (``weighted_once``, or ``weighted`` in a folder written before
the weights were cross-fitted) — otherwise the pairing means nothing. Validation RMSE is reported
beside test: the choice of τ is made on it.

    python benchmarks/weighting.py runs/bench-lowdata --data-dir ../shared/data [--json OUT]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _saved_seeds import load_seed, scenario_seeds  # noqa: E402  (a sibling benchmark module, not a package)

from lipo_if.data import load_dataset  # noqa: E402
from lipo_if.ensemble import finetune  # noqa: E402
from lipo_if.io import atomic_write_json  # noqa: E402
from lipo_if.suspicion import clean_weights, cross_fitted_clean_weights  # noqa: E402
from lipo_if.train import FinetuneConfig  # noqa: E402

#: scheme → (folds of the cross-fitted look, 0 = the base model's residuals; power of P(clean))
SCHEMES = {"once": (0, 1.0), "refit": (2, 1.0), "refit-sqrt": (2, 0.5), "refit-quarter": (2, 0.25), "once-sqrt": (0, 0.5)}
#: diagnostics that know the corruptions (never methods): where ``refit``'s weights lose the oracle's
#: gain — ``oracle-clean-full``: clean rows at weight 1, wrong rows keep ``refit``'s weight;
#: ``oracle-drop-wrong``: clean rows keep ``refit``'s weight, wrong rows 0
DIAGNOSTICS = ("oracle-clean-full", "oracle-drop-wrong")


def interval(d: np.ndarray) -> list[float]:
    half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return [float(d.mean() - half), float(d.mean() + half)]


def seed_weights(base, scenario, table, scheme: str, ft: FinetuneConfig, memo: dict) -> dict[int, float]:
    if scheme in DIAGNOSTICS:
        refit = memo.get("refit") or seed_weights(base, scenario, table, "refit", ft, memo)
        wrong = scenario.corrupted
        if scheme == "oracle-clean-full":
            return {r: (w if wrong[r] else 1.0) for r, w in refit.items()}
        return {r: (0.0 if wrong[r] else w) for r, w in refit.items()}
    if scheme in memo:
        return memo[scheme]
    folds, power = SCHEMES[scheme]
    if folds:
        memo[scheme] = cross_fitted_clean_weights(base, scenario.pool, table, ft, folds=folds, seed=scenario.seed, power=power)
    else:
        memo[scheme] = clean_weights(table, power=power)
    return memo[scheme]


def run_seed(seed_dir: Path, dataset, data_path: str, scenario_name: str, seed: int, schemes: list[str], check: bool) -> dict:
    saved = load_seed(seed_dir, dataset, data_path, scenario_name, seed)
    cached, scenario, base, table = saved.results, saved.scenario, saved.base, saved.table
    ft = FinetuneConfig(**{**asdict(FinetuneConfig()), "seed": seed, "from_scratch": False})
    out = {"seed": seed, "benchmark": {k: cached[k] for k in ("baseline", "all", "filter", "weighted", "clean_oracle")}}
    once_key = "weighted_once" if "weighted_once" in cached else "weighted"  # (a folder from before cross-fitting)
    memo: dict = {}
    for scheme in dict.fromkeys(["once", *schemes]):
        if scheme == "once" and not check:
            continue
        weights = seed_weights(base, scenario, table, scheme, ft, memo)
        rows = sorted(weights)
        clock = time.perf_counter()
        new = finetune(base, scenario.pool, ft, progress=False, rows=rows, weights=[weights[r] for r in rows])
        w = np.array([weights[r] for r in rows])
        bad = scenario.corrupted[rows]
        out[scheme] = {"test_rmse": float(new.metrics["test_rmse"]), "val_rmse": float(new.metrics["val_rmse"]),
                       "weight_clean": float(w[~bad].sum()), "weight_wrong": float(w[bad].sum()), "n_clean": int((~bad).sum()),
                       "n_wrong": int(bad.sum()), "mixture": table.attrs["mixture"], "seconds": round(time.perf_counter() - clock, 1)}
    if check:
        got, want = out["once"]["test_rmse"], cached[once_key]["test_rmse"]
        if abs(got - want) > 1e-9:
            raise SystemExit(f"{seed_dir}: the once scheme gave test RMSE {got:.6f}, the benchmark's {once_key} {want:.6f}: "
                             "not the same retraining, so no pairing")
    out["once"] = out.get("once") or {"test_rmse": cached[once_key]["test_rmse"], "val_rmse": cached[once_key]["val_rmse"]}
    return out


def summarize(per_seed: list[dict], schemes: list[str], reference: str = "refit") -> dict:
    base = np.array([s["benchmark"]["baseline"]["test_rmse"] for s in per_seed])
    clean = np.array([s["benchmark"]["clean_oracle"]["test_rmse"] for s in per_seed]) - base
    out = {"n_seeds": len(per_seed), "clean_oracle_delta": float(clean.mean())}
    for name in ("filter", "all"):
        d = np.array([s["benchmark"][name]["test_rmse"] for s in per_seed]) - base
        out[name] = {"delta": float(d.mean()), "ci95": interval(d), "recovery": float(d.mean() / clean.mean())}
    schemes = list(dict.fromkeys(["once", *schemes]))
    for scheme in schemes:
        test = np.array([s[scheme]["test_rmse"] for s in per_seed])
        val = np.array([s[scheme]["val_rmse"] for s in per_seed])
        d = test - base
        out[scheme] = {"delta": float(d.mean()), "ci95": interval(d), "recovery": float(d.mean() / clean.mean()),
                       "val_rmse_mean": float(val.mean())}
        if "weight_clean" in per_seed[-1][scheme]:
            out[scheme]["weight_share_clean"] = float(np.mean([s[scheme]["weight_clean"] / s[scheme]["n_clean"] for s in per_seed]))
            out[scheme]["weight_share_wrong"] = float(np.mean([s[scheme]["weight_wrong"] / s[scheme]["n_wrong"] for s in per_seed]))
        for other in ("filter", "all"):
            diff = test - np.array([s["benchmark"][other]["test_rmse"] for s in per_seed])
            out[scheme][f"vs_{other}"] = {"mean": float(diff.mean()), "ci95": interval(diff), "n_better": int((diff < 0).sum())}
    if reference in schemes:
        ref = np.array([s[reference]["test_rmse"] for s in per_seed])
        ref_val = np.array([s[reference]["val_rmse"] for s in per_seed])
        for scheme in schemes:
            if scheme != reference:
                diff = np.array([s[scheme]["test_rmse"] for s in per_seed]) - ref
                vdiff = np.array([s[scheme]["val_rmse"] for s in per_seed]) - ref_val
                out[scheme]["vs_reference"] = {"reference": reference, "test_mean": float(diff.mean()), "test_ci95": interval(diff),
                                               "n_better": int((diff < 0).sum()), "val_mean": float(vdiff.mean()),
                                               "val_n_better": int((vdiff < 0).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a lipo-if benchmark output folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=[*SCHEMES, *DIAGNOSTICS])
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the benchmark ran (--threads 1): the same fine-tuning, number for number
    data_path = str(Path(args.data_dir) / "lipophilicity.csv")
    dataset = load_dataset(data_path)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "bench": str(args.bench), "scenarios": {}}
    for name_of_scenario, seeds in scenario_seeds(args.bench):
        per_seed = [run_seed(seed_dir, dataset, data_path, name_of_scenario, seed, args.schemes, i == 0)
                    for i, (seed, seed_dir) in enumerate(seeds)]
        report["scenarios"][name_of_scenario] = {"summary": summarize(per_seed, args.schemes), "per_seed": per_seed}
        summary = report["scenarios"][name_of_scenario]["summary"]
        for name in ("all", "filter", *dict.fromkeys(("once", *args.schemes))):
            e = summary[name]
            ref = e.get("vs_reference")
            extra = (f"; vs {ref['reference']} test {ref['test_mean']:+.4f} {ref['n_better']}/{summary['n_seeds']} better, "
                     f"val {ref['val_mean']:+.4f} ({ref['val_n_better']} better)") if ref else ""
            share = (f", weight share clean {e['weight_share_clean']:.2f} / wrong {e['weight_share_wrong']:.2f}"
                     if "weight_share_clean" in e else "")
            print(f"{name_of_scenario} {name}: Δ test {e['delta']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}], recovery "
                  f"{e['recovery']:.0%}, val {e.get('val_rmse_mean', float('nan')):.4f}{share}{extra}", flush=True)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
