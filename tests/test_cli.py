"""The lipo-if command line, through main(argv)."""
from __future__ import annotations

import json

import numpy as np

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


def test_influence_subcommand_end_to_end(tmp_path, small_lipo_csv, capsys):
    run_dir = tmp_path / "run"
    assert main(["-q", "train", "--data", str(small_lipo_csv), "--out", str(run_dir), *FAST[:-1]]) == 0
    external = tmp_path / "external.csv"
    # row 0 repeats a training-set molecule, row 2 is invalid, row 4 repeats row 3
    external.write_text("SMILES,Label\nCCO,0.1\nCCCCCCCC,3.5\nC1CC,1\nOc1ccc(Cl)cc1,2.4\nOc1ccc(Cl)cc1,2.6\nCC(C)(C)c1ccccc1,3.9\n")
    out = tmp_path / "scores.csv"
    code = main(["-q", "influence", "--run", str(run_dir), "--external", str(external), "--out", str(out), "--depth", "300"])
    assert code == 0, capsys.readouterr().err
    import pandas as pd

    scores = pd.read_csv(out, keep_default_na=False)
    assert scores["row"].tolist() == [0, 1, 2, 3, 4, 5]
    assert {"row", "smiles", "label", "score", "excluded", "prediction", "residual"} <= set(scores.columns)
    excluded = dict(zip(scores["row"], scores["excluded"]))
    assert excluded[2] == "invalid SMILES" and excluded[4].startswith("duplicate row") and excluded[1] == "" and excluded[5] == ""
    assert "training" in excluded[0] or "validation" in excluded[0] or "test" in excluded[0]
    scored = scores[scores["excluded"] == ""]
    assert len(scored) == 3
    # the command's scores are the in-memory API's, for the same settings (LiSSA is seeded)
    from lipo_if import Influence, load_run

    run = load_run(run_dir)
    table = Influence(run, depth=300, progress=False).fit().scores(external)
    np.testing.assert_allclose(scored["score"].astype(float), table.loc[table["excluded"] == "", "score"], rtol=1e-9)
    np.testing.assert_allclose(scored["prediction"].astype(float), run.predict(scored["smiles"].tolist()), rtol=1e-5)
    assert (tmp_path / "scores_hist.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "scores_summary.json").read_text())
    assert summary["counts"]["scored"] == 3


def test_influence_subcommand_bad_inputs(tmp_path, small_lipo_csv, capsys):
    run_dir = tmp_path / "run"
    assert main(["-q", "train", "--data", str(small_lipo_csv), "--out", str(run_dir), *FAST[:-1]]) == 0
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("SMILES\nCCO\n")
    assert main(["-q", "influence", "--run", str(run_dir), "--external", str(nolabel), "--out", str(tmp_path / "s.csv")]) == 2
    assert "no label column found" in capsys.readouterr().err
    external = tmp_path / "ext.csv"
    external.write_text("SMILES,Label\nCCCCCCCC,3.5\nOc1ccc(Cl)cc1,2.4\n")
    # a scale far below λmax makes LiSSA diverge: the message must say which knob to turn
    code = main(["-q", "influence", "--run", str(run_dir), "--external", str(external), "--out", str(tmp_path / "s.csv"),
                 "--scale", "1e-4", "--damping", "0.01", "--depth", "200"])
    err = capsys.readouterr().err
    assert code == 2 and "scale" in err, err
    assert not (tmp_path / "s.csv").exists()  # nothing half-written
