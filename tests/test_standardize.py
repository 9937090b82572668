"""Molecule hygiene: standardization, the rejection rules (each with its reason), the label range,
the run's domain (elements, size, nearest-neighbour similarity) and the featurization time guard."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lipo_if import Influence
from lipo_if.data import DataError, molecule_table, read_molecule_csv
from lipo_if.domain import Domain
from lipo_if.featurize import slow_molecules
from lipo_if.pool import Pool
from lipo_if.select import eligible
from lipo_if.standardize import LOGD_RANGE, standardize

from conftest import real_data_dir
from test_experiment import tiny_data, tiny_run  # noqa: F401 — fixtures

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def reason_of(smiles: str) -> str:
    return standardize(smiles)[2]


@pytest.mark.parametrize("given, expected", [
    ("CC(=O)[O-].[Na+]", "CC(=O)O"),  # a salt: counter-ion stripped, the acid neutralized
    ("CCN.Cl", "CCN"),  # a hydrochloride
    ("O=C([O-])c1ccccc1", "O=C(O)c1ccccc1"),  # a charged form with a neutral one
    ("CC(=O)Oc1ccccc1C(=O)O.O.O", ASPIRIN),  # a hydrate: the solvent stripped
    ("C[N+](C)(C)C", "C[N+](C)(C)C"),  # quaternary ammonium: no neutral form, kept charged
])
def test_standardization_strips_salts_and_neutralizes(given, expected):
    smiles, key, reason = standardize(given)
    assert (smiles, reason) == (expected, "")
    assert key == expected  # (no stereo here)


@pytest.mark.parametrize("given, fragment", [
    ("[H][H]", "no carbon"),
    ("[Na+].[Cl-]", "no carbon"),
    ("N.N.Cl[Pt]Cl", "no carbon"),  # cisplatin: the metal disconnected, ammonia left
    ("*C", "dummy atom"),
    ("[*]c1ccccc1", "dummy atom"),
    ("[CH-]1C=CC=C1.[CH-]1C=CC=C1.[Fe+2]", "standardization failed"),  # ferrocene: cut from its metal, no valid molecule
    ("C1CC", "invalid SMILES"),
    ("", "invalid SMILES"),
    ("C" * 5000, "5000 heavy atoms, more than the limit"),
])
def test_each_rule_rejects_with_its_reason(given, fragment):
    smiles, key, reason = standardize(given)
    assert fragment in reason and smiles == "" and key == ""


def test_standardization_is_idempotent(tiny_data):  # noqa: F811
    lipo, external = tiny_data
    inputs = pd.read_csv(lipo)["smiles"].tolist() + pd.read_csv(external)["SMILES"].tolist() + [
        "CC(=O)[O-].[Na+]", "O=C([O-])c1ccccc1", "C[N+](C)(C)C", "O=[N+]([O-])c1ccccc1", "C[C@H](N)C(=O)O.Cl"]
    for given in inputs:
        once, key, reason = standardize(given)
        if reason:
            continue
        assert standardize(once)[:2] == (once, key), given


def test_a_salt_form_of_a_test_molecule_is_the_test_molecule(tiny_run):  # noqa: F811
    """The overlap guard compares standardized keys: a sodium salt of a test molecule is not new."""
    test_smiles = tiny_run.smiles("test")
    acid = next((s for s in test_smiles if "C(=O)O" in s), None)
    target = acid if acid is not None else test_smiles[0]
    salt = target.replace("C(=O)O", "C(=O)[O-]", 1) + ".[Na+]" if acid is not None else target + ".Cl"
    inf = Influence(tiny_run, solver="cg", damping=0.1, progress=False).fit()
    table = inf.scores(([salt, "CCCCCCCCCCO"], [1.0, 2.0]))
    assert table["excluded"].iloc[0] == "duplicate of a test molecule"
    assert table["smiles_standardized"].iloc[0] == target and table["smiles"].iloc[0] == salt  # input kept, standardized shown


def test_labels_outside_the_logd_range_are_excluded_or_fail_under_strict(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("smiles,label\nCCO,1.0\nCCCO,1e30\nCCCCO,-7\nCCCCCO,10\n")
    table = read_molecule_csv(path)
    low, high = LOGD_RANGE
    assert table["error"].tolist() == ["", f"label 1e+30 outside the plausible logD range [{low:g}, {high:g}]",
                                       f"label -7 outside the plausible logD range [{low:g}, {high:g}]", ""]
    with pytest.raises(DataError, match=r"pool\.csv: row 1 \(line 3\), column 'label': label 1e\+30 outside the plausible logD range"):
        read_molecule_csv(path, strict=True)
    assert molecule_table(pd.read_csv(path, dtype=str), path, label_range=None)["error"].eq("").all()


def test_the_domain_rules_and_the_nearest_neighbour_similarity(tiny_run):  # noqa: F811
    """Foreign elements and oversized molecules are not scored; nn_similarity is the largest
    Tanimoto to a training molecule (recomputed here), and below min_similarity a row is scored but not eligible."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    train = tiny_run.smiles("train")
    domain = Domain.from_smiles(train)
    largest = max(Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in train)
    assert domain.max_heavy_atoms == int(np.ceil(1.5 * largest))
    big = "C" * (domain.max_heavy_atoms + 1)
    smiles = ["C[Hg]C", "CC[Sn](CC)(CC)CC", big, "CCCCCCCCO", "OCC(O)CO", "c1ccc2ccccc2c1C"]
    reasons = domain.reasons([standardize(s)[0] for s in smiles])
    assert reasons[0].startswith("element Hg not in the training set") and reasons[1].startswith("element Sn not in")
    assert reasons[2] == f"{domain.max_heavy_atoms + 1} heavy atoms, more than this run's limit of {domain.max_heavy_atoms} " \
                         "(1.5 × its largest training molecule)"
    assert reasons[3:] == ["", "", ""]

    inf = Influence(tiny_run, solver="cg", damping=0.1, min_similarity=0.35, progress=False).fit()
    table = inf.scores((smiles, [1.0] * len(smiles)))
    assert table["excluded"].tolist()[:3] == reasons[:3]
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    train_fps = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in train]
    for i in (3, 4, 5):
        sims = np.array(DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(Chem.MolFromSmiles(table["smiles_standardized"][i])), train_fps))
        assert table["nn_similarity"][i] == pytest.approx(sims.max(), abs=1e-12)
        assert table["n_neighbors"][i] == int((sims >= 0.5).sum())
        assert bool(table["in_domain"][i]) == (sims.max() >= 0.35)
    assert not table["in_domain"][:3].any()  # excluded rows are never in domain
    assert set(eligible(table)["row"]) == {i for i in (3, 4, 5) if table["in_domain"][i]}
    assert table["in_domain"][3:].any() and not table["in_domain"][3:].all(), "the case needs rows on both sides of 0.35"
    off = Influence(tiny_run, solver="cg", damping=0.1, min_similarity=0.0, progress=False).fit().scores((smiles, [1.0] * len(smiles)))
    assert set(eligible(off)["row"]) == {3, 4, 5}  # the option off: every scored row is eligible


def test_the_time_guard_excludes_a_molecule_that_featurizes_too_long():
    """A 3,000-atom chain (let past the parse-time size limit on purpose) takes minutes in RDKit's
    descriptors; the guard kills its child at the deadline and the row is excluded with the reason."""
    from lipo_if.featurize import Featurizer, FeaturizerConfig

    featurizer = Featurizer(FeaturizerConfig("morgan_count+rdkit2d", n_bits=64), cache_dir=False).fit(["CCO", "CCCCO", "c1ccccc1O"])
    chain = "C" * 3000
    pool = Pool.from_smiles(["CCO", chain, "CCCCO"], [0.1, 1.0, 0.9])
    assert pool.table["error"].iloc[1].startswith("3000 heavy atoms")  # the parse-time limit catches it first
    frame = pd.DataFrame({"smiles": ["CCO", chain, "CCCCO"], "label": ["0.1", "1.0", "0.9"]})
    pool = Pool.from_frame(frame, max_heavy_atoms=10_000)
    pool.featurize_timeout = 2.0
    start = time.perf_counter()
    x = pool.features(featurizer)
    assert time.perf_counter() - start < 60  # loose: the guard's 2 s plus two small molecules
    assert pool.table["error"].tolist() == ["", "featurization took longer than 2 s (3000 heavy atoms)", ""]
    assert x.shape == (2, featurizer.dim)
    np.testing.assert_allclose(x.numpy(), featurizer.transform(["CCO", "CCCCO"]))
    assert slow_molecules(featurizer, ["CCO", "c1ccccc1" * 20], timeout=30.0) == {}  # big (120 atoms) but quick: kept


def test_a_5000_atom_chain_does_not_stall_the_influence_command(tiny_run, tiny_data, tmp_path):  # noqa: F811
    from lipo_if.cli import main

    _, external = tiny_data
    frame = pd.read_csv(external)
    frame = pd.concat([frame, pd.DataFrame({"SMILES": ["C" * 5000, "[H][H]", "*C", "[Na+].[Cl-]"], "Label": [1.0, 0.5, 0.5, 0.5]})],
                      ignore_index=True)
    path = tmp_path / "with_chain.csv"
    frame.to_csv(path, index=False)
    tiny_run.save(tmp_path / "run")
    out = tmp_path / "scores.csv"
    start = time.perf_counter()
    assert main(["-q", "influence", "--run", str(tmp_path / "run"), "--external", str(path), "--out", str(out),
                 "--solver", "cg", "--damping", "0.1"]) == 0
    assert time.perf_counter() - start < 120  # loose; it used to run for more than ten minutes
    written = pd.read_csv(out, keep_default_na=False)
    tail = written["excluded"].tolist()[-4:]
    assert tail[0].startswith("5000 heavy atoms") and "no carbon" in tail[1] and "dummy atom" in tail[2] and "no carbon" in tail[3]
    assert (written["score"].iloc[-4:] == "").all() and len(written) == len(frame)  # nothing lost, nothing scored


def test_the_canonical_tautomer_is_an_option():
    """Off by default (the keto and enol forms stay two molecules); on, they are one."""
    keto, enol = "CC(=O)C", "CC(O)=C"
    assert standardize(keto)[0] != standardize(enol)[0]
    assert standardize(keto, tautomer=True)[0] == standardize(enol, tautomer=True)[0]
    table = molecule_table(pd.DataFrame({"smiles": [keto, enol], "label": ["0.1", "0.2"]}), "<test>", tautomer=True)
    assert table["key"].nunique() == 1


def test_fingerprint_set_equals_rdkits_bulk_tanimoto_bit_for_bit(tiny_data):  # noqa: F811
    """FingerprintSet (one sparse × dense product) against RDKit's BulkTanimotoSimilarity, every
    element, across block boundaries (BLOCK + a few queries), with an empty fingerprint among the
    references and queries, and with a fingerprint of another length refused."""
    from rdkit import Chem, DataStructs
    from rdkit.DataStructs import ExplicitBitVect

    from lipo_if.domain import FingerprintSet, fingerprint_generator

    lipo, _ = tiny_data
    smiles = pd.read_csv(lipo)["smiles"].tolist()
    generator = fingerprint_generator()
    fps = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    rng = np.random.default_rng(5)
    references = [fps[i] for i in rng.choice(len(fps), 37, replace=False)] + [ExplicitBitVect(2048)]
    queries = [fps[i] for i in rng.choice(len(fps), FingerprintSet.BLOCK + 7)] + [ExplicitBitVect(2048)]
    fs = FingerprintSet(references)
    expected = np.array([DataStructs.BulkTanimotoSimilarity(q, references) for q in queries])
    got = fs.similarity(queries)
    assert got.shape == (len(queries), 38) and np.array_equal(got, expected)
    best, count = fs.nearest(queries, 0.3)
    assert np.array_equal(best, expected.max(axis=1)) and np.array_equal(count, (expected >= 0.3).sum(axis=1))
    assert 0 < count.sum() < count.size * 38, "the case needs pairs on both sides of the threshold"
    with pytest.raises(ValueError, match="has 1024 bits, expected 2048"):
        fs.similarity([ExplicitBitVect(1024)])


#: Structures where Cleanup's steps act: salts, zwitterions, N-oxides, azides and diazo groups,
#: metal–carbon and metal–heteroatom bonds, isotopes, explicit hydrogens, stereo.
CLEANUP_CASES = ["[Na+].[O-]C(=O)c1ccccc1", "C[N+](C)(C)C.[Cl-]", "O=[N+]([O-])c1ccccc1", "ON(=O)=O", "[O-][n+]1ccccc1", "C[Hg]C",
                 "c1ccccc1[Fe]", "[Fe+2].c1cc[cH-]c1.c1cc[cH-]c1", "CC(=O)O[Na]", "C1=CC=CC=C1[N+]#N", "C=[N+]=[N-]", "CN=N#N",
                 "OC(=O)CC[NH3+]", "[NH4+].[O-]S(=O)(=O)c1ccccc1", "Cl[Pt](Cl)([NH3])[NH3]", "[2H]C([2H])([2H])O", "[H]C([H])([H])O",
                 "C[C@H](N)C(=O)O", "F/C=C/F", "O=C([O-])c1ccccc1.O=C([O-])c1ccccc1.[Ca+2]", "C1CC1[Li]", "C[Mg]Br", "C[S+](C)[O-]",
                 "CCO[K]", "C[Zn]C", "OC(=O)c1ccccc1[O-].[Na+]", "C[C@H]1CC[C@@H](C(=O)O)CC1", "O[C@H]1CC[C@H](N)CC1", "CS(=O)(=O)[O-].[K+]"]


def test_cleanup_equals_rdkits_cleanup():
    """lipo_if's cleanup (tools built once) against rdMolStandardize.Cleanup (built per call): the
    same canonical SMILES on the real Lipophilicity and course molecules when present, the cases
    above, and every molecule again with its atoms in a shuffled order."""
    from rdkit import Chem
    from rdkit.Chem.MolStandardize import rdMolStandardize

    from lipo_if.standardize import cleanup

    smiles = list(CLEANUP_CASES)
    real = real_data_dir()
    for name in ("lipophilicity.csv", "external.csv"):
        if real is not None and (Path(real) / name).exists():
            table = pd.read_csv(Path(real) / name)
            smiles += table[next(c for c in table.columns if c.lower() == "smiles")].tolist()
    mols = [m for m in (Chem.MolFromSmiles(s) for s in smiles) if m is not None]
    rng = np.random.default_rng(0)
    mols += [Chem.RenumberAtoms(m, rng.permutation(m.GetNumAtoms()).tolist()) for m in mols]
    ours = [Chem.MolToSmiles(cleanup(m)) for m in mols]
    theirs = [Chem.MolToSmiles(rdMolStandardize.Cleanup(m)) for m in mols]
    assert ours == theirs
    assert sum(a != Chem.MolToSmiles(m) for a, m in zip(ours, mols)) >= 10, "the cases must exercise Cleanup's steps"
