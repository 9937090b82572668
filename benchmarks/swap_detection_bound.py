"""How well can a wrong label be found from a model of this accuracy? The detection AUC of the
package's residual detector beside a detector that *knows the noise process*, on the pools of a
finished ``lipo-if benchmark`` folder.

A swapped label (another pool molecule's label) is a plausible logD: its residual is the model's
own error plus the difference of two labels, so it overlaps a clean label's residual however the
residual is scaled. The best any detector that sees only the model's prediction ``f`` and the label
``y`` can do is the likelihood ratio of the two hypotheses (Neyman–Pearson):

- clean: ``y − f`` ~ the model's validation residuals (a Student t fitted to them);
- swapped: ``y`` ~ the distribution of measured labels, whatever ``f`` says (a Gaussian KDE of the base
  training set's labels: a swap moves a measured label, and the pool's own labels include the shifted ones);
- shifted (±U(2, 3)): ``y − f`` ~ the clean residual moved by 2–3 log units either way.

``LR = max(p_swap, p_shift) / p_clean`` uses the construction the benchmark knows and a user never
does, so its AUC is an upper reference for detectors built on this model, not a method. Printed
per scenario: AUC of ``|residual|`` (the package's ``suspicion``) and of the LR, overall and by
kind, and, for a two-normal idealization, the AUC of ``|r|`` on swaps, ``(2/π)·arctan(σ_swap/σ_clean)``
with ``σ_swap² = σ_clean² + 2·var(labels)`` (the training labels' variance), and the clean residual spread at which that idealization
would reach 0.95 overall (shifts at their measured AUC).

    python benchmarks/swap_detection_bound.py runs/bench-noisy runs/bench-lowdata --data-dir ../shared/data [--json OUT]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from lipo_if.benchmark import BenchmarkConfig
from lipo_if.data import load_dataset
from lipo_if.influence import Influence
from lipo_if.io import atomic_write_json
from lipo_if.rundir import load_run
from lipo_if.scenarios import SHIFT_RANGE, build_scenario
from lipo_if.select import eligible
from lipo_if.suspicion import _validation_residuals, suspicion_table
from lipo_if.train import exact_gauss_newton_solver


def likelihood_ratio(residual: np.ndarray, labels: np.ndarray, measured: np.ndarray, val_residual: np.ndarray) -> np.ndarray:
    """log ``max(p_swap, p_shift) / p_clean`` of each row (module docstring); ``residual`` = f − y."""
    df, _, scale = stats.t.fit(val_residual, floc=0.0)
    log_clean = stats.t.logpdf(residual, df, 0.0, scale)
    log_swap = np.log(np.maximum(stats.gaussian_kde(measured)(labels), 1e-300))
    grid = np.linspace(*SHIFT_RANGE, 21)  # y = y_true ± δ, δ ~ U(2, 3): r = e ∓ δ
    shift = np.mean([stats.t.pdf(residual + sign * d, df, 0.0, scale) for d in grid for sign in (-1.0, 1.0)], axis=0)
    return np.maximum(log_swap, np.log(np.maximum(shift, 1e-300))) - log_clean


def seed_aucs(seed_dir: Path, dataset, data_path: str, scenario_name: str, seed: int) -> dict:
    scenario = build_scenario(scenario_name, dataset, seed)
    base = load_run(seed_dir / "base", data_path=data_path)
    inf = Influence(base, config=BenchmarkConfig().influence_config("validation", exact_gauss_newton_solver(base.config.model))).fit()
    table = eligible(suspicion_table(inf, scenario.pool))
    rows = table["row"].to_numpy(dtype=int)
    residual, labels = table["residual"].to_numpy(dtype=float), table["label"].to_numpy(dtype=float)
    wrong, kind = scenario.corrupted[rows], np.array(scenario.kind)[rows]
    val_residual = _validation_residuals(base)
    measured = base.labels("train").astype(float)
    lr = likelihood_ratio(residual, labels, measured, val_residual)
    suspicion = table["suspicion"].to_numpy(dtype=float)
    out = {"seed": seed, "n": int(len(rows)), "n_wrong": int(wrong.sum()), "val_residual_sd": float(np.std(val_residual)),
           "label_sd": float(np.std(measured))}
    for name, subset in (("all", np.ones(len(rows), bool)), ("swap", kind != "shift"), ("shift", kind != "swap")):
        out[name] = {"residual": float(roc_auc_score(wrong[subset], suspicion[subset])),
                     "likelihood_ratio": float(roc_auc_score(wrong[subset], lr[subset]))}
    return out


def idealized(per_seed: list[dict]) -> dict:
    """The two-normal idealization of the swaps' residual AUC, and the clean spread that 0.95 needs."""
    s_clean = float(np.mean([s["val_residual_sd"] for s in per_seed]))
    s_label = float(np.mean([s["label_sd"] for s in per_seed]))
    shift_auc = float(np.mean([s["shift"]["residual"] for s in per_seed]))

    def swap_auc(sd: float) -> float:
        return float(2 / np.pi * np.arctan(np.sqrt(sd ** 2 + 2 * s_label ** 2) / sd))

    # overall AUC ≈ the mean of the two kinds' AUCs (half of the wrong labels are each kind)
    needed = next((sd for sd in np.linspace(s_clean, 0.01, 400) if (swap_auc(sd) + shift_auc) / 2 >= 0.95), None)
    return {"clean_sd": s_clean, "label_sd": s_label, "swap_auc": swap_auc(s_clean), "shift_auc": shift_auc,
            "clean_sd_for_0.95": None if needed is None else float(needed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, nargs="+", help="lipo-if benchmark output folders")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_path = str(Path(args.data_dir) / "lipophilicity.csv")
    dataset = load_dataset(data_path)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "scenarios": {}}
    for bench in args.bench:
        for scenario_dir in sorted(p for p in bench.iterdir() if p.is_dir()):
            seed_dirs = sorted(scenario_dir.glob("seed_*/results.json"), key=lambda p: int(p.parent.name.split("_")[1]))
            per_seed = [seed_aucs(p.parent, dataset, data_path, scenario_dir.name, int(p.parent.name.split("_")[1])) for p in seed_dirs]
            summary = {kind: {det: float(np.mean([s[kind][det] for s in per_seed])) for det in ("residual", "likelihood_ratio")}
                       for kind in ("all", "swap", "shift")}
            summary["idealized"] = idealized(per_seed)
            report["scenarios"][scenario_dir.name] = {"summary": summary, "per_seed": per_seed}
            for kind in ("all", "swap", "shift"):
                print(f"{scenario_dir.name} ({len(per_seed)} seeds) {kind}: AUC residual {summary[kind]['residual']:.3f}, "
                      f"likelihood ratio (knows the noise) {summary[kind]['likelihood_ratio']:.3f}", flush=True)
            print(f"{scenario_dir.name} idealized: {summary['idealized']}", flush=True)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
