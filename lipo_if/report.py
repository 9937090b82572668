"""The experiment's report: plain-language conclusions, ``report.md`` and the plots."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import atomic_write_bytes
from .select import eligible, guarded_pool, residual_outliers, top_k
from .strategies import K_STRATEGIES, k_label


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_diff(d: dict | None) -> tuple[str, str]:
    if not d:
        return "–", "–"
    return f"{d['mean']:+.4f} ± {_fmt(d['std'], 4)}", _fmt(d["p_ttest"], 2)


def _method_phrase(report: dict) -> str:
    """What the report's ``influence`` entry (the method a user gets) did, in words."""
    inf = report["influence"]
    if inf.get("method") == "weighted":
        config = report.get("meta", {}).get("experiment_config", {})
        judged = "under models fine-tuned on the other folds of the pool" if config.get("weight_folds", 2) else "under the base model"
        return (f"The default selection, weighted fine-tuning (every eligible molecule added, each weighted by its probability "
                f"of a clean label, to the power {config.get('weight_power', 1):g}, from a two-component "
                f"mixture of its residual {judged}; the strategy that paid most on the "
                f"pools of `lipo-if benchmark`), added {inf['n_added']:.0f} molecules on average and")
    if inf.get("method", "influence_topk") == "filter":
        return (f"The default selection, the suspicion filter (every eligible molecule whose label lies within z validation "
                f"spreads of the model's prediction, z chosen on validation; the strategy that paid on the pools of "
                f"`lipo-if benchmark`), added {inf['n_added']:.0f} molecules on average and")
    return f"Adding the {report.get('headline_k')} most helpful external molecules by influence (k chosen on validation)"


def conclusion(report: dict) -> str:
    """The plain sentence(s) of what the numbers mean."""
    k = report.get("headline_k")
    inf, base = report.get("influence"), report.get("baseline")
    if not inf or not base:
        return "Not enough results to compare the selection with the baseline."
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
        f"{_method_phrase(report)} changed test RMSE by {d['mean']:+.4f} ± {_fmt(d['std'], 4)} vs the same fine-tuning with "
        f"nothing added (mean ± std over {n} seed{'s' if n != 1 else ''}, paired t-test p = {_fmt(d['p_ttest'], 2)})."
    ]
    if lost:
        parts.append(f"On mean test RMSE it did **not** beat {', '.join(lost)}" + (f" (it did beat {', '.join(won)})." if won else "."))
    else:
        parts.append(f"On mean test RMSE it beat {', '.join(won)}.")
    if not significant:
        parts.append("The difference to the baseline is not distinguishable from seed-to-seed noise at this number of seeds"
                     + ("." if n > 1 else " (one seed: no test possible)."))
    if rnd and rnd.get("test_rmse_diff_vs_baseline"):
        parts.append(f"Random-{k}: {rnd['test_rmse_diff_vs_baseline']['mean']:+.4f}.")
    if allx and allx.get("test_rmse_diff_vs_baseline"):
        parts.append(f"All external ({allx['n_added']:.0f} molecules): {allx['test_rmse_diff_vs_baseline']['mean']:+.4f}.")
    topk = report.get("influence_topk")
    if inf.get("method") in ("filter", "weighted") and topk and topk.get("test_rmse_diff_vs_baseline"):
        parts.append(f"Top-{k} by influence: {topk['test_rmse_diff_vs_baseline']['mean']:+.4f} "
                     f"(p = {_fmt(topk['test_rmse_diff_vs_baseline']['p_ttest'], 2)}).")
    if orc and orc.get("test_rmse_diff_vs_baseline"):
        o = orc["test_rmse_diff_vs_baseline"]["mean"]
        if o >= 0:
            tail = " (no gain to recover)."
        elif d["mean"] >= 0:
            tail = "; the selection recovered none of it."
        else:
            tail = f"; the selection gained {d['mean'] / o:.0%} of that."
        parts.append(f"The leaky oracle (top-{k} by influence on the test set; a ceiling, not a method) changed it by {o:+.4f}" + tail)
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
    order = ["original", "baseline", "influence", "influence_topk", "influence_unguarded", "influence_residual", "influence_greedy",
             "influence_residual_greedy", "crossfit", "influence_threshold", "filter", "weighted", "random", "all_external", "oracle"]
    for name in order:
        entry = report.get(name)
        if not entry:
            continue
        diff, p = _fmt_diff(entry.get("test_rmse_diff_vs_baseline"))
        label = (f"{name} (diagnostic, sees test)" if name == "oracle" else
                 f"**influence** (= {entry.get('method')}, the default)" if name == "influence" else name)
        lines.append(f"| {label} | {entry.get('k', '–') if name in K_STRATEGIES or entry.get('method') in K_STRATEGIES else '–'} | {entry['n_added']:.0f} | "
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
        "`predicted_vs_actual.png` (predicted vs actual change of validation loss for the selected groups), "
        "`score_vs_similarity.png` (score against the nearest-neighbour similarity to the training set, seed "
        f"{meta['seeds'][0]}; below {meta['experiment_config'].get('min_similarity', 0):g} a molecule is out of domain and never selected).", "",
    ]
    return "\n".join(lines)


def new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def plot_rmse_vs_k(report: dict, ks: Sequence[float], path: Path) -> None:
    """Test RMSE vs k for the k-strategies (left) and the paired difference to baseline (right).

    Error bars are the std over seeds. The split changes the absolute RMSE far more than any
    selection does, so the paired panel is the one that shows whether a strategy helps.
    """
    fig = new_figure(11.0, 4.4)
    ax_abs, ax_diff = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = np.arange(len(ks))
    styles = {"influence_topk": ("tab:blue", "o"), "influence_unguarded": ("tab:cyan", "s"), "influence_residual": ("tab:olive", "P"),
              "influence_greedy": ("tab:purple", "D"), "influence_residual_greedy": ("tab:pink", "v"), "crossfit": ("tab:orange", "*"),
              "random": ("tab:gray", "^"), "oracle": ("tab:red", "x")}
    for i, name in enumerate(K_STRATEGIES):
        entries = report.get(name, {}).get("by_k", {})
        if not entries:
            continue
        color, marker = styles[name]
        label = name + (" (diagnostic, sees test)" if name == "oracle" else "")
        shift = xs + (i - (len(K_STRATEGIES) - 1) / 2) * 0.03
        rows = [entries[k_label(k)] for k in ks]
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
        ax.set_xticks(xs, [k_label(k) for k in ks])
        ax.set_xlabel("k (molecules added)")
        ax.set_ylabel(ylabel)
    n = report["meta"]["n_seeds"]
    ax_abs.set_title(f"test RMSE — mean ± std over {n} seeds", fontsize=10)
    ax_diff.set_title("paired difference to the nothing-added baseline (< 0 = better)", fontsize=10)
    ax_diff.legend(fontsize=7)
    save_figure(fig, path)


def plot_score_hist(scores: pd.DataFrame, guard: str, guard_z: float, headline_k: str | None, path: Path) -> None:
    """Validation-influence scores of one seed with the top-k cut-off and the residual guard's outliers."""
    fig = new_figure()
    ax = fig.add_subplot()
    pool = eligible(scores)
    values = pool["score"].to_numpy(dtype=float)
    outliers = residual_outliers(scores, guard_z).loc[pool.index].to_numpy()
    bins = np.histogram_bin_edges(values, bins=min(50, max(5, len(values) // 4))) if len(values) else 10
    ax.hist(values[~outliers], bins=bins, color="tab:blue", alpha=0.8, label="eligible")
    if outliers.any() and guard != "none":
        ax.hist(values[outliers], bins=bins, color="tab:red", alpha=0.8, label="dropped by residual guard")
    if headline_k is not None and len(values):
        chosen = top_k(guarded_pool(scores, guard, guard_z), float(headline_k))
        if chosen:
            cut = float(pool.set_index("row").loc[chosen, "score"].max())
            ax.axvline(cut, color="black", ls="--", label=f"top-{headline_k} cut-off ({cut:.2g})")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_xlabel("influence score: predicted Δ validation MSE (logD²); negative = helpful")
    ax.set_ylabel("external molecules")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_score_vs_similarity(scores: pd.DataFrame, min_similarity: float, path: Path) -> None:
    """Influence score of every scored molecule against its nearest-neighbour Tanimoto similarity
    to the training set (:mod:`lipo_if.domain`), with the applicability-domain threshold."""
    fig = new_figure()
    ax = fig.add_subplot()
    scored = scores[scores["excluded"].fillna("").astype(str) == ""]
    sim = scored["nn_similarity"].to_numpy(dtype=float)
    score = scored["score"].to_numpy(dtype=float)
    inside = scored["in_domain"].astype(bool).to_numpy()
    ax.scatter(sim[inside], score[inside], s=10, color="tab:blue", alpha=0.7, label=f"in domain ({int(inside.sum())})")
    if (~inside).any():
        ax.scatter(sim[~inside], score[~inside], s=10, color="tab:red", alpha=0.7, label=f"out of domain, not selected ({int((~inside).sum())})")
    if min_similarity > 0:
        ax.axvline(min_similarity, color="black", ls="--", lw=0.8, label=f"threshold {min_similarity:g}")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("nearest-neighbour Tanimoto similarity to the training set (Morgan r2, 2048 bits)")
    ax.set_ylabel("influence score (predicted Δ validation MSE; < 0 = helpful)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_predicted_vs_actual(seed_results: list[dict], fid: dict, path: Path) -> None:
    """Σ first-order scores of each retrained group vs its actual change of validation MSE."""
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    colors = {"influence_topk": "tab:blue", "influence_unguarded": "tab:cyan", "influence_greedy": "tab:purple",
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
    save_figure(fig, path)
