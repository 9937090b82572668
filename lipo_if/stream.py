"""Scoring a pool of any size: read in chunks, parse and featurize in worker processes, score chunk
by chunk, write incrementally — and resume a run that was killed.

What ``lipo-if influence`` runs (:func:`score_file`). Per chunk of ``chunk_rows`` input rows:

1. read (CSV, gzip'ed CSV, or Parquet through pyarrow when it is installed), as strings;
2. parse, standardize and featurize in ``workers`` forked processes (RDKit holds the interpreter,
   so threads would not help); molecules above
   :data:`~lipo_if.featurize.GUARDED_HEAVY_ATOMS` heavy atoms are featurized back in the main
   process under the time guard (:func:`~lipo_if.featurize.slow_molecules`);
3. score with the fitted :class:`~lipo_if.influence.Influence` (its held-out gradient, solve and
   featurizer statistics are computed once, before the first chunk);
4. a row whose molecule already appeared in an earlier chunk is excluded as "duplicate row of row N",
   as in the one-table path;
5. append the chunk's rows to ``<out>.partial``, fsync, then record the progress
   (``<out>.progress.json``, written atomically: rows done, bytes of the CSV and of the keys file).

At the end the CSV is renamed to ``<out>`` (atomic), and the histogram and summary are written
from the accumulated scores. Peak memory holds one chunk (and one float and one key per scored
row), not the pool. Started again with the same command after a kill (Ctrl-C, SIGTERM, power
loss), the run truncates the partial files to the last recorded chunk, reuses the saved solve
(``<out stem>_influence/``) and continues; the output equals an uninterrupted run's byte for byte.
"""
from __future__ import annotations

import json
import os
from array import array
from collections import Counter
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from .data import DataError, molecule_table
from .featurize import FEATURIZE_TIMEOUT_S, GUARDED_HEAVY_ATOMS, slow_molecules
from .influence.api import OUTPUT_COLUMNS, Influence, model_fingerprint, score_counts
from .influence.outputs import histogram_png, output_paths
from .io import atomic_write_bytes, atomic_write_json
from .pool import Pool


@dataclass
class StreamConfig:
    """How a pool file is streamed (``lipo-if influence`` options)."""

    chunk_rows: int = field(default=20_000, metadata={"help": "input rows per chunk (memory holds one chunk)"})
    workers: int = field(default=0, metadata={"help": "worker processes that parse and featurize (0 = one per core)"})
    resume: bool = field(default=True, metadata={"help": "continue a killed run of the same command (--no-resume: start over)"})

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or self.workers < 0:
            raise ValueError(f"chunk_rows must be ≥ 1 and workers ≥ 0, got {self.chunk_rows}, {self.workers}")

    @property
    def n_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)


# --------------------------------------------------------------------------- reading


def read_chunks(path: str | os.PathLike, chunk_rows: int, skip_rows: int = 0) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(first data row, frame of strings)`` per chunk of a CSV (``.gz`` too) or Parquet file,
    starting after ``skip_rows`` data rows."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir() or path.stat().st_size == 0:
        raise DataError(f"{path}: {'is a directory' if path.is_dir() else 'file is empty'}, expected a molecule file")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or give a CSV") from None
        first = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas().astype(str)
            if first + len(frame) > skip_rows:
                cut = max(0, skip_rows - first)
                yield first + cut, frame.iloc[cut:].reset_index(drop=True)
            first += len(frame)
        return
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, chunksize=chunk_rows,
                             skiprows=range(1, skip_rows + 1) if skip_rows else None)
        first = skip_rows
        for frame in reader:
            frame.columns = [str(c).strip() for c in frame.columns]
            yield first, frame
            first += len(frame)
    except pd.errors.EmptyDataError:
        if not skip_rows:
            raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable molecule file ({first_line})") from None


# --------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _configure(featurizer, smiles_col, label_col, source) -> None:
    _WORKER.update(featurizer=featurizer, smiles_col=smiles_col, label_col=label_col, source=source)


def _init_worker(featurizer, smiles_col, label_col, source) -> None:
    torch.set_num_threads(1)  # a worker process: the cores are shared among the workers
    _configure(featurizer, smiles_col, label_col, source)


def _prepare(job: tuple[int, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray, list[int]]:
    """Parse, standardize and featurize one piece: ``(table, raw features of its valid rows except
    the deferred ones, positions (among the valid rows) of the molecules deferred to the guard)``."""
    from rdkit import Chem

    first, frame = job
    table = molecule_table(frame, Path(_WORKER["source"]), _WORKER["smiles_col"], _WORKER["label_col"], first_row=first)
    smiles = table.loc[table["error"] == "", "smiles"].tolist()
    deferred = [i for i, s in enumerate(smiles) if Chem.MolFromSmiles(s).GetNumHeavyAtoms() > GUARDED_HEAVY_ATOMS]
    skip = set(deferred)
    raw = _WORKER["featurizer"].raw_uncached([s for i, s in enumerate(smiles) if i not in skip])
    return table, raw, deferred


def _split(first: int, frame: pd.DataFrame, pieces: int) -> list[tuple[int, pd.DataFrame]]:
    size = max(1, -(-len(frame) // pieces))
    return [(first + i, frame.iloc[i:i + size].reset_index(drop=True)) for i in range(0, len(frame), size)]


def _featurize_deferred(featurizer, table: pd.DataFrame, raw: np.ndarray, deferred: list[int], timeout: float) -> np.ndarray:
    """Raw features of all valid rows of a worker's piece: ``raw`` holds those of the rows not
    ``deferred``; the deferred (large) ones are featurized here under the time guard, and those that
    time out are marked in ``table["error"]`` and left out."""
    valid_index = np.flatnonzero((table["error"] == "").to_numpy())
    smiles = table["smiles"].to_numpy()[valid_index]
    slow = slow_molecules(featurizer, [smiles[i] for i in deferred], timeout, guarded_from=-1)
    for j, reason in slow.items():
        table.loc[valid_index[deferred[j]], "error"] = reason
    quick = [i for j, i in enumerate(deferred) if j not in slow]
    rows = np.empty((valid_index.size, featurizer.dim))
    rows[np.setdiff1d(np.arange(valid_index.size), deferred)] = raw
    rows[quick] = featurizer.raw_uncached([smiles[i] for i in quick])
    return np.delete(rows, [deferred[j] for j in slow], axis=0)


def prepare_chunk(pool_of_workers, featurizer, first: int, frame: pd.DataFrame, n_pieces: int, timeout: float,
                  smiles_col: str | None, label_col: str | None, source: str) -> tuple[pd.DataFrame, torch.Tensor]:
    """The chunk's table (standardized, rules applied, the time guard's exclusions included) and the
    model input ``[n_valid, d]`` of its valid rows; ``pool_of_workers`` None: in this process."""
    jobs = _split(first, frame, n_pieces)
    if pool_of_workers is None:
        _configure(featurizer, smiles_col, label_col, source)
        parts = [_prepare(job) for job in jobs]
    else:
        parts = pool_of_workers.map(_prepare, jobs)
    raws = [_featurize_deferred(featurizer, table, raw, deferred, timeout) if deferred else raw
            for table, raw, deferred in parts]
    table = pd.concat([table for table, _, _ in parts], ignore_index=True)
    raw = np.concatenate(raws) if raws else np.zeros((0, featurizer.dim))
    return table, torch.from_numpy(featurizer.model_input(raw))


# --------------------------------------------------------------------------- the run


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def _append(path: Path, data: bytes) -> int:
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def score_file(inf: Influence, path: str | os.PathLike, out_csv: str | os.PathLike, config: StreamConfig | None = None,
               strict: bool = False, progress: bool = False) -> dict:
    """Score every row of the molecule file ``path`` with the fitted ``inf`` into ``out_csv`` (and its
    histogram and summary, :func:`~lipo_if.influence.outputs.output_paths`), chunk by chunk,
    resumably (see the module docstring); returns the summary."""
    from tqdm.auto import tqdm

    config = config or StreamConfig()
    path, paths = Path(path), output_paths(out_csv)
    out = paths["csv"]
    partial, keys_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".keys")
    progress_file = out.with_name(out.name + ".progress.json")
    identity = {"input": _fingerprint(path), "influence": inf.config.identity(), "chunk_rows": config.chunk_rows,
                "model": [model_fingerprint(m.model) for m in getattr(inf.run, "members", [inf.run])]}
    state = {"rows_done": 0, "csv_bytes": 0, "keys_bytes": 0, "chunks": 0}
    if config.resume and progress_file.exists() and partial.exists() and keys_file.exists():
        saved = json.loads(progress_file.read_text())
        if saved.get("identity") == identity:
            state = saved["state"]
            _truncate(partial, state["csv_bytes"])
            _truncate(keys_file, state["keys_bytes"])
    if state["rows_done"] == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"")
        keys_file.write_bytes(b"")
    first_row: dict[str, int] = {}
    for line in keys_file.read_text().splitlines():
        key, row = line.rsplit("\t", 1)
        first_row[key] = int(row)
    scores_done, reasons_done = array("d"), Counter()  # what the summary needs, not the rows
    if state["rows_done"]:
        _tally(partial, scores_done, reasons_done)
    clock = time.perf_counter()
    featurizer = inf.run.featurizer
    smiles_col, label_col = inf.config.smiles_col, inf.config.label_col
    n_pieces = max(1, config.n_workers * 2)
    workers = None
    if config.n_workers > 1:
        import multiprocessing

        workers = multiprocessing.get_context("fork").Pool(config.n_workers, _init_worker,
                                                           (featurizer, smiles_col, label_col, str(path)))
    bar = tqdm(desc="scoring", unit="rows", initial=state["rows_done"], disable=not progress)
    columns = None
    try:
        for first, frame in read_chunks(path, config.chunk_rows, skip_rows=state["rows_done"]):
            table, x = prepare_chunk(workers, featurizer, first, frame, n_pieces, FEATURIZE_TIMEOUT_S,
                                     smiles_col, label_col, str(path))
            if strict and table["error"].str.contains("outside the plausible logD range").any():
                bad = table[table["error"].str.contains("outside the plausible logD range")].iloc[0]
                raise DataError(f"{path}: row {int(bad['row'])}: {bad['error']} (run without --strict to exclude such rows)")
            chunk = Pool.featurized(table, str(path), featurizer, x)
            scored = inf.scores(chunk)
            fresh = []
            for i, (key, reason, row) in enumerate(zip(table["key"], scored["excluded"], scored["row"])):
                if reason.startswith("duplicate row of row"):  # within the chunk: name the first row of the whole file
                    scored.loc[i, "excluded"] = f"duplicate row of row {first_row[key]}"
                    continue
                if reason:
                    continue
                if key in first_row:
                    scored.loc[i, ["excluded", "score"]] = [f"duplicate row of row {first_row[key]}", np.nan]
                    scored.loc[i, "in_domain"] = False
                else:
                    first_row[key] = int(row)
                    fresh.append(f"{key}\t{int(row)}\n")
            columns = columns or OUTPUT_COLUMNS + [c for c in scored.columns if c not in OUTPUT_COLUMNS]
            text = scored[columns].to_csv(index=False, header=state["csv_bytes"] == 0, float_format="%.10g")
            state["csv_bytes"] = _append(partial, text.encode())
            state["keys_bytes"] = _append(keys_file, "".join(fresh).encode())
            state["rows_done"] += len(frame)
            state["chunks"] += 1
            atomic_write_json(progress_file, {"identity": identity, "state": state})
            scores_done.extend(scored.loc[scored["excluded"] == "", "score"].astype(float).tolist())
            reasons_done.update(scored["excluded"].tolist())
            bar.update(len(frame))
    finally:
        bar.close()
        if workers is not None:
            workers.terminate()
            workers.join()
    if state["rows_done"] == 0:
        raise DataError(f"{path}: file has a header but no data rows")
    os.replace(partial, out)
    keys_file.unlink(missing_ok=True)
    scores = np.asarray(scores_done, dtype=float)
    summary = inf.digest(str(path), score_counts(list(reasons_done.elements()), scores), _most_helpful(out))
    summary["outputs"] = {k: str(p) for k, p in paths.items()}
    summary["stream"] = {**asdict(config), "chunks": state["chunks"], "rows": state["rows_done"],
                         "seconds_this_session": round(time.perf_counter() - clock, 2)}
    title = f"{len(scores)} molecules · {inf.config.hessian} · {inf.config.solver} · held-out: {inf.config.heldout}"
    atomic_write_bytes(paths["histogram"], histogram_png(scores, title))
    atomic_write_json(paths["summary"], summary)
    progress_file.unlink(missing_ok=True)
    return summary


def _tally(csv: Path, scores: array, reasons: Counter) -> None:
    """Add the scores and exclusion reasons of the rows already written (a resumed run)."""
    for frame in pd.read_csv(csv, usecols=["score", "excluded"], keep_default_na=False, dtype=str, chunksize=200_000):
        scores.extend(frame.loc[frame["excluded"] == "", "score"].astype(float).tolist())
        reasons.update(frame["excluded"].tolist())


def _most_helpful(csv: Path, n: int = 10) -> list[dict]:
    best = None
    for frame in pd.read_csv(csv, usecols=["row", "smiles", "score", "excluded"], keep_default_na=False, dtype=str, chunksize=200_000):
        frame = frame[frame["excluded"] == ""].assign(score=lambda f: f["score"].astype(float))
        best = pd.concat([best, frame.nsmallest(n, "score")]) if best is not None else frame.nsmallest(n, "score")
    if best is None or best.empty:
        return []
    top = best.nsmallest(n, "score")[["row", "smiles", "score"]]
    return [{"row": int(r), "smiles": s, "score": float(v)} for r, s, v in zip(top["row"], top["smiles"], top["score"])]
