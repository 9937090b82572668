"""Statistics of the selection experiment over seeds: paired differences with their tests, the
report's strategy entries, recovery of the oracle's gain, and the fidelity of the predictions."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .strategies import DIAGNOSTIC_NOTE, FIXED_STRATEGIES, K_STRATEGIES, METRICS, TEST_BLIND, k_label


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


def aggregate(seed_results: list[dict], ks: Sequence[float], method: str = "weighted") -> dict:
    """The strategy entries of ``report.json`` from the per-seed results (``ks``: the experiment's k
    values). ``influence`` is a copy of the ``method`` entry (:data:`~lipo_if.strategies.METHODS`;
    ``influence_topk`` when ``method`` was not run), with ``method`` naming it."""
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
        for k in ks:
            rows = rows_of(name, k)
            if rows:
                by_k.setdefault(name, {})[k_label(k)] = _summarize(rows, seeds, baseline)
    # The headline k: lowest mean validation RMSE of the influence selection (validation only).
    val_by_k = {label: entry["val_rmse_mean"] for label, entry in by_k.get("influence_topk", {}).items()}
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
    method = method if method in report else "influence_topk"
    if method in report:
        report["influence"] = {**report[method], "method": method}
    report["method"] = method
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
    """Predicted (Σ first-order scores) vs actual change of validation MSE over the retrained groups of
    the influence and control strategies (the suspicion filter's and the weighted groups — hundreds
    of molecules, chosen without the scores — are left out)."""
    from scipy.stats import pearsonr, spearmanr

    groups = [r for s in seed_results for r in s["results"]
              if r["strategy"] not in ("original", "baseline", "weighted") and not r["strategy"].startswith("filter")]
    pairs = [(r["predicted_delta_val_mse"], r["actual_delta_val_mse"], r["strategy"]) for r in groups
             if r.get("actual_delta_val_mse") is not None]
    pred = np.array([p[0] for p in pairs], dtype=float)
    act = np.array([p[1] for p in pairs], dtype=float)
    ok = np.isfinite(pred) & np.isfinite(act)
    out = {"n_groups": int(ok.sum()), "pearson": float("nan"), "spearman": float("nan")}
    if ok.sum() >= 3 and np.std(pred[ok]) > 0 and np.std(act[ok]) > 0:
        out["pearson"] = float(pearsonr(pred[ok], act[ok])[0])
        out["spearman"] = float(spearmanr(pred[ok], act[ok])[0])
    second = [(r["predicted_delta_val_mse_second_order"], r["actual_delta_val_mse"]) for r in groups
              if r.get("predicted_delta_val_mse_second_order") is not None and r.get("actual_delta_val_mse") is not None]
    if len(second) >= 3:
        p2 = np.array(second, dtype=float)
        ok2 = np.isfinite(p2).all(axis=1)
        if ok2.sum() >= 3 and np.std(p2[ok2, 0]) > 0 and np.std(p2[ok2, 1]) > 0:
            out["second_order"] = {"n_groups": int(ok2.sum()), "pearson": float(pearsonr(p2[ok2, 0], p2[ok2, 1])[0]),
                                   "spearman": float(spearmanr(p2[ok2, 0], p2[ok2, 1])[0]),
                                   "mean_predicted": float(p2[ok2, 0].mean()), "mean_actual": float(p2[ok2, 1].mean()),
                                   "mean_predicted_first_order": float(np.mean([r["predicted_delta_val_mse"] for r in groups
                                                                               if r.get("predicted_delta_val_mse_second_order") is not None]))}
    return out
