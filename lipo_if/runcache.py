"""Reuse or compute: trained runs and influence solves that an interrupted experiment can pick up.

A seed's original model, the fold models of cross-fitting and every influence solve are written
to their directories as they finish; run again with the same settings, the experiment loads them
instead of training or solving again. A saved thing is reused only when it was made with the same
settings on the same data (runs: training config, featurizer config, split, data fingerprint;
influence: every setting that determines ``s`` and the fingerprint of the model's parameters).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .data import MoleculeDataset, Split
from .distributed import current
from .ensemble import Ensemble, train_ensemble
from .featurize import FeaturizerConfig
from .influence.api import SAVED_SETTINGS, Influence, InfluenceConfig
from .rundir import load_run
from .train import Run, TrainConfig, train_run

log = logging.getLogger(__name__)


def trained_run(dataset: MoleculeDataset, data_path: str, run_dir: Path, train_config: TrainConfig,
                featurizer_config: FeaturizerConfig | None, split: Split | None = None, progress: bool = True,
                members: int = 1) -> Run | Ensemble:
    """Train a run — an ensemble of ``members`` when > 1 — (on ``split``, else the config's seeded
    split) and save it to ``run_dir``, or load ``run_dir`` when it holds one trained with the same
    settings on the same data and split."""
    if (run_dir / "model.pt").exists() or (run_dir / "ensemble.json").exists():
        previous = load_run(run_dir, data_path=data_path)
        same_kind = (len(previous.members) if isinstance(previous, Ensemble) else 1) == members
        same_features = featurizer_config is None or previous.featurizer.config == featurizer_config
        same_split = split is None or (previous.split.train == split.train and previous.split.val == split.val)
        if (same_kind and asdict(previous.config) == asdict(train_config) and same_features and same_split
                and previous.split.data_fingerprint == dataset.fingerprint()):
            for member in previous.members if isinstance(previous, Ensemble) else [previous]:
                member._dataset = dataset
            log.info("reusing the run in %s", run_dir)
            return previous
    run = (train_ensemble(dataset, data_path, train_config, members, featurizer_config, split=split, progress=progress)
           if members > 1 else train_run(dataset, data_path, train_config, featurizer_config, split=split, progress=progress))
    run.save(run_dir)
    return run


def fitted_influence(run: Run | Ensemble, config: InfluenceConfig, directory: Path | None) -> Influence:
    """``Influence(run, config=config)`` loaded from ``directory`` when it holds the same settings for
    the same model, else fitted (and saved there when ``directory`` is given).

    Under torchrun every rank calls this: the solve is collective, so the ranks load only when every
    one of them can, else all fit together, and rank 0 alone saves."""
    world = current()
    inf = None
    if directory is not None and (directory / SAVED_SETTINGS).exists():
        try:
            inf = Influence.load(directory, run, config)
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
            log.info("not reusing %s (%s)", directory, exc)
    if world.all_true(inf is not None):
        log.info("reusing the influence solve in %s", directory)
        return inf
    inf = Influence(run, config=config).fit()
    if directory is not None and world.is_main:
        inf.save(directory)
    world.barrier()  # saved before any rank may look for it again
    return inf


def config_hash(*configs: Any) -> str:
    """Hash of the settings a seed's results depend on (not how many seeds there are)."""
    dicts = [asdict(c) if c is not None else None for c in configs]
    for d in dicts:
        if d is not None:
            for key in ("seeds", "first_seed"):
                d.pop(key, None)
    text = json.dumps(dicts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
