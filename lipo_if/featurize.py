"""Molecular featurization with RDKit: Morgan fingerprints (bit and count) and 2D descriptors.

A featurizer is chosen by name; parts join with ``+``:

- ``morgan``        — Morgan/ECFP bits (radius, n_bits configurable), values 0/1;
- ``morgan_count``  — Morgan counts, ``log1p(count)`` so a bit set once is 0.69 and a bit set
                      20 times is 3.0 (raw counts reach 50+ on long chains and dominate the layer);
- ``rdkit2d``       — RDKit's 2D descriptor set, standardized with statistics from the training
                      split only, then clipped to ±``clip`` standard deviations.

Fingerprint columns come first: they are sparse (≈3% non-zero), which the compiled scoring
kernel exploits. Raw (unstandardized) features are cached on disk, keyed by SMILES and by the
featurizer's configuration.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DataError, cache_folder
from .descriptors import ESTATE_REDUCTIONS, check_descriptor_spec, descriptor_names
from .io import atomic_write_bytes

log = logging.getLogger(__name__)

FEATURIZER_PARTS = ("morgan", "morgan_count", "rdkit2d")
DEFAULT_FEATURIZER = "morgan_count+rdkit2d"


@dataclass
class FeaturizerConfig:
    name: str = field(default=DEFAULT_FEATURIZER, metadata={"help": "featurizer parts joined by '+': morgan, morgan_count, rdkit2d"})
    radius: int = field(default=2, metadata={"help": "Morgan radius (2 = ECFP4)"})
    n_bits: int = field(default=2048, metadata={"help": "Morgan fingerprint length"})
    clip: float = field(default=6.0, metadata={"help": "clip standardized descriptors to ±clip standard deviations"})
    descriptors: str = field(default="fast", metadata={"help": "rdkit2d's descriptor set: fast (RDKit's 217 without the costliest "
                                                                "families), lean (138: half fast's time, slightly less accurate "
                                                                "on scaffold splits; for pools of millions) or all, optionally minus "
                                                                "families (e.g. fast-fragments; lipo_if.descriptors)"})

    def __post_init__(self) -> None:
        parts = self.parts
        unknown = [p for p in parts if p not in FEATURIZER_PARTS]
        if not parts or unknown:
            raise ValueError(f"unknown featurizer part(s) {unknown or [self.name]}; choose from {', '.join(FEATURIZER_PARTS)} joined by '+'")
        if len(set(parts)) != len(parts) or ("morgan" in parts and "morgan_count" in parts):
            raise ValueError(f"featurizer {self.name!r}: use each part once, and only one Morgan variant")
        if self.radius < 0 or self.n_bits <= 0:
            raise ValueError(f"Morgan radius must be ≥ 0 and n_bits > 0, got radius={self.radius}, n_bits={self.n_bits}")
        if self.clip <= 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        check_descriptor_spec(self.descriptors)

    @property
    def parts(self) -> list[str]:
        return [p.strip() for p in self.name.split("+") if p.strip()]


# --------------------------------------------------------------------------- raw feature blocks


def as_mol(molecule):
    """An RDKit molecule from a SMILES — or the molecule itself, when the caller has parsed it already
    (a streamed pool's worker parses each standardized SMILES once for every feature block)."""
    from rdkit import Chem, RDLogger

    if isinstance(molecule, Chem.Mol):
        return molecule
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(molecule)
    if mol is None:
        raise DataError(f"cannot featurize invalid SMILES {molecule!r}")
    return mol


class MorganFeaturizer:
    """Morgan fingerprints through RDKit's fingerprint generator: ``[n, n_bits]`` float32."""

    def __init__(self, radius: int = 2, n_bits: int = 2048, counts: bool = False) -> None:
        from rdkit.Chem import rdFingerprintGenerator

        self.radius, self.n_bits, self.counts = radius, n_bits, counts
        self._generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)

    @property
    def name(self) -> str:
        return "morgan_count" if self.counts else "morgan"

    @property
    def dim(self) -> int:
        return self.n_bits

    def column_names(self) -> list[str]:
        return [f"{self.name}_{i}" for i in range(self.n_bits)]

    def __call__(self, smiles: Sequence) -> np.ndarray:
        """``smiles``: SMILES strings or RDKit molecules."""
        out = np.zeros((len(smiles), self.n_bits), dtype=np.float32)
        for i, smi in enumerate(smiles):
            mol = as_mol(smi)
            if self.counts:
                out[i] = np.log1p(self._generator.GetCountFingerprintAsNumPy(mol).astype(np.float32))
            else:
                out[i] = self._generator.GetFingerprintAsNumPy(mol)
        return out


class RDKitDescriptorFeaturizer:
    """RDKit's 2D descriptors (``Descriptors._descList``): ``[n, n_descriptors]`` float64, raw.

    Values that RDKit cannot compute, or that overflow, come back as NaN; the fitted transform
    imputes them with the training mean. The EState indices are computed once per molecule for
    the four descriptors that reduce them (:data:`ESTATE_REDUCTIONS`); every value equals RDKit's
    own function's (tested). ``descriptors``: a set spec of :mod:`lipo_if.descriptors`.
    """

    def __init__(self, descriptors: str = "all") -> None:
        from rdkit.Chem import Descriptors
        from rdkit.Chem.EState.EState import EStateIndices

        functions = dict(Descriptors._descList)
        self.descriptors = descriptors
        self._functions = [(name, functions[name]) for name in descriptor_names(descriptors, list(functions))]
        self._estate = EStateIndices

    @property
    def name(self) -> str:
        return "rdkit2d"

    @property
    def dim(self) -> int:
        return len(self._functions)

    def column_names(self) -> list[str]:
        return [name for name, _ in self._functions]

    def __call__(self, smiles: Sequence) -> np.ndarray:
        """``smiles``: SMILES strings or RDKit molecules."""
        out = np.full((len(smiles), self.dim), np.nan, dtype=np.float64)
        with np.errstate(all="ignore"):
            for i, smi in enumerate(smiles):
                mol = as_mol(smi)
                estate = None
                for j, (name, function) in enumerate(self._functions):
                    try:
                        if name in ESTATE_REDUCTIONS:
                            estate = self._estate(mol, True) if estate is None else estate
                            out[i, j] = float(ESTATE_REDUCTIONS[name](estate))
                        else:
                            out[i, j] = float(function(mol))
                    except Exception:  # noqa: BLE001 - a descriptor that fails is imputed, not fatal
                        pass
        out[~np.isfinite(out)] = np.nan
        out[np.abs(out) > 1e12] = np.nan  # e.g. Ipc on large molecules; would wreck the mean
        return out


# --------------------------------------------------------------------------- the time guard

#: Molecules with more heavy atoms than this are first featurized in a watched child process
#: (Lipophilicity's largest has 115, its 99th percentile 44; below this size no descriptor is slow).
GUARDED_HEAVY_ATOMS = 80
#: Seconds a guarded molecule may take to featurize before it is excluded.
FEATURIZE_TIMEOUT_S = 20.0


def _featurize_in_child(parts: list, smiles: str) -> None:
    for part in parts:
        part([smiles])


def slow_molecules(featurizer: "Featurizer", smiles: Sequence[str], timeout: float = FEATURIZE_TIMEOUT_S,
                   guarded_from: int = GUARDED_HEAVY_ATOMS) -> dict[int, str]:
    """``{position: reason}`` of the SMILES whose featurization does not finish within ``timeout``
    seconds (or crashes), so that no single molecule can stall a run.

    RDKit holds the interpreter while it computes a descriptor, so a thread or an alarm cannot
    interrupt it: each molecule above ``guarded_from`` heavy atoms is featurized once in a forked
    child process that is killed at the deadline. Smaller ones are not watched (they cost
    milliseconds), nor are SMILES that do not parse (the parser's error says why)."""
    import multiprocessing

    from rdkit import Chem

    context = multiprocessing.get_context("fork")
    out: dict[int, str] = {}
    for position, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi) if smi else None
        if mol is None or mol.GetNumHeavyAtoms() <= guarded_from:
            continue
        child = context.Process(target=_featurize_in_child, args=(featurizer._parts, smi), daemon=True)
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            out[position] = f"featurization took longer than {timeout:g} s ({mol.GetNumHeavyAtoms()} heavy atoms)"
        elif child.exitcode != 0:
            out[position] = f"featurization failed (exit code {child.exitcode})"
    return out


# --------------------------------------------------------------------------- the cache


class FeatureCache:
    """Raw features of one featurizer part, on disk as ``<dir>/<part>-<confighash>.npz``.

    Keyed by the exact SMILES string given (callers pass canonical SMILES). Writes are atomic;
    a corrupt cache file is ignored and rebuilt.
    """

    def __init__(self, directory: Path | None, part: str, config_key: dict) -> None:
        self.path: Path | None = None
        self._index: dict[str, int] = {}
        self._values: np.ndarray | None = None
        if directory is None:
            return
        digest = hashlib.sha256(json.dumps(config_key, sort_keys=True).encode()).hexdigest()[:12]
        self.path = Path(directory) / f"{part}-{digest}.npz"
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as npz:
                    smiles, values = npz["smiles"].tolist(), npz["values"]
                self._index = {s: i for i, s in enumerate(smiles)}
                self._values = values
            except Exception as exc:  # noqa: BLE001
                log.warning("ignoring unreadable feature cache %s (%s)", self.path, exc)

    def get(self, smiles: Sequence[str], compute) -> np.ndarray:
        missing = [s for s in dict.fromkeys(smiles) if s not in self._index]
        if missing:
            new = compute(missing)
            start = len(self._index)
            self._values = new if self._values is None else np.concatenate([self._values, new.astype(self._values.dtype)])
            for offset, s in enumerate(missing):
                self._index[s] = start + offset
            self._save()
        assert self._values is not None
        return self._values[[self._index[s] for s in smiles]]

    def _save(self) -> None:
        if self.path is None:
            return
        import io

        buffer = io.BytesIO()
        ordered = sorted(self._index, key=self._index.get)
        np.savez(buffer, smiles=np.array(ordered, dtype=str), values=self._values)
        try:
            atomic_write_bytes(self.path, buffer.getvalue())
        except OSError as exc:  # a read-only cache only costs time
            log.warning("could not write feature cache %s (%s)", self.path, exc)


# --------------------------------------------------------------------------- the featurizer


class Featurizer:
    """Turns SMILES into the model's input matrix ``[n, dim]`` float32.

    Call :meth:`fit` with the training SMILES once (it learns the descriptor statistics), then
    :meth:`transform` any SMILES. :meth:`state_dict` / :meth:`from_state` round-trip the fitted
    state through a checkpoint.
    """

    def __init__(self, config: FeaturizerConfig | None = None, cache_dir: str | os.PathLike | None | bool = True) -> None:
        self.config = config or FeaturizerConfig()
        self._parts = [self._make_part(p) for p in self.config.parts]
        if cache_dir is True:
            cache_dir = cache_folder("LIPO_IF_FEATURE_CACHE", "features")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._caches = [FeatureCache(self.cache_dir, part.name, self._cache_key(part)) for part in self._parts]
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _make_part(self, part: str):
        if part == "morgan":
            return MorganFeaturizer(self.config.radius, self.config.n_bits, counts=False)
        if part == "morgan_count":
            return MorganFeaturizer(self.config.radius, self.config.n_bits, counts=True)
        return RDKitDescriptorFeaturizer(self.config.descriptors)

    def _cache_key(self, part) -> dict:
        from rdkit import __version__ as rdkit_version

        key = {"part": part.name, "rdkit": rdkit_version, "format": 1}
        if isinstance(part, MorganFeaturizer):
            key.update(radius=part.radius, n_bits=part.n_bits)
        else:
            key.update(columns=part.column_names())
        return key

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self._parts)

    @property
    def n_sparse(self) -> int:
        """Number of leading fingerprint columns (sparse, not standardized)."""
        return sum(p.dim for p in self._parts if isinstance(p, MorganFeaturizer))

    def column_names(self) -> list[str]:
        return [name for part in self._parts for name in part.column_names()]

    def raw(self, smiles: Sequence[str]) -> np.ndarray:
        """Unstandardized features ``[n, dim]`` float64 (fingerprints first), from the cache when possible."""
        smiles = list(smiles)
        if not smiles:
            return np.zeros((0, self.dim))
        blocks = [cache.get(smiles, part) for part, cache in zip(self._parts, self._caches)]
        return np.concatenate([b.astype(np.float64) for b in blocks], axis=1)

    def fit(self, smiles: Sequence[str]) -> "Featurizer":
        """Learn per-column mean/std of the dense (descriptor) columns from training SMILES."""
        raw = self.raw(smiles)
        dense = raw[:, self.n_sparse:]
        with np.errstate(all="ignore"):
            mean = np.nanmean(dense, axis=0) if len(dense) else np.zeros(dense.shape[1])
            std = np.nanstd(dense, axis=0) if len(dense) else np.ones(dense.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        self.mean, self.std = mean, std
        return self

    def transform(self, smiles: Sequence[str]) -> np.ndarray:
        """Model input ``[n, dim]`` float32: fingerprints as they are, descriptors standardized and clipped."""
        return self.model_input(self.raw(smiles))

    def tensor(self, smiles: Sequence[str]) -> torch.Tensor:
        """The model input ``[n, dim]`` float32 as a tensor (:meth:`transform`); the message-passing
        model's :class:`~lipo_if.graph.GraphFeaturizer` answers the same call with graphs."""
        return torch.from_numpy(self.transform(list(smiles)))

    def raw_uncached(self, smiles: Sequence) -> np.ndarray:
        """:meth:`raw` without the disk cache (what a worker process computes for a chunk of a large
        pool); ``smiles``: SMILES strings or RDKit molecules parsed from them (each then parsed once
        for all the feature blocks, not once per block)."""
        smiles = list(smiles)
        if not smiles:
            return np.zeros((0, self.dim))
        return np.concatenate([part(smiles).astype(np.float64) for part in self._parts], axis=1)

    def model_input(self, raw: np.ndarray) -> np.ndarray:
        """Raw features ``[n, dim]`` (:meth:`raw`) → model input ``[n, dim]`` float32."""
        if self.mean is None and self.n_sparse < self.dim:
            raise RuntimeError("Featurizer.transform called before fit(): descriptor statistics are unknown")
        if self.n_sparse < self.dim:
            dense = raw[:, self.n_sparse:]
            dense = np.where(np.isnan(dense), self.mean, dense)
            dense = np.clip((dense - self.mean) / self.std, -self.config.clip, self.config.clip)
            raw = np.concatenate([raw[:, : self.n_sparse], dense], axis=1)
        return raw.astype(np.float32)

    def model_tensor(self, raw: np.ndarray) -> torch.Tensor:
        """:meth:`model_input` as a tensor (what a chunk of a streamed pool is scored on)."""
        return torch.from_numpy(self.model_input(raw))

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict, cache_dir: str | os.PathLike | None | bool = True) -> "Featurizer":
        # a run saved before the descriptor sets existed used all of RDKit's descriptors
        featurizer = cls(FeaturizerConfig(**{"descriptors": "all", **state["config"]}), cache_dir=cache_dir)
        if state.get("mean") is not None:
            featurizer.mean = np.asarray(state["mean"], dtype=np.float64)
            featurizer.std = np.asarray(state["std"], dtype=np.float64)
        return featurizer
