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
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _saved_seeds import load_seed, scenario_seeds  # noqa: E402  (a sibling benchmark module, not a package)

from lipo_if.data import load_dataset  # noqa: E402
from lipo_if.io import atomic_write_json  # noqa: E402
from lipo_if.scenarios import SHIFT_RANGE  # noqa: E402
from lipo_if.select import eligible  # noqa: E402
from lipo_if.suspicion import validation_residuals  # noqa: E402


def likelihood_ratio(residual: np.ndarray, labels: np.ndarray, measured: np.ndarray, val_residual: np.ndarray) -> np.ndarray:
    """log ``max(p_swap, p_shift) / p_clean`` of each row (module docstring); ``residual`` = f − y."""
    df, _, scale = stats.t.fit(val_residual, floc=0.0)
    log_clean = stats.t.logpdf(residual, df, 0.0, scale)
    log_swap = np.log(np.maximum(stats.gaussian_kde(measured)(labels), 1e-300))
    grid = np.linspace(*SHIFT_RANGE, 21)  # y = y_true ± δ, δ ~ U(2, 3): r = e ∓ δ
    shift = np.mean([stats.t.pdf(residual + sign * d, df, 0.0, scale) for d in grid for sign in (-1.0, 1.0)], axis=0)
    return np.maximum(log_swap, np.log(np.maximum(shift, 1e-300))) - log_clean


def seed_aucs(seed_dir: Path, dataset, data_path: str, scenario_name: str, seed: int) -> dict:
    saved = load_seed(seed_dir, dataset, data_path, scenario_name, seed)
    scenario, base, table = saved.scenario, saved.base, eligible(saved.table)
    rows = table["row"].to_numpy(dtype=int)
    residual, labels = table["residual"].to_numpy(dtype=float), table["label"].to_numpy(dtype=float)
    wrong, kind = scenario.corrupted[rows], np.array(scenario.kind)[rows]
    val_residual = validation_residuals(base)
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
        for name, seeds in scenario_seeds(bench):
            per_seed = [seed_aucs(seed_dir, dataset, data_path, name, seed) for seed, seed_dir in seeds]
            summary = {kind: {det: float(np.mean([s[kind][det] for s in per_seed])) for det in ("residual", "likelihood_ratio")}
                       for kind in ("all", "swap", "shift")}
            summary["idealized"] = idealized(per_seed)
            report["scenarios"][name] = {"summary": summary, "per_seed": per_seed}
            for kind in ("all", "swap", "shift"):
                print(f"{name} ({len(per_seed)} seeds) {kind}: AUC residual {summary[kind]['residual']:.3f}, "
                      f"likelihood ratio (knows the noise) {summary[kind]['likelihood_ratio']:.3f}", flush=True)
            print(f"{name} idealized: {summary['idealized']}", flush=True)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
