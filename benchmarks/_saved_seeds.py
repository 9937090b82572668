"""Shared by the benchmark scripts that go back over a finished ``lipo-if benchmark`` folder
(``weighting.py``, ``swap_detection_bound.py``): its scenarios and seeds, and each seed rebuilt —
the scenario, the saved base model and its validation suspicion table, as the benchmark made them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from lipo_if.benchmark import BenchmarkConfig, validation_suspicion
from lipo_if.rundir import load_run
from lipo_if.scenarios import Scenario, build_scenario


@dataclass
class SavedSeed:
    """One seed of a benchmark folder: the benchmark's ``results`` (its ``results.json``), the
    rebuilt ``scenario``, the saved ``base`` run and its validation suspicion ``table``."""

    seed: int
    results: dict
    scenario: Scenario
    base: object
    table: pd.DataFrame


def scenario_seeds(bench: Path) -> Iterator[tuple[str, list[tuple[int, Path]]]]:
    """``(scenario name, [(seed, seed folder)] in seed order)`` of every scenario in ``bench``."""
    for scenario_dir in sorted(p for p in Path(bench).iterdir() if p.is_dir()):
        seed_dirs = sorted((p.parent for p in scenario_dir.glob("seed_*/results.json")), key=lambda d: int(d.name.split("_")[1]))
        yield scenario_dir.name, [(int(d.name.split("_")[1]), d) for d in seed_dirs]


def load_seed(seed_dir: Path, dataset, data_path: str, scenario_name: str, seed: int) -> SavedSeed:
    """The seed of ``seed_dir`` rebuilt with the package's defaults (:class:`BenchmarkConfig`)."""
    scenario = build_scenario(scenario_name, dataset, seed)
    base = load_run(seed_dir / "base", data_path=data_path)
    results = json.loads((seed_dir / "results.json").read_text())["results"]
    _, table = validation_suspicion(base, scenario, BenchmarkConfig())
    return SavedSeed(seed, results, scenario, base, table)
