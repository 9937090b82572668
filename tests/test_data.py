"""Loading, cleaning, error messages and splits (lipo_if.data)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lipo_if.data import (
    DataError,
    Split,
    atomic_write_text,
    canonicalize,
    load_dataset,
    load_lipophilicity,
    make_split,
    read_molecule_csv,
    resolve_lipophilicity_path,
    scaffold_of,
)

from conftest import write_csv


def test_detects_columns_and_canonicalizes(tmp_path):
    path = write_csv(tmp_path / "a.csv", "SMILES,Label", ["OCC,1.5", "c1ccccc1,2.0"])
    table = read_molecule_csv(path)
    assert table["smiles"].tolist() == ["CCO", "c1ccccc1"]
    assert table["label"].tolist() == [1.5, 2.0]
    assert table["row"].tolist() == [0, 1]


def test_explicit_columns(tmp_path):
    path = write_csv(tmp_path / "a.csv", "mol,value,exp", ["CCO,1.0,9", "CCN,2.0,9"])
    table = read_molecule_csv(path, smiles_col="mol", label_col="value")
    assert table["label"].tolist() == [1.0, 2.0]


def test_invalid_smiles_dropped_and_reported(tmp_path, caplog):
    path = write_csv(tmp_path / "a.csv", "smiles,exp", ["CCO,1", "C1CC,2", "not_a_smiles,3", "CCN,4"])
    with caplog.at_level("WARNING"):
        ds = load_dataset(path)
    assert ds.smiles == ["CCO", "CCN"]
    assert ds.report["n_invalid"] == 2 and ds.report["invalid_rows"] == [1, 2]
    assert "dropped 2 rejected rows" in caplog.text and "row 1 'C1CC': invalid SMILES" in caplog.text


def test_invalid_smiles_strict_fails(tmp_path):
    path = write_csv(tmp_path / "a.csv", "smiles,exp", ["CCO,1", "C1CC,2"])
    with pytest.raises(DataError, match=r"a\.csv: 1 rejected rows \(first: row 1, 'C1CC': invalid SMILES\)"):
        load_dataset(path, strict=True)


@pytest.mark.parametrize("label,pattern", [("nan", "not a finite number"), ("", "is not a number"), ("abc", "'abc' is not a number"), ("inf", "not a finite number")])
def test_bad_label_names_file_row_column(tmp_path, label, pattern):
    path = write_csv(tmp_path / "bad.csv", "smiles,exp", ["CCO,1", f"CCN,{label}"])
    with pytest.raises(DataError, match=r"bad\.csv: row 1 \(line 3\), column 'exp'.*" + pattern):
        read_molecule_csv(path)


def test_missing_column(tmp_path):
    path = write_csv(tmp_path / "a.csv", "smiles,value", ["CCO,1"])
    with pytest.raises(DataError, match=r"a\.csv: no label column found .*columns are \['smiles', 'value'\]"):
        read_molecule_csv(path)
    with pytest.raises(DataError, match=r"column 'pIC50' \(label\) not found"):
        read_molecule_csv(path, label_col="pIC50")
    path2 = write_csv(tmp_path / "b.csv", "mol,exp", ["CCO,1"])
    with pytest.raises(DataError, match=r"b\.csv: no SMILES column found"):
        read_molecule_csv(path2)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_molecule_csv(empty)
    header_only = write_csv(tmp_path / "h.csv", "smiles,exp", [])
    with pytest.raises(DataError, match=r"h\.csv: file has a header but no data rows"):
        read_molecule_csv(header_only)
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_molecule_csv(tmp_path / "nope.csv")


def test_all_invalid_is_an_error(tmp_path):
    path = write_csv(tmp_path / "a.csv", "smiles,exp", ["xx,1", "yy,2"])
    with pytest.raises(DataError, match="no valid molecules"):
        load_dataset(path)


def test_stereo_duplicates_are_merged_with_mean_label(tmp_path):
    rows = ["C[C@H](N)C(=O)O,1.0", "C[C@@H](N)C(=O)O,2.0", "CC(N)C(=O)O,3.0", "CCO,5"]
    ds = load_dataset(write_csv(tmp_path / "a.csv", "smiles,exp", rows))
    assert len(ds) == 2
    assert ds.labels[0] == pytest.approx(2.0) and ds.rows[0] == [0, 1, 2]
    assert ds.report["n_duplicate_groups"] == 1 and ds.report["n_duplicate_rows"] == 3
    kept = load_dataset(write_csv(tmp_path / "b.csv", "smiles,exp", rows), dedupe=False)
    assert len(kept) == 4


def test_random_split_is_seeded_disjoint_and_keeps_groups(small_lipo_csv):
    ds = load_dataset(small_lipo_csv, dedupe=False)
    a, b, c = make_split(ds, "random", 0), make_split(ds, "random", 0), make_split(ds, "random", 1)
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    parts = [set(a.train), set(a.val), set(a.test)]
    assert sum(map(len, parts)) == len(ds) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert abs(len(a.train) - 0.8 * len(ds)) <= 1 and len(a.val) >= 5 and len(a.test) >= 5
    for part in parts:  # a stereo-insensitive key never straddles two parts
        keys = {ds.keys[i] for i in part}
        assert all({ds.keys[i] for i in other}.isdisjoint(keys) for other in parts if other is not part)


def test_scaffold_split_separates_scaffolds(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    split = make_split(ds, "scaffold", 3)
    scaf = {p: {scaffold_of(ds.smiles[i]) for i in getattr(split, p)} for p in ("train", "val", "test")}
    assert scaf["train"].isdisjoint(scaf["test"]) and scaf["train"].isdisjoint(scaf["val"])
    assert scaffold_of("Cc1ccccc1") == "c1ccccc1" and scaffold_of("CCO") == ""


def test_split_roundtrip(tmp_path, small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    split = make_split(ds, "random", 7)
    split.save(tmp_path / "split.json", ds)
    loaded = Split.load(tmp_path / "split.json")
    assert loaded == split
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["keys"]["test"] == [ds.keys[i] for i in split.test]


def test_bad_split_arguments(small_lipo_csv):
    ds = load_dataset(small_lipo_csv)
    with pytest.raises(ValueError, match="unknown split method 'cluster'"):
        make_split(ds, "cluster")
    with pytest.raises(ValueError, match="summing to 1"):
        make_split(ds, "random", fractions=(0.5, 0.1, 0.1))


def test_loader_order_explicit_then_env_then_download(tmp_path, small_lipo_csv, monkeypatch):
    monkeypatch.setenv("LIPO_IF_DATA", str(small_lipo_csv.parent))
    assert resolve_lipophilicity_path(cache_dir=tmp_path / "cache") == small_lipo_csv
    other = write_csv(tmp_path / "other.csv", "smiles,exp", ["CCO,1"])
    assert resolve_lipophilicity_path(path=other) == other
    # no data dir: the file comes from a (local file) URL into the cache, checksum verified
    monkeypatch.delenv("LIPO_IF_DATA")
    cache = tmp_path / "cache"
    import hashlib

    digest = hashlib.sha256(small_lipo_csv.read_bytes()).hexdigest()
    got = resolve_lipophilicity_path(cache_dir=cache, url=small_lipo_csv.as_uri(), sha256=digest)
    assert got == cache / "lipophilicity.csv" and got.read_bytes() == small_lipo_csv.read_bytes()
    assert len(load_lipophilicity(cache_dir=cache)) == 64  # now served from the cache


def test_download_checksum_mismatch_leaves_nothing(tmp_path, small_lipo_csv, monkeypatch):
    monkeypatch.delenv("LIPO_IF_DATA", raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="expected 0000"):
        resolve_lipophilicity_path(cache_dir=cache, url=small_lipo_csv.as_uri(), sha256="0000")
    assert list(cache.iterdir()) == []


def test_no_data_anywhere_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("LIPO_IF_DATA", raising=False)
    with pytest.raises(DataError, match=r"put lipophilicity\.csv in a directory and pass --data-dir DIR or set LIPO_IF_DATA"):
        resolve_lipophilicity_path(cache_dir=tmp_path / "cache", url=(tmp_path / "missing.csv").as_uri())


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "x.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_canonicalize():
    assert canonicalize("OCC") == ("CCO", "CCO")
    assert canonicalize("C[C@H](N)C(=O)O")[1] == "CC(N)C(=O)O"
    assert canonicalize("C1CC") is None and canonicalize("") is None


def test_atomic_write_json_is_strict_json(tmp_path):
    from lipo_if.io import atomic_write_json

    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": float("nan"), 1: [np.float64(2.5), np.int64(3), (float("inf"), "x")]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) == {
        "a": None, "1": [2.5, 3, [None, "x"]]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left behind


def test_standardized_table_is_cached_exactly_and_invalidated_by_the_file(tmp_path, small_lipo_csv, monkeypatch, caplog):
    """load_dataset keeps the standardized table: a second load reads it back value for value
    without standardizing; an edit of the file, another option, or a broken cache file makes it
    standardize again; cache=False writes nothing."""
    import lipo_if.data as data

    cache = tmp_path / "tables"
    first = load_dataset(small_lipo_csv, cache=cache)
    uncached = load_dataset(small_lipo_csv, cache=False)
    assert len(list(cache.glob("*.json"))) == 1
    table = data.read_molecule_csv(small_lipo_csv)
    assert tuple(table.columns) == data.TABLE_COLUMNS  # the cache keeps every column the reader gives

    def refuse(*args, **kwargs):
        raise AssertionError("standardized again")

    with monkeypatch.context() as m:
        m.setattr(data, "molecule_table", refuse)
        again = load_dataset(small_lipo_csv, cache=cache)
        with pytest.raises(AssertionError, match="standardized again"):  # another option: another key
            load_dataset(small_lipo_csv, cache=cache, tautomer=True)
    for got in (again, uncached):
        assert got.smiles == first.smiles and got.keys == first.keys and got.rows == first.rows and got.report == first.report
        assert np.array_equal(got.labels, first.labels)

    lines = small_lipo_csv.read_text().splitlines()
    small_lipo_csv.write_text("\n".join(lines[:-1] + ["Xnew,1.234567890123,CCCCCCCCO"]) + "\n")  # the file changed
    edited = load_dataset(small_lipo_csv, cache=cache)
    assert "CCCCCCCCO" in edited.smiles and edited.labels[edited.smiles.index("CCCCCCCCO")] == 1.234567890123
    assert len(list(cache.glob("*.json"))) == 2

    for path in cache.glob("*.json"):
        path.write_text("{not json")
    with caplog.at_level("WARNING"):
        repaired = load_dataset(small_lipo_csv, cache=cache)
    assert "unreadable cached table" in caplog.text and repaired.smiles == edited.smiles
    assert np.array_equal(repaired.labels, edited.labels)

    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("LIPO_IF_TABLE_CACHE", str(env_cache))
    load_dataset(small_lipo_csv, cache=False)
    assert not env_cache.exists()
    load_dataset(small_lipo_csv)  # the default: the folder $LIPO_IF_TABLE_CACHE names
    assert len(list(env_cache.glob("*.json"))) == 1
    with pytest.raises(DataError, match="not found|does not exist|missing"):
        load_dataset(tmp_path / "absent.csv", cache=cache)
