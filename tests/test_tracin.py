"""TracIn-CP (lipo_if.influence.tracin) against explicit per-sample gradients at the checkpoints."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lipo_if import Influence, load_run
from lipo_if.data import load_dataset
from lipo_if.influence.hvp import HessianOperator
from lipo_if.influence.scores import per_sample_grads
from lipo_if.pool import Pool
from lipo_if.train import TrainConfig, train_run

from test_experiment import FEATURES, TINY, tiny_data  # noqa: F401 — the fixture


def test_tracin_is_the_sum_over_checkpoints_of_gradient_dots(tiny_data, tmp_path):  # noqa: F811
    lipo, external = tiny_data
    run = train_run(load_dataset(lipo), str(lipo), TrainConfig(seed=0, checkpoint_every=4, **TINY), FEATURES, progress=False)
    assert len(run.checkpoints) >= 2 and all(c.epoch <= run.metrics["best_epoch"] for c in run.checkpoints)
    pool = Pool.read(external)
    inf = Influence(run, scorer="tracin", progress=False).fit()
    table = inf.scores(pool)
    rows = table.loc[table["excluded"] == "", "row"].tolist()
    X, _ = pool.rows_features(run.featurizer, rows)
    y = torch.from_numpy(pool.labels_of(rows))
    Xt, yt = run.tensors("train")
    Xv, yv = run.tensors("val")
    expected = torch.zeros(len(rows), dtype=torch.float64)
    previous = 0
    for ckpt in run.checkpoints:
        model = copy.deepcopy(run.model)
        model.load_state_dict(ckpt.state_dict)
        op = HessianOperator(model, Xt, yt, run.config.weight_decay)
        v = op.gradient(Xv, yv)
        expected -= ckpt.lr * (ckpt.epoch - previous) * (per_sample_grads(op, X, y) @ v)  # materialized: the reference
        previous = ckpt.epoch
    np.testing.assert_allclose(table.loc[table["excluded"] == "", "score"], expected.numpy(), rtol=1e-9, atol=1e-15)
    # saved with the run and with the influence object; reloaded, the same scores
    run.save(tmp_path / "run")
    again = load_run(tmp_path / "run")
    assert [c.epoch for c in again.checkpoints] == [c.epoch for c in run.checkpoints]
    inf.save(tmp_path / "inf")
    np.testing.assert_allclose(Influence.load(tmp_path / "inf", again).scores(pool)["score"], table["score"], rtol=1e-12)
    with pytest.raises(ValueError, match="checkpoint-every"):
        Influence(train_run(load_dataset(lipo), str(lipo), TrainConfig(seed=0, **TINY), FEATURES, progress=False),
                  scorer="tracin", progress=False).fit()
