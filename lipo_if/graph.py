"""Molecules as graphs for the message-passing model: atom and bond features, and a batch of graphs.

A molecule becomes ``A`` atom rows and ``B = 2 × bonds`` *directed* bond rows (each bond ``u–v`` is
``u→v`` and ``v→u``), the input of the directed message passing of :mod:`lipo_if.dmpnn` (Yang et
al. 2019). :class:`MolGraphs` holds any number of molecules in one set of tensors, each molecule's
atoms and bonds contiguous (so a per-molecule sum over bond rows is a segment sum by ``bond_ptr``);
it is indexed like a tensor (``graphs[idx]``, ``len(graphs)``), which is all the training loop and
the prediction code ask of a model input.

Features (one-hot lists end in an "other" slot, so no atom or bond is unrepresentable):

- atom: element (H, B, C, N, O, F, Si, P, S, Cl, Se, Br, I, other), heavy-atom degree 0–5, formal
  charge −2…+2, chiral tag (4), total H count 0–4, hybridization (S, SP, SP2, SP3, SP3D, SP3D2),
  aromatic, in a ring, mass / 100;
- bond: type (single, double, triple, aromatic), conjugated, in a ring, stereo (none, any, Z, E,
  cis, trans).

:class:`GraphFeaturizer` turns SMILES into :class:`MolGraphs`, with the package's vector featurizer
(e.g. the RDKit descriptors, standardized on the training split) as optional molecule-level
features ``mol_x``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from .data import DataError
from .featurize import Featurizer, FeaturizerConfig, as_mol

ELEMENTS = (1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 34, 35, 53)
DEGREES = (0, 1, 2, 3, 4, 5)
FORMAL_CHARGES = (-2, -1, 0, 1, 2)
CHIRAL_TAGS = (0, 1, 2, 3)
H_COUNTS = (0, 1, 2, 3, 4)
HYBRIDIZATIONS = ("S", "SP", "SP2", "SP3", "SP3D", "SP3D2")
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
BOND_STEREO = ("STEREONONE", "STEREOANY", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS")

ATOM_DIM = sum(len(c) + 1 for c in (ELEMENTS, DEGREES, FORMAL_CHARGES, CHIRAL_TAGS, H_COUNTS, HYBRIDIZATIONS)) + 3
BOND_DIM = len(BOND_TYPES) + 1 + 2 + len(BOND_STEREO) + 1


def _one_hot(value, choices: Sequence) -> list[float]:
    """``len(choices) + 1`` values: 1 at ``value``'s slot, or in the last ("other") slot."""
    out = [0.0] * (len(choices) + 1)
    out[choices.index(value) if value in choices else len(choices)] = 1.0
    return out


def atom_features(atom) -> list[float]:
    """``ATOM_DIM`` features of an RDKit atom."""
    return (
        _one_hot(atom.GetAtomicNum(), ELEMENTS) + _one_hot(atom.GetDegree(), DEGREES)
        + _one_hot(atom.GetFormalCharge(), FORMAL_CHARGES) + _one_hot(int(atom.GetChiralTag()), CHIRAL_TAGS)
        + _one_hot(atom.GetTotalNumHs(), H_COUNTS) + _one_hot(str(atom.GetHybridization()), HYBRIDIZATIONS)
        + [float(atom.GetIsAromatic()), float(atom.IsInRing()), atom.GetMass() / 100.0]
    )


def bond_features(bond) -> list[float]:
    """``BOND_DIM`` features of an RDKit bond."""
    return (
        _one_hot(str(bond.GetBondType()), BOND_TYPES) + [float(bond.GetIsConjugated()), float(bond.IsInRing())]
        + _one_hot(str(bond.GetStereo()), BOND_STEREO)
    )


def _graph_arrays(smiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(atom_x [A, ATOM_DIM], bond_x [B, BOND_DIM], ends [B, 2])`` of one molecule (a SMILES or an
    RDKit molecule); directed bond ``2i`` is bond i's begin→end and ``2i + 1`` its end→begin (local
    atom indices in ``ends``)."""
    try:
        mol = as_mol(smiles)
    except DataError:
        raise DataError(f"cannot build the graph of invalid SMILES {smiles!r}") from None
    atom_x = np.array([atom_features(a) for a in mol.GetAtoms()], dtype=np.float32).reshape(-1, ATOM_DIM)
    bond_rows, ends = [], []
    for bond in mol.GetBonds():
        u, v, f = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_features(bond)
        bond_rows += [f, f]
        ends += [(u, v), (v, u)]
    bond_x = np.array(bond_rows, dtype=np.float32).reshape(-1, BOND_DIM)
    return atom_x, bond_x, np.array(ends, dtype=np.int64).reshape(-1, 2)


def _ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenated ``arange(starts[i], starts[i] + counts[i])`` for every i (int64)."""
    total = int(counts.sum())
    offsets = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(starts - offsets, counts, output_size=total) + torch.arange(total)


def _ptr(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])


@dataclass
class MolGraphs:
    """``M`` molecular graphs in one set of tensors (molecule i's atoms are rows
    ``atom_ptr[i]:atom_ptr[i+1]``, its directed bonds ``bond_ptr[i]:bond_ptr[i+1]``).

    ``atom_x`` ``[A, ATOM_DIM]``, ``bond_x`` ``[B, BOND_DIM]``; ``bond_src`` / ``bond_dst`` ``[B]``
    the (global) source and target atom of each directed bond, ``bond_rev`` ``[B]`` the index of
    its reverse bond; ``atom_ptr`` / ``bond_ptr`` ``[M + 1]`` int64; ``mol_x`` ``[M, F]`` molecule-level
    features (``F`` may be 0).
    """

    atom_x: torch.Tensor
    bond_x: torch.Tensor
    bond_src: torch.Tensor
    bond_dst: torch.Tensor
    bond_rev: torch.Tensor
    atom_ptr: torch.Tensor
    bond_ptr: torch.Tensor
    mol_x: torch.Tensor

    @classmethod
    def from_arrays(cls, graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], mol_x: np.ndarray) -> "MolGraphs":
        """Collate per-molecule ``(atom_x, bond_x, ends)`` (:func:`_graph_arrays`) and ``mol_x`` ``[M, F]``."""
        n_atoms = torch.tensor([g[0].shape[0] for g in graphs], dtype=torch.int64)
        n_bonds = torch.tensor([g[1].shape[0] for g in graphs], dtype=torch.int64)
        atom_ptr, bond_ptr = _ptr(n_atoms), _ptr(n_bonds)
        cat = lambda arrays, width, dtype: (torch.from_numpy(np.concatenate(arrays)) if arrays else torch.zeros(0, width, dtype=dtype))
        atom_x = cat([g[0] for g in graphs], ATOM_DIM, torch.float32)
        bond_x = cat([g[1] for g in graphs], BOND_DIM, torch.float32)
        ends = cat([g[2] for g in graphs], 2, torch.int64) + torch.repeat_interleave(atom_ptr[:-1], n_bonds).unsqueeze(1)
        # directed bonds come in pairs (2i, 2i + 1) inside each molecule, so the reverse is index ^ 1
        rev = torch.arange(int(bond_ptr[-1])) ^ 1
        return cls(atom_x, bond_x, ends[:, 0].contiguous(), ends[:, 1].contiguous(), rev, atom_ptr, bond_ptr,
                   torch.as_tensor(mol_x, dtype=torch.float32).reshape(len(graphs), -1))

    def __len__(self) -> int:
        return self.atom_ptr.numel() - 1

    @property
    def n_atoms(self) -> torch.Tensor:
        """``[M]`` atoms per molecule."""
        return self.atom_ptr[1:] - self.atom_ptr[:-1]

    @property
    def n_bonds(self) -> torch.Tensor:
        """``[M]`` directed bonds per molecule."""
        return self.bond_ptr[1:] - self.bond_ptr[:-1]

    @property
    def atom_mol(self) -> torch.Tensor:
        """``[A]`` the molecule of each atom row."""
        return torch.repeat_interleave(torch.arange(len(self)), self.n_atoms, output_size=self.atom_x.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.atom_x.dtype

    def __getitem__(self, index) -> "MolGraphs":
        """The molecules ``index`` (an int, a slice, integer indices or a boolean mask), in that order."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise IndexError(f"a boolean mask over {len(self)} molecules must have shape ({len(self)},), got {tuple(index.shape)}")
            index = index.nonzero().flatten()
        return self.index_select(0, index.to(torch.int64).reshape(-1))

    def detach(self) -> "MolGraphs":
        return MolGraphs(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def index_select(self, dim: int, index: torch.Tensor) -> "MolGraphs":
        if dim != 0:
            raise ValueError(f"MolGraphs are indexed by molecule (dim 0), got dim {dim}")
        if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise IndexError(f"molecule index out of range for {len(self)} molecules")
        index = index % max(len(self), 1)
        n_atoms, n_bonds = self.n_atoms[index], self.n_bonds[index]
        atom_ptr, bond_ptr = _ptr(n_atoms), _ptr(n_bonds)
        atoms = _ranges(self.atom_ptr[index], n_atoms)
        bonds = _ranges(self.bond_ptr[index], n_bonds)
        atom_shift = torch.repeat_interleave(atom_ptr[:-1] - self.atom_ptr[index], n_bonds, output_size=bonds.numel())
        bond_shift = torch.repeat_interleave(bond_ptr[:-1] - self.bond_ptr[index], n_bonds, output_size=bonds.numel())
        return MolGraphs(self.atom_x[atoms], self.bond_x[bonds], self.bond_src[bonds] + atom_shift,
                         self.bond_dst[bonds] + atom_shift, self.bond_rev[bonds] + bond_shift, atom_ptr, bond_ptr,
                         self.mol_x[index])

    @classmethod
    def cat(cls, parts: Sequence["MolGraphs"]) -> "MolGraphs":
        """One batch of the molecules of ``parts``, in order."""
        parts = list(parts)
        if not parts:
            raise ValueError("MolGraphs.cat needs at least one batch")
        atom_off = _ptr(torch.tensor([p.atom_x.shape[0] for p in parts], dtype=torch.int64))
        bond_off = _ptr(torch.tensor([p.bond_x.shape[0] for p in parts], dtype=torch.int64))
        join_ptr = lambda ptrs, offs: torch.cat([ptrs[0][:1]] + [p[1:] + o for p, o in zip(ptrs, offs)])
        return cls(
            torch.cat([p.atom_x for p in parts]), torch.cat([p.bond_x for p in parts]),
            torch.cat([p.bond_src + o for p, o in zip(parts, atom_off)]),
            torch.cat([p.bond_dst + o for p, o in zip(parts, atom_off)]),
            torch.cat([p.bond_rev + o for p, o in zip(parts, bond_off)]),
            join_ptr([p.atom_ptr for p in parts], atom_off), join_ptr([p.bond_ptr for p in parts], bond_off),
            torch.cat([p.mol_x for p in parts]),
        )

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "MolGraphs":
        """The float tensors in ``dtype`` and everything on ``device``."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else t.dtype)

        return MolGraphs(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def cat_inputs(parts: Sequence) -> torch.Tensor | MolGraphs:
    """``torch.cat`` for feature matrices, :meth:`MolGraphs.cat` for graphs (model inputs of either family)."""
    parts = list(parts)
    return MolGraphs.cat(parts) if isinstance(parts[0], MolGraphs) else torch.cat(parts)


#: ``GraphFeaturizerConfig.mol_features`` for "no molecule-level features".
NO_MOL_FEATURES = "none"


@dataclass
class GraphFeaturizerConfig:
    """The message-passing model's input: the graph, plus molecule-level features ``mol_features``
    (a vector featurizer's name, e.g. ``"rdkit2d"``, or ``"none"``) with RDKit descriptor set
    ``descriptors`` (all of them: the set the D-MPNN's defaults were chosen and measured with)."""

    mol_features: str = "rdkit2d"
    descriptors: str = "all"

    def __post_init__(self) -> None:
        if self.mol_features != NO_MOL_FEATURES:
            self.vector_config()  # raises ValueError naming a bad part

    def vector_config(self) -> FeaturizerConfig:
        return FeaturizerConfig(name=self.mol_features, descriptors=self.descriptors)

    @property
    def name(self) -> str:
        return "graph" if self.mol_features == NO_MOL_FEATURES else f"graph+{self.mol_features}"


def _build_graphs(smiles: Sequence) -> list:
    return [_graph_arrays(s) for s in smiles]


class GraphFeaturizer:
    """SMILES → :class:`MolGraphs`, ``mol_x`` from a vector :class:`Featurizer` fitted on the
    training split like the MLP's (so its descriptor statistics are the training split's).

    The interface of :class:`Featurizer` where the pipeline needs it: ``fit``, ``tensor``,
    ``state_dict`` / ``from_state``, ``config.name``, ``dim`` (the width of ``mol_x``).
    """

    kind = "graph"

    def __init__(self, config: GraphFeaturizerConfig | None = None, cache_dir: str | os.PathLike | None | bool = True,
                 vector: Featurizer | None = None) -> None:
        self.config = config or GraphFeaturizerConfig()
        if vector is None and self.config.mol_features != NO_MOL_FEATURES:
            vector = Featurizer(self.config.vector_config(), cache_dir=cache_dir)
        self.vector = vector

    @property
    def dim(self) -> int:
        """Width of the molecule-level features ``mol_x``."""
        return 0 if self.vector is None else self.vector.dim

    @property
    def _parts(self) -> list:
        """The callables a molecule goes through (the time guard runs them in a child process)."""
        return ([] if self.vector is None else list(self.vector._parts)) + [_build_graphs]

    def fit(self, smiles: Sequence[str]) -> "GraphFeaturizer":
        if self.vector is not None:
            self.vector.fit(smiles)
        return self

    def tensor(self, smiles: Sequence[str]) -> MolGraphs:
        """The graphs of ``smiles`` (valid SMILES; an invalid one raises DataError)."""
        smiles = list(smiles)
        vector_raw = self.vector.raw(smiles) if self.vector is not None and smiles else None  # (disk-cached)
        return self._collate(_build_graphs(smiles), vector_raw)

    def _collate(self, graphs: list, vector_raw: np.ndarray | None) -> MolGraphs:
        """Per-molecule graph arrays and the vector featurizer's raw rows ``[n, dim]`` (None: no
        molecules or no molecule features) → :class:`MolGraphs` with standardized ``mol_x``."""
        if vector_raw is None:
            mol_x = np.zeros((len(graphs), self.dim), np.float32)
        else:
            mol_x = self.vector.model_input(vector_raw)
        return MolGraphs.from_arrays(graphs, mol_x)

    def raw_uncached(self, smiles: Sequence) -> np.ndarray:
        """What a worker process computes for a piece of a large pool (``smiles``: SMILES strings or
        RDKit molecules parsed from them): an object array ``[n]`` of
        ``(atom_x, bond_x, ends, vector raw row or None)`` per molecule (:meth:`model_tensor` collates it)."""
        smiles = list(smiles)
        vector = self.vector.raw_uncached(smiles) if self.vector is not None and smiles else [None] * len(smiles)
        out = np.empty(len(smiles), dtype=object)
        for i, (graph, row) in enumerate(zip(_build_graphs(smiles), vector)):
            out[i] = (*graph, row)
        return out

    def model_tensor(self, raw: np.ndarray) -> MolGraphs:
        """:meth:`raw_uncached`'s rows → :class:`MolGraphs` (the molecule features standardized)."""
        vector_raw = np.stack([r[3] for r in raw]) if self.vector is not None and len(raw) else None
        return self._collate([r[:3] for r in raw], vector_raw)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "config": {"mol_features": self.config.mol_features, "descriptors": self.config.descriptors},
                "vector": None if self.vector is None else self.vector.state_dict()}

    @classmethod
    def from_state(cls, state: dict, cache_dir: str | os.PathLike | None | bool = True) -> "GraphFeaturizer":
        vector = None if state["vector"] is None else Featurizer.from_state(state["vector"], cache_dir=cache_dir)
        return cls(GraphFeaturizerConfig(**state["config"]), cache_dir=cache_dir, vector=vector)
