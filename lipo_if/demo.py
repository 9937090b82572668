"""``lipo-if demo`` / ``make demo``: the whole mission on the real data, sized to finish in ≈ 15 minutes.

It is ``lipo-if run`` (see :mod:`lipo_if.experiment`) with smaller defaults than the full
experiment — fewer seeds, one k, LiSSA (native Gauss–Newton HVP) at a fixed damping μ = 1.0
(≈ λmax/30 of the default model; the scale still comes from the power iteration), the greedy guard
and the unguarded ranking as the only extra comparisons — printed up front with an estimate of the
time it takes.
The full experiment is ``lipo-if run --data-dir DIR --external DIR/external.csv --out OUT``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

from .data import DataError, resolve_lipophilicity_path
from .experiment import ExperimentConfig, run_experiment
from .train import FinetuneConfig, TrainConfig

#: Demo settings (chosen for time, never on the test set). Damping 1.0 ≈ λmax/50 of the default
#: model (measured; see benchmarks/RESULTS.md), the auto value, without the power iteration.
DEMO_EXPERIMENT = dict(seeds=3, k=(50.0,), influence_backend="pipeline", influence_solver="lissa", influence_damping=1.0,
                       compare_guards=("none", "greedy"), threshold_strategy=False)
DEMO_FINETUNE = dict(finetune_epochs=5, finetune_patience=5)  # as the real experiment in benchmarks/RESULTS.md
#: Seconds on an idle 2-core machine: one baseline training (30–60 s), one influence solve (LiSSA,
#: 1000 steps of batch 512 with the native Gauss–Newton HVP plus the power iteration for the scale:
#: 42 s measured idle, 50 s for the whole `lipo-if influence`; the function-space solve ≈ 10 s), the
#: greedy guard's interaction matrix (≈ 10 s), one fine-tuning of DEMO_FINETUNE's length (5 epochs).
#: On a shared machine (load ≈ 7) we measured 2.4–7× these (training: 402 s at load 7); the whole
#: demo took 16.9 min at load ≈ 7 (one torch thread; see benchmarks/RESULTS.md).
SECONDS = {"train": 60.0, "solve": 50.0, "ntk_solve": 10.0, "group": 10.0, "finetune": 6.0}
#: What ``make demo`` must stay under.
BUDGET_SECONDS = 15 * 60


def estimate_seconds(n_seeds: int, n_k: int, oracle: bool = True, n_other_guards: int = 2, ntk: bool = True,
                     threshold: bool = False, greedy: bool = True, crossfit_folds: int = 0, n_filters: int = 0) -> float:
    """Rough wall time on idle cores: per seed one training, 1–2 solves (+ the greedy guard's matrix)
    and ``2 (+1 threshold) + n_filters (the filter@z groups, the weighted group and its judges) + n_k·(influence + other guards + random + oracle [+ crossfit])``
    fine-tunings (+ K trainings and solves when cross-fitting). Identical selections are retrained
    once, so this is an upper bound."""
    solve = SECONDS["ntk_solve"] if ntk else SECONDS["solve"]
    finetunes = 2 + int(threshold) + n_filters + n_k * (2 + n_other_guards + int(oracle) + int(crossfit_folds > 0))
    per_seed = (SECONDS["train"] + solve * (1 + int(oracle)) + SECONDS["group"] * int(greedy) + SECONDS["finetune"] * finetunes
                + crossfit_folds * (SECONDS["train"] + solve))
    return n_seeds * per_seed


def estimate_for(config) -> float:
    """:func:`estimate_seconds` of an :class:`~lipo_if.experiment.ExperimentConfig`."""
    others = [g for g in config.compare_guards if g != config.guard]
    return estimate_seconds(config.seeds, len(config.k), config.oracle, len(others), config.influence_backend == "ntk",
                            config.threshold_strategy, config.guards_needing_group, config.crossfit_folds,
                            len(config.filter_z) + int(config.weighted) * (1 + config.weight_folds))


def _threads_for_load() -> None:
    """On a machine already busier than its cores, one torch thread per process is several times
    faster than the default (measured here at load ≈ 7–14 on 2 cores: 5–6 s per training epoch with
    one thread, 20–70 s with two — the threads' barriers wait on descheduled siblings)."""
    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores and torch.get_num_threads() > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
        print(f"[demo] load average {load:.1f} > {cores} cores: using 1 torch thread (set OMP_NUM_THREADS to override)")
    else:
        print(f"[demo] load average {load:.1f} on {cores} cores; {torch.get_num_threads()} torch thread(s)")


def run_demo(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or os.environ.get("LIPO_IF_DATA")
    path = resolve_lipophilicity_path(data_dir=data_dir)
    external = Path(data_dir) / "external.csv" if data_dir else path.parent / "external.csv"
    if not external.exists():
        raise DataError(f"{external}: file not found; put external.csv next to lipophilicity.csv or pass --data-dir DIR")
    seeds = getattr(args, "seeds", None) or DEMO_EXPERIMENT["seeds"]
    config = ExperimentConfig(**{**DEMO_EXPERIMENT, "seeds": seeds, "first_seed": args.seed, "ensemble": getattr(args, "ensemble", 1)})
    finetune = FinetuneConfig(**DEMO_FINETUNE)
    out = Path(args.out)
    minutes = estimate_for(config) * config.ensemble / 60
    print(f"[demo] data: {path}\n[demo] external: {external}")
    _threads_for_load()
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
