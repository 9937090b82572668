"""Ensembles: M models trained on the same split from different initializations, used as one run.

An :class:`Ensemble` predicts the members' mean; retraining it (:func:`finetune`) retrains every
member; its metrics are those of the mean prediction. Member ``i`` is trained with the run's
settings and initialization seed ``seed + 1000·i`` on the split of ``seed`` (member 0 is the
single model of that seed), sharing one featurizer (fitted on the split's training part).
On disk an ensemble is a directory with ``ensemble.json``, ``metrics.json`` and one run directory
per member (``member_<i>/``); :func:`lipo_if.rundir.load_run` loads either kind.

Influence on an ensemble (:class:`lipo_if.influence.Influence` given an Ensemble) scores every
molecule with every member and reports the mean score and its standard error across members.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DataError, MoleculeDataset, Split, make_split
from .featurize import FeaturizerConfig
from .io import atomic_write_json
from .pool import Molecules
from .train import FinetuneConfig, Run, TrainConfig, finetune_run, load_single_run, predict_tensor, regression_metrics, train_run

#: initialization seed of member i: the run's seed + MEMBER_SEED_STRIDE·i
MEMBER_SEED_STRIDE = 1000
ENSEMBLE_FILE = "ensemble.json"


class Ensemble:
    """M trained :class:`~lipo_if.train.Run` members on one split; the data side is member 0's."""

    def __init__(self, members: Sequence[Run], run_dir: Path | None = None) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        if any(m.split != members[0].split for m in members):
            raise ValueError("ensemble members must share one split")
        self.members, self.run_dir = list(members), run_dir
        self.metrics = self.evaluate()

    # ---- the data side (shared by every member)
    @property
    def split(self) -> Split:
        return self.members[0].split

    @property
    def config(self) -> TrainConfig:
        return self.members[0].config

    @property
    def featurizer(self):
        return self.members[0].featurizer

    @property
    def data_path(self) -> str:
        return self.members[0].data_path

    def tensors(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.members[0].tensors(part)

    def keys(self, part: str) -> list[str]:
        return self.members[0].keys(part)

    def split_keys(self) -> dict[str, set[str]]:
        return self.members[0].split_keys()

    # ---- predictions
    def predict_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Mean of the members' predictions ``[n]`` (logD) for model inputs ``x`` ``[n, d]``."""
        return np.mean([predict_tensor(m.model, x) for m in self.members], axis=0)

    def predict(self, smiles: Sequence[str]) -> np.ndarray:
        return np.mean([m.predict(smiles) for m in self.members], axis=0)

    def evaluate(self) -> dict:
        """Metrics of the mean prediction on validation and test, and each member's test RMSE."""
        out: dict = {}
        for part in ("val", "test"):
            x, y = self.tensors(part)
            for name, value in regression_metrics(y.numpy(), self.predict_tensor(x)).items():
                out[f"{part}_{name}"] = value
        out["members"] = len(self.members)
        out["member_test_rmse"] = [m.metrics.get("test_rmse") for m in self.members]
        for key in ("n_train", "n_val", "n_test", "split", "featurizer", "n_features", "n_added", "mode", "n_extra_given",
                    "extra_dropped"):
            if key in self.members[0].metrics:
                out[key] = self.members[0].metrics[key]
        if all("best_epoch" in m.metrics for m in self.members):
            out["best_epoch"] = float(np.mean([m.metrics["best_epoch"] for m in self.members]))
        return out

    # ---- persistence
    def save(self, run_dir: str | os.PathLike) -> Path:
        run_dir = Path(run_dir)
        for i, member in enumerate(self.members):
            member.save(run_dir / f"member_{i}")
        atomic_write_json(run_dir / ENSEMBLE_FILE, {"format": 1, "members": [f"member_{i}" for i in range(len(self.members))]})
        atomic_write_json(run_dir / "metrics.json", self.metrics)
        self.run_dir = run_dir
        return run_dir


def is_ensemble_dir(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).exists()


def load_ensemble(run_dir: str | os.PathLike, data_path: str | os.PathLike | None = None) -> Ensemble:
    run_dir = Path(run_dir)
    try:
        names = json.loads((run_dir / ENSEMBLE_FILE).read_text())["members"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{run_dir}: unreadable {ENSEMBLE_FILE} ({exc})") from None
    members = [load_single_run(run_dir / name, data_path=data_path) for name in names]
    dataset = members[0].dataset  # loaded (and checked) once, shared
    for m in members[1:]:
        m._dataset = dataset
        m.featurizer = members[0].featurizer
    return Ensemble(members, run_dir)


def member_config(config: TrainConfig, i: int) -> TrainConfig:
    """The training settings of member ``i`` (its initialization seed)."""
    return replace(config, seed=config.seed + MEMBER_SEED_STRIDE * i)


def train_ensemble(dataset: MoleculeDataset, data_path: str, config: TrainConfig, members: int,
                   featurizer_config: FeaturizerConfig | None = None, split: Split | None = None,
                   progress: bool = True) -> Ensemble:
    """Train ``members`` models on the split of ``config.seed`` (or ``split``), initializations differing."""
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    split = split or make_split(dataset, config.split, config.seed)
    first = train_run(dataset, data_path, config, featurizer_config, split=split, progress=progress)
    rest = [train_run(dataset, data_path, member_config(config, i), featurizer_config, split=split, progress=progress,
                      featurizer=first.featurizer)
            for i in range(1, members)]
    return Ensemble([first, *rest])


def finetune(run: Run | Ensemble, extra: Molecules, config: FinetuneConfig | None = None, progress: bool = True,
             rows: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> Run | Ensemble:
    """:func:`~lipo_if.train.finetune_run` of a run, or of every member of an ensemble (member ``i``
    with its own seed offset when ``config.seed`` is given); ``weights``: per entry of ``rows``."""
    if not isinstance(run, Ensemble):
        return finetune_run(run, extra, config, progress=progress, rows=rows, weights=weights)
    config = config or FinetuneConfig()
    members = []
    for i, member in enumerate(run.members):
        cfg = config if config.seed < 0 else replace(config, seed=config.seed + MEMBER_SEED_STRIDE * i)
        members.append(finetune_run(member, extra, cfg, progress=progress, rows=rows, weights=weights))
    return Ensemble(members)
