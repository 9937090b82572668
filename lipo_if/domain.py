"""A run's applicability domain: what its training set makes a molecule scorable and selectable.

Rules that need the training set (the structure rules of :mod:`lipo_if.standardize` do not):

- **elements**: a molecule holding an element no training molecule holds (a tin or mercury
  organometallic against Lipophilicity) is excluded from scoring — the model never saw what that
  atom does to logD;
- **size**: more heavy atoms than ``max_heavy_atoms`` (default ``ceil(1.5 × the training set's
  largest)``, 173 for Lipophilicity's 115) is excluded;
- **similarity**: every scored molecule gets its nearest-neighbour Tanimoto similarity to the
  training set (``nn_similarity``; Morgan radius 2, 2048 bits; Tanimoto by :class:`FingerprintSet`,
  equal to RDKit's ``BulkTanimotoSimilarity`` bit for bit) and the count
  of training molecules at or above ``neighbor_similarity`` (``n_neighbors``). A molecule below
  ``min_similarity`` is out of domain: scored and shown, but not selected (the ``in_domain``
  column; :func:`lipo_if.select.eligible` honours it). The thresholds are settings of
  :class:`lipo_if.influence.InfluenceConfig` (``min_similarity`` 0.3 by default, a common choice for
  Morgan-2 nearest-neighbour domains; what it does on the real data is in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np

from .standardize import _rdkit

#: Bits of the fingerprints of the domain's similarity and of the prefilter.
FINGERPRINT_BITS = 2048


def fingerprint_generator():
    """Morgan radius 2, 2048 bits: the fingerprints of the domain's similarity and of the prefilter."""
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=FINGERPRINT_BITS)


def bit_matrix(fingerprints: Sequence, n_bits: int = FINGERPRINT_BITS):
    """``[n, n_bits]`` float32 0/1 CSR matrix (``scipy.sparse.csr_matrix``) of RDKit bit vectors of
    ``n_bits`` bits: a Morgan-2 fingerprint sets ≈ 2 % of its bits."""
    from scipy.sparse import csr_matrix

    on_bits = []
    for i, fp in enumerate(fingerprints):
        if fp.GetNumBits() != n_bits:
            raise ValueError(f"fingerprint {i} has {fp.GetNumBits()} bits, expected {n_bits}")
        on_bits.append(np.fromiter(fp.GetOnBits(), dtype=np.int32))
    indptr = np.zeros(len(on_bits) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in on_bits], out=indptr[1:])
    indices = np.concatenate(on_bits) if on_bits else np.zeros(0, dtype=np.int32)
    return csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(on_bits), n_bits))


class FingerprintSet:
    """Reference fingerprints (e.g. a training set's) for the Tanimoto similarity of many query
    molecules at once: ``|q ∧ t|`` for every pair is one product of the queries' sparse 0/1 matrix
    with the references' dense one (float32, exact: the counts are integers ≤ the bit length), then
    ``c / (|q| + |t| − c)`` in float64 — the value RDKit's ``BulkTanimotoSimilarity`` gives, bit for
    bit (a test), at a fraction of the cost of RDKit's loop over the references for each query
    (benchmarks/RESULTS.md): the query matrix is sparse, so the product costs ≈ one row addition per
    set bit. 0 where both fingerprints are empty."""

    #: queries per matrix product (small enough for its ``[block, n]`` intermediates to stay in cache)
    BLOCK = 128

    def __init__(self, fingerprints: Sequence, n_bits: int = FINGERPRINT_BITS) -> None:
        self.n_bits = n_bits
        self._bits_t = np.ascontiguousarray(bit_matrix(fingerprints, n_bits).T.toarray())  # [bits, n] dense
        self._counts = self._bits_t.sum(0)  # [n] float32, exact

    def __len__(self) -> int:
        return self._bits_t.shape[1]

    def blocks(self, queries: Sequence) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, [b, len(self)] float64 similarities)`` of ``queries[start:start + b]``, block by block."""
        for start in range(0, len(queries), self.BLOCK):
            q = bit_matrix(queries[start:start + self.BLOCK], self.n_bits)
            common = np.asarray(q @ self._bits_t)  # [b, n] |q ∧ t|, exact small integers in float32
            union = np.diff(q.indptr).astype(np.float32)[:, None] + self._counts[None, :] - common
            # the integers promoted to float64 before the division, as RDKit divides; union 0 ⇒ common 0 ⇒ 0
            yield start, np.divide(common, np.maximum(union, 1.0), dtype=np.float64)

    def similarity(self, queries: Sequence) -> np.ndarray:
        """``[len(queries), len(self)]`` float64 Tanimoto similarity of each query bit vector to each
        reference."""
        out = np.empty((len(queries), len(self)))
        for start, block in self.blocks(queries):
            out[start:start + len(block)] = block
        return out

    def nearest(self, queries: Sequence, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """``(largest similarity [m] float64, count of references with similarity ≥ threshold [m] int64)``
        of each query, without the whole ``[m, len(self)]`` matrix."""
        best, count = np.empty(len(queries)), np.empty(len(queries), dtype=np.int64)
        for start, block in self.blocks(queries):
            best[start:start + len(block)] = block.max(axis=1)
            count[start:start + len(block)] = (block >= threshold).sum(axis=1)
        return best, count


class Domain:
    """The training set's elements, size limit and fingerprints; build with :meth:`from_smiles`."""

    def __init__(self, elements: frozenset[str], max_heavy_atoms: int, fingerprints: FingerprintSet, neighbor_similarity: float,
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
        return cls(elements, limit, FingerprintSet([generator.GetFingerprint(m) for m in mols]), neighbor_similarity, bool(max_heavy_atoms))

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
        parsed, fingerprints = [], []
        for i, s in enumerate(smiles):
            mol = Chem.MolFromSmiles(s) if s else None
            if mol is not None:
                reasons[i] = self._reason(mol)
                parsed.append(i)
                fingerprints.append(generator.GetFingerprint(mol))
        if parsed:
            nn[parsed], count[parsed] = self.fingerprints.nearest(fingerprints, self.neighbor_similarity)
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
