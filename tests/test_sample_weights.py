"""Weighted fine-tuning (a pool row's weight in the squared error) and the clean-label mixture
whose posterior supplies the weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lipo_if.model import ModelConfig, build_model, objective
from lipo_if.suspicion import clean_probability
from lipo_if.train import FinetuneConfig, finetune_run

from test_experiment import WRONG_ROW, tiny_data, tiny_run  # noqa: F401 — fixtures


def test_weighted_objective_gradient_is_the_weighted_sum_of_per_row_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(7, hidden=(5,)), seed=0).double()
    x, y = torch.randn(11, 7, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    w = torch.rand(11, dtype=torch.float64)
    w[3] = 0.0
    params = list(model.parameters())
    got = torch.autograd.grad(objective(model, x, y, 0.01, w), params)
    want = [torch.zeros_like(p) for p in params]
    for i in range(11):  # (1/B) Σ wᵢ ∇(f(xᵢ) − yᵢ)², the L2 term once
        g = torch.autograd.grad((model(x[i : i + 1]) - y[i : i + 1]).pow(2).sum(), params)
        want = [a + w[i] * b / 11 for a, b in zip(want, g)]
    want = [a + 0.01 * p for a, p in zip(want, params)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    plain = torch.autograd.grad(objective(model, x, y, 0.01), params)
    ones = torch.autograd.grad(objective(model, x, y, 0.01, torch.ones(11, dtype=torch.float64)), params)
    for a, b in zip(plain, ones):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_finetune_weights_one_match_no_weights_and_a_zero_weight_row_is_not_learnt(tiny_run):  # noqa: F811
    config = FinetuneConfig(finetune_epochs=4, finetune_patience=4, early_stopping=False, finetune_lr=3e-3)
    extra = (["CCCCCCCCCCCCCCCCO", "c1ccccc1CCCCCCN", "OC(=O)CCCCCCCC"], [9.0, 1.0, 2.0])
    plain = finetune_run(tiny_run, extra, config, progress=False)
    ones = finetune_run(tiny_run, extra, config, progress=False, weights=[1.0, 1.0, 1.0])
    assert ones.metrics["val_rmse"] == plain.metrics["val_rmse"]
    preds = {}
    for name, weights in (("learnt", [1.0, 1.0, 1.0]), ("ignored", [0.0, 1.0, 1.0])):
        run = finetune_run(tiny_run, (extra[0], [9.0, 1.0, 2.0]), config, progress=False, weights=weights)
        assert run.metrics["n_added"] == 3
        preds[name] = float(run.predict([extra[0][0]])[0])
    base = float(tiny_run.predict([extra[0][0]])[0])
    # a label of 9 logD pulls the prediction up when it counts, and not at all at weight 0
    assert preds["learnt"] > base + 0.5 and abs(preds["ignored"] - base) < abs(preds["learnt"] - base) / 5
    with pytest.raises(ValueError, match="weights must be one finite value ≥ 0 per row"):
        finetune_run(tiny_run, extra, config, progress=False, weights=[1.0, -0.5, 1.0])
    with pytest.raises(ValueError, match="per row \\(3\\)"):
        finetune_run(tiny_run, extra, config, progress=False, weights=[1.0])


def test_clean_probability_recovers_a_known_mixture_and_ranks_by_the_residual():
    rng = np.random.default_rng(3)
    n, wrong = 4000, 0.3
    is_wrong = rng.random(n) < wrong
    z = np.where(is_wrong, rng.normal(0, 3.5, n), rng.normal(0, 1.1, n))
    z[5] = np.nan
    p, info = clean_probability(z)
    assert np.isnan(p[5]) and np.all((p[np.isfinite(z)] >= 0) & (p[np.isfinite(z)] <= 1))
    assert info["wrong_fraction"] == pytest.approx(wrong, abs=0.04)
    assert info["sigma_clean"] == pytest.approx(1.1, abs=0.08) and info["sigma_wrong"] == pytest.approx(3.5, abs=0.3)
    ok = np.isfinite(z)
    order = np.argsort(np.abs(z[ok]))
    assert np.all(np.diff(p[ok][order]) <= 1e-12)  # farther from 0 → never more likely clean
    # the posterior against the truth: Bayes' rule with the generating parameters
    def bayes(x):
        c = (1 - wrong) * np.exp(-0.5 * (x / 1.1) ** 2) / 1.1
        w_ = wrong * np.exp(-0.5 * (x / 3.5) ** 2) / 3.5
        return c / (c + w_)
    assert np.max(np.abs(p[ok] - bayes(z[ok]))) < 0.08
    clean_only, info0 = clean_probability(rng.normal(0, 1.0, 500))
    # one normal: the scale mixture is not identified, but nearly every row stays likely clean
    assert np.mean(clean_only) > 0.85 and np.mean(clean_only > 0.5) > 0.95


def test_a_clean_reference_holds_the_clean_component_fixed():
    """With clean_reference, the clean density is a t fitted to it and only π and σ_w are fitted:
    on a pool of clean t-distributed residuals and 30 % wide wrong ones, the heavy-tailed clean rows
    at |z| 2–3 keep more weight than under the fitted normal, and the wrong rows are still ranked last."""
    rng = np.random.default_rng(3)
    reference = rng.standard_t(5, 2000)
    clean = rng.standard_t(5, 700)
    wrong = rng.normal(0, 4.0, 300)
    z = np.concatenate([clean, wrong])
    p_t, info_t = clean_probability(z, clean_reference=reference)
    p_n, info_n = clean_probability(z)
    assert info_t["clean"] == "t (validation)" and 3 < info_t["t_df"] < 9 and info_n["clean"] == "normal"
    assert abs(info_t["wrong_fraction"] - 0.3) < abs(info_n["wrong_fraction"] - 0.3)
    shoulder = (np.abs(z) > 2) & (np.abs(z) < 3) & (np.arange(z.size) < 700)
    assert p_t[shoulder].mean() > p_n[shoulder].mean()
    from sklearn.metrics import roc_auc_score
    truth = np.r_[np.zeros(700), np.ones(300)]
    assert roc_auc_score(truth, -p_t) > 0.8


def test_finetune_weighted_cli_weighs_the_pool_and_fine_tunes_with_the_weights(tiny_data, tiny_run, tmp_path):  # noqa: F811
    """`lipo-if finetune --weighted`: weights.csv holds every input row, the crafted wrong labels
    get the smallest positive weights and non-eligible rows 0; the new run is the fine-tuning with
    exactly those rows and weights (reproduced through the Python API)."""
    import json

    import pandas as pd

    from lipo_if import Pool, finetune, load_run
    from lipo_if.cli import main
    from lipo_if.train import FinetuneConfig

    _, external = tiny_data
    frame = pd.read_csv(external)
    frame.loc[8, "Label"] -= 8.0  # (WRONG_ROW's label is the fixture's +9 already)
    pool_csv = tmp_path / "pool.csv"
    frame.to_csv(pool_csv, index=False)
    tiny_run.save(tmp_path / "base")
    out = tmp_path / "weighted"
    assert main(["-q", "finetune", "--run", str(tmp_path / "base"), "--extra", str(pool_csv), "--out", str(out), "--weighted",
                 "--finetune-epochs", "2", "--seed", "0"]) == 0
    table = pd.read_csv(out / "weights.csv", keep_default_na=False)
    assert table["row"].tolist() == list(range(len(frame)))
    positive = table[table["weight"].astype(float) > 0]
    assert set(positive.sort_values("weight")["row"][:2]) == {8, WRONG_ROW}
    assert (table.loc[table["excluded"] != "", "weight"].astype(float) == 0).all() and (table["excluded"] != "").any()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_added"] == len(positive)
    base = load_run(tmp_path / "base")
    again = finetune(base, Pool.read(pool_csv), FinetuneConfig(finetune_epochs=2, seed=0), progress=False,
                     rows=positive["row"].tolist(), weights=positive["weight"].astype(float).tolist())
    assert again.metrics["test_rmse"] == pytest.approx(metrics["test_rmse"], rel=1e-6)
