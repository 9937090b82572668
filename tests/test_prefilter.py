"""FastIF's prefilter (lipo_if.prefilter, ``--prefilter K`` of lipo-if influence): the K nearest pool
rows of every held-out molecule, kept while the pool streams past, against a brute-force search;
the streamed scores of the kept rows equal the full run's, and the others carry the reason."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lipo_if import Influence
from lipo_if.domain import fingerprint_generator
from lipo_if.prefilter import NearestPool, prefilter_reason
from lipo_if.stream import StreamConfig, score_file

from test_experiment import tiny_data, tiny_run  # noqa: F401 — fixtures
from test_stream import pool_file


def brute_force(sims: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k most similar per held-out molecule (``sims`` [n, H]), ties to the lower row."""
    chosen = set()
    for h in range(sims.shape[1]):
        order = sorted(range(sims.shape[0]), key=lambda r: (-sims[r, h], r))
        chosen.update(order[:k])
    return np.array(sorted(chosen))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_nearest_pool_equals_brute_force_in_any_pieces(k):
    gen = np.random.default_rng(k)
    n, heldout = 97, 13
    sims = np.round(gen.random((n, heldout)), 1)  # rounded: many ties
    expected = brute_force(sims, k)
    for sizes in ([97], [1] * 97, [5, 40, 2, 50]):
        nearest = NearestPool(["CCO"] * heldout, k)
        start = 0
        for size in sizes:
            nearest.update(np.arange(start, start + size), sims[start:start + size])
            start += size
        assert nearest.chosen().tolist() == expected.tolist(), sizes
    nearest = NearestPool(["CCO"] * heldout, k)  # two "ranks" holding interleaved rows, merged
    for part in (np.arange(0, n, 2), np.arange(1, n, 2)):
        other = NearestPool(["CCO"] * heldout, k)
        other.update(part, sims[part])
        nearest.merge(other.rows, other.similarity)
    assert nearest.chosen().tolist() == expected.tolist()
    with pytest.raises(ValueError, match="k must be ≥ 1"):
        NearestPool(["CCO"], 0)


def test_prefiltered_stream_scores_only_the_nearest(tiny_run, tmp_path):  # noqa: F811
    from rdkit import Chem, DataStructs

    source = pool_file(tmp_path / "pool.csv")
    inf = Influence(tiny_run, solver="cg", damping=0.1, progress=False).fit()
    score_file(inf, source, tmp_path / "full.csv", StreamConfig(chunk_rows=50, workers=1))
    k = 2
    score_file(inf, source, tmp_path / "pre.csv", StreamConfig(chunk_rows=7, workers=2, prefilter=k))
    score_file(inf, source, tmp_path / "pre_one_chunk.csv", StreamConfig(chunk_rows=1000, workers=1, prefilter=k))
    assert (tmp_path / "pre.csv").read_bytes() == (tmp_path / "pre_one_chunk.csv").read_bytes()  # chunking does not matter
    full, pre = (pd.read_csv(tmp_path / f, keep_default_na=False) for f in ("full.csv", "pre.csv"))
    # independent search: fingerprints of every valid standardized pool molecule against the validation set
    valid = full[~full["excluded"].isin(["invalid SMILES"]) & (full["smiles_standardized"] != "")]
    generator = fingerprint_generator()
    queries = [generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in tiny_run.smiles("val")]
    sims = np.array([DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(Chem.MolFromSmiles(s)), queries)
                     for s in valid["smiles_standardized"]])
    nearest_rows = set(valid["row"].to_numpy()[brute_force(sims, k)].tolist())
    left_out = pre["excluded"] == prefilter_reason(k, "validation")
    assert left_out.any() and set(pre.loc[~left_out & (full["excluded"] == ""), "row"]) <= nearest_rows
    assert set(pre.loc[left_out, "row"]).isdisjoint(nearest_rows)
    assert not full.loc[left_out, "excluded"].eq("invalid SMILES").any()  # a rejected row keeps its own reason
    scored = pre["excluded"] == ""
    assert scored.sum() >= 3
    np.testing.assert_array_equal(pre.loc[scored, "score"].astype(float), full.loc[scored, "score"].astype(float))
    pd.testing.assert_series_equal(pre.loc[left_out, "smiles_standardized"], full.loc[left_out, "smiles_standardized"])  # the first pass's tables
    same = ~left_out
    pd.testing.assert_frame_equal(pre[same], full[same])  # every row the prefilter keeps is as in the full run
