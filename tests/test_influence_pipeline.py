"""End-to-end tests of the in-memory influence API (lipo_if.Influence) and the files of
``lipo-if influence``, with a tiny fake run (needs RDKit for SMILES)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("rdkit")

from lipo_if.data import DataError, canonicalize  # noqa: E402
from lipo_if.influence import (HessianOperator, Influence, InfluenceConfig, influence_scores, output_paths,  # noqa: E402
                               solve, write_scores)
from lipo_if.pool import Pool  # noqa: E402
from lipo_if.model import ModelConfig, build_model, objective  # noqa: E402

# torch.func jvp registers its decompositions through the deprecated torch.jit.script (torch-internal).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

WD = 0.01


def featurize(smiles: list[str]) -> torch.Tensor:
    """Six atom/ring counts per molecule (a stand-in for the real featurizer), float32 [n, 6]."""
    from rdkit import Chem

    rows = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        rows.append([len(symbols), symbols.count("C"), symbols.count("O"), symbols.count("N"),
                     sum(a.GetIsAromatic() for a in mol.GetAtoms()), mol.GetRingInfo().NumRings()])
    return torch.tensor(rows, dtype=torch.float32) / 5.0


SPLITS = {
    "train": ["CC", "CCC", "CCCC", "CCCCC", "CCCCCC", "c1ccccc1C", "c1ccccc1CC", "CCN", "CCCN", "OCCO",
              "CC(C)O", "CCOC", "c1ccncc1", "CC(=O)N", "CCCCO", "c1ccccc1O"],
    "val": ["CCCO", "c1ccccc1N", "CCOCC", "NCCN"],
    "test": ["CCCCN", "c1ccc(C)cc1C", "OCCCO"],
}


def logp(smiles: list[str]) -> torch.Tensor:
    from rdkit.Chem import Crippen, MolFromSmiles

    return torch.tensor([Crippen.MolLogP(MolFromSmiles(s)) for s in smiles], dtype=torch.float32)


@dataclass
class _Config:
    weight_decay: float = WD


class _Featurizer:
    dim = 6

    def transform(self, smiles: list[str]) -> np.ndarray:
        return featurize(smiles).numpy()

    def tensor(self, smiles: list[str]) -> torch.Tensor:
        return featurize(list(smiles))


class FakeRun:
    """The attributes of lipo_if.train.Run that Influence uses, on a tiny model."""

    def __init__(self) -> None:
        self.config = _Config()
        X, y = self.tensors("train")
        model = build_model(ModelConfig(X.shape[1], (8,)), seed=0, init_bias=float(y.mean()))
        opt = torch.optim.Adam(model.parameters(), lr=2e-2)
        for _ in range(300):
            opt.zero_grad()
            objective(model, X, y, WD).backward()
            opt.step()
        self.model = model.eval()
        self.featurizer = _Featurizer()

    def split_keys(self) -> dict[str, set[str]]:
        return {"validation": set(self.keys("val")), "test": set(self.keys("test")), "training": set(self.keys("train"))}

    def tensors(self, part: str):
        return featurize(SPLITS[part]), logp(SPLITS[part])

    def keys(self, part: str) -> list[str]:
        return [canonicalize(s)[1] for s in SPLITS[part]]

    def smiles(self, part: str) -> list[str]:
        return [canonicalize(s)[0] for s in SPLITS[part]]



@pytest.fixture(scope="module")
def run():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield FakeRun()
    torch.set_num_threads(before)


@pytest.fixture
def external(tmp_path: Path) -> Path:
    rows = [("CCO", -0.1), ("c1ccccc1", 1.7), ("CC(=O)O", 0.1), ("C1CC", 0.5),  # 3: invalid (unclosed ring)
            ("OCC", -0.2),  # 4: same molecule as row 0
            ("CCCO", 0.4),  # 5: a validation molecule
            ("CCCCN", 0.9),  # 6: a test molecule
            ("CCCCCC", 2.5),  # 7: a training molecule
            ("CCCCCCCC", 3.3),
            ("Clc1ccccc1", 2.3),  # 9: chlorine, an element the training set lacks
            ("NCCO", -1.0)]
    path = tmp_path / "external.csv"
    pd.DataFrame(rows, columns=["smiles", "label"]).to_csv(path, index=False)
    return path


def quiet(**kw) -> InfluenceConfig:
    return InfluenceConfig(progress=False, **kw)


def run_influence(run, external, config: InfluenceConfig, out) -> dict:
    """What ``lipo-if influence`` does: fit, score the file, write the three files."""
    inf = Influence(run, config=config).fit()
    return write_scores(inf, inf.scores(external), out, source=str(external))


def test_pipeline_end_to_end(run, external, tmp_path):
    out = tmp_path / "out" / "scores.csv"
    summary = run_influence(run, external, quiet(solver="cg", tol=1e-10), out)
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["row", "smiles", "smiles_standardized", "label", "prediction", "residual", "score",
                                   "nn_similarity", "n_neighbors", "in_domain", "excluded"]
    assert frame["row"].tolist() == list(range(11))
    expected = {3: "invalid SMILES", 4: "duplicate row of row 0", 5: "duplicate of a validation molecule",
                6: "duplicate of a test molecule", 7: "duplicate of a training molecule",
                9: "element Cl not in the training set (C, N, O)"}
    assert {i: r for i, r in enumerate(frame["excluded"]) if r} == expected
    scored = frame[frame["excluded"] == ""]
    assert (frame.loc[list(expected), "score"] == "").all()  # excluded rows: empty score
    assert scored["score"].astype(float).notna().all() and len(scored) == 5
    assert frame.loc[3, "prediction"] == "" and frame.loc[4, "prediction"] != ""  # invalid: no prediction
    pred = scored["prediction"].astype(float)
    assert np.allclose(scored["residual"].astype(float), pred - scored["label"].astype(float), atol=1e-8)

    # The written scores are −(1/n) s·∇ℓ(z) for the validation gradient, recomputed independently.
    X_train, y_train = run.tensors("train")
    op = HessianOperator(run.model, X_train, y_train, WD)
    v = op.gradient(*run.tensors("val"))
    s = solve(op, v, "direct", InfluenceConfig(damping=summary["solver"]["info"]["damping"], progress=False)).s
    smiles = scored["smiles"].tolist()
    ref = influence_scores(op, s, featurize(smiles), torch.tensor(scored["label"].astype(float).to_numpy()),
                           method="reference")
    assert np.allclose(scored["score"].astype(float), ref.numpy(), rtol=1e-6, atol=1e-12)

    paths = output_paths(out)
    assert paths["histogram"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(paths["summary"].read_text())
    assert written["counts"] == summary["counts"]
    assert summary["counts"]["rows"] == 11 and summary["counts"]["scored"] == 5
    assert summary["counts"]["excluded_by_reason"]["duplicate row"] == 1
    assert summary["selection_saw_test_set"] is False and summary["n_train"] == 16 and summary["n_heldout"] == 4
    assert summary["solver"]["converged"] and summary["solver"]["info"]["lambda_max"] > 0
    assert summary["settings"]["hessian"] == "gauss-newton"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_pipeline_lissa_test_heldout_and_no_overlap_exclusion(run, external, tmp_path):
    out = tmp_path / "lissa.csv"
    summary = run_influence(run, external, quiet(heldout="test", exclude_overlap=False, depth=300), out)
    frame = pd.read_csv(out, keep_default_na=False)
    assert frame["excluded"].tolist()[3:5] == ["invalid SMILES", "duplicate row of row 0"]
    assert (frame["excluded"] == "").sum() == 8  # split members are scored when overlap is allowed (not row 9's Cl)
    assert summary["selection_saw_test_set"] is True
    assert any("saw the test set" in w for w in summary["warnings"])
    info = summary["solver"]["info"]
    assert info["scale"] > info["lambda_max"] and info["relative_residual"] < 1e-3
    assert len(summary["solver"]["trace"]) <= 201


def test_pipeline_float32_precision_matches_float64(run, external, tmp_path):
    """--precision float32: same exclusions, scores equal to the float64 ones up to float32 rounding
    (CG to a tight tolerance on both, so the solver does not add its own differences)."""
    common = dict(solver="cg", tol=1e-6, damping=0.1)
    low = run_influence(run, external, quiet(precision="float32", **common), tmp_path / "f32.csv")
    high = run_influence(run, external, quiet(**common), tmp_path / "f64.csv")
    assert low["settings"]["precision"] == "float32" and high["settings"]["precision"] == "float64"
    f32 = pd.read_csv(tmp_path / "f32.csv", keep_default_na=False)
    f64 = pd.read_csv(tmp_path / "f64.csv", keep_default_na=False)
    assert f32["excluded"].tolist() == f64["excluded"].tolist()
    scored = f64["excluded"] == ""
    a, b = f32.loc[scored, "score"].astype(float).to_numpy(), f64.loc[scored, "score"].astype(float).to_numpy()
    assert np.allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max())
    with pytest.raises(ValueError, match="precision must be one of"):
        quiet(precision="float16")


def test_pipeline_errors(run, external, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        Influence(run, config=quiet(solver="cg")).fit().scores(tmp_path / "missing.csv")
    with pytest.raises(RuntimeError, match="call fit"):
        Influence(run, progress=False).scores(external)
    with pytest.raises(ValueError, match="either config= or individual settings"):
        Influence(run, solver="cg", config=quiet())
    with pytest.raises(ValueError, match="heldout must be one of"):
        InfluenceConfig(heldout="train")
    with pytest.raises(ValueError, match="refusing to form a dense"):
        run_influence(run, external, quiet(solver="direct", max_params=10), tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    cfg = InfluenceConfig(params="layers.1.weight, layers.1.bias", damping="0.1")
    assert cfg.param_names == ["layers.1.weight", "layers.1.bias"] and cfg.damping == 0.1
    summary = run_influence(run, external, quiet(solver="direct", params="layers.1.weight,layers.1.bias"),
                            tmp_path / "block.csv")
    assert summary["n_params"] == 9


def test_scores_of_a_file_a_dataframe_lists_and_a_pool_are_the_same(run, external):
    inf = Influence(run, solver="cg", tol=1e-10, damping=0.05, progress=False).fit()
    from_file = inf.scores(external)
    frame = pd.read_csv(external)
    from_frame = inf.scores(frame)
    from_lists = inf.scores((frame["smiles"].tolist(), frame["label"].tolist()))
    pool = Pool.read(external)
    from_pool = inf.scores(pool)
    for other in (from_frame, from_lists, from_pool):
        pd.testing.assert_frame_equal(other, from_file)
    assert from_file["score"].notna().sum() == 5 and np.isfinite(from_file["score"].dropna()).all()
    assert inf.scores(pool) is not from_pool and pool.features(run.featurizer) is pool.features(run.featurizer)  # featurized once


def test_save_and_load_reuse_s_and_refuse_other_settings_or_models(run, external, tmp_path):
    inf = Influence(run, solver="cg", tol=1e-10, damping=0.05, progress=False).fit()
    inf.save(tmp_path / "inf")
    again = Influence.load(tmp_path / "inf", run)
    assert torch.equal(again.s, inf.s) and again.damping == inf.damping
    pd.testing.assert_frame_equal(again.scores(external), inf.scores(external))
    with pytest.raises(ValueError, match="other settings"):
        Influence.load(tmp_path / "inf", run, quiet(solver="cg", tol=1e-10, damping=0.5))
    other = FakeRun()
    with torch.no_grad():
        other.model.layers[0].weight.add_(0.01)
    with pytest.raises(ValueError, match="another model"):
        Influence.load(tmp_path / "inf", other)


@pytest.mark.parametrize("heldout", ["validation", "test"])
def test_function_space_solver_matches_cg(run, external, heldout):
    """solver='function-space' (NTK/Woodbury, one Cholesky) = CG on the same damped Gauss–Newton
    system to CG's tolerance, s and scores alike."""
    fs = Influence(run, heldout=heldout, solver="function-space", damping=0.1, progress=False).fit()
    cg = Influence(run, heldout=heldout, solver="cg", damping=0.1, tol=1e-12, max_iter=2000, progress=False).fit()
    assert torch.allclose(fs.s, cg.s, rtol=1e-7, atol=1e-9 * float(cg.s.abs().max()))
    a, b = fs.scores(external), cg.scores(external)
    assert a["excluded"].tolist() == b["excluded"].tolist()
    np.testing.assert_allclose(a["score"].dropna(), b["score"].dropna(), rtol=1e-6)
    assert fs.info["solver"]["info"]["relative_residual"] < 1e-8
    with pytest.raises(ValueError, match="Gauss–Newton system"):
        Influence(run, hessian="exact", solver="function-space", damping=1.0, progress=False).fit()
