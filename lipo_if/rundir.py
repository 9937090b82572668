"""Loading a run directory: a single trained model or an ensemble of them."""
from __future__ import annotations

import os

from .ensemble import Ensemble, is_ensemble_dir, load_ensemble
from .train import Run, load_single_run


def load_run(run_dir: str | os.PathLike, data_path: str | os.PathLike | None = None) -> Run | Ensemble:
    """Load a directory written by ``lipo-if train`` (``--ensemble M`` included) or ``Run.save`` /
    ``Ensemble.save``. ``data_path`` overrides the data file recorded in the run (e.g. on another
    machine); the run checks that it holds the same molecules and labels."""
    return load_ensemble(run_dir, data_path) if is_ensemble_dir(run_dir) else load_single_run(run_dir, data_path)
