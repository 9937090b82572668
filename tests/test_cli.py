"""The lipo-if command line, through main(argv)."""
from __future__ import annotations

import json

import pytest

from lipo_if.cli import main

FAST = ["--hidden", "16", "--max-epochs", "20", "--patience", "5", "--n-bits", "128", "-q"]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for sub in ("train", "predict", "evaluate", "demo"):
        assert sub in out


def test_train_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--weight-decay", "--split", "--seed", "--featurizer", "--radius", "--n-bits", "--patience"):
        assert option in out


def test_train_writes_run_directory(tmp_path, small_lipo_csv, capsys):
    out = tmp_path / "run"
    code = main(["-q", "train", "--data", str(small_lipo_csv), "--out", str(out), "--seed", "2", "--split", "scaffold", *FAST[:-1]])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "scaffold" and metrics["seed"] == 2 and metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 64
    split = json.loads((out / "split.json").read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(64))
    assert "test RMSE" in capsys.readouterr().out

    preds = tmp_path / "pred.csv"
    (tmp_path / "in.csv").write_text("SMILES\nCCO\nnot-a-smiles\n")
    assert main(["predict", "--run", str(out), "--input", str(tmp_path / "in.csv"), "--out", str(preds)]) == 0
    lines = preds.read_text().splitlines()
    assert lines[0] == "row,smiles_input,smiles,prediction,error" and lines[2].endswith("invalid SMILES")


def test_train_data_dir_from_environment(tmp_path, small_lipo_csv, monkeypatch):
    monkeypatch.setenv("LIPO_IF_DATA", str(small_lipo_csv.parent))
    assert main(["-q", "train", "--out", str(tmp_path / "r"), *FAST[:-1]]) == 0


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "lipophilicity.csv"
    bad.write_text("smiles,exp\nCCO,1\nCCN,oops\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "row 1 (line 3), column 'exp': label 'oops' is not a number" in err
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), "--lr", "-1"]) == 2
    assert "lr must be positive" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
