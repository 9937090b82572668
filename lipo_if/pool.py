"""A pool of candidate molecules, parsed once and featurized once per model.

Every stage that looks at external molecules — influence scoring, the greedy guard, retraining
with a selection, the fidelity check, cross-fitting — takes a :class:`Pool`, so a molecule file
is read and parsed by RDKit once per run, and featurized once per featurizer (a run's featurizer
holds its own training statistics, so fold models of cross-fitting featurize separately).

``Pool.coerce`` accepts what a user has at hand: a CSV path, a pandas DataFrame with a SMILES and
a label column (the same column detection as for files), ``(smiles, labels)`` sequences, or a Pool.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd
import torch

from .data import DataError, molecule_table, read_molecule_csv
from .featurize import FEATURIZE_TIMEOUT_S, slow_molecules

#: What :meth:`Pool.coerce` accepts.
Molecules = Union["Pool", str, os.PathLike, pd.DataFrame, tuple]


class Pool:
    """Candidate molecules: ``table`` has one row per input row with columns ``row`` (0-based),
    ``smiles_input`` (as given), ``smiles`` (isomeric canonical, ``""`` if invalid), ``key``
    (stereo-insensitive canonical), ``label`` (float, logD units) and ``error`` (``""`` or why the
    row is unusable). ``source`` names where the molecules came from (a path or ``"<memory>"``)."""

    def __init__(self, table: pd.DataFrame, source: str = "<memory>", featurize_timeout: float = FEATURIZE_TIMEOUT_S) -> None:
        self.table = table.reset_index(drop=True)
        self.source = source
        #: seconds one molecule may take to featurize (:func:`~lipo_if.featurize.slow_molecules`)
        self.featurize_timeout = featurize_timeout
        self._features: dict[int, tuple[Any, np.ndarray, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def read(cls, path: str | os.PathLike, smiles_col: str | None = None, label_col: str | None = None, **hygiene) -> "Pool":
        """Parse a CSV file (errors as :class:`~lipo_if.data.DataError` naming file, row and column;
        ``hygiene``: the options of :func:`~lipo_if.data.molecule_table`, e.g. ``strict=True``)."""
        return cls(read_molecule_csv(path, smiles_col, label_col, **hygiene), str(path))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, smiles_col: str | None = None, label_col: str | None = None, **hygiene) -> "Pool":
        """Parse a DataFrame holding a SMILES and a label column (detected like a file's)."""
        return cls(molecule_table(frame.astype(str), Path("<DataFrame>"), smiles_col, label_col, **hygiene), "<DataFrame>")

    @classmethod
    def from_smiles(cls, smiles: Sequence[str], labels: Sequence[float]) -> "Pool":
        """Parse parallel sequences of SMILES strings and labels (logD units)."""
        smiles, labels = list(smiles), list(labels)
        if len(smiles) != len(labels):
            raise DataError(f"got {len(smiles)} SMILES but {len(labels)} labels")
        frame = pd.DataFrame({"smiles": [str(s) for s in smiles], "label": [repr(float(v)) for v in labels]})
        return cls(molecule_table(frame, Path("<memory>"), "smiles", "label"), "<memory>")

    @classmethod
    def featurized(cls, table: pd.DataFrame, source: str, featurizer, x: torch.Tensor) -> "Pool":
        """A pool whose valid rows (table order) are already featurized for ``featurizer`` (``x``
        ``[n_valid, d]``, e.g. by the worker processes of :mod:`lipo_if.stream`)."""
        pool = cls(table, source)
        rows = pool.table.loc[pool.valid, "row"].to_numpy(dtype=int)
        if len(x) != rows.size:
            raise ValueError(f"{rows.size} valid rows but {len(x)} feature rows")
        pool._features[id(featurizer)] = (featurizer, rows, x)
        return pool

    @classmethod
    def coerce(cls, molecules: Molecules, smiles_col: str | None = None, label_col: str | None = None) -> "Pool":
        """A Pool from a Pool, a path, a DataFrame or a ``(smiles, labels)`` pair."""
        if isinstance(molecules, Pool):
            return molecules
        if isinstance(molecules, pd.DataFrame):
            return cls.from_frame(molecules, smiles_col, label_col)
        if isinstance(molecules, (str, os.PathLike)):
            return cls.read(molecules, smiles_col, label_col)
        if isinstance(molecules, tuple) and len(molecules) == 2:
            return cls.from_smiles(*molecules)
        raise TypeError(f"molecules must be a path, a DataFrame, (smiles, labels) or a Pool, got {type(molecules).__name__}")

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        return len(self.table)

    @property
    def valid(self) -> np.ndarray:
        """bool ``[n]``: rows whose molecule passed parsing and standardization (and, once
        featurized, the time guard)."""
        return (self.table["error"] == "").to_numpy()

    def features(self, featurizer) -> torch.Tensor:
        """Model input of the valid rows (table order; ``[n_valid, d]`` float32, or graphs), once per featurizer.

        A molecule whose featurization exceeds :attr:`featurize_timeout` becomes invalid here, its
        ``error`` saying so (:func:`~lipo_if.featurize.slow_molecules`)."""
        key = id(featurizer)
        if key not in self._features:
            valid_index = np.flatnonzero(self.valid)
            slow = slow_molecules(featurizer, self.table["smiles"].to_numpy()[valid_index].tolist(), self.featurize_timeout)
            for position, reason in slow.items():
                self.table.loc[valid_index[position], "error"] = reason
            rows = self.table.loc[self.valid, "row"].to_numpy(dtype=int)
            smiles = self.table.loc[self.valid, "smiles"].tolist()
            x = featurizer.tensor(smiles)
            self._features[key] = (featurizer, rows, x)  # the featurizer is kept so that its id stays unique
        _, rows, x = self._features[key]
        current = self.table.loc[self.valid, "row"].to_numpy(dtype=int)
        if not np.array_equal(rows, current):  # another featurizer's guard excluded a row since
            at = {int(r): i for i, r in enumerate(rows)}
            x = x.index_select(0, torch.tensor([at[int(r)] for r in current], dtype=torch.int64))
        return x

    def rows_features(self, featurizer, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X [k, d], y [k] float32)`` of the valid rows ``rows`` (``row`` ids), in the order given."""
        position = self.valid_positions()
        try:
            idx = torch.tensor([position[int(r)] for r in rows], dtype=torch.int64)
        except KeyError as exc:
            raise DataError(f"{self.source}: row {exc.args[0]} is not a valid molecule of this pool") from None
        X = self.features(featurizer).index_select(0, idx)
        y = torch.tensor(self.table["label"].to_numpy(dtype=float)[self.valid][idx.numpy()], dtype=torch.float32)
        return X, y

    def labels_of(self, rows: Sequence[int]) -> np.ndarray:
        """float64 labels ``[k]`` of ``rows`` (``row`` ids), in the order given."""
        label_of = dict(zip(self.table["row"].astype(int), self.table["label"].astype(float)))
        return np.array([label_of[int(r)] for r in rows], dtype=float)

    def valid_positions(self) -> dict[int, int]:
        """``row`` id → position among the valid rows (the row order of :meth:`features`)."""
        return {int(r): i for i, r in enumerate(self.table.loc[self.valid, "row"])}

    def exclusions(self, split_keys: dict[str, set[str]] | None, outside: Sequence[str] | None = None) -> list[str]:
        """Why each row is not scored (``""`` = scored), in table order.

        Precedence: the parser's error (e.g. "invalid SMILES", a structure rule of
        :mod:`lipo_if.standardize`, an implausible label), then ``outside``: the run's domain
        reasons per row (:meth:`lipo_if.domain.Domain.assess`: foreign elements, too many heavy
        atoms; None = no such check), then membership of a split in the order of ``split_keys`` (e.g. ``{"validation": …,
        "test": …, "training": …}``, stereo-insensitive keys of the standardized molecules; None = no
        overlap check), then repetition of an earlier scored row ("duplicate row of row N", N = its ``row``).
        """
        reasons: list[str] = []
        first_row: dict[str, int] = {}
        outside = outside if outside is not None else [""] * len(self.table)
        for row, key, error, beyond in zip(self.table["row"], self.table["key"], self.table["error"], outside):
            reason = error or beyond or next(
                (f"duplicate of a {name} molecule" for name, keys in (split_keys or {}).items() if key in keys), "")
            if not reason and key in first_row:
                reason = f"duplicate row of row {first_row[key]}"
            if not reason:
                first_row[key] = int(row)
            reasons.append(reason)
        return reasons
