"""Featurizers: golden fingerprint bits, standardization from training data, caching."""
from __future__ import annotations

import numpy as np
import pytest

from lipo_if.featurize import Featurizer, FeaturizerConfig, MorganFeaturizer, RDKitDescriptorFeaturizer

# RDKit Morgan generator, radius 2, 2048 bits (golden values; a change means features changed).
ETHANOL_BITS = [80, 222, 294, 807, 1057, 1410]
PHENOL_COUNTS = {65: 2, 389: 1, 745: 1, 807: 1, 1088: 3, 1199: 2, 1380: 1, 1602: 1, 1750: 2, 1778: 1, 1873: 5}


def test_golden_morgan_bits():
    fp = MorganFeaturizer(radius=2, n_bits=2048)(["CCO"])
    assert fp.shape == (1, 2048) and np.flatnonzero(fp[0]).tolist() == ETHANOL_BITS
    assert set(np.unique(fp)) == {0.0, 1.0}


def test_golden_morgan_counts_are_log1p():
    fp = MorganFeaturizer(radius=2, n_bits=2048, counts=True)(["c1ccccc1O"])[0]
    assert {int(i): int(round(np.expm1(fp[i]))) for i in np.flatnonzero(fp)} == PHENOL_COUNTS


def test_radius_and_size_change_features():
    a = MorganFeaturizer(radius=1, n_bits=1024)(["CCCCCCO"])
    b = MorganFeaturizer(radius=3, n_bits=1024)(["CCCCCCO"])
    assert a.shape == (1, 1024) and a.sum() < b.sum()


def test_descriptors_finite_after_transform():
    smiles = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"]
    raw = RDKitDescriptorFeaturizer()(smiles)
    assert raw.shape[0] == 4 and raw.shape[1] > 100
    feat = Featurizer(FeaturizerConfig("rdkit2d"), cache_dir=False).fit(smiles[:3])
    x = feat.transform(smiles)
    assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() <= 6.0


def test_standardization_uses_training_statistics_only():
    train = ["CCO", "CCCO", "CCCCO", "CCCCCO"]
    feat = Featurizer(FeaturizerConfig("rdkit2d"), cache_dir=False).fit(train)
    names = feat.column_names()
    j = names.index("MolMR")
    x_train = feat.transform(train)
    assert x_train[:, j].mean() == pytest.approx(0.0, abs=1e-5)
    assert x_train[:, j].std() == pytest.approx(1.0, abs=1e-4)
    big = feat.transform(["CCCCCCCCCCO"])[0, j]
    assert big > 2.0  # far from the training mean, in training standard deviations


def test_default_featurizer_layout():
    feat = Featurizer(cache_dir=False).fit(["CCO", "c1ccccc1O"])
    x = feat.transform(["CCO"])
    assert feat.config.name == "morgan_count+rdkit2d" and feat.n_sparse == 2048
    assert x.shape == (1, feat.dim) and np.flatnonzero(x[0, :2048]).tolist() == ETHANOL_BITS


def test_transform_before_fit_fails():
    with pytest.raises(RuntimeError, match="before fit"):
        Featurizer(cache_dir=False).transform(["CCO"])


@pytest.mark.parametrize("name,msg", [("ecfp", "unknown featurizer part"), ("morgan+morgan_count", "only one Morgan variant")])
def test_bad_featurizer_names(name, msg):
    with pytest.raises(ValueError, match=msg):
        FeaturizerConfig(name)


def test_disk_cache_is_keyed_by_config_and_reused(tmp_path, monkeypatch):
    feat = Featurizer(FeaturizerConfig("morgan", n_bits=512), cache_dir=tmp_path).fit([])
    first = feat.transform(["CCO", "CCN"])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("morgan-")
    # a new featurizer with the same config reads the cache instead of calling RDKit
    again = Featurizer(FeaturizerConfig("morgan", n_bits=512), cache_dir=tmp_path)
    monkeypatch.setattr(MorganFeaturizer, "__call__", lambda self, s: pytest.fail("recomputed a cached molecule"))
    np.testing.assert_array_equal(again.transform(["CCN", "CCO"]), first[::-1])
    monkeypatch.undo()
    Featurizer(FeaturizerConfig("morgan", n_bits=256), cache_dir=tmp_path).transform(["CCO"])
    assert len(list(tmp_path.iterdir())) == 2  # another config, another cache file


def test_corrupt_cache_is_rebuilt(tmp_path):
    feat = Featurizer(FeaturizerConfig("morgan", n_bits=64), cache_dir=tmp_path)
    feat.transform(["CCO"])
    cache_file = next(tmp_path.iterdir())
    cache_file.write_bytes(b"garbage")
    x = Featurizer(FeaturizerConfig("morgan", n_bits=64), cache_dir=tmp_path).transform(["CCO"])
    assert x.sum() > 0


def test_descriptors_equal_rdkit_own_functions():
    """Every column, the shared EState pass included, equals RDKit's function on the molecule
    (NaN where RDKit fails or overflows, as the featurizer maps them)."""
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    smiles = ["CCO", "C", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[N+](C)(C)C", "O=C([O-])c1ccccc1", "ClC(Cl)(Cl)Br",
              "CC1=C(C(=O)N(N1C)c1ccccc1)N(C)CS(=O)(=O)O", "c1ccc2c(c1)ccc1ccccc12", "C" * 60]
    got = RDKitDescriptorFeaturizer()(smiles)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        for j, (name, function) in enumerate(Descriptors._descList):
            try:
                value = float(function(mol))
            except Exception:  # noqa: BLE001
                value = float("nan")
            if not np.isfinite(value) or abs(value) > 1e12:
                value = float("nan")
            assert (np.isnan(got[i, j]) and np.isnan(value)) or got[i, j] == value, (s, name, got[i, j], value)


def test_the_fast_descriptor_set_is_the_full_set_without_the_costly_families():
    from lipo_if.descriptors import COSTLY_DESCRIPTORS
    from lipo_if.featurize import FeaturizerConfig

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[N+](C)(C)C"]
    full, fast = RDKitDescriptorFeaturizer(), RDKitDescriptorFeaturizer("fast")
    names = full.column_names()
    kept = [j for j, name in enumerate(names) if name not in COSTLY_DESCRIPTORS]
    assert fast.column_names() == [names[j] for j in kept] and fast.dim == full.dim - len(COSTLY_DESCRIPTORS)
    assert "qed" not in fast.column_names() and "MolLogP" in fast.column_names()
    np.testing.assert_array_equal(fast(smiles), full(smiles)[:, kept])
    with pytest.raises(ValueError, match="descriptors must be one of all, fast, lean"):
        FeaturizerConfig(descriptors="cheap")


def test_the_lean_set_is_fast_without_its_dropped_families():
    from lipo_if.descriptors import LEAN_DROPPED_FAMILIES, family_of

    fast, lean = RDKitDescriptorFeaturizer("fast").column_names(), RDKitDescriptorFeaturizer("lean").column_names()
    assert lean == [n for n in fast if family_of(n) not in LEAN_DROPPED_FAMILIES] and len(lean) == 138
    assert "MolLogP" in lean and "fr_benzene" in lean and "PEOE_VSA1" not in lean
    assert RDKitDescriptorFeaturizer("lean-fragments").column_names() == [n for n in lean if not n.startswith("fr_")]


def test_every_rdkit_descriptor_is_in_exactly_one_family():
    from rdkit.Chem import Descriptors

    from lipo_if.descriptors import DESCRIPTOR_FAMILIES

    for name, _ in Descriptors._descList:
        assert sum(member(name) for member in DESCRIPTOR_FAMILIES.values()) == 1, name


def test_a_set_minus_families_drops_exactly_those_families_in_rdkit_order():
    from lipo_if.descriptors import DESCRIPTOR_FAMILIES, family_of
    from lipo_if.featurize import FeaturizerConfig

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[N+](C)(C)C", "O=[N+]([O-])c1ccc(Cl)cc1"]
    fast = RDKitDescriptorFeaturizer("fast")
    fewer = RDKitDescriptorFeaturizer("fast-fragments-peoe_vsa")
    names = fast.column_names()
    kept = [j for j, name in enumerate(names) if family_of(name) not in ("fragments", "peoe_vsa")]
    assert fewer.column_names() == [names[j] for j in kept]
    assert sum(name.startswith("fr_") for name in names) == 85 and not any(n.startswith(("fr_", "PEOE")) for n in fewer.column_names())
    np.testing.assert_array_equal(fewer(smiles), fast(smiles)[:, kept])
    assert set(RDKitDescriptorFeaturizer("all-bcut").column_names()) == {
        n for n in RDKitDescriptorFeaturizer().column_names() if not n.startswith("BCUT2D")}
    with pytest.raises(ValueError, match="unknown descriptor family 'fragment'.*choose from fragments"):
        FeaturizerConfig(descriptors="fast-fragment")
    with pytest.raises(ValueError, match="leaves no descriptor"):
        RDKitDescriptorFeaturizer("all-" + "-".join(DESCRIPTOR_FAMILIES))


def test_a_run_saved_before_the_descriptor_sets_loads_with_all_descriptors():
    from lipo_if.featurize import Featurizer, FeaturizerConfig

    assert FeaturizerConfig().descriptors == "fast"
    state = Featurizer(FeaturizerConfig(descriptors="all"), cache_dir=False).state_dict()
    del state["config"]["descriptors"]  # the format of runs saved before the field existed
    assert Featurizer.from_state(state, cache_dir=False).config.descriptors == "all"


def test_molecules_parsed_once_featurize_as_their_smiles():
    """raw_uncached on RDKit molecules (a streamed pool's worker parses each SMILES once for every
    block) equals raw_uncached on the SMILES, every element, for the vector and the graph featurizer."""
    from rdkit import Chem

    from lipo_if.graph import GraphFeaturizer, GraphFeaturizerConfig

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "O=C(O)c1ccccc1Cl", "CCN(CC)CCOC(=O)c1ccc(N)cc1"]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    vector = Featurizer(FeaturizerConfig(), cache_dir=False)
    assert np.array_equal(vector.raw_uncached(mols), vector.raw_uncached(smiles), equal_nan=True)
    graphs = GraphFeaturizer(GraphFeaturizerConfig(mol_features="none"), cache_dir=False)
    for a, b in zip(graphs.raw_uncached(mols), graphs.raw_uncached(smiles)):
        assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3] is None and b[3] is None
