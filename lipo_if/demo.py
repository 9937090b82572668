"""``lipo-if demo`` / ``make demo``: the whole mission on the real data, sized to finish in ≈ 15 minutes.

It is ``lipo-if run`` (see :mod:`lipo_if.experiment`) with smaller defaults than the full
experiment — fewer seeds, one k, shorter fine-tuning, a conjugate-gradient influence solve at a
fixed damping (no power iteration) — printed up front with an estimate of the time it takes.
The full experiment is ``lipo-if run --data-dir DIR --external DIR/external.csv --out OUT``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

from .data import DataError, resolve_lipophilicity_path

#: Demo settings (chosen for time, never on the test set). Damping 1.0 ≈ λmax/50 of the default
#: model (measured; see benchmarks/RESULTS.md), the auto value, without the power iteration.
DEMO_EXPERIMENT = dict(seeds=3, k=(50.0,), influence_solver="cg", influence_damping=1.0, influence_max_iter=100)
DEMO_FINETUNE = dict(finetune_epochs=10, finetune_patience=10)
#: Seconds on an idle 2-core machine: one baseline training (30–60 s), one influence solve (CG at
#: damping 1 converges in ≈ 23 full-batch products), one fine-tuning of DEMO_FINETUNE's length.
#: On a shared machine (load ≈ 7) we measured ≈ 2.4× these for the solve and the fine-tuning.
SECONDS = {"train": 60.0, "solve": 30.0, "finetune": 10.0}
#: What ``make demo`` must stay under.
BUDGET_SECONDS = 15 * 60


def estimate_seconds(n_seeds: int, n_k: int, oracle: bool = True, guard: bool = True) -> float:
    """Rough wall time of the demo: per seed one training, 1–2 solves, 3 + (3–4)·n_k fine-tunings."""
    finetunes = 3 + n_k * (2 + int(oracle) + int(guard))
    per_seed = SECONDS["train"] + SECONDS["solve"] * (1 + int(oracle)) + SECONDS["finetune"] * finetunes
    return n_seeds * per_seed


def run_demo(args: argparse.Namespace) -> int:
    from .experiment import ExperimentConfig, run_experiment
    from .train import FinetuneConfig, TrainConfig

    data_dir = args.data_dir or os.environ.get("LIPO_IF_DATA")
    path = resolve_lipophilicity_path(data_dir=data_dir)
    external = Path(data_dir) / "external.csv" if data_dir else path.parent / "external.csv"
    if not external.exists():
        raise DataError(f"{external}: file not found; put external.csv next to lipophilicity.csv or pass --data-dir DIR")
    seeds = getattr(args, "seeds", None) or DEMO_EXPERIMENT["seeds"]
    config = ExperimentConfig(**{**DEMO_EXPERIMENT, "seeds": seeds, "first_seed": args.seed})
    finetune = FinetuneConfig(**DEMO_FINETUNE)
    out = Path(args.out)
    minutes = estimate_seconds(config.seeds, len(config.k), config.oracle, config.guard != "none") / 60
    print(f"[demo] data: {path}\n[demo] external: {external}")
    print(f"[demo] {config.seeds} seeds × (train → influence on validation (+ test-set oracle, diagnostic) → select k={list(config.k)} "
          f"→ fine-tune every selection and the nothing-added baseline → evaluate)")
    print(f"[demo] estimated time ≈ {minutes:.0f} min on 2 idle cores (more when the machine is shared); "
          f"finished seeds are reused if interrupted and rerun")
    print(f"[demo] settings: {asdict(config)} {asdict(finetune)}")
    start = time.perf_counter()
    report = run_experiment(path, external, out, config, TrainConfig(), finetune, progress=not args.quiet)
    print(f"[demo] {report['conclusion']}")
    print(f"[demo] done in {(time.perf_counter() - start) / 60:.1f} min; report: {out / 'report.md'} (report.json, plots in {out})")
    return 0
