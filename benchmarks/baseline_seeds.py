"""Task-1 baseline over several seeds and both split kinds; prints a Markdown table.

    python benchmarks/baseline_seeds.py --data-dir ../shared/data --seeds 0 1 2 3 4 [--ensemble 3]
    python benchmarks/baseline_seeds.py --data-dir ../shared/data --model dmpnn --save-runs runs/task1-dmpnn

With ``--ensemble M`` every seed trains an ensemble of M initializations on its split (member 0 is
the single model of that seed) and the table has a row for the single model and one for the ensemble.

Each seed sets the split and the initialization. Nothing here is tuned on the test set: the
configuration is the package default (TrainConfig(), FeaturizerConfig()) of the model family
``--model``. ``--save-runs DIR`` keeps every single-model run as ``DIR/<split>-<seed>`` (for the
influence benchmarks of that family).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from lipo_if.data import load_dataset, resolve_lipophilicity_path
from lipo_if.ensemble import train_ensemble
from lipo_if.train import MODEL_FAMILIES, TrainConfig, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--splits", nargs="+", default=["random", "scaffold"])
    parser.add_argument("--json", help="also write the per-seed metrics here")
    parser.add_argument("--ensemble", type=int, default=1, help="members per seed (> 1: single and ensemble rows)")
    parser.add_argument("--model", choices=MODEL_FAMILIES, default=TrainConfig().model, help="model family (TrainConfig.model)")
    parser.add_argument("--save-runs", help="directory to keep each seed's single-model run in")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (TrainConfig.threads; 1 when two of these share 2 cores)")
    args = parser.parse_args()
    path = resolve_lipophilicity_path(data_dir=args.data_dir)
    dataset = load_dataset(path)
    rows, table = [], {}
    for split in args.splits:
        for seed in args.seeds:
            start = time.perf_counter()
            config = TrainConfig(seed=seed, split=split, model=args.model, threads=args.threads)
            if args.ensemble > 1:
                ens = train_ensemble(dataset, str(path), config, args.ensemble, progress=False)
                first = ens.members[0]
                single = dict(first.metrics, kind="single")
                both = [single, dict(ens.metrics, kind=f"ensemble of {args.ensemble}", seed=seed, best_epoch=single["best_epoch"],
                                     final_objective_grad_norm=float("nan"))]
            else:
                first = train_run(dataset, str(path), config, progress=False)
                both = [dict(first.metrics, kind="single")]
            if args.save_runs:
                first.save(Path(args.save_runs) / f"{split}-{seed}")
            for m in both:
                m.update(split=split, wall_seconds=round(time.perf_counter() - start, 1))
                rows.append(m)
                print(json.dumps({k: m.get(k) for k in ("kind", "split", "seed", "val_rmse", "test_rmse", "test_mae", "test_r2", "best_epoch", "wall_seconds")}), flush=True)
        for kind in dict.fromkeys(r["kind"] for r in rows):
            table[(split, kind)] = [r for r in rows if r["split"] == split and r["kind"] == kind]
    print("\n| split | model | seeds | test RMSE | test MAE | test R² | val RMSE | ‖∇R(θ̂)‖ | best epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (split, kind), runs in table.items():
        def ms(key: str) -> str:
            values = [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]  # (no NaN: an ensemble has no ‖∇R‖)
            if not values:
                return "–"
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {sd:.3f}"
        epochs = [r["best_epoch"] for r in runs]
        print(f"| {split} | {kind} | {len(runs)} | {ms('test_rmse')} | {ms('test_mae')} | {ms('test_r2')} | {ms('val_rmse')} | {ms('final_objective_grad_norm')} | {min(epochs)}–{max(epochs)} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
