"""Ensembles as first-class runs, and influence over their members (lipo_if.ensemble, Influence on an Ensemble)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipo_if import Influence, load_run
from lipo_if.data import load_dataset
from lipo_if.ensemble import Ensemble, finetune, train_ensemble
from lipo_if.pool import Pool
from lipo_if.train import FinetuneConfig, TrainConfig

from test_experiment import FEATURES, TINY, tiny_data  # noqa: F401 — the fixture


@pytest.fixture
def tiny_ensemble(tiny_data):  # noqa: F811
    lipo, _ = tiny_data
    return train_ensemble(load_dataset(lipo), str(lipo), TrainConfig(seed=0, **TINY), 3, FEATURES, progress=False)


def test_members_share_the_split_and_differ_in_initialization(tiny_ensemble):
    a, b, c = tiny_ensemble.members
    assert a.split == b.split == c.split and b.featurizer is a.featurizer
    assert not torch.equal(a.model.layers[0].weight, b.model.layers[0].weight)
    assert [m.config.seed for m in tiny_ensemble.members] == [0, 1000, 2000]


def test_the_ensemble_predicts_the_members_mean_and_reports_its_metrics(tiny_ensemble):
    x, y = tiny_ensemble.tensors("test")
    with torch.no_grad():
        mean = np.mean([m.model(x).double().numpy() for m in tiny_ensemble.members], axis=0)
    np.testing.assert_allclose(tiny_ensemble.predict_tensor(x), mean, rtol=1e-12)
    rmse = float(np.sqrt(np.mean((mean - y.double().numpy()) ** 2)))
    assert tiny_ensemble.metrics["test_rmse"] == pytest.approx(rmse, rel=1e-9)
    assert tiny_ensemble.metrics["member_test_rmse"] == [m.metrics["test_rmse"] for m in tiny_ensemble.members]


def test_saved_and_loaded_like_a_run(tiny_ensemble, tmp_path):
    tiny_ensemble.save(tmp_path / "ens")
    loaded = load_run(tmp_path / "ens")
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 3
    smiles = ["CCO", "c1ccccc1O"]
    np.testing.assert_allclose(loaded.predict(smiles), tiny_ensemble.predict(smiles), rtol=1e-6)
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["test_rmse"] == pytest.approx(tiny_ensemble.metrics["test_rmse"])


def test_retraining_an_ensemble_retrains_every_member(tiny_ensemble, tiny_data):  # noqa: F811
    _, external = tiny_data
    new = finetune(tiny_ensemble, external, FinetuneConfig(finetune_epochs=2), progress=False)
    assert isinstance(new, Ensemble) and len(new.members) == 3
    assert all(m.metrics["n_added"] == 16 for m in new.members) and new.metrics["n_added"] == 16
    for old, m in zip(tiny_ensemble.members, new.members):
        assert not torch.equal(old.model.layers[0].weight, m.model.layers[0].weight)


def test_ensemble_influence_is_the_members_mean_with_its_standard_error(tiny_ensemble, tiny_data, tmp_path):  # noqa: F811
    _, external = tiny_data
    pool = Pool.read(external)
    settings = dict(solver="cg", damping=0.1, tol=1e-10, min_similarity=0.0, progress=False)  # (domain: tests of its own)
    inf = Influence(tiny_ensemble, **settings).fit()
    table = inf.scores(pool)
    each = np.stack([Influence(m, **settings).fit().scores(pool)["score"].to_numpy() for m in tiny_ensemble.members])
    ok = np.isfinite(each[0])
    np.testing.assert_allclose(table["score"].to_numpy()[ok], each.mean(0)[ok], rtol=1e-9)
    np.testing.assert_allclose(table["score_se"].to_numpy()[ok], each.std(0, ddof=1)[ok] / np.sqrt(3), rtol=1e-9)
    np.testing.assert_allclose(table["score_ucb"].to_numpy()[ok], (each.mean(0) + 1.645 * each.std(0, ddof=1) / np.sqrt(3))[ok], rtol=1e-9)
    x, _ = pool.rows_features(tiny_ensemble.featurizer, table.loc[table["prediction"].notna(), "row"])
    np.testing.assert_allclose(table["prediction"].dropna(), tiny_ensemble.predict_tensor(x), rtol=1e-6)
    inf.save(tmp_path / "inf")
    again = Influence.load(tmp_path / "inf", tiny_ensemble)
    np.testing.assert_allclose(again.scores(pool)["score"].to_numpy()[ok], table["score"].to_numpy()[ok], rtol=1e-12)
    group = inf.group_model(table, pool)
    assert group.interactions.shape == (ok.sum(), ok.sum()) and np.allclose(group.interactions, group.interactions.T)


def test_train_cli_writes_an_ensemble_that_influence_scores(tiny_data, tmp_path, capsys):  # noqa: F811
    from lipo_if.cli import main

    lipo, external = tiny_data
    out = tmp_path / "ens"
    argv = ["-q", "train", "--data", str(lipo), "--out", str(out), "--ensemble", "2", "--hidden", "16", "--max-epochs", "10",
            "--featurizer", "morgan_count", "--n-bits", "128"]
    assert main(argv) == 0 and "ensemble of 2" in capsys.readouterr().out
    assert main(["-q", "influence", "--run", str(out), "--external", str(external), "--out", str(tmp_path / "s.csv"),
                 "--solver", "cg"]) == 0
    import pandas as pd

    written = pd.read_csv(tmp_path / "s.csv")
    assert {"score", "excluded"} <= set(written.columns) and written["score"].notna().sum() == 16


def test_an_ensemble_weighs_a_pool_by_its_members_mean(tiny_ensemble, tiny_data):  # noqa: F811
    """weigh_pool on an ensemble: the residuals are the members' mean's, the judges are fine-tuned
    ensembles; the fixture's +9 label gets the smallest positive weight, excluded rows 0."""
    import pandas as pd

    from lipo_if.suspicion import weigh_pool

    from test_experiment import WRONG_ROW

    _, external = tiny_data
    table = weigh_pool(tiny_ensemble, Pool.read(external), FinetuneConfig(finetune_epochs=2, seed=0))
    positive = table[table["weight"] > 0]
    assert int(positive.sort_values("weight")["row"].iloc[0]) == WRONG_ROW
    assert (table.loc[table["excluded"] != "", "weight"] == 0).all()
    members = np.mean([m.predict(positive["smiles_standardized"].tolist()) for m in tiny_ensemble.members], axis=0)
    np.testing.assert_allclose(positive["prediction"].to_numpy(dtype=float), members, rtol=1e-5, atol=1e-6)
    assert isinstance(table, pd.DataFrame) and table.attrs["mixture"]["folds"] == 2
