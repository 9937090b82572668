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


# --------------------------------------------------------------------------- the greedy guard


def quadratic_case(bad_residual: float, m: int = 6, n_good: int = 12, seed: int = 0):
    """A crafted second-order model (what :meth:`lipo_if.influence.Influence.group_model` computes from a run).

    Validation errors ``e`` (prediction − label). Candidate j changes the validation predictions
    by ``A_j = r_j u_j`` (r_j: its residual, u_j: its direction), so ``score_j = (2/m) eᵀA_j`` and
    ``M = (2/m) AᵀA``. The last candidate (row ``n_good``) has a wildly wrong label: residual
    ``bad_residual``, in exactly the direction that corrects the validation errors — its
    first-order score ``−|r|·‖e‖/m`` is the most negative of all, and the more so the wronger
    the label.
    """
    from lipo_if.select import GroupModel

    rng = np.random.default_rng(seed)
    e = rng.normal(0, 1, m)
    U = rng.normal(0, 0.3, (n_good, m)) - 0.15 * e / np.linalg.norm(e)  # mildly helpful, mostly noise
    r = rng.normal(0, 0.4, n_good)
    A = np.vstack([r[:, None] * U, (abs(bad_residual) * -0.5 * e / np.linalg.norm(e))[None, :]]).T  # [m, N]
    scores = (2.0 / m) * e @ A
    M = (2.0 / m) * A.T @ A
    n = n_good + 1
    table = pd.DataFrame({"row": np.arange(n), "smiles": ["C"] * n, "label": 0.0, "prediction": 0.0,
                          "residual": np.r_[r, bad_residual], "score": scores, "excluded": [""] * n})
    return table, GroupModel(np.arange(n), scores, M), n_good


@pytest.mark.parametrize("bad_residual", [-8.0, -30.0, -100.0, -1000.0])
def test_greedy_guard_leaves_out_a_wildly_wrong_label_whatever_its_first_order_score(bad_residual):
    """First-order influence ranks the wrong label first (its score is ∝ its residual); the greedy
    guard's second-order self-term grows with the residual squared, so it never picks it — at any
    k, and more firmly the wronger the label. The residual guard is not involved (guard="greedy")."""
    table, group, bad = quadratic_case(bad_residual)
    assert table["score"].idxmin() == bad  # the failure: most helpful by first order …
    assert select(table, SelectionConfig(k=3, guard="none"))[0] == bad  # … so unguarded top-k picks it first
    assert bad in select(table, SelectionConfig(strategy="threshold", guard="none"))
    assert group.scores[bad] + 0.5 * group.interactions[bad, bad] > 0  # predicted harmful at second order
    for k in range(1, len(table) + 1):
        chosen = select(table, SelectionConfig(k=k, guard="greedy"), group)
        assert bad not in chosen
    assert bad not in select(table, SelectionConfig(strategy="threshold", guard="greedy"), group)
    greedy = select(table, SelectionConfig(k=3, guard="greedy"), group)
    top = select(table, SelectionConfig(k=3, guard="none"))
    assert group.objective(greedy) < group.objective(top)  # and the greedy group is predicted better


def test_greedy_rescores_after_each_addition():
    """Two copies of the same helpful molecule: each alone is the best pick, together they
    overshoot — after the first is added the second's marginal turns positive and greedy takes
    an independent, individually weaker molecule instead (top-k takes both copies)."""
    from lipo_if.select import GroupModel, greedy_select

    m = 4
    e = np.array([1.0, 0.6, 0.0, 0.0])  # validation errors (prediction − label)
    a = np.array([-0.9, 0.0, 0.0, 0.0])  # rows 0 and 1: correct most of error 0
    c = np.array([0.0, -0.3, 0.0, 0.0])  # row 2: corrects half of error 1
    A = np.vstack([a, a, c]).T
    scores = (2.0 / m) * e @ A
    M = (2.0 / m) * A.T @ A
    group = GroupModel(np.arange(3), scores, M)
    table = pd.DataFrame({"row": np.arange(3), "smiles": "C", "label": 0.0, "prediction": 0.0, "residual": 0.0,
                          "score": scores, "excluded": ""})
    assert scores[0] == scores[1] < scores[2] < 0
    assert select(table, SelectionConfig(k=2, guard="none")) == [0, 1]
    assert greedy_select(group, [0, 1, 2], 2) == [0, 2]
    assert group.objective([0, 2]) < group.objective([0, 1])
    assert greedy_select(group, [0, 1, 2], None) == [0, 2]  # and it stops: the copy is predicted harmful now


def test_greedy_guard_needs_a_group_model_and_combines_with_the_residual_filter():
    table, group, bad = quadratic_case(-0.5)  # a mild label: the self-term does not exclude it
    with pytest.raises(ValueError, match="GroupModel"):
        select(table, SelectionConfig(guard="greedy"))
    table.loc[bad, "residual"] = -50.0  # now a robust residual outlier
    both = select(table, SelectionConfig(k=len(table), guard="residual+greedy"), group)
    assert bad not in both and set(both) <= set(range(bad))
    assert SelectionConfig(guard="residual+greedy").guard == "residual+greedy"
    with pytest.raises(ValueError, match="guard"):
        SelectionConfig(guard="second-order")
