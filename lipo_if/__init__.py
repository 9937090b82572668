"""lipo_if — influence-function (LiSSA) data selection for lipophilicity models.

Quick start::

    import lipo_if
    run = lipo_if.load_run("runs/baseline")      # model, featurizer, split
    run.predict(["CCO", "c1ccccc1O"])             # logD7.4 predictions
"""
from __future__ import annotations

__version__ = "0.1.0"

from .data import DataError, load_dataset, load_lipophilicity, make_split, read_molecule_csv  # noqa: E402
from .train import Run, TrainConfig, load_run, train_run  # noqa: E402
from . import ops  # noqa: E402, F401 — loads lipo_if._C: registers torch.ops.lipo_if.*


def backend() -> str:
    """Which kernels the influence code uses: ``"cpp"``, ``"cpp+cuda"`` or ``"pytorch"`` (fallback)."""
    try:
        from . import ops
    except ImportError:
        return "pytorch"
    return ops.backend()


__all__ = [
    "DataError",
    "Run",
    "TrainConfig",
    "backend",
    "load_dataset",
    "load_lipophilicity",
    "load_run",
    "make_split",
    "read_molecule_csv",
    "train_run",
]
