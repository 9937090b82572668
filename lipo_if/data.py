"""Loading and cleaning molecule/label CSV files, and the train/validation/test splits.

Every error a user can cause (missing file, empty file, missing column, bad label) is raised as
:class:`DataError` with a one-line message that names the file, and the row and column where
they apply — never a traceback from inside pandas or RDKit.

Row numbers in messages and in the ``row`` column are 0-based data rows (the header is not a
row); ``line`` in messages is the 1-based line of the file, header included.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .io import atomic_write_text
from . import standardize as standardize_rules
from .standardize import LOGD_RANGE, PARSE_HEAVY_ATOM_LIMIT, _rdkit, label_reason, standardize

log = logging.getLogger(__name__)

SMILES_COLUMNS = ("smiles", "SMILES", "Smiles", "canonical_smiles")
LABEL_COLUMNS = ("exp", "Label", "label", "target", "y", "logD", "logd")
LIPO_FILENAME = "lipophilicity.csv"
#: The public MoleculeNet Lipophilicity CSV (DeepChem's mirror); 4200 rows, columns CMPD_CHEMBLID,exp,smiles.
LIPO_URL = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/Lipophilicity.csv"
LIPO_SHA256 = "627bb3891f01e9022098b48f0aa6367df3ff909524b841d4143e6fc4a6501458"


class DataError(ValueError):
    """Bad input data: the message is one line and names the file (and row/column)."""


# --------------------------------------------------------------------------- SMILES handling


def canonicalize(smiles: str, tautomer: bool = False) -> tuple[str, str] | None:
    """``(standardized isomeric canonical SMILES, stereo-insensitive key)``, or None when the
    structure is rejected (:func:`lipo_if.standardize.standardize` says why)."""
    canonical, key, reason = standardize(smiles, tautomer)
    return None if reason else (canonical, key)


def stereo_insensitive_key(smiles: str) -> str:
    """Canonical SMILES without stereo: stereoisomers share a key (their fingerprints are equal)."""
    out = canonicalize(smiles)
    if out is None:
        raise DataError(f"invalid SMILES {smiles!r}")
    return out[1]


# --------------------------------------------------------------------------- CSV reading


def _pick_column(columns: Sequence[str], explicit: str | None, candidates: Sequence[str], what: str, path: Path) -> str:
    if explicit is not None:
        if explicit not in columns:
            raise DataError(f"{path}: column {explicit!r} ({what}) not found; columns are {list(columns)}")
        return explicit
    for name in candidates:
        if name in columns:
            return name
    lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    raise DataError(
        f"{path}: no {what} column found (looked for {', '.join(candidates)}); columns are {list(columns)} "
        f"— name it explicitly"
    )


def _read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CSV file ({first})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{path}: file has a header but no data rows")
    return frame


def _parse_label(text: str, path: Path, row: int, column: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise DataError(
            f"{path}: row {row} (line {row + 2}), column {column!r}: label {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {row} (line {row + 2}), column {column!r}: label is {text!r}, not a finite number")
    return value


def read_molecule_csv(
    path: str | os.PathLike,
    smiles_col: str | None = None,
    label_col: str | None = None,
    require_label: bool = True,
    **hygiene,
) -> pd.DataFrame:
    """Read a CSV of molecules, one output row per input row (see :func:`molecule_table`, whose
    keyword arguments ``hygiene`` passes on).

    Raises :class:`DataError` for a missing or empty file, a missing column, or a label that is
    empty, NaN, infinite or not a number (a bad label is never silently dropped).
    """
    path = Path(path)
    return molecule_table(_read_table(path), path, smiles_col, label_col, require_label, **hygiene)


def molecule_table(
    frame: pd.DataFrame,
    path: Path,
    smiles_col: str | None = None,
    label_col: str | None = None,
    require_label: bool = True,
    label_range: tuple[float, float] | None = LOGD_RANGE,
    strict: bool = False,
    tautomer: bool = False,
    max_heavy_atoms: int = PARSE_HEAVY_ATOM_LIMIT,
    first_row: int = 0,
) -> pd.DataFrame:
    """Parse a table of strings (a CSV's cells) into standardized molecules, one output row per input row.

    Returns a DataFrame with columns ``row`` (0-based data row), ``smiles_input`` (as given),
    ``smiles`` (standardized isomeric canonical SMILES, ``""`` if rejected), ``key`` (its
    stereo-insensitive form, ``""`` if rejected), ``label`` (float; NaN only when
    ``require_label`` is False and the table has no label column) and ``error`` (``""`` or why the
    row is unusable: the structure rules of :mod:`lipo_if.standardize`, or a label outside
    ``label_range`` (None = no range check)). ``strict``: a label outside the range raises
    :class:`DataError` instead. ``tautomer``, ``max_heavy_atoms``: see
    :func:`~lipo_if.standardize.standardize`. ``path`` names the source in error messages;
    ``first_row``: the data row of the table's first row (a chunk of a larger file).
    """
    frame = frame.rename(columns=lambda c: str(c).strip())
    smiles_name = _pick_column(list(frame.columns), smiles_col, SMILES_COLUMNS, "SMILES", path)
    label_name: str | None
    try:
        label_name = _pick_column(list(frame.columns), label_col, LABEL_COLUMNS, "label", path)
    except DataError:
        if require_label or label_col is not None:
            raise
        label_name = None

    records = []
    for position, smiles_text in enumerate(frame[smiles_name].tolist()):
        row = first_row + position
        label = _parse_label(frame[label_name].iat[position], path, row, label_name) if label_name else float("nan")
        canonical, key, reason = standardize(smiles_text, tautomer, max_heavy_atoms)
        bad_label = label_reason(label, label_range) if label_name else ""
        if bad_label and strict:
            raise DataError(f"{path}: row {row} (line {row + 2}), column {label_name!r}: {bad_label} "
                            f"(run without --strict to exclude such rows)")
        records.append((row, smiles_text, canonical, key, label, reason or bad_label))
    return pd.DataFrame.from_records(records, columns=["row", "smiles_input", "smiles", "key", "label", "error"])


# --------------------------------------------------------------------------- datasets


@dataclass
class MoleculeDataset:
    """Clean molecules with labels, one entry per unique stereo-insensitive structure.

    ``smiles[i]`` is the isomeric canonical SMILES of the first row of its group, ``keys[i]`` the
    stereo-insensitive key, ``labels[i]`` the mean label of the group (logD units), ``rows[i]``
    the 0-based source rows merged into it.
    """

    smiles: list[str]
    keys: list[str]
    labels: np.ndarray
    rows: list[list[int]]
    source: str
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.smiles)

    def subset(self, indices: Sequence[int]) -> "MoleculeDataset":
        idx = list(indices)
        return MoleculeDataset(
            smiles=[self.smiles[i] for i in idx],
            keys=[self.keys[i] for i in idx],
            labels=self.labels[idx].copy(),
            rows=[self.rows[i] for i in idx],
            source=self.source,
            report=dict(self.report),
        )

    def fingerprint(self) -> str:
        """A short hash of (keys, labels): lets a saved run check it is given the same data."""
        h = hashlib.sha256()
        for key, label in zip(self.keys, self.labels):
            h.update(f"{key}\t{label:.6f}\n".encode())
        return h.hexdigest()[:16]


def clean_molecules(table: pd.DataFrame, source: str, strict: bool = False, dedupe: bool = True) -> MoleculeDataset:
    """Drop invalid rows (or fail when ``strict``) and merge stereo-insensitive duplicates.

    Duplicates — rows with the same stereo-insensitive key — become one molecule whose label is
    the mean of the group's labels. They have identical fingerprints, so keeping them apart would
    only leak between splits. With ``dedupe=False`` every valid row is kept (splits still keep a
    group together, see :func:`make_split`).
    """
    invalid = table[table["error"] != ""]
    if len(invalid) and strict:
        first = invalid.iloc[0]
        raise DataError(
            f"{source}: {len(invalid)} rejected rows (first: row {int(first['row'])}, {first['smiles_input']!r}: {first['error']}); "
            f"fix or remove them, or run without --strict to drop them"
        )
    if len(invalid):
        examples = ", ".join(f"row {int(r.row)} {r.smiles_input!r}: {r.error}" for r in invalid.head(5).itertuples())
        log.warning("%s: dropped %d rejected rows (%s%s)", source, len(invalid), examples, ", …" if len(invalid) > 5 else "")
    valid = table[table["error"] == ""]
    if len(valid) == 0:
        raise DataError(f"{source}: no valid molecules (all {len(table)} rows rejected; first: {table['error'].iat[0]})")

    groups: dict[str, list[int]] = defaultdict(list)
    for position, key in enumerate(valid["key"].tolist()):
        groups[key].append(position)
    smiles_list = valid["smiles"].tolist()
    labels_all = valid["label"].to_numpy(dtype=float)
    rows_all = valid["row"].tolist()
    dup_groups = {k: v for k, v in groups.items() if len(v) > 1}
    if dup_groups:
        log.info("%s: %d groups of stereo-insensitive duplicates (%d rows)%s", source, len(dup_groups),
                 sum(len(v) for v in dup_groups.values()), "; labels averaged" if dedupe else "")

    if dedupe:
        order = list(groups.values())  # insertion order = first occurrence in the file
        smiles = [smiles_list[g[0]] for g in order]
        keys = [valid["key"].iat[g[0]] for g in order]
        labels = np.array([labels_all[g].mean() for g in order])
        rows = [[int(rows_all[i]) for i in g] for g in order]
    else:
        smiles = smiles_list
        keys = valid["key"].tolist()
        labels = labels_all.copy()
        rows = [[int(r)] for r in rows_all]
    report = {
        "source": source,
        "n_rows": int(len(table)),
        "n_invalid": int(len(invalid)),
        "invalid_rows": [int(r) for r in invalid["row"].head(20)],
        "rejected_reasons": {str(k): int(v) for k, v in invalid["error"].value_counts().items()},
        "n_duplicate_groups": len(dup_groups),
        "n_duplicate_rows": int(sum(len(v) for v in dup_groups.values())),
        "deduplicated": dedupe,
        "n_molecules": len(smiles),
    }
    return MoleculeDataset(smiles=smiles, keys=keys, labels=labels, rows=rows, source=source, report=report)


def load_dataset(
    path: str | os.PathLike,
    smiles_col: str | None = None,
    label_col: str | None = None,
    strict: bool = False,
    dedupe: bool = True,
    tautomer: bool = False,
    cache: bool | str | os.PathLike = True,
) -> MoleculeDataset:
    """Read, validate and clean a molecule CSV (see :func:`read_molecule_csv`, :func:`clean_molecules`).
    ``tautomer``: standardize to RDKit's canonical tautomer too (then do so for every table of the run).
    ``cache``: keep the standardized table (see :func:`cached_molecule_csv`) in
    ``$LIPO_IF_TABLE_CACHE`` (default ``<cache dir>/tables``), in the folder given, or nowhere (False)."""
    if cache is False:
        table = read_molecule_csv(path, smiles_col=smiles_col, label_col=label_col, tautomer=tautomer)
    else:
        folder = cache_folder("LIPO_IF_TABLE_CACHE", "tables") if cache is True else Path(cache)
        table = cached_molecule_csv(path, folder, smiles_col=smiles_col, label_col=label_col, tautomer=tautomer)
    return clean_molecules(table, source=str(path), strict=strict, dedupe=dedupe)


#: the columns :func:`molecule_table` returns, in order
TABLE_COLUMNS = ("row", "smiles_input", "smiles", "key", "label", "error")


def table_cache_key(path: str | os.PathLike, **options) -> str:
    """sha256 of what a standardized table depends on: the file's bytes, the reading ``options``,
    RDKit's version and the source of the code that standardizes (this module and
    :mod:`lipo_if.standardize` — any edit to a rule invalidates every cached table)."""
    from rdkit import __version__ as rdkit_version

    digest = hashlib.sha256(Path(path).read_bytes())
    for module_file in (__file__, standardize_rules.__file__):
        digest.update(Path(module_file).read_bytes())
    digest.update(json.dumps({**options, "rdkit": rdkit_version, "columns": TABLE_COLUMNS}, sort_keys=True).encode())
    return digest.hexdigest()


def cached_molecule_csv(path: str | os.PathLike, folder: str | os.PathLike, smiles_col: str | None = None,
                        label_col: str | None = None, tautomer: bool = False) -> pd.DataFrame:
    """:func:`read_molecule_csv` of ``path`` through a cache in ``folder``: the table a file gave is
    kept as ``<key>.json`` (:func:`table_cache_key`; written atomically) and read back, value for
    value, while neither the file, the options nor the standardizing code change. Why: standardizing
    the 4,200 Lipophilicity molecules takes ≈ 5 s, and every command loads them. A cache that cannot
    be read or written only costs that time (a warning, then the file is read as usual); errors of
    the file itself (a missing column, a bad label) are raised as by :func:`read_molecule_csv`."""
    path = Path(path)
    if not path.is_file():
        return read_molecule_csv(path, smiles_col=smiles_col, label_col=label_col, tautomer=tautomer)  # its error
    key = table_cache_key(path, smiles_col=smiles_col, label_col=label_col, tautomer=tautomer)
    cached = Path(folder) / f"{key}.json"
    if cached.is_file():
        try:
            columns = json.loads(cached.read_text())
            table = pd.DataFrame({name: columns[name] for name in TABLE_COLUMNS})
            table["label"] = table["label"].astype(float)
            return table
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable cached table %s (%s)", cached, exc)
    table = read_molecule_csv(path, smiles_col=smiles_col, label_col=label_col, tautomer=tautomer)
    columns = {name: table[name].tolist() for name in TABLE_COLUMNS}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cached, json.dumps(columns))  # (json writes floats exactly: repr round-trips)
    except OSError as exc:
        log.warning("could not write the table cache %s (%s)", cached, exc)
    return table


# --------------------------------------------------------------------------- locating the real data


def default_cache_dir() -> Path:
    base = os.environ.get("LIPO_IF_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lipo_if")
    return Path(base)


def cache_folder(variable: str, name: str) -> Path:
    """The folder of one of the package's caches: ``$variable`` when set, else ``<cache dir>/name``."""
    return Path(os.environ.get(variable) or default_cache_dir() / name)


def _download(url: str, target: Path, sha256: str | None, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``target`` atomically; verify the checksum when one is given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        if sha256 is not None:
            digest = hashlib.sha256(Path(tmp_name).read_bytes()).hexdigest()
            if digest != sha256:
                raise DataError(f"{url}: downloaded file has sha256 {digest}, expected {sha256}")
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


def resolve_lipophilicity_path(
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: str | None = LIPO_SHA256,
) -> Path:
    """Find the Lipophilicity CSV: explicit ``path`` → ``data_dir`` (or ``$LIPO_IF_DATA``)/lipophilicity.csv
    → the download cache → a download of the public MoleculeNet CSV into the cache.

    Raises :class:`DataError` saying where to put the file when none of these works.
    """
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: file not found")
        return path
    tried = []
    data_dir = data_dir if data_dir is not None else os.environ.get("LIPO_IF_DATA")
    if data_dir:
        candidate = Path(data_dir) / LIPO_FILENAME
        if candidate.exists():
            return candidate
        tried.append(str(candidate))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / LIPO_FILENAME
    if cached.exists():
        return cached
    url = url or os.environ.get("LIPO_IF_URL") or LIPO_URL
    try:
        log.info("downloading %s into %s", url, cached)
        return _download(url, cached, sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"Lipophilicity data not found (tried {', '.join(tried + [str(cached)])}) and the download from {url} "
            f"failed ({reason}); put {LIPO_FILENAME} in a directory and pass --data-dir DIR or set LIPO_IF_DATA=DIR"
        ) from None


def load_lipophilicity(
    path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None, strict: bool = False, **kwargs
) -> MoleculeDataset:
    """Load the MoleculeNet Lipophilicity set (logD7.4), cleaned and deduplicated."""
    csv = resolve_lipophilicity_path(path=path, data_dir=data_dir, **kwargs)
    return load_dataset(csv, strict=strict)


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Indices into a :class:`MoleculeDataset` for train/validation/test, plus how they were made."""

    train: list[int]
    val: list[int]
    test: list[int]
    method: str
    seed: int
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    data_fingerprint: str = ""

    def part(self, name: str) -> list[int]:
        if name in ("train", "val", "test"):
            return getattr(self, name)
        if name == "validation":
            return self.val
        raise ValueError(f"unknown split part {name!r}; expected train, val or test")

    def to_dict(self, dataset: MoleculeDataset | None = None) -> dict:
        d = {
            "method": self.method,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "data_fingerprint": self.data_fingerprint,
            "train": self.train,
            "val": self.val,
            "test": self.test,
        }
        if dataset is not None:
            d["keys"] = {p: [dataset.keys[i] for i in getattr(self, p)] for p in ("train", "val", "test")}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(
            train=[int(i) for i in d["train"]],
            val=[int(i) for i in d["val"]],
            test=[int(i) for i in d["test"]],
            method=d["method"],
            seed=int(d["seed"]),
            fractions=tuple(d.get("fractions", (0.8, 0.1, 0.1))),
            data_fingerprint=d.get("data_fingerprint", ""),
        )

    def save(self, path: str | os.PathLike, dataset: MoleculeDataset | None = None) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(dataset), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def _fill_groups(groups: list[list[int]], n: int, fractions: tuple[float, float, float]) -> tuple[list[int], list[int], list[int]]:
    """Assign whole groups in the given order: train until full, then validation, then test."""
    train_cap, val_cap = fractions[0] * n, (fractions[0] + fractions[1]) * n
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for group in groups:
        if len(train) + len(group) <= train_cap:
            train.extend(group)
        elif len(train) + len(val) + len(group) <= val_cap:
            val.extend(group)
        else:
            test.extend(group)
    return sorted(train), sorted(val), sorted(test)


def scaffold_of(smiles: str) -> str:
    """Bemis–Murcko scaffold SMILES ("" for acyclic molecules)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise DataError(f"invalid SMILES {smiles!r}")
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def make_split(
    dataset: MoleculeDataset, method: str = "random", seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> Split:
    """Seeded 80/10/10 split.

    ``random``: groups of molecules sharing a stereo-insensitive key (singletons after
    deduplication) are shuffled and assigned whole, so no structure sits in two splits.
    ``scaffold``: Bemis–Murcko scaffold sets; sets larger than half the test size go first (in
    decreasing size) and the rest in seeded random order — so test holds scaffolds never seen in
    training and the split still varies with the seed.
    """
    fr = _check_fractions(fractions)
    rng = random.Random(seed)
    by_key: dict[str, list[int]] = defaultdict(list)
    if method == "random":
        for i, key in enumerate(dataset.keys):
            by_key[key].append(i)
        groups = list(by_key.values())
        rng.shuffle(groups)
    elif method == "scaffold":
        for i, smi in enumerate(dataset.smiles):
            by_key[scaffold_of(smi)].append(i)
        groups = list(by_key.values())
        big = sorted((g for g in groups if len(g) > fr[2] * len(dataset) / 2), key=len, reverse=True)
        small = [g for g in groups if len(g) <= fr[2] * len(dataset) / 2]
        rng.shuffle(small)
        groups = big + small
    else:
        raise ValueError(f"unknown split method {method!r}; expected 'random' or 'scaffold'")
    train, val, test = _fill_groups(groups, len(dataset), fr)
    if not train or (fr[1] > 0 and not val) or (fr[2] > 0 and not test):
        raise DataError(f"{dataset.source}: {len(dataset)} molecules are too few for a {method} split {list(fr)}")
    return Split(train, val, test, method=method, seed=seed, fractions=fr, data_fingerprint=dataset.fingerprint())
