"""``lipo-if demo`` / ``make demo``: the main job end to end on the real data."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .data import resolve_lipophilicity_path


def run_demo(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .train import TrainConfig, train_run

    data_dir = args.data_dir or os.environ.get("LIPO_IF_DATA")
    path = resolve_lipophilicity_path(data_dir=data_dir)
    out = Path(args.out)
    print(f"[demo] data: {path}")
    print("[demo] step 1/1: Task-1 baseline (≈1 min on 2 cores)")
    dataset = load_dataset(path)
    run = train_run(dataset, str(path.resolve()), TrainConfig(seed=args.seed), progress=not args.quiet)
    run.save(out / "baseline")
    m = run.metrics
    print(f"[demo] baseline test RMSE {m['test_rmse']:.3f}, MAE {m['test_mae']:.3f}, R² {m['test_r2']:.3f}")
    print(f"[demo] report: {out / 'baseline' / 'metrics.json'}")
    return 0
