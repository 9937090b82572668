"""The message-passing model: graphs (lipo_if.graph), the D-MPNN (lipo_if.dmpnn), its runs, and
influence through it (the segment-summed scores against per-molecule autodiff gradients)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rdkit import Chem

import lipo_if
from lipo_if.cli import main
from lipo_if.data import load_dataset
from lipo_if.dmpnn import DMPNN, DMPNNConfig
from lipo_if.ensemble import train_ensemble
from lipo_if.graph import ATOM_DIM, BOND_DIM, GraphFeaturizer, GraphFeaturizerConfig, MolGraphs, atom_features, bond_features
from lipo_if.influence.hvp import HessianOperator, dense_hessian
from lipo_if.influence.scores import grad_dot_graph, grad_dot_reference, per_sample_grads
from lipo_if.train import FinetuneConfig, TrainConfig, finetune_run, train_run

SMILES = ["CCO", "c1ccccc1O", "[Na+]", "CC(=O)Nc1ccc(O)cc1", "C/C=C/Cl", "O", "CCN(CC)CC", "FC(F)(F)c1ccncc1", "C1CC1C#N"]
TINY = dict(model="dmpnn", mp_hidden=16, mp_depth=3, ffn_hidden=(8,), max_epochs=25, min_epochs=5, patience=10, batch_size=16, lr=3e-3)


def graphs(mol_dim: int = 3, seed: int = 0) -> MolGraphs:
    g = GraphFeaturizer(GraphFeaturizerConfig("none"), cache_dir=False).tensor(SMILES)
    g.mol_x = torch.randn(len(g), mol_dim, generator=torch.Generator().manual_seed(seed))
    return g.to(torch.float64)


def tiny_model(mol_dim: int = 3, seed: int = 0, **shape) -> DMPNN:
    torch.manual_seed(seed)
    return DMPNN(DMPNNConfig(mol_dim=mol_dim, hidden=7, depth=3, ffn_hidden=(5,), **shape)).double()


#: Every readout × skip combination (the defaults first).
SHAPES = [dict(aggregation=a, message_skip=s) for s in ("relu", "linear") for a in ("mean", "sum", "norm")]


def test_graph_of_a_molecule_matches_rdkit():
    g = GraphFeaturizer(GraphFeaturizerConfig("none"), cache_dir=False).tensor(SMILES)
    for i, smi in enumerate(SMILES):
        mol = Chem.MolFromSmiles(smi)
        assert int(g.n_atoms[i]) == mol.GetNumAtoms() and int(g.n_bonds[i]) == 2 * mol.GetNumBonds()
    assert g.atom_x.shape[1] == ATOM_DIM and g.bond_x.shape[1] == BOND_DIM
    rev = g.bond_rev
    assert torch.equal(rev[rev], torch.arange(len(rev)))  # an involution
    assert torch.equal(g.bond_src[rev], g.bond_dst) and torch.equal(g.bond_dst[rev], g.bond_src)
    assert torch.equal(g.bond_x[rev], g.bond_x)
    # every directed bond stays inside its molecule
    atom_mol = g.atom_mol
    bond_mol = torch.repeat_interleave(torch.arange(len(g)), g.n_bonds)
    assert torch.equal(atom_mol[g.bond_src], bond_mol) and torch.equal(atom_mol[g.bond_dst], bond_mol)
    # one-hot blocks: each atom has exactly one element, degree, charge, chirality, H count, hybridization slot
    assert torch.all(g.atom_x[:, :-3].sum(1) == 6) and torch.all(g.bond_x[:, :5].sum(1) == 1)
    mol = Chem.MolFromSmiles("C/C=C/Cl")
    assert atom_features(mol.GetAtomWithIdx(3))[9] == 1.0  # chlorine's element slot (ELEMENTS index 9)
    assert bond_features(mol.GetBondWithIdx(1))[1] == 1.0  # the double bond


def test_molgraphs_index_cat_and_mask_agree_with_the_whole_batch():
    g, model = graphs(), tiny_model()
    full = model(g)
    idx = torch.tensor([4, 0, 0, 8, 2])
    assert torch.allclose(model(g[idx]), full[idx], atol=1e-14, rtol=0)
    mask = torch.tensor([i % 2 == 0 for i in range(len(g))])
    assert torch.allclose(model(g[mask]), full[mask], atol=1e-14, rtol=0)
    joined = MolGraphs.cat([g[[1, 2]], g[[0]], g[3:]])
    assert torch.allclose(model(joined), full[[1, 2, 0, *range(3, len(g))]], atol=1e-14, rtol=0)
    one_by_one = torch.stack([model(g[[i]])[0] for i in range(len(g))])
    assert torch.allclose(one_by_one, full, atol=1e-14, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        g[[len(g)]]
    with pytest.raises(IndexError, match="boolean mask"):
        g[torch.tensor([True, False])]


def _dmpnn_by_the_equations(model: DMPNN, smiles: str, mol_x: torch.Tensor) -> torch.Tensor:
    """The D-MPNN of one molecule written from its equations over RDKit's neighbour lists."""
    mol = Chem.MolFromSmiles(smiles)
    feats = lambda values: torch.tensor(values, dtype=torch.float32).double()  # noqa: E731 — the graphs store float32
    x = {a.GetIdx(): feats(atom_features(a)) for a in mol.GetAtoms()}
    e, nbrs = {}, {a: [] for a in x}
    for b in mol.GetBonds():
        u, v = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        e[(u, v)] = e[(v, u)] = feats(bond_features(b))
        nbrs[u].append(v)
        nbrs[v].append(u)
    relu, W_i, W_h = torch.relu, model.W_i.weight, model.W_h.weight
    pre = {uv: W_i @ torch.cat([x[uv[0]], e[uv]]) for uv in e}
    h0 = {uv: relu(p) for uv, p in pre.items()}
    skip = pre if model.config.message_skip == "linear" else h0
    h = dict(h0)
    for _ in range(model.config.depth - 1):
        m = {(u, v): sum((h[(k, u)] for k in nbrs[u] if k != v), torch.zeros(W_h.shape[1], dtype=torch.float64)) for (u, v) in e}
        h = {uv: relu(skip[uv] + W_h @ m[uv]) for uv in e}
    atoms = torch.stack([relu(model.W_o.weight @ torch.cat([x[v], sum((h[(u, v)] for u in nbrs[v]), torch.zeros(W_h.shape[0], dtype=torch.float64))])
                              + model.W_o.bias) for v in x])
    readout = {"mean": atoms.mean(0), "sum": atoms.sum(0), "norm": atoms.sum(0) / 100.0}[model.config.aggregation]
    z = torch.cat([readout, mol_x])
    for i, layer in enumerate(model.ffn):
        z = layer.weight @ z + layer.bias
        z = relu(z) if i < len(model.ffn) - 1 else z
    return z[0]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda d: f"{d['aggregation']}-{d['message_skip']}")
def test_forward_matches_the_equations(shape):
    g, model = graphs(), tiny_model(**shape)
    with torch.no_grad():
        expected = torch.stack([_dmpnn_by_the_equations(model, s, g.mol_x[i]) for i, s in enumerate(SMILES)])
        assert torch.allclose(model(g), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("block,shape", [(None, SHAPES[0]), (["W_h.weight", "ffn.0.bias"], SHAPES[0]), (["W_i.weight"], SHAPES[0]),
                                         (["W_o.weight", "W_o.bias"], SHAPES[0]), (None, SHAPES[-1]), (["W_i.weight"], SHAPES[-1]),
                                         (None, SHAPES[1])])
def test_graph_scores_match_per_molecule_autodiff(block, shape):
    """The segment-summed scores equal explicit per-molecule gradients (autodiff, one molecule at a
    time) dotted with fresh random vectors — every element, float64, chunks of odd size; with the
    pre-activation skip, W_i's output reaches the loss twice (through h⁰ and the skip)."""
    g, model = graphs(), tiny_model(**shape)
    y = torch.randn(len(g), dtype=torch.float64)
    op = HessianOperator(model, g, y, 1e-3, params=block)
    vecs = torch.randn(3, op.n_params, dtype=torch.float64)
    explicit = per_sample_grads(op, g, y) @ vecs.T
    # an independent per-sample gradient: torch.autograd on the module itself, molecule by molecule
    module = op.materialize()
    wanted = [module.get_parameter(n) for n in op.block.names]
    direct = torch.stack([torch.cat([t.reshape(-1) for t in torch.autograd.grad((module(g[[i]])[0] - y[i]) ** 2, wanted)])
                          for i in range(len(g))])
    assert torch.allclose(explicit, direct @ vecs.T, atol=1e-12, rtol=0)
    fast = grad_dot_graph(op, vecs, g, y, chunk_size=4)
    assert fast.shape == (len(g), 3)
    assert torch.allclose(fast, explicit, atol=1e-12, rtol=0)
    assert torch.allclose(grad_dot_reference(op, vecs, g, y), explicit, atol=1e-12, rtol=0)


def test_curvature_products_on_graphs_match_the_dense_matrix():
    g, model = graphs(), tiny_model()
    y = torch.randn(len(g), dtype=torch.float64)
    for kind in ("gauss-newton", "exact"):
        op = HessianOperator(model, g, y, 1e-2, kind=kind, params=["W_h.weight", "ffn.0.weight"])
        H = dense_hessian(op)
        vec = torch.randn(op.n_params, dtype=torch.float64)
        assert torch.allclose(op.matvec(vec), H @ vec, atol=1e-10, rtol=1e-9)
        assert torch.allclose(op.matvec(vec, op.sample_batch(4, torch.Generator().manual_seed(0))),
                              dense_hessian(op, (g[op.sample_indices(4, torch.Generator().manual_seed(0))],
                                                 y[op.sample_indices(4, torch.Generator().manual_seed(0))])) @ vec,
                              atol=1e-10, rtol=1e-9)


@pytest.fixture
def dmpnn_run(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    return ds, train_run(ds, str(small_lipo_csv), TrainConfig(seed=0, **TINY), progress=False)


def test_dmpnn_run_learns_saves_loads_and_finetunes(tmp_path, dmpnn_run):
    ds, run = dmpnn_run
    m = run.metrics
    assert m["featurizer"] == "graph+rdkit2d" and run.featurizer.dim > 100
    labels = ds.labels[run.split.train]
    constant_rmse = float(np.sqrt(np.mean((ds.labels[run.split.val] - labels.mean()) ** 2)))
    assert np.isfinite(m["val_rmse"]) and m["train_rmse"] < constant_rmse  # it learned something
    run.save(tmp_path / "run")
    back = lipo_if.load_run(tmp_path / "run")
    assert isinstance(back.model, DMPNN) and back.config.model == "dmpnn"
    smiles = ["CCO", "c1ccccc1CCN", "O=C(O)c1ccccc1"]
    assert np.array_equal(back.predict(smiles), run.predict(smiles))
    pool = (["CCCCCCCCCO", "Cc1ccc(Br)cc1C", "OCC(O)C(O)C(O)CO"], [2.8, 3.5, -2.5])
    for scratch in (False, True):
        new = finetune_run(run, pool, FinetuneConfig(finetune_epochs=3, from_scratch=scratch), progress=False)
        assert new.metrics["n_added"] == 3 and isinstance(new.model, DMPNN)
        assert new.metrics["n_train"] == m["n_train"] + 3


def test_dmpnn_ensemble_predicts_the_members_mean(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    ens = train_ensemble(ds, str(small_lipo_csv), TrainConfig(seed=0, **{**TINY, "max_epochs": 6}), 2, progress=False)
    smiles = ["CCO", "c1ccccc1CCN"]
    assert np.allclose(ens.predict(smiles), np.mean([m.predict(smiles) for m in ens.members], axis=0))


def test_influence_through_the_dmpnn(dmpnn_run):
    _, run = dmpnn_run
    pool = (["CCCCCO", "c1ccccc1Br", "OCC(O)CO", "CC(C)(C)c1ccncc1", "not a smiles"], [1.3, 3.0, -1.7, 2.2, 0.0])
    cg = lipo_if.Influence(run, solver="cg", damping=0.5, progress=False).fit()
    table = cg.scores(pool)
    scored = table["excluded"] == ""
    assert scored.sum() >= 3 and table.loc[~scored, "score"].isna().all()
    # the same s and the reference (per-molecule autodiff) scores agree with the fast ones
    ref = lipo_if.Influence(run, solver="cg", damping=0.5, score_method="reference", progress=False).fit()
    assert np.allclose(ref.scores(pool)["score"], table["score"], rtol=1e-8, atol=1e-12, equal_nan=True)
    # LiSSA solves the same system: its scores agree with CG's up to its stochastic error
    lissa = lipo_if.Influence(run, solver="lissa", damping=0.5, depth=400, progress=False).fit().scores(pool)
    assert np.corrcoef(lissa.loc[scored, "score"], table.loc[scored, "score"])[0, 1] > 0.95
    with pytest.raises(ValueError, match="function-space.*needs the package's MLP.*lissa"):
        lipo_if.Influence(run, solver="function-space", progress=False).fit()


def test_cli_trains_a_dmpnn_and_scores_through_it(tmp_path, small_lipo_csv, capsys):
    out = tmp_path / "run"
    args = ["--model", "dmpnn", "--mp-hidden", "16", "--ffn-hidden", "8", "--max-epochs", "8", "--min-epochs", "2", "--mol-features", "none"]
    assert main(["-q", "train", "--data", str(small_lipo_csv), "--out", str(out), *args]) == 0
    assert json.loads((out / "metrics.json").read_text())["featurizer"] == "graph"
    external = tmp_path / "external.csv"
    external.write_text("SMILES,Label\nCCCCCCCC,3.5\nOc1ccc(Cl)cc1,2.4\nCC(C)(C)c1ccccc1,3.9\n")
    scores = tmp_path / "scores.csv"
    assert main(["-q", "influence", "--run", str(out), "--external", str(external), "--out", str(scores), "--solver", "cg"]) == 0
    assert scores.exists() and len(scores.read_text().splitlines()) == 4
    with pytest.raises(SystemExit):
        main(["train", "--model", "transformer"])
    assert main(["-q", "train", "--data", str(small_lipo_csv), "--out", str(out), "--model", "dmpnn", "--mol-features", "bogus"]) == 2
    assert "unknown featurizer part" in capsys.readouterr().err


def test_a_streamed_pool_through_the_dmpnn_equals_the_one_table_path(tmp_path, dmpnn_run):
    """Worker processes send the graphs back as object rows; chunked, parallel scoring of a D-MPNN run
    writes the file the in-memory path writes, and large molecules take the time guard's path."""
    from lipo_if.influence.outputs import write_scores
    from lipo_if.stream import StreamConfig, prepare_chunk, score_file

    _, run = dmpnn_run
    rows = [("C" * i + "O" + "C" * j, 0.3 * i - 0.2 * j) for i in range(1, 8) for j in range(0, 6)]
    rows[5] = ("C1CC", 1.0)
    source = tmp_path / "pool.csv"
    import pandas as pd

    pd.DataFrame(rows, columns=["smiles", "label"]).to_csv(source, index=False)
    inf = lipo_if.Influence(run, solver="cg", damping=0.5, progress=False).fit()
    write_scores(inf, inf.scores(source), tmp_path / "whole.csv", source=str(source))
    score_file(inf, source, tmp_path / "streamed.csv", StreamConfig(chunk_rows=9, workers=2))
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    frame = pd.DataFrame({"smiles": ["CCO", "C" * 120, "CCCO", "C1CC"], "label": ["0.5"] * 4})
    table, graphs_ = prepare_chunk(None, run.featurizer, 0, frame, 2, 60.0, None, None, "<test>")
    assert isinstance(graphs_, MolGraphs) and len(graphs_) == 3 and int(graphs_.n_atoms[1]) == 120
    direct = run.featurizer.tensor(["CCO", "C" * 120, "CCCO"])
    assert torch.equal(graphs_.atom_x, direct.atom_x) and torch.equal(graphs_.mol_x, direct.mol_x)


def test_lr_decay_lowers_the_rate_every_epoch(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    run = train_run(ds, str(small_lipo_csv), TrainConfig(seed=0, **{**TINY, "max_epochs": 4, "min_epochs": 4, "lr_decay": 0.5,
                                                                     "warmup_epochs": 0, "checkpoint_every": 1, "patience": 4}), progress=False)
    lrs = [c.lr for c in run.checkpoints]
    assert lrs == pytest.approx([TINY["lr"] * 0.5 ** (c.epoch - 1) for c in run.checkpoints]) and len(lrs) >= 1
    with pytest.raises(ValueError, match="lr_decay must be in"):
        TrainConfig(lr_decay=1.5)


def test_warmup_raises_the_rate_step_by_step_then_decay_starts(small_lipo_csv, tmp_path, monkeypatch):
    """Warm-up from lr/10 to lr over ``warmup_epochs`` (per step), then ``lr_decay`` a epoch; a
    chemprop-shaped model (sum / 100 readout, linear skip) saves and loads as it was trained, and
    fine-tuning θ̂ does not warm up again."""
    ds = load_dataset(small_lipo_csv)
    config = TrainConfig(seed=0, **{**TINY, "max_epochs": 5, "min_epochs": 5, "lr_decay": 0.5, "warmup_epochs": 2,
                                    "checkpoint_every": 1, "patience": 5, "aggregation": "norm", "message_skip": "linear"})
    run = train_run(ds, str(small_lipo_csv), config, progress=False)
    steps = -(-len(run.split.train) // config.batch_size)
    lr = config.lr
    expected = {1: lr * (0.1 + 0.9 * (steps - 1) / (2 * steps)), 2: lr * (0.1 + 0.9 * (2 * steps - 1) / (2 * steps)),
                3: lr, 4: lr * 0.5, 5: lr * 0.25}
    assert {c.epoch: c.lr for c in run.checkpoints} == pytest.approx({e: v for e, v in expected.items() if e <= run.metrics["best_epoch"]})
    assert run.model.config.aggregation == "norm" and run.model.config.message_skip == "linear"
    back = lipo_if.load_run(run.save(tmp_path / "r"))
    assert back.model.config == run.model.config
    smiles = run.smiles("test")
    np.testing.assert_array_equal(back.predict(smiles), run.predict(smiles))
    import lipo_if.train as train_module

    seen = []
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda *a, **k: seen.append(a[5]) or real_fit(*a, **k))
    extra = (run.smiles("val")[:3], run.labels("val")[:3])
    tuned = finetune_run(run, extra, FinetuneConfig(finetune_epochs=2, finetune_lr=1e-4), progress=False)
    assert tuned.metrics["epochs_run"] == 2 and seen[0].warmup_epochs == 0 and seen[0].lr == 1e-4
    with pytest.raises(ValueError, match="warmup_epochs must be"):
        TrainConfig(warmup_epochs=-1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        DMPNNConfig(aggregation="max")


def test_weigh_pool_on_a_dmpnn_run(dmpnn_run):
    """The weighted selection's weights for a D-MPNN run (its exact solve is CG: the function-space
    form needs the MLP); a weight is a probability, 0 where the row is not eligible."""
    from lipo_if.suspicion import weigh_pool

    _, run = dmpnn_run
    pool = (["CCCCCCCCCO", "Cc1ccc(Br)cc1C", "OCC(O)C(O)C(O)CO", "CCCCCCCCCCCC", "OC(=O)CCC(=O)O", "not a smiles"],
            [2.8, 3.5, -2.5, 6.0, -0.5, 1.0])
    table = weigh_pool(run, pool, FinetuneConfig(finetune_epochs=2), folds=0)
    assert len(table) == 6 and table["weight"].between(0, 1).all()
    assert table.loc[table["excluded"] != "", "weight"].eq(0).all() and (table["excluded"] != "").sum() >= 1


def test_lipo_if_run_with_the_dmpnn(tmp_path, small_lipo_csv, capsys):
    """``lipo-if run --model dmpnn``: the experiment end to end (suspicion filter by residuals, CG
    influence, fine-tuning); the settings that need the MLP's function-space solve fail first, named."""
    frame = __import__("pandas").read_csv(small_lipo_csv)
    lipo = tmp_path / "lipophilicity.csv"
    frame.iloc[:48].to_csv(lipo, index=False)
    external = tmp_path / "external.csv"
    frame.iloc[48:].rename(columns={"smiles": "SMILES", "exp": "Label"})[["SMILES", "Label"]].to_csv(external, index=False)
    out = tmp_path / "exp"
    common = ["--data", str(lipo), "--external", str(external), "--out", str(out), "--seeds", "1", "--k", "3",
              "--model", "dmpnn", "--mp-hidden", "12", "--ffn-hidden", "6", "--max-epochs", "6", "--min-epochs", "2",
              "--batch-size", "16", "--finetune-epochs", "2", "--influence-solver", "cg", "--influence-damping", "0.5",
              "--filter-z", "2", "--mol-features", "none"]
    assert main(["-q", "run", *common]) == 2
    assert "greedy guard needs the MLP" in capsys.readouterr().err
    assert main(["-q", "run", *common, "--compare-guards", "none", "--no-oracle"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["influence"]["method"] == "weighted" and np.isfinite(report["influence"]["test_rmse_mean"])
    table = __import__("pandas").read_csv(out / "seed_0" / "influence_val.csv")
    assert table["suspicion"].notna().any() and table["self_influence_raw"].isna().all()


def test_each_family_has_its_own_defaults_and_a_given_value_wins():
    from lipo_if.train import FAMILY_DEFAULTS

    for family, defaults in FAMILY_DEFAULTS.items():
        config = TrainConfig(model=family)
        assert {k: getattr(config, k) for k in defaults} == defaults
    assert TrainConfig(model="dmpnn", weight_decay=0.0, max_epochs=7).weight_decay == 0.0
    assert TrainConfig(model="dmpnn", max_epochs=7).max_epochs == 7
    with pytest.raises(ValueError, match="weight_decay must be a number"):
        TrainConfig(weight_decay="much")


def test_validate_retrains_a_dmpnn_by_gradient_descent(tmp_path, dmpnn_run):
    """``run_validation`` (predicted vs actual change of validation loss) on a D-MPNN run: the graphs of
    the added molecules join the training graphs; a score predicts the sign of GD's change."""
    from lipo_if.validate import ValidateConfig, run_validation

    _, run = dmpnn_run
    pool = (["CCCCCCCCCO", "Cc1ccc(Br)cc1C", "OCC(O)C(O)C(O)CO", "CCCCCCCCCCCC", "OC(=O)CCC(=O)O"], [2.8, 3.5, -2.5, 6.0, -0.5])
    inf = lipo_if.Influence(run, solver="cg", damping=0.5, progress=False).fit()
    result = run_validation(run, pool, tmp_path / "v", ValidateConfig(n_sample=4, top_k=2, retrain="gd", steps=5, lr=0.01),
                            influence=inf, progress=False)
    assert 2 <= len(result["per_molecule"]) <= 4 and np.isfinite(result["baseline_val_mse"])
    assert all(np.isfinite(m["actual"]) for m in result["per_molecule"]) and (tmp_path / "v" / "validate.png").exists()
