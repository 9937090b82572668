"""Model, training loop, metrics, run directories (lipo_if.model, lipo_if.train)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lipo_if.data import DataError, load_dataset
from lipo_if.featurize import FeaturizerConfig
from lipo_if.model import ModelConfig, build_model, l2_penalty, objective
from lipo_if.train import TrainConfig, regression_metrics, train_run
from lipo_if.rundir import load_run

FAST = dict(hidden=(32, 16), max_epochs=60, patience=15, batch_size=16, lr=3e-3)


def test_objective_includes_l2_term():
    torch.manual_seed(0)
    model = build_model(ModelConfig(5, (4,)), seed=0)
    x, y = torch.randn(7, 5), torch.randn(7)
    mse = torch.mean((model(x) - y) ** 2)
    theta_sq = sum((p ** 2).sum() for p in model.parameters())
    assert objective(model, x, y, 0.1).item() == pytest.approx((mse + 0.05 * theta_sq).item(), rel=1e-6)
    assert l2_penalty(model, 0.0).item() == 0.0


def test_model_shapes_and_seeded_init():
    a, b = build_model(ModelConfig(10, (8, 4)), seed=3), build_model(ModelConfig(10, (8, 4)), seed=3)
    assert [tuple(l.weight.shape) for l in a.layers] == [(8, 10), (4, 8), (1, 4)]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert build_model(ModelConfig(10, ()), seed=0, init_bias=2.5).layers[0].bias.item() == 2.5
    with pytest.raises(ValueError, match="hidden widths must be positive"):
        ModelConfig(10, (0,))


def test_metrics_match_definitions():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 5.0])
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_bad_train_config():
    with pytest.raises(ValueError, match="split must be 'random' or 'scaffold'"):
        TrainConfig(split="time")
    with pytest.raises(ValueError, match="lr must be positive"):
        TrainConfig(lr=0)


@pytest.fixture
def trained(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    run = train_run(ds, str(small_lipo_csv), TrainConfig(seed=1, **FAST), FeaturizerConfig("morgan_count+rdkit2d", n_bits=256), progress=False)
    return ds, run


def test_train_is_deterministic_and_learns(small_lipo_csv, trained):
    ds, run = trained
    again = train_run(ds, str(small_lipo_csv), TrainConfig(seed=1, **FAST), FeaturizerConfig("morgan_count+rdkit2d", n_bits=256), progress=False)
    assert run.metrics["test_rmse"] == pytest.approx(again.metrics["test_rmse"], rel=1e-6)
    # the recorded metrics are the model's: recomputed from its predictions by the definitions
    for part in ("val", "test"):
        x, y = run.tensors(part)
        with torch.no_grad():
            err = (run.model(x).double() - y.double()).numpy()
        assert run.metrics[f"{part}_rmse"] == pytest.approx(float(np.sqrt(np.mean(err ** 2))), rel=1e-6)
        assert run.metrics[f"{part}_mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-6)
    x, y = run.tensors("test")
    assert run.metrics["test_r2"] == pytest.approx(1 - np.sum(err ** 2) / np.sum((y.double().numpy() - y.double().numpy().mean()) ** 2), rel=1e-6)
    assert (run.metrics["n_train"], run.metrics["n_val"], run.metrics["n_test"]) == (len(run.split.train), len(run.split.val), len(run.split.test))
    assert run.metrics["seed"] == 1 and run.metrics["split"] == "random" and run.metrics["final_objective_grad_norm"] > 0
    # better than the mean predictor on the training data it saw
    assert run.metrics["train_rmse"] < float(np.std(run.labels("train")))


def test_save_load_roundtrip(tmp_path, trained):
    _, run = trained
    run.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"model.pt", "split.json", "metrics.json"}
    loaded = load_run(tmp_path / "run")
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]
    np.testing.assert_allclose(loaded.predict(smiles), run.predict(smiles), rtol=1e-6)
    assert loaded.split == run.split and loaded.config == run.config
    assert loaded.evaluate()["test_rmse"] == pytest.approx(run.metrics["test_rmse"], rel=1e-5)
    x, y = loaded.tensors("val")
    assert x.shape == (len(run.split.val), run.featurizer.dim) and y.dtype == torch.float32
    assert loaded.keys("test") == [run.dataset.keys[i] for i in run.split.test]
    with pytest.raises(DataError, match="SMILES 'C1CC': invalid SMILES"):
        loaded.predict(["C1CC"])


def test_load_run_checks_the_data(tmp_path, trained):
    _, run = trained
    run.save(tmp_path / "run")
    other = tmp_path / "other.csv"
    other.write_text("smiles,exp\nCCO,1\nCCN,2\n")
    with pytest.raises(DataError, match="differ from those the run was trained on"):
        load_run(tmp_path / "run", data_path=other).tensors("train")
    with pytest.raises(DataError, match="not a run directory"):
        load_run(tmp_path)
