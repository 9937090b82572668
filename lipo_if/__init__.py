"""lipo_if — influence-function (LiSSA) data selection for lipophilicity models.

Quick start::

    import lipo_if
    run = lipo_if.load_run("runs/baseline")      # model, featurizer, split
    run.predict(["CCO", "c1ccccc1O"])             # logD7.4 predictions
    inf = lipo_if.Influence(run, heldout="validation", hessian="gauss-newton", solver="lissa").fit()
    table = inf.scores("external.csv")            # or a DataFrame, (smiles, labels), or a Pool
    lipo_if.score_file(inf, "pool.csv.gz", "scores.csv", lipo_if.StreamConfig(prefilter=5))  # any size, resumable

Importing the package registers the compiled operators ``torch.ops.lipo_if.*`` (:mod:`lipo_if.ops`).
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # noqa: E402 — registers torch.ops.lipo_if.*
from .data import DataError, load_dataset, load_lipophilicity, make_split, read_molecule_csv  # noqa: E402
from .influence import Influence, InfluenceConfig  # noqa: E402
from .pool import Pool  # noqa: E402
from .ensemble import Ensemble, finetune, train_ensemble  # noqa: E402
from .rundir import load_run  # noqa: E402
from .stream import StreamConfig, score_file  # noqa: E402
from .train import Run, TrainConfig, finetune_run, train_run  # noqa: E402


def backend() -> str:
    """Which kernels the influence code uses: ``"cpp"``, ``"cpp+cuda"`` or ``"pytorch"`` (fallback)."""
    return ops.backend()


__all__ = [
    "DataError",
    "Ensemble",
    "finetune",
    "train_ensemble",
    "Influence",
    "InfluenceConfig",
    "Pool",
    "finetune_run",
    "Run",
    "TrainConfig",
    "backend",
    "load_dataset",
    "load_lipophilicity",
    "load_run",
    "make_split",
    "read_molecule_csv",
    "score_file",
    "StreamConfig",
    "train_run",
]
