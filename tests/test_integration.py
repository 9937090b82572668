"""Integration: the baseline on the real Lipophilicity file (skips when the file is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import real_data_dir
from lipo_if.data import load_lipophilicity
from lipo_if.train import TrainConfig, train_run

DATA = real_data_dir()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(DATA is None, reason="real data not found (set LIPO_IF_DATA)")]


@pytest.fixture(scope="module")
def real_run():
    dataset = load_lipophilicity(data_dir=DATA)
    run = train_run(dataset, str(DATA / "lipophilicity.csv"), TrainConfig(seed=0, max_epochs=6, min_epochs=6, patience=6), progress=False)
    return dataset, run


def test_real_data_loads_as_documented(real_run):
    dataset, run = real_run
    assert dataset.report["n_rows"] == 4200 and dataset.report["n_invalid"] == 0
    # 4200 rows, 4102 stereo-insensitive structures (SOURCES.md)
    assert len(dataset) == 4102
    assert run.metrics["n_train"] + run.metrics["n_val"] + run.metrics["n_test"] == 4102


def test_few_epochs_beat_the_training_mean(real_run):
    _, run = real_run
    y_train = run.labels("train")
    y_test = run.labels("test")
    mean_rmse = float(np.sqrt(np.mean((y_test - y_train.mean()) ** 2)))
    assert run.metrics["test_rmse"] < 0.9 * mean_rmse
    assert run.metrics["test_r2"] > 0.3
