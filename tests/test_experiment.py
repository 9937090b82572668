"""Retraining with extra molecules, the guarded selection on real scores, and ``lipo-if run`` end to end
on tiny self-made data (a 48-molecule "Lipophilicity" and a 20-row external pool)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lipo_if.data import load_dataset
from lipo_if.featurize import FeaturizerConfig
from lipo_if.influence import Influence, InfluenceConfig
from lipo_if.pool import Pool
from lipo_if.train import FinetuneConfig, TrainConfig, filter_extra, finetune_run, train_run
from lipo_if.rundir import load_run

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fixture.csv"
TINY = dict(hidden=(16,), max_epochs=25, patience=10, min_epochs=5, batch_size=16, lr=3e-3)
FEATURES = FeaturizerConfig("morgan_count", n_bits=128)
WRONG_ROW = 5  # the external row given a wildly wrong label (urea, −1.0 → 8.0: still inside the plausible logD range)


@pytest.fixture
def tiny_data(tmp_path: Path) -> tuple[Path, Path]:
    """``lipophilicity.csv`` with fixture molecules 0–47 and ``external.csv`` with molecules 48–63,
    two repeats of dataset molecules, one invalid SMILES, and row 5 with its label + 9 logD."""
    frame = pd.read_csv(FIXTURE)
    lipo = pd.DataFrame({"CMPD_CHEMBLID": [f"X{i}" for i in range(48)], "exp": frame["logp_crippen"][:48], "smiles": frame["smiles"][:48]})
    lipo.to_csv(tmp_path / "lipophilicity.csv", index=False)
    ext = frame.iloc[48:][["smiles", "logp_crippen"]].rename(columns={"smiles": "SMILES", "logp_crippen": "Label"})
    ext = pd.concat([ext, pd.DataFrame({"SMILES": [frame["smiles"][0], frame["smiles"][1], "C1CC"], "Label": [0.0, 0.0, 1.0]})])
    ext = ext.reset_index(drop=True)
    ext.loc[WRONG_ROW, "Label"] += 9.0
    ext.to_csv(tmp_path / "external.csv", index=False)
    return tmp_path / "lipophilicity.csv", tmp_path / "external.csv"


@pytest.fixture
def tiny_run(tiny_data):
    lipo, _ = tiny_data
    return train_run(load_dataset(lipo), str(lipo), TrainConfig(seed=0, **TINY), FEATURES, progress=False)


def test_filter_extra_never_adds_validation_or_test_molecules(tiny_run):
    val_smiles, test_smiles, train_smiles = tiny_run.smiles("val"), tiny_run.smiles("test"), tiny_run.smiles("train")
    extra = [val_smiles[0], test_smiles[0], train_smiles[0], "CCCCCCCCCCCCCCCCO", "OCCCCCCCCCCCCCCCC", "not a smiles"]
    kept, dropped = filter_extra(tiny_run, Pool.from_smiles(extra, [1.0] * len(extra)))
    assert kept == [3]
    reasons = [d["reason"] for d in dropped]
    assert reasons == ["duplicate of a validation molecule", "duplicate of a test molecule",
                       "duplicate of a training molecule", "repeated extra molecule", "invalid SMILES"]


def test_finetune_with_nothing_added_and_with_extra(tiny_run, tmp_path):
    config = FinetuneConfig(finetune_epochs=3, finetune_patience=3)
    nothing = Pool.from_smiles([], [])
    same = finetune_run(tiny_run, nothing, config, progress=False)
    assert same.metrics["n_added"] == 0 and same.metrics["mode"] == "finetune"
    assert same.metrics["n_train"] == len(tiny_run.split.train)
    again = finetune_run(tiny_run, ([], []), config, progress=False)
    assert again.metrics["val_rmse"] == pytest.approx(same.metrics["val_rmse"], rel=1e-6)  # deterministic
    extra = finetune_run(tiny_run, (["CCCCCCCCCCCCCCCCO", tiny_run.smiles("test")[0]], [7.0, 1.0]), config, progress=False)
    assert extra.metrics["n_added"] == 1 and extra.metrics["n_train"] == len(tiny_run.split.train) + 1
    assert extra.metrics["extra_dropped"][0]["reason"] == "duplicate of a test molecule"
    # the original run is untouched and the new one saves/loads like a trained run
    assert tiny_run.model.layers[0].weight.data_ptr() != extra.model.layers[0].weight.data_ptr()
    extra.save(tmp_path / "ft")
    assert load_run(tmp_path / "ft").evaluate()["test_rmse"] == pytest.approx(extra.metrics["test_rmse"], rel=1e-5)
    scratch = finetune_run(tiny_run, nothing, FinetuneConfig(from_scratch=True), progress=False)
    assert scratch.metrics["mode"] == "from_scratch"
    with pytest.raises(ValueError, match="finetune_lr"):
        FinetuneConfig(finetune_lr=0)


def test_guarded_selection_leaves_out_the_wrong_label(tiny_run, tiny_data, tmp_path):
    """Real influence scores: whatever first-order influence thinks of the +9 label, the guarded
    selection never picks it, for any k — while the unguarded pool still holds it."""
    from lipo_if.select import SelectionConfig, eligible, residual_outliers, select

    _, external = tiny_data
    scores = Influence(tiny_run, solver="cg", progress=False).fit().scores(external)
    n = len(eligible(scores))
    assert WRONG_ROW in eligible(scores)["row"].tolist()
    assert bool(residual_outliers(scores).loc[scores["row"] == WRONG_ROW].iloc[0])
    for k in range(1, n + 1):
        assert WRONG_ROW not in select(scores, SelectionConfig(k=k))
    assert WRONG_ROW in select(scores, SelectionConfig(k=n, guard="none"))
    assert WRONG_ROW not in select(scores, SelectionConfig(strategy="threshold", threshold=1e9))


def test_run_end_to_end_writes_a_well_formed_report(tiny_data, tmp_path):
    from lipo_if.cli import main

    lipo, external = tiny_data
    out = tmp_path / "exp"
    argv = ["-q", "run", "--data", str(lipo), "--external", str(external), "--out", str(out), "--seeds", "2",
            "--k", "2", "4", "--influence-solver", "cg", "--hidden", "16", "--max-epochs", "25", "--patience", "10",
            "--min-epochs", "5", "--batch-size", "16", "--lr", "3e-3", "--featurizer", "morgan_count", "--n-bits", "128",
            "--finetune-epochs", "3", "--compare-guards", "none", "greedy", "residual+greedy", "--crossfit-folds", "2",
            "--filter-z", "1.5", "3"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("original", "baseline", "influence", "influence_topk", "random", "all_external", "oracle", "influence_unguarded", "influence_greedy",
                "influence_residual_greedy", "crossfit", "influence_threshold"):
        entry = report[key]
        for field in ("test_rmse_mean", "test_rmse_std", "val_rmse_mean", "per_seed", "n_added"):
            assert field in entry, (key, field)
        assert len(entry["per_seed"]) == 2
        assert all(np.isfinite(p["test_rmse"]) for p in entry["per_seed"])
    assert report["baseline"]["n_added"] == 0
    assert report["influence_topk"]["k"] in ("2", "4") and set(report["influence_topk"]["by_k"]) == {"2", "4"}
    # the report's `influence` is the default method, weighted fine-tuning, number for number
    assert report["method"] == "weighted" and report["influence"]["method"] == "weighted"
    assert {k: v for k, v in report["influence"].items() if k != "method"} == report["weighted"]
    assert report["random"]["by_k"]["4"]["n_added"] == 4
    assert "p_ttest" in report["influence_topk"]["test_rmse_diff_vs_baseline"]
    assert "TEST" in report["oracle"]["note"]
    assert report["all_external"]["n_added"] == report["meta"]["n_eligible"][0]  # the two repeats and the invalid row never join
    for seed in (0, 1):  # the +9 label is dropped by the guard in both seeds
        assert WRONG_ROW in json.loads((out / f"seed_{seed}" / "results.json").read_text())["guard_dropped_rows"]
    for s in report["influence_topk"]["per_seed"]:
        assert s["n_added"] == 4 or s["n_added"] == 2
    rec = report["recovery"]
    assert {r["method"] for r in rec["rows"]} >= {"influence_topk", "influence_greedy", "crossfit", "random"}
    assert rec["headline"]["method"] != "random" and {"fraction", "p_vs_oracle", "detectable", "delta_ci95"} <= set(rec["headline"])
    for seed in (0, 1):
        results = json.loads((out / f"seed_{seed}" / "results.json").read_text())
        assert results["group_model"]["first_order_pearson"] > 0.9999 and results["crossfit"]["folds"] == 2
        assert results["n_retrainings"] <= len(results["results"]) - 1  # identical selections retrained once
        greedy = [r for r in results["results"] if r["strategy"] == "influence_greedy"]
        assert all(WRONG_ROW not in r["rows"] for r in greedy) and all(r["n_added"] <= r["k"] for r in greedy)
    # the report's numbers are the per-seed retrainings' numbers, aggregated
    per_seed = [json.loads((out / f"seed_{seed}" / "results.json").read_text())["results"] for seed in (0, 1)]
    for seed in (0, 1):  # the weights' mixture fit is kept with the seed (the cross-fitted one, the first inside)
        mixture = json.loads((out / f"seed_{seed}" / "results.json").read_text())["weights_mixture"]
        assert mixture["folds"] == 2 and 0 < mixture["first"]["wrong_fraction"] < 1
    pick = lambda rs, name, k=None: next(r for r in rs if r["strategy"] == name and r["k"] == k)  # noqa: E731
    for k in ("2", "4"):
        rows = [pick(rs, "influence_topk", float(k)) for rs in per_seed]
        entry = report["influence_topk"]["by_k"][k]
        assert entry["test_rmse_mean"] == pytest.approx(np.mean([r["test_rmse"] for r in rows]), rel=1e-12)
        assert entry["test_rmse_diff_vs_baseline"]["per_seed"] == pytest.approx(
            [r["test_rmse"] - pick(rs, "baseline")["test_rmse"] for r, rs in zip(rows, per_seed)], rel=1e-9)
    # the suspicion filter: per seed the threshold of lowest validation RMSE, never the +9 label
    for rs in per_seed:
        chosen = min((r for r in rs if r["strategy"].startswith("filter@")), key=lambda r: r["val_rmse"])
        assert pick(rs, "filter")["test_rmse"] == chosen["test_rmse"] and WRONG_ROW not in chosen["rows"]
    assert report["filter"]["test_rmse_mean"] == pytest.approx(np.mean([pick(rs, "filter")["test_rmse"] for rs in per_seed]))
    # weighted: every eligible row, the +9 label weighted near zero and below every other row
    for rs in per_seed:
        weighted = pick(rs, "weighted")
        assert set(weighted["rows"]) == set(pick(rs, "all_external")["rows"]) and WRONG_ROW in weighted["rows"]
        weight = dict(zip(weighted["rows"], weighted["weights"]))
        assert weight[WRONG_ROW] < 0.05 and weight[WRONG_ROW] < min(w for r, w in weight.items() if r != WRONG_ROW)
    # … and the baseline retraining is reproduced independently: fine-tune seed 0's model with nothing added
    base0 = load_run(out / "seed_0" / "original", data_path=lipo)
    redo = finetune_run(base0, ([], []), FinetuneConfig(finetune_epochs=3, seed=0), progress=False)
    assert pick(per_seed[0], "baseline")["test_rmse"] == pytest.approx(redo.metrics["test_rmse"], rel=1e-6)
    # run again: every run, solve and seed is reused and the report's numbers are the same
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["influence"] == report["influence"] and again["recovery"] == report["recovery"]
    md = (out / "report.md").read_text()
    assert "oracle's gain" in md and "Headline (chosen on validation)" in md
    assert "| **influence** (= weighted, the default) |" in md and "| influence_topk |" in md and "What it means" in md and report["conclusion"] in md
    # the conclusion names the weighting that ran: the default power, judged by the cross-fitted models
    assert report["meta"]["experiment_config"]["weight_power"] == 0.5
    assert "to the power 0.5" in report["conclusion"] and "other folds of the pool" in report["conclusion"]
    for png in ("rmse_vs_k.png", "score_hist.png", "predicted_vs_actual.png", "score_vs_similarity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # a second invocation reuses the finished seeds and rewrites the same report
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["influence"]["test_rmse_mean"] == report["influence"]["test_rmse_mean"]


def test_finetune_cli_and_user_errors(tiny_data, tiny_run, tmp_path, capsys):
    from lipo_if.cli import main

    _, external = tiny_data
    tiny_run.save(tmp_path / "base")
    assert main(["-q", "finetune", "--run", str(tmp_path / "base"), "--extra", str(external), "--out", str(tmp_path / "ft"),
                 "--finetune-epochs", "2"]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert {"test_rmse", "val_rmse", "test_mae", "test_r2", "n_added"} <= set(metrics)
    assert metrics["n_added"] == 16  # 16 new molecules; the repeats of dataset molecules and the invalid row are dropped
    assert main(["-q", "finetune", "--run", str(tmp_path / "nope"), "--extra", str(external), "--out", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["-q", "run", "--data", str(tiny_data[0]), "--external", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "y")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


def test_validate_compares_predicted_and_actual_changes(tiny_data, tmp_path):
    """The fidelity check's machinery on a tiny linear model: well-formed outputs, the retraining
    with nothing added as the reference, and gradient descent that reproduces θ̂'s loss at 0 steps.

    (No correlation threshold here: with 38 training molecules one addition is a 2.6 % change of
    the data, outside the first-order regime; the real-data fidelity is in benchmarks/RESULTS.md.)
    """
    from lipo_if.validate import ValidateConfig, gd_retrain, run_validation, spread_sample

    lipo, external = tiny_data
    linear = train_run(load_dataset(lipo), str(lipo), TrainConfig(seed=0, **{**TINY, "hidden": ()}), FEATURES, progress=False)
    inf = Influence(linear, solver="cg", progress=False).fit()
    result = run_validation(linear, external, tmp_path / "val", ValidateConfig(n_sample=5, top_k=3), influence=inf, progress=False)
    assert result["singles"]["n"] == 5 and result["group"]["k"] == 3
    assert result["gd"]["steps"] >= 10 and result["gd"]["lr"] > 0
    assert np.isfinite(result["singles"]["pearson"]) and np.isfinite(result["group"]["actual"])
    assert result["baseline_val_mse"] == pytest.approx(gd_retrain(linear, torch.zeros(0, linear.featurizer.dim), torch.zeros(0),
                                                                  result["gd"]["lr"], result["gd"]["steps"]))
    assert gd_retrain(linear, torch.zeros(0, linear.featurizer.dim), torch.zeros(0), 1.0, 0) == pytest.approx(linear.metrics["val_rmse"] ** 2, rel=1e-5)
    for name in ("validate.json", "validate.csv", "validate.png", "influence_val.csv"):
        assert (tmp_path / "val" / name).exists()
    # the predicted changes are the influence object's scores (+ the shared offset), the actual ones
    # retrainings by gradient descent that this test repeats for one molecule
    table = inf.scores(external).set_index("row")
    offset = inf.info["renormalization_offset"]
    for entry in result["per_molecule"]:
        assert entry["predicted"] == pytest.approx(table.loc[entry["row"], "score"] + offset, rel=1e-9)
    first = result["per_molecule"][0]
    x1, y1 = Pool.read(external).rows_features(linear.featurizer, [first["row"]])
    actual = gd_retrain(linear, x1, y1, result["gd"]["lr"], result["gd"]["steps"]) - result["baseline_val_mse"]
    assert first["actual"] == pytest.approx(actual, rel=1e-6, abs=1e-12)
    pool = pd.DataFrame({"row": range(10), "score": np.linspace(1, -1, 10)})
    assert spread_sample(pool, 3) == [9, 5, 0]  # most helpful, middle, least helpful


def test_demo_defaults_fit_the_time_budget():
    from lipo_if.demo import BUDGET_SECONDS, DEMO_EXPERIMENT, estimate_for
    from lipo_if.experiment import ExperimentConfig

    config = ExperimentConfig(**DEMO_EXPERIMENT)
    assert estimate_for(config) < BUDGET_SECONDS
    assert estimate_for(ExperimentConfig(**{**DEMO_EXPERIMENT, "crossfit_folds": 5})) > estimate_for(config)
    with pytest.raises(ValueError, match="ntk"):
        ExperimentConfig(influence_backend="ntk", influence_damping="auto")


# --------------------------------------------------------------------------- greedy guard, function-space solve, cross-fitting


def test_group_model_matches_a_dense_parameter_space_computation(tiny_run, tiny_data, tmp_path):
    """M and the first-order scores from the NTK/Woodbury form equal the parameter-space
    definitions ``d_j = −(1/n)(H + μI)⁻¹∇ℓ(z_j)``, ``M_ij = d_iᵀ G_val d_j``, with a dense
    Gauss–Newton Hessian of the whole tiny network (2,081 parameters) — and the CG table's scores."""
    from torch.func import grad, vmap

    from lipo_if.data import read_molecule_csv
    from lipo_if.influence.hvp import HessianOperator, dense_hessian
    from lipo_if.influence.scores import per_sample_grads
    from lipo_if.select import eligible

    _, external = tiny_data
    mu = 0.05
    inf = Influence(tiny_run, solver="cg", damping=mu, tol=1e-10, progress=False).fit()
    scores = inf.scores(external)
    group = inf.group_model(scores, external)
    assert group.info["first_order_pearson"] > 0.999999 and group.info["first_order_max_rel_diff"] < 1e-5

    X, y = tiny_run.tensors("train")
    op = HessianOperator(tiny_run.model, X, y, tiny_run.config.weight_decay, kind="gauss-newton")
    H = dense_hessian(op) + mu * torch.eye(op.n_params, dtype=op.dtype)
    table = read_molecule_csv(external).set_index("row")
    rows = eligible(scores)["row"].tolist()
    Xc = tiny_run.featurize(table.loc[rows, "smiles"].tolist())  # independent of the Pool's features
    yc = torch.tensor(table.loc[rows, "label"].to_numpy(), dtype=op.dtype)
    D = -torch.linalg.solve(H, per_sample_grads(op, Xc, yc).T).T / op.n_train
    Xv, yv = tiny_run.tensors("val")
    Jv = vmap(grad(lambda th, x: op.predict(th, x.unsqueeze(0)).squeeze(0)), in_dims=(None, 0))(op.theta, Xv.to(op.dtype))
    A = Jv @ D.T
    M = (2.0 / len(Xv)) * A.T @ A
    np.testing.assert_allclose(group.interactions, M.numpy(), rtol=1e-6, atol=1e-12 * float(M.abs().max()))
    np.testing.assert_allclose(group.scores, (D @ op.gradient(Xv, yv)).numpy(), rtol=1e-5)


def test_function_space_solver_matches_cg_on_a_trained_run(tiny_run, tiny_data):
    _, external = tiny_data
    for heldout in ("validation", "test"):
        cg = Influence(tiny_run, heldout=heldout, solver="cg", damping=0.1, tol=1e-10, progress=False).fit()
        fs = Influence(tiny_run, heldout=heldout, solver="function-space", damping=0.1, progress=False).fit()
        a, b = cg.scores(external), fs.scores(external)
        assert a["excluded"].equals(b["excluded"])
        ok = a["score"].notna()
        assert ok.equals(b["score"].notna()) and ok.sum() == 16
        np.testing.assert_allclose(b.loc[ok, "score"], a.loc[ok, "score"], rtol=1e-5, atol=1e-9 * a.loc[ok, "score"].abs().max())
        np.testing.assert_allclose(b["residual"], a["residual"], atol=1e-5)
        assert fs.info["renormalization_offset"] == pytest.approx(cg.info["renormalization_offset"], rel=1e-4, abs=1e-12)


def test_greedy_guard_leaves_out_the_wrong_label_on_a_real_model(tiny_run, tiny_data, tmp_path):
    """The +9 label of the tiny external set, scored by a real model: whatever rank first-order
    influence gives it, its second-order marginal is positive and the greedy guard (no residual
    filter) never selects it, at any k."""
    from lipo_if.select import SelectionConfig, eligible, select

    _, external = tiny_data
    inf = Influence(tiny_run, solver="cg", damping=0.1, progress=False).fit()
    scores = inf.scores(external)
    group = inf.group_model(scores, external)
    j = group.position()[WRONG_ROW]
    assert group.scores[j] + 0.5 * group.interactions[j, j] > 0
    n = len(eligible(scores))
    for k in range(1, n + 1):
        assert WRONG_ROW not in select(scores, SelectionConfig(k=k, guard="greedy"), group)
    assert WRONG_ROW in select(scores, SelectionConfig(k=n, guard="none"))


def test_crossfit_folds_partition_train_and_validation(tiny_run, tiny_data, tmp_path):
    from lipo_if.crossfit import combine, crossfit_scores, fold_splits
    from lipo_if.data import load_dataset
    from lipo_if.select import eligible

    split = tiny_run.split
    folds = fold_splits(split, 3, seed=0)
    pooled = sorted(split.train + split.val)
    assert sorted(sum((f.val for f in folds), [])) == pooled  # every molecule held out exactly once
    for f in folds:
        assert sorted(f.train + f.val) == pooled and not set(f.train) & set(f.val) and f.test == split.test
    assert [f.val for f in fold_splits(split, 3, seed=0)] == [f.val for f in folds]  # seeded

    lipo, external = tiny_data
    pool = Pool.read(external)
    base = Influence(tiny_run, solver="cg", min_similarity=0.0, progress=False).fit().scores(pool)
    table, info = crossfit_scores(load_dataset(lipo), str(lipo), tiny_run, base, pool, tmp_path / "cf", 2,
                                  InfluenceConfig(solver="cg", min_similarity=0.0, progress=False))
    assert info["folds"] == 2 and len(info["fold_spearman"]) == 1
    # a fold model's domain is its own training part: an element only the other folds hold excludes a row there
    assert set(eligible(table)["row"]) <= set(eligible(base)["row"]) and len(eligible(table)) > 0
    chosen = eligible(table)
    np.testing.assert_allclose(chosen["score"], (chosen["z_fold_0"] + chosen["z_fold_1"]) / 2)
    assert abs(chosen["z_fold_0"].mean()) < 1e-9 and chosen["z_fold_0"].std(ddof=0) == pytest.approx(1.0)
    assert (tmp_path / "cf" / "fold_1" / "model.pt").exists() and (tmp_path / "cf" / "influence_crossfit.csv").exists()
    again, _ = crossfit_scores(load_dataset(lipo), str(lipo), tiny_run, base, pool, tmp_path / "cf", 2,
                               InfluenceConfig(solver="cg", min_similarity=0.0, progress=False))  # reuses the fold models and solves
    np.testing.assert_allclose(eligible(again)["score"], chosen["score"])
    # each fold's z-scores are its own influence solve's scores, standardized (recomputed here from the saved solve)
    fold0 = Influence.load(tmp_path / "cf" / "fold_0_influence", load_run(tmp_path / "cf" / "fold_0")).scores(pool)
    assert combine(base, [fold0, Influence.load(tmp_path / "cf" / "fold_1_influence", load_run(tmp_path / "cf" / "fold_1")).scores(pool)])[0]["score"].equals(table["score"])
