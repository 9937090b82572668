"""Fine-tuning against retraining from scratch, side by side, and the mode chosen on validation.

Reads two ``lipo-if benchmark`` output folders run on the same scenarios and seeds, one with
``--retrain finetune`` and one with ``--retrain scratch``, and prints per scenario and strategy:
Δ test RMSE of each mode against its own nothing-added retraining, and of the mode chosen per
seed by the strategy's **validation** RMSE against the fine-tuned nothing-added model (the
product's baseline), with 95 % t-intervals over seeds.

    python benchmarks/retrain_modes.py runs/bench-finetune runs/bench-scratch
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

STRATEGIES = ("all", "random_matched", "influence", "filter", "clean_oracle")


def interval(d: np.ndarray) -> str:
    half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"


def seeds(folder: Path, scenario: str) -> dict[int, dict]:
    return {int(p.parent.name.split("_")[1]): json.loads(p.read_text())["results"]
            for p in sorted((folder / scenario).glob("seed_*/results.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("finetune", type=Path)
    parser.add_argument("scratch", type=Path)
    args = parser.parse_args()
    for scenario in sorted(p.name for p in args.finetune.iterdir() if p.is_dir() and (args.scratch / p.name).is_dir()):
        ft, sc = seeds(args.finetune, scenario), seeds(args.scratch, scenario)
        common = sorted(set(ft) & set(sc))
        print(f"\n{scenario} ({len(common)} seeds: {common})")
        print("| strategy | fine-tuning | from scratch | chosen on validation (scratch chosen) |")
        print("|---|---|---|---|")
        for name in STRATEGIES:
            d_ft = np.array([ft[s][name]["test_rmse"] - ft[s]["baseline"]["test_rmse"] for s in common])
            d_sc = np.array([sc[s][name]["test_rmse"] - sc[s]["baseline"]["test_rmse"] for s in common])
            picks = [sc[s] if sc[s][name]["val_rmse"] < ft[s][name]["val_rmse"] else ft[s] for s in common]
            d_ch = np.array([p[name]["test_rmse"] - ft[s]["baseline"]["test_rmse"] for p, s in zip(picks, common)])
            n_scratch = sum(p is sc[s] for p, s in zip(picks, common))
            print(f"| {name} | {interval(d_ft)} | {interval(d_sc)} | {interval(d_ch)} ({n_scratch}/{len(common)}) |")


if __name__ == "__main__":
    main()
