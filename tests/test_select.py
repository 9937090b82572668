"""Selection strategies on synthetic score tables (no model needed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lipo_if.select import (
    SelectionConfig,
    eligible,
    load_scores,
    residual_outliers,
    resolve_k,
    select,
    sweep,
)


def scores_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Rows 0..n-1 with score = row − n/2 (rows below n/2 are helpful); rows 3 and 7 excluded."""
    rng = np.random.default_rng(seed)
    score = np.arange(n, dtype=float) - n / 2
    excluded = [""] * n
    excluded[3] = "duplicate of a validation molecule"
    excluded[7] = "invalid SMILES"
    score[7] = np.nan
    return pd.DataFrame({
        "row": np.arange(n), "smiles": ["C"] * n, "label": rng.normal(2, 1, n),
        "prediction": rng.normal(2, 1, n), "residual": rng.normal(0, 0.5, n), "score": score, "excluded": excluded,
    })


def test_top_k_takes_most_negative_and_never_excluded():
    table = scores_table()
    chosen = select(table, SelectionConfig(strategy="top_k", k=5, guard="none"))
    assert chosen == [0, 1, 2, 4, 5]  # 3 is excluded, so the fifth is row 5


def test_k_as_fraction_counts_eligible_rows():
    table = scores_table()
    n_eligible = len(eligible(table))
    assert n_eligible == 38
    assert resolve_k(0.25, n_eligible) == 10
    assert len(select(table, SelectionConfig(k=0.25, guard="none"))) == 10
    assert resolve_k(1000, n_eligible) == n_eligible


def test_threshold_and_fraction():
    table = scores_table()
    helpful = select(table, SelectionConfig(strategy="threshold", guard="none"))
    assert set(helpful) == {r for r in range(20) if r not in (3, 7)}
    assert select(table, SelectionConfig(strategy="threshold", threshold=-18, guard="none")) == [0, 1]
    assert select(table, SelectionConfig(strategy="top_fraction", fraction=0.1, guard="none")) == [0, 1, 2, 4]


def test_controls():
    table = scores_table()
    assert select(table, SelectionConfig(strategy="none")) == []
    everything = select(table, SelectionConfig(strategy="all"))
    assert set(everything) == set(range(40)) - {3, 7}
    a = select(table, SelectionConfig(strategy="random", k=10, seed=1))
    b = select(table, SelectionConfig(strategy="random", k=10, seed=1))
    c = select(table, SelectionConfig(strategy="random", k=10, seed=2))
    assert a == b and a != c and len(set(a)) == 10
    assert not {3, 7} & set(a)


def test_sweep_is_nested_for_top_k():
    table = scores_table()
    out = sweep(table, [2, 5, 10], SelectionConfig(guard="none"))
    assert [len(v) for v in out.values()] == [2, 5, 10]
    assert out[10][:5] == out[5] and out[5][:2] == out[2]


def test_guard_drops_a_wildly_wrong_label_whatever_its_score():
    """The crafted case: one row's label is off by 8 logD units and — as first-order influence can
    do — it has the most helpful score of all. The guarded selection must leave it out."""
    table = scores_table()
    table.loc[10, "residual"] = -8.0  # prediction − label: the label overshoots by 8
    table.loc[10, "score"] = -1e3     # ranked first by first-order influence
    unguarded = select(table, SelectionConfig(k=5, guard="none"))
    guarded = select(table, SelectionConfig(k=5, guard="residual"))
    assert unguarded[0] == 10
    assert 10 not in guarded and len(guarded) == 5
    assert 10 not in select(table, SelectionConfig(strategy="threshold"))
    mask = residual_outliers(table)
    assert mask.sum() == 1 and bool(mask.loc[10])


def test_guard_ignores_a_systematic_offset():
    """External labels can sit ≈ 0.5 above the model everywhere: that offset is not an outlier."""
    table = scores_table()
    table["residual"] = table["residual"] - 0.5
    assert residual_outliers(table).sum() == 0


def test_bad_config_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="k must be"):
        SelectionConfig(k=2.5)
    with pytest.raises(ValueError, match="strategy"):
        SelectionConfig(strategy="best")
    from lipo_if.data import DataError

    bad = tmp_path / "bad.csv"
    bad.write_text("row,score\n0,1\n")
    with pytest.raises(DataError, match="missing columns"):
        load_scores(bad)


def test_load_scores_round_trip(tmp_path):
    table = scores_table()
    path = tmp_path / "scores.csv"
    table.to_csv(path, index=False)
    loaded = load_scores(path)
    assert loaded.loc[0, "excluded"] == "" and loaded.loc[3, "excluded"].startswith("duplicate")
    assert select(loaded, SelectionConfig(k=3, guard="none")) == [0, 1, 2]
