"""Shared by the benchmark scripts that time stages on the first rows of a pool against a trained run
(``stream_profile.py``, ``prefilter_race.py``): their common options and inputs."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from lipo_if.rundir import load_run


def add_pool_sample_args(parser: argparse.ArgumentParser, rows: int) -> None:
    """``--data-dir``, ``--run`` (a run directory), ``--pool`` (a pool CSV), ``--rows`` (its first rows), ``--json``."""
    parser.add_argument("--data-dir")
    parser.add_argument("--run", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--json")


def load_pool_sample(args: argparse.Namespace):
    """``(run, the pool's first --rows rows as strings)``; torch on one thread, as a stream worker runs."""
    torch.set_num_threads(1)
    run = load_run(args.run, data_path=str(Path(args.data_dir) / "lipophilicity.csv") if args.data_dir else None)
    return run, pd.read_csv(args.pool, nrows=args.rows, dtype=str, keep_default_na=False)
