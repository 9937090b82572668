"""FastIF's prefilter (Guo et al. 2021): score only the pool molecules that are among the K nearest
neighbours of some held-out molecule.

Guo et al. restrict the influence search for a test point to its k nearest training points; here
the points searched are the pool's molecules and the queries are the held-out set's (validation by
default). Nearness is Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits — those of
:mod:`lipo_if.domain`, through its :class:`~lipo_if.domain.FingerprintSet`: RDKit's bulk similarity's
values by one matrix product). Chosen by a race (``benchmarks/prefilter_race.py``, RESULTS.md): an
exact L2 search in the model's input space keeps as many of the full ranking's most helpful
molecules (88 against 86 of 100 at K = 5) but must featurize every pool molecule first, the RDKit
descriptors the prefilter exists to skip — 8× the first pass's cost a molecule.

:class:`NearestPool` keeps, for each of the ``H`` held-out molecules, the ``K`` most similar pool
rows seen so far (``[H, K]`` similarities and rows), fed piece by piece in file order; ties go to
the earlier row, so the result does not depend on the chunking. Its memory is ``H × K``, not the
pool's. The chosen rows are the union over the held-out molecules (at most ``H × K``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .domain import FingerprintSet, fingerprint_generator
from .standardize import _rdkit


def prefilter_reason(k: int, heldout: str) -> str:
    """The ``excluded`` reason of a pool row the prefilter leaves out."""
    return f"prefilter: not among the {k} nearest pool molecules of any {heldout} molecule"


class NearestPool:
    """The ``k`` nearest pool rows of each held-out molecule (Tanimoto, Morgan-2), kept as the pool
    streams past."""

    def __init__(self, heldout_smiles: Sequence[str], k: int) -> None:
        if k < 1:
            raise ValueError(f"prefilter k must be ≥ 1, got {k}")
        Chem = _rdkit()
        generator = fingerprint_generator()
        mols = [Chem.MolFromSmiles(s) for s in heldout_smiles]
        self.queries = FingerprintSet([generator.GetFingerprint(m) for m in mols if m is not None])
        if not len(self.queries):
            raise ValueError("the prefilter needs at least one valid held-out molecule")
        self.k = k
        self.similarity = np.full((len(self.queries), k), -np.inf)  # [H, K], best first
        self.rows = np.full((len(self.queries), k), -1, dtype=np.int64)

    def fresh(self) -> "NearestPool":
        """An empty pool with the same queries and ``k`` (for one piece of the file, merged later)."""
        other = object.__new__(NearestPool)
        other.queries, other.k = self.queries, self.k
        other.similarity = np.full_like(self.similarity, -np.inf)
        other.rows = np.full_like(self.rows, -1)
        return other

    def similarities(self, smiles: Sequence[str]) -> np.ndarray:
        """``[m, H]`` Tanimoto similarity of each (valid, standardized) pool SMILES to each held-out molecule."""
        Chem = _rdkit()
        generator = fingerprint_generator()
        return self.queries.similarity([generator.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles])

    def update(self, rows: np.ndarray, similarity: np.ndarray) -> None:
        """Fold in pool ``rows`` ``[m]`` (later in the file than every row seen before, in file order)
        with their ``[m, H]`` similarities."""
        if len(rows) == 0:
            return
        self.merge(np.asarray(rows, dtype=np.int64), np.asarray(similarity).T)

    def merge(self, rows: np.ndarray, similarity: np.ndarray) -> None:
        """Fold in candidates given per held-out molecule: ``similarity`` ``[H, m]`` and ``rows``
        ``[m]`` or ``[H, m]``; ties go to the lower row."""
        rows = np.broadcast_to(rows, similarity.shape)
        all_sim = np.concatenate([self.similarity, similarity], axis=1)
        all_rows = np.concatenate([self.rows, rows], axis=1)
        key_rows = np.where(all_rows < 0, np.iinfo(np.int64).max, all_rows)
        order = np.lexsort((key_rows, -all_sim), axis=1)[:, : self.k]  # by similarity, then row
        self.similarity = np.take_along_axis(all_sim, order, axis=1)
        self.rows = np.take_along_axis(all_rows, order, axis=1)

    def clear(self) -> None:
        """Forget every candidate (before merging the ranks' gathered results)."""
        self.similarity.fill(-np.inf)
        self.rows.fill(-1)

    def chosen(self) -> np.ndarray:
        """The rows kept for scoring: the union of every held-out molecule's nearest ``k``, sorted."""
        return np.unique(self.rows[self.rows >= 0])
