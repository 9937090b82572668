"""A run's applicability domain: what its training set makes a molecule scorable and selectable.

Rules that need the training set (the structure rules of :mod:`lipo_if.standardize` do not):

- **elements**: a molecule holding an element no training molecule holds (a tin or mercury
  organometallic against Lipophilicity) is excluded from scoring — the model never saw what that
  atom does to logD;
- **size**: more heavy atoms than ``max_heavy_atoms`` (default ``ceil(1.5 × the training set's
  largest)``, 173 for Lipophilicity's 115) is excluded;
- **similarity**: every scored molecule gets its nearest-neighbour Tanimoto similarity to the
  training set (``nn_similarity``; Morgan radius 2, 2048 bits, RDKit's bulk Tanimoto) and the count
  of training molecules at or above ``neighbor_similarity`` (``n_neighbors``). A molecule below
  ``min_similarity`` is out of domain: scored and shown, but not selected (the ``in_domain``
  column; :func:`lipo_if.select.eligible` honours it). The thresholds are settings of
  :class:`lipo_if.influence.InfluenceConfig` (``min_similarity`` 0.3 by default, a common choice for
  Morgan-2 nearest-neighbour domains; what it does on the real data is in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .standardize import _rdkit


def fingerprint_generator():
    """Morgan radius 2, 2048 bits: the fingerprints of the domain's similarity and of the prefilter."""
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)


class Domain:
    """The training set's elements, size limit and fingerprints; build with :meth:`from_smiles`."""

    def __init__(self, elements: frozenset[str], max_heavy_atoms: int, fingerprints: list, neighbor_similarity: float,
                 limit_given: bool) -> None:
        self.elements, self.max_heavy_atoms, self.fingerprints = elements, max_heavy_atoms, fingerprints
        self.neighbor_similarity, self.limit_given = neighbor_similarity, limit_given

    @classmethod
    def from_smiles(cls, smiles: Sequence[str], max_heavy_atoms: int = 0, neighbor_similarity: float = 0.5) -> "Domain":
        """The domain of the (standardized) training SMILES; ``max_heavy_atoms`` 0 = 1.5 × the largest."""
        Chem = _rdkit()
        generator = fingerprint_generator()
        mols = [Chem.MolFromSmiles(s) for s in smiles]
        mols = [m for m in mols if m is not None]
        if not mols:
            raise ValueError("a domain needs at least one valid training molecule")
        elements = frozenset(a.GetSymbol() for m in mols for a in m.GetAtoms())
        largest = max(m.GetNumHeavyAtoms() for m in mols)
        limit = max_heavy_atoms or math.ceil(1.5 * largest)
        return cls(elements, limit, [generator.GetFingerprint(m) for m in mols], neighbor_similarity, bool(max_heavy_atoms))

    def _reason(self, mol) -> str:
        foreign = sorted({a.GetSymbol() for a in mol.GetAtoms()} - self.elements)
        if foreign:
            return (f"element{'s' if len(foreign) > 1 else ''} {', '.join(foreign)} not in the training set "
                    f"({', '.join(sorted(self.elements))})")
        heavy = mol.GetNumHeavyAtoms()
        if heavy > self.max_heavy_atoms:
            return (f"{heavy} heavy atoms, more than the limit of {self.max_heavy_atoms}" if self.limit_given else
                    f"{heavy} heavy atoms, more than this run's limit of {self.max_heavy_atoms} (1.5 × its largest training molecule)")
        return ""

    def _neighbours(self, mol, generator) -> tuple[float, int]:
        from rdkit import DataStructs

        sims = np.asarray(DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(mol), self.fingerprints))
        return float(sims.max()), int((sims >= self.neighbor_similarity).sum())

    def assess(self, smiles: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(reasons, nn_similarity [n] float64, n_neighbors [n] int64)`` of each (standardized)
        SMILES, each parsed once: why it is outside what the run can score (``""`` = fine; also
        for a SMILES that does not parse — the parser's error already says why), its largest
        Tanimoto similarity to a training molecule and its count of training neighbours (NaN / -1
        where it does not parse)."""
        Chem = _rdkit()
        generator = fingerprint_generator()
        reasons = [""] * len(smiles)
        nn = np.full(len(smiles), np.nan)
        count = np.full(len(smiles), -1, dtype=np.int64)
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s) if s else None
            if mol is not None:
                reasons[i] = self._reason(mol)
                nn[i], count[i] = self._neighbours(mol, generator)
        return reasons, nn, count

    def reasons(self, smiles: Sequence[str]) -> list[str]:
        """The ``reasons`` of :meth:`assess` alone."""
        Chem = _rdkit()
        mols = [Chem.MolFromSmiles(s) if s else None for s in smiles]
        return [self._reason(m) if m is not None else "" for m in mols]

    def similarity(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(nn_similarity, n_neighbors)`` of :meth:`assess` alone."""
        _, nn, count = self.assess(smiles)
        return nn, count
