"""Self-influence against direct solves, the wrong-label detectors on a crafted pool, ``lipo-if inspect``,
the scenarios' construction and ``lipo-if benchmark`` end to end on tiny data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lipo_if import Influence
from lipo_if.influence.function_space import FunctionSpaceSolver
from lipo_if.influence.hvp import HessianOperator, dense_hessian
from lipo_if.influence.mlp import MLP
from lipo_if.influence.scores import per_sample_grads
from lipo_if.influence.self_influence import self_influence
from lipo_if.scenarios import corrupt
from lipo_if.suspicion import inspect, refit_residual_z, robust_z, suspicion_table

from test_experiment import WRONG_ROW, tiny_data, tiny_run  # noqa: F401 — fixtures


def test_self_influence_equals_direct_solves(tiny_run):  # noqa: F811
    """SI(z) = ∇ℓ(z)ᵀ(H + μI)⁻¹∇ℓ(z) with the dense Gauss–Newton matrix of the whole tiny network,
    for training rows and new rows alike."""
    mu = 0.05
    X, y = tiny_run.tensors("train")
    op = HessianOperator(tiny_run.model, X, y, tiny_run.config.weight_decay, kind="gauss-newton")
    A = dense_hessian(op) + mu * torch.eye(op.n_params, dtype=op.dtype)
    Xv, yv = tiny_run.tensors("val")
    Z, t = torch.cat([X[:7], Xv[:5]]), torch.cat([y[:7], yv[:5] + 1.5])
    G = per_sample_grads(op, Z, t)  # [12, p]
    exact = (G * torch.linalg.solve(A, G.T).T).sum(1)
    mlp = MLP.from_model(tiny_run.model)
    fs = FunctionSpaceSolver(mlp, X, tiny_run.config.weight_decay, mu)
    si, lev, residual = self_influence(fs, mlp, Z, t, chunk_size=5)  # chunks cross the 7/5 boundary
    np.testing.assert_allclose(si.numpy(), exact.numpy(), rtol=1e-7)
    np.testing.assert_allclose(residual.numpy(), (op.predict(op.theta, Z.double()) - t.double()).detach().numpy(), rtol=1e-9)
    assert (lev > 0).all()


def test_the_detector_ranks_the_crafted_wrong_labels_first(tiny_run, tiny_data, tmp_path):  # noqa: F811
    """Three external labels made wrong by ±8 and +9 log units (row 5 is the fixture's +9; all inside the plausible logD range): the
    suspicion ranks exactly those first, and `lipo-if inspect` writes it with its evidence."""
    from lipo_if.cli import main

    _, external = tiny_data
    frame = pd.read_csv(external)
    frame.loc[7, "Label"] += 8.0
    frame.loc[8, "Label"] -= 8.0
    frame.loc[1, "Label"] = 3.0  # cholesterol (Crippen 7.4) is beyond this 48-molecule model (it predicts 0.0): a hard, not a wrong, label
    crafted = tmp_path / "crafted.csv"
    frame.to_csv(crafted, index=False)
    table = inspect(tiny_run, crafted, damping=0.1)
    top = table.dropna(subset=["suspicion"]).nlargest(3, "suspicion")["row"].tolist()
    assert sorted(top) == sorted([7, 8, WRONG_ROW])
    assert table.loc[table["excluded"] != "", "suspicion"].isna().all()
    tiny_run.save(tmp_path / "run")
    out = tmp_path / "inspect.csv"
    assert main(["-q", "inspect", "--run", str(tmp_path / "run"), "--external", str(crafted), "--out", str(out),
                 "--damping", "0.1", "--training-out", str(tmp_path / "train.csv")]) == 0
    written = pd.read_csv(out)
    assert list(written.columns[:4]) == ["row", "smiles", "label", "suspicion"]
    np.testing.assert_allclose(written["suspicion"], table["suspicion"], rtol=1e-5)
    trained = pd.read_csv(tmp_path / "train.csv")
    assert len(trained) == len(tiny_run.split.train) and trained["suspicion"].notna().all()


def test_suspicion_of_a_table_is_the_residual_in_validation_spreads(tiny_run, tiny_data):  # noqa: F811
    _, external = tiny_data
    inf = Influence(tiny_run, solver="function-space", damping=0.1, progress=False).fit()
    table = suspicion_table(inf, external)
    x, y = tiny_run.tensors("val")
    with torch.no_grad():
        r_val = (tiny_run.model(x).double() - y.double()).numpy()
    spread = 1.4826 * np.median(np.abs(r_val - np.median(r_val)))
    ok = table["excluded"] == ""
    r = table.loc[ok, "residual"].to_numpy()
    np.testing.assert_allclose(table.loc[ok, "suspicion"], np.abs(r - np.median(r)) / spread, rtol=1e-9)
    np.testing.assert_allclose(robust_z(np.array([1.0, 2.0, 3.0, 10.0])), np.abs(np.array([1.0, 2.0, 3.0, 10.0]) - 2.5) / 1.4826, rtol=1e-12)


def test_refit_residual_is_cross_fitted_and_ranks_the_crafted_wrong_labels_first(tiny_run, tiny_data):  # noqa: F811
    """The refit detector: each fold is judged by a model fine-tuned on the *other* folds' trusted
    rows (recomputed here independently), in validation spreads; the ±8 / +9 labels come first."""
    from lipo_if.ensemble import finetune
    from lipo_if.pool import Pool
    from lipo_if.train import FinetuneConfig, predict_tensor

    _, external = tiny_data
    frame = pd.read_csv(external)
    frame.loc[7, "Label"] += 8.0
    frame.loc[8, "Label"] -= 8.0
    frame.loc[1, "Label"] = 3.0  # cholesterol (Crippen 7.4) is beyond this 48-molecule model (it predicts 0.0): a hard, not a wrong, label
    pool = Pool.from_frame(frame)
    rows = [int(r) for r in pool.table.loc[pool.valid, "row"]]
    kept = [r for r in rows if r not in (7, 8, WRONG_ROW)]
    config = FinetuneConfig(finetune_epochs=2, seed=0)
    z = refit_residual_z(tiny_run, pool, rows, kept, config, folds=2, seed=3)
    assert sorted(np.asarray(rows)[np.argsort(-z)[:3]].tolist()) == sorted([7, 8, WRONG_ROW])
    fold_of = np.random.default_rng(3).permutation(len(rows)) % 2
    residual, spread = np.empty(len(rows)), np.empty(len(rows))
    for f in (0, 1):
        judged = fold_of == f
        model = finetune(tiny_run, pool, config, progress=False, rows=[r for r, g in zip(rows, fold_of) if g != f and r in kept])
        x, y = pool.rows_features(tiny_run.featurizer, [r for r, j in zip(rows, judged) if j])
        residual[judged] = predict_tensor(model.model, x) - y.double().numpy()
        xv, yv = model.tensors("val")
        rv = predict_tensor(model.model, xv) - yv.double().numpy()
        spread[judged] = 1.4826 * np.median(np.abs(rv - np.median(rv)))
    np.testing.assert_allclose(z, np.abs(residual - np.median(residual)) / spread, rtol=1e-9)
    with pytest.raises(ValueError, match="folds"):
        refit_residual_z(tiny_run, pool, rows, kept, config, folds=1)


def test_cross_fitted_weights_judge_each_row_by_models_that_did_not_see_it(tiny_run, tiny_data):  # noqa: F811
    """cross_fitted_clean_weights: the first weights (base model's residuals), then each fold judged
    by θ̂ fine-tuned on the other fold's rows *with those weights* (recomputed here independently),
    the mixture fitted again; the crafted ±8 / +9 labels get the smallest weights."""
    from lipo_if.ensemble import finetune
    from lipo_if.pool import Pool
    from lipo_if.suspicion import CLEAN_WEIGHT_POWER, clean_probability, clean_weights, cross_fitted_clean_weights
    from lipo_if.train import FinetuneConfig, predict_tensor

    _, external = tiny_data
    frame = pd.read_csv(external)
    frame.loc[7, "Label"] += 8.0
    frame.loc[8, "Label"] -= 8.0
    pool = Pool.from_frame(frame)
    inf = Influence(tiny_run, solver="function-space", damping=0.1, progress=False).fit()
    table = suspicion_table(inf, pool)
    config = FinetuneConfig(finetune_epochs=2, seed=0)
    weights = cross_fitted_clean_weights(tiny_run, pool, table, config, folds=2, seed=3)
    first = clean_weights(table.copy())
    rows = list(first)
    crafted = {7, 8, WRONG_ROW} & set(rows)  # (those the applicability domain lets through)
    assert list(weights) == rows and len(crafted) >= 2
    assert set(sorted(rows, key=weights.get)[:len(crafted)]) == crafted
    fold_of = np.random.default_rng(3).permutation(len(rows)) % 2
    residual, spread = np.empty(len(rows)), np.empty(len(rows))
    for f in (0, 1):
        judged = fold_of == f
        trusted = [r for r, g in zip(rows, fold_of) if g != f]
        model = finetune(tiny_run, pool, config, progress=False, rows=trusted, weights=[first[r] for r in trusted])
        x, y = pool.rows_features(tiny_run.featurizer, [r for r, j in zip(rows, judged) if j])
        residual[judged] = predict_tensor(model.model, x) - y.double().numpy()
        xv, yv = model.tensors("val")
        rv = predict_tensor(model.model, xv) - yv.double().numpy()
        spread[judged] = 1.4826 * np.median(np.abs(rv - np.median(rv)))
    expected, _ = clean_probability(np.abs(residual - np.median(residual)) / spread)
    np.testing.assert_allclose([weights[r] for r in rows], expected ** CLEAN_WEIGHT_POWER, rtol=1e-9, atol=1e-12)
    assert table.attrs["mixture"]["folds"] == 2 and "first" in table.attrs["mixture"]


def test_clean_weights_are_the_mixture_probability_to_the_power():
    """clean_weights = clean_probability(z)^τ over the eligible rows (τ = 1: the probability itself;
    √ lifts a borderline row more than a clear one and leaves the order unchanged); τ outside (0, 1]
    is refused with its value named."""
    from lipo_if.suspicion import CLEAN_WEIGHT_POWER, clean_probability, clean_weights

    rng = np.random.default_rng(5)
    z = np.concatenate([rng.normal(0, 1, 300), rng.choice([-1, 1], 60) * rng.uniform(3, 5, 60)])
    table = pd.DataFrame({"row": np.arange(len(z) + 1), "score": 0.0, "residual": 0.0,
                          "residual_z": np.append(z, np.nan), "excluded": [""] * len(z) + ["invalid SMILES"]})
    p, _ = clean_probability(z)
    for power in (1.0, 0.5, 0.25):
        weights = clean_weights(table.copy(), power=power)
        assert list(weights) == list(range(len(z)))  # the excluded row gets no weight
        np.testing.assert_allclose(list(weights.values()), p ** power, rtol=1e-12)
    half = np.array(list(clean_weights(table.copy(), power=0.5).values()))
    assert np.all(half >= p - 1e-15) and np.array_equal(np.argsort(half, kind="stable"), np.argsort(p, kind="stable"))
    assert (half[:300].mean() - p[:300].mean()) > (half[300:].mean() - p[300:].mean())  # clean rows gain the most weight
    default = clean_weights(table)
    np.testing.assert_allclose(list(default.values()), p ** CLEAN_WEIGHT_POWER, rtol=1e-12)
    assert table.attrs["mixture"]["power"] == CLEAN_WEIGHT_POWER
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=f"got {bad}"):
            clean_weights(table.copy(), power=bad)


def test_corruptions_are_known_by_construction():
    rng = np.random.default_rng(0)
    labels = rng.normal(2.0, 1.2, size=200)
    new, corrupted, kinds = corrupt(labels, 0.3, rng)
    assert corrupted.sum() == 60 and kinds.count("shift") == 30 and kinds.count("swap") == 30
    shift = np.array([k == "shift" for k in kinds])
    assert np.all((np.abs(new[shift] - labels[shift]) >= 2.0) & (np.abs(new[shift] - labels[shift]) <= 3.0))
    swap = np.array([k == "swap" for k in kinds])
    assert sorted(new[swap]) == pytest.approx(sorted(labels[swap])) and not np.any(new[swap] == labels[swap])
    assert np.array_equal(new[~corrupted], labels[~corrupted])


def test_benchmark_end_to_end_on_a_tiny_dataset(tmp_path):
    """``lipo-if benchmark`` on a 240-molecule dataset: pools disjoint from validation and test, every
    strategy retrained, the report well formed, and its numbers the per-seed results' numbers."""
    import json

    from lipo_if.cli import main
    from lipo_if.data import load_dataset
    from lipo_if.scenarios import build_scenario

    frame = pd.read_csv(__import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "fixture.csv")
    lipo = tmp_path / "lipophilicity.csv"
    pd.DataFrame({"CMPD_CHEMBLID": [f"X{i}" for i in range(len(frame))], "exp": frame["logp_crippen"], "smiles": frame["smiles"]}).to_csv(lipo, index=False)
    dataset = load_dataset(lipo)
    sc = build_scenario("noisy", dataset, 0)
    pool_keys = set(sc.pool.table["key"])
    for part in ("val", "test", "train"):
        assert not pool_keys & {dataset.keys[i] for i in sc.split.part(part)}
    assert sc.corrupted.sum() == round(0.3 * len(sc.pool))
    out = tmp_path / "bench"
    argv = ["-q", "benchmark", "--data", str(lipo), "--out", str(out), "--seeds", "2", "--scenarios", "noisy",
            "--hidden", "16", "--max-epochs", "15", "--patience", "5", "--min-epochs", "3", "--batch-size", "16",
            "--finetune-epochs", "2", "--damping", "0.1", "--refit-folds", "2"]
    assert main(argv) == 0
    report = json.loads((out / "benchmark.json").read_text())
    summary = report["scenarios"]["noisy"]
    per_seed = report["per_seed"]["noisy"]
    for name in ("baseline", "all", "random", "influence", "filter", "filter_refit", "weighted", "weighted_once", "clean_oracle",
                 "test_oracle", "random_matched"):
        deltas = [s["results"][name]["test_rmse"] - s["results"]["baseline"]["test_rmse"] for s in per_seed]
        assert summary["strategies"][name]["delta"] == pytest.approx(np.mean(deltas), abs=1e-12)
    assert summary["strategies"]["clean_oracle"]["corrupted_added"] == 0
    assert summary["strategies"]["all"]["n_added"] == np.mean([s["n_eligible"] for s in per_seed])  # (in domain)
    assert all(0 < s["n_eligible"] <= s["n_pool"] for s in per_seed)
    assert 0.0 <= summary["detection_auc"]["all"]["residual"] <= 1.0 and 0.0 <= summary["detection_auc"]["all"]["refit_residual"] <= 1.0
    for s in per_seed:  # filter_refit: the refit filter@z of lowest validation RMSE
        chosen = min((r for name, r in s["results"].items() if name.startswith("filter_refit@")), key=lambda r: r["val_rmse"])
        assert s["results"]["filter_refit"]["test_rmse"] == chosen["test_rmse"]
    assert "## noisy" in (out / "report.md").read_text()
