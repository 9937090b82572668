"""Pools of any size (lipo_if.stream): chunked, parallel, incremental output equal to the one-table
path; gzip input; a run killed by a real signal and started again gives the same file."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lipo_if import Influence
from lipo_if.influence.outputs import output_paths, write_scores
from lipo_if.stream import StreamConfig, parts_dir, score_file

from test_experiment import tiny_data, tiny_run  # noqa: F401 — fixtures


def pool_file(path: Path, n_chains: int = 14) -> Path:
    """Ethers and alcohols C_i–O–C_j (unique molecules), with repeats, an invalid row, a salt and a
    training molecule spread through the file."""
    rows = [("C" * i + "O" + "C" * j, 0.3 * i - 0.2 * j) for i in range(1, n_chains + 1) for j in range(0, n_chains)]
    rows[5] = ("C1CC", 1.0)
    rows[17] = (rows[3][0], 2.0)  # a repeat of row 3, in a later chunk
    rows[40] = ("CCO.[Na+].[Cl-]", 0.0)  # ethanol (a training molecule) after standardization
    rows[41] = ("CCO", 0.1)
    pd.DataFrame(rows, columns=["smiles", "label"]).to_csv(path, index=False)
    return path


def test_streamed_output_equals_the_one_table_path(tiny_run, tmp_path):  # noqa: F811
    source = pool_file(tmp_path / "pool.csv")
    inf = Influence(tiny_run, solver="cg", damping=0.1, progress=False).fit()
    write_scores(inf, inf.scores(source), tmp_path / "whole.csv", source=str(source))
    summary = score_file(inf, source, tmp_path / "streamed.csv", StreamConfig(chunk_rows=7, workers=2))
    whole, streamed = (tmp_path / "whole.csv").read_bytes(), (tmp_path / "streamed.csv").read_bytes()
    assert streamed == whole
    frame = pd.read_csv(tmp_path / "streamed.csv", keep_default_na=False)
    assert frame.loc[17, "excluded"] == "duplicate row of row 3"
    assert frame.loc[40, "excluded"] == frame.loc[41, "excluded"] == "duplicate of a training molecule"  # the salt form too
    whole_summary = json.loads(output_paths(tmp_path / "whole.csv")["summary"].read_text())
    assert summary["counts"] == whole_summary["counts"]
    assert [h["row"] for h in summary["most_helpful"]] == [h["row"] for h in whole_summary["most_helpful"]]
    assert summary["stream"]["chunks"] == -(-len(frame) // 7)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("streamed.csv.")]  # no partial, keys or progress left
    gz = tmp_path / "pool.csv.gz"
    gz.write_bytes(gzip.compress(source.read_bytes()))
    score_file(inf, gz, tmp_path / "from_gz.csv", StreamConfig(chunk_rows=50, workers=1))
    assert (tmp_path / "from_gz.csv").read_bytes() == whole


def _influence_cmd(run_dir: Path, source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lipo_if.cli", "-q", "influence", "--run", str(run_dir), "--external", str(source),
            "--out", str(out), "--solver", "cg", "--damping", "0.1", "--chunk-rows", "10", "--workers", "1"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_resumes_to_the_same_output(tiny_run, tmp_path, sig):  # noqa: F811
    tiny_run.save(tmp_path / "run")
    source = pool_file(tmp_path / "pool.csv", n_chains=22)  # 484 rows, 49 chunks
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference.csv"
    subprocess.run(_influence_cmd(tmp_path / "run", source, reference), check=True, env=env, timeout=600)
    out = tmp_path / "killed.csv"
    parts = parts_dir(out)
    proc = subprocess.Popen(_influence_cmd(tmp_path / "run", source, out), env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("*.csv"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the pool larger"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0 and not out.exists()
    done = len(list(parts.glob("*.csv")))
    assert 3 <= done < 49
    subprocess.run(_influence_cmd(tmp_path / "run", source, out), check=True, env=env, timeout=600)
    assert out.read_bytes() == reference.read_bytes()  # no row lost, none duplicated, same numbers
    assert json.loads(output_paths(out)["summary"].read_text())["counts"] == json.loads(output_paths(reference)["summary"].read_text())["counts"]
    assert not parts.exists()


def test_large_molecules_come_back_to_the_time_guard(tiny_run):  # noqa: F811
    """Molecules above the guard's size are featurized in the main process under the time guard: the
    features equal the one-table path's, and a molecule past the deadline is excluded with the reason."""
    from lipo_if.stream import prepare_chunk

    smiles = ["CCO", "C" * 120, "CCCO", "c1ccccc1" * 15, "C1CC", "CCCCO"]
    frame = pd.DataFrame({"smiles": smiles, "label": ["0.5"] * len(smiles)})
    featurizer = tiny_run.featurizer
    table, x = prepare_chunk(None, featurizer, 0, frame, 2, 60.0, None, None, "<test>")
    valid = table["error"] == ""
    assert valid.tolist() == [True, True, True, True, False, True]
    assert x.numpy().tobytes() == featurizer.transform(table.loc[valid, "smiles"].tolist()).tobytes()
    table, x = prepare_chunk(None, featurizer, 0, frame, 2, 1e-4, None, None, "<test>")
    assert table.loc[1, "error"].startswith("featurization took longer than") and table.loc[3, "error"].startswith("featurization took")
    assert x.numpy().tobytes() == featurizer.transform(["CCO", "CCCO", "CCCCO"]).tobytes()


def test_count_rows_for_the_progress_bar(tmp_path):
    from lipo_if.stream import count_rows

    source = pool_file(tmp_path / "pool.csv")
    n = len(pd.read_csv(source))
    assert count_rows(source) == n
    gz = tmp_path / "pool.csv.gz"
    gz.write_bytes(gzip.compress(source.read_bytes().rstrip(b"\n")))  # no newline after the last row
    assert count_rows(gz) == n
    assert count_rows(tmp_path / "missing.csv") is None


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_fails_on_an_implausible_label_in_a_later_chunk(tiny_run, tmp_path, workers):  # noqa: F811
    from lipo_if.data import DataError

    source = pool_file(tmp_path / "pool.csv")
    frame = pd.read_csv(source)
    frame.loc[30, "label"] = 42.0
    frame.to_csv(source, index=False)
    inf = Influence(tiny_run, solver="cg", damping=0.1, progress=False).fit()
    with pytest.raises(DataError, match=r"row 30 .*label 42 outside the plausible logD range.*--strict"):
        score_file(inf, source, tmp_path / "strict.csv", StreamConfig(chunk_rows=7, workers=workers), strict=True)
    summary = score_file(inf, source, tmp_path / "lenient.csv", StreamConfig(chunk_rows=7, workers=workers))
    assert any("outside the plausible logD range" in r for r in summary["counts"]["excluded_by_reason"])
