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
4. write the chunk's scored rows to ``<out>.parts/NNNNNNN.csv`` (temp file, fsync, rename).

Then the parts are merged in file order into ``<out>`` (atomic): a row whose molecule an earlier
row of the file already holds is excluded as "duplicate row of row N", as in the one-table path;
the histogram and summary are written from the merged scores. Peak memory holds one chunk (and
one key per scored row during the merge), not the pool. Started again with the same command after
a kill (Ctrl-C, SIGTERM, power loss), the run keeps the parts already written, reuses the saved
solve (``<out stem>_influence/``) and scores only the missing chunks; the output equals an
uninterrupted run's byte for byte.

Under ``torchrun`` (:mod:`lipo_if.distributed`) chunk ``i`` is scored by rank ``i mod size``, every
rank featurizing with its share of the cores, and rank 0 merges once every rank has written its
parts — the same file a single process writes. A resumed run may use another number of ranks.

With ``prefilter`` K (:mod:`lipo_if.prefilter`) a first pass parses, standardizes and fingerprints
every chunk (no descriptors), keeps each chunk's molecule table in the parts folder and the K
nearest rows of every held-out molecule; the second pass reuses those tables and featurizes only
the kept rows.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from array import array
from collections import Counter
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from .data import DataError, molecule_table
from .distributed import World, current
from .featurize import FEATURIZE_TIMEOUT_S, GUARDED_HEAVY_ATOMS, slow_molecules
from .influence.api import HELDOUT_PARTS, OUTPUT_COLUMNS, Influence, model_fingerprint, score_counts
from .influence.outputs import histogram_png, output_paths
from .io import atomic_write_bytes, atomic_write_json
from .pool import Pool
from .prefilter import NearestPool, prefilter_reason


@dataclass
class StreamConfig:
    """How a pool file is streamed (``lipo-if influence`` options)."""

    chunk_rows: int = field(default=5_000, metadata={"help": "input rows per chunk (memory holds one chunk; 5,000 keeps a run near 1.2 GiB)"})
    workers: int = field(default=0, metadata={"help": "worker processes that parse and featurize (0 = one per core)"})
    resume: bool = field(default=True, metadata={"help": "continue a killed run of the same command (--no-resume: start over)"})
    prefilter: int = field(default=0, metadata={"help": "FastIF's prefilter: score only the pool molecules among the K nearest "
                                                       "(Morgan-2 Tanimoto) of some held-out molecule; the others are excluded "
                                                       "with the reason (0 = score every molecule)"})

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or self.workers < 0 or self.prefilter < 0:
            raise ValueError(f"chunk_rows must be ≥ 1, workers and prefilter ≥ 0, got {self.chunk_rows}, {self.workers}, {self.prefilter}")

    @property
    def n_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)


# --------------------------------------------------------------------------- reading


def count_rows(path: str | os.PathLike) -> int | None:
    """Data rows of a molecule file for the progress bar's ETA: Parquet's metadata, or a CSV's (or
    gzip'ed CSV's) line count less the header — one fast pass over the bytes, no parsing. None when
    it cannot tell (a reader error is for :func:`read_chunks` to report)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        lines, last = 0, b"\n"
        with opener(path, "rb") as handle:
            while block := handle.read(1 << 24):
                lines += block.count(b"\n")
                last = block[-1:]
        return max(0, lines + (last != b"\n") - 1)
    except (ImportError, OSError, EOFError):
        return None


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


def _configure(featurizer, smiles_col, label_col, source, strict=False, nearest=None, left_out="") -> None:
    _WORKER.update(featurizer=featurizer, smiles_col=smiles_col, label_col=label_col, source=source, strict=strict,
                   nearest=nearest, left_out=left_out)


def _init_worker(*settings) -> None:
    torch.set_num_threads(1)  # a worker process: the cores are shared among the workers
    _configure(*settings)


def _table(first: int, frame: pd.DataFrame) -> pd.DataFrame:
    """The piece's molecule table; under ``strict`` an implausible label raises :class:`DataError`
    (from a worker, too: the pool re-raises it in the main process)."""
    return molecule_table(frame, Path(_WORKER["source"]), _WORKER["smiles_col"], _WORKER["label_col"],
                          strict=_WORKER["strict"], first_row=first)


def _nearest_piece(job: tuple[int, pd.DataFrame, None, bool]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The prefilter's first pass over one piece: per held-out molecule, its K most similar valid
    rows of the piece, ``(rows [H, K], similarities [H, K], the piece's molecule table)`` (row −1,
    similarity −inf where the piece has fewer) — the table is kept for the second pass, which then
    does not parse and standardize again."""
    first, frame, _, _ = job
    table = _table(first, frame)
    valid = table[table["error"] == ""]
    piece = _WORKER["nearest"].fresh()
    piece.update(valid["row"].to_numpy(dtype=np.int64), piece.similarities(valid["smiles"].tolist()))
    return piece.rows, piece.similarity, table


def _prepare(job: tuple[int, pd.DataFrame, np.ndarray | None, bool]) -> tuple[pd.DataFrame, np.ndarray, list[int]]:
    """Parse, standardize and featurize one piece: ``(table, raw features of its valid rows except
    the deferred ones, positions (among the valid rows) of the molecules deferred to the guard)``;
    with ``keep`` (the prefilter's rows), the other valid rows are excluded with its reason first.
    ``prepared``: ``frame`` is already the piece's molecule table (the prefilter's first pass)."""
    from rdkit import Chem

    first, frame, keep, prepared = job
    table = frame.copy() if prepared else _table(first, frame)
    if keep is not None:
        left_out = (table["error"] == "") & ~table["row"].isin(keep)
        table.loc[left_out, "error"] = _WORKER["left_out"]
    mols = [Chem.MolFromSmiles(s) for s in table.loc[table["error"] == "", "smiles"]]  # parsed once for every feature block
    deferred = [i for i, m in enumerate(mols) if m.GetNumHeavyAtoms() > GUARDED_HEAVY_ATOMS]
    skip = set(deferred)
    raw = _WORKER["featurizer"].raw_uncached([m for i, m in enumerate(mols) if i not in skip])
    return table, raw, deferred


def _split(first: int, frame: pd.DataFrame, pieces: int, keep: np.ndarray | None = None,
           prepared: bool = False) -> list[tuple[int, pd.DataFrame, np.ndarray | None, bool]]:
    size = max(1, -(-len(frame) // pieces))
    return [(first + i, frame.iloc[i:i + size].reset_index(drop=True), keep, prepared) for i in range(0, len(frame), size)]


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
    rows = np.empty((valid_index.size, *raw.shape[1:]), dtype=raw.dtype)  # (a graph featurizer's raw rows are objects)
    rows[np.setdiff1d(np.arange(valid_index.size), deferred)] = raw
    rows[quick] = featurizer.raw_uncached([smiles[i] for i in quick])
    return np.delete(rows, [deferred[j] for j in slow], axis=0)


def start_chunk(pool_of_workers, featurizer, first: int, frame: pd.DataFrame, n_pieces: int, timeout: float,
                smiles_col: str | None, label_col: str | None, source: str, keep: np.ndarray | None = None,
                left_out: str = "", prepared: pd.DataFrame | None = None,
                strict: bool = False) -> Callable[[], tuple[pd.DataFrame, torch.Tensor]]:
    """Start :func:`prepare_chunk` and return the call that finishes it: the worker processes parse
    and featurize the chunk's pieces while the caller scores the chunk before (with
    ``pool_of_workers`` None the work is done here, before returning)."""
    jobs = _split(first, frame, n_pieces, keep) if prepared is None else _split(first, prepared, n_pieces, keep, prepared=True)
    if pool_of_workers is None:
        _configure(featurizer, smiles_col, label_col, source, strict, None, left_out)
        done = [_prepare(job) for job in jobs]
        collect = lambda: done  # noqa: E731
    else:
        collect = pool_of_workers.map_async(_prepare, jobs).get  # a worker's error is raised by get()

    def finish() -> tuple[pd.DataFrame, torch.Tensor]:
        parts = collect()
        raws = [_featurize_deferred(featurizer, table, raw, deferred, timeout) if deferred else raw
                for table, raw, deferred in parts]
        table = pd.concat([table for table, _, _ in parts], ignore_index=True)
        raw = np.concatenate(raws) if raws else featurizer.raw_uncached([])
        return table, featurizer.model_tensor(raw)

    return finish


def prepare_chunk(pool_of_workers, featurizer, first: int, frame: pd.DataFrame, n_pieces: int, timeout: float,
                  smiles_col: str | None, label_col: str | None, source: str, keep: np.ndarray | None = None,
                  left_out: str = "", prepared: pd.DataFrame | None = None, strict: bool = False) -> tuple[pd.DataFrame, torch.Tensor]:
    """The chunk's table (standardized, rules applied, the time guard's exclusions included) and the
    model input ``[n_valid, d]`` of its valid rows; ``pool_of_workers`` None: in this process.
    ``keep``: the prefilter's rows (sorted); every other valid row is excluded with ``left_out``.
    ``prepared``: the chunk's molecule table from the prefilter's first pass (used instead of ``frame``).
    ``strict``: an implausible label raises :class:`DataError` (in-process; the workers have it
    from their initialization)."""
    return start_chunk(pool_of_workers, featurizer, first, frame, n_pieces, timeout, smiles_col, label_col, source,
                       keep, left_out, prepared, strict)()


# --------------------------------------------------------------------------- the run


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def parts_dir(out_csv: str | os.PathLike) -> Path:
    """Where a run keeps its scored chunks until the merge: ``<out>.parts/`` (``NNNNNNN.csv`` per
    chunk, ``identity.json``)."""
    out = output_paths(out_csv)["csv"]
    return out.with_name(out.name + ".parts")


def _part(parts: Path, index: int) -> Path:
    return parts / f"{index:07d}.csv"


def _first_pass_table(parts: Path, index: int) -> Path:
    """The molecule table of chunk ``index`` as the prefilter's first pass built it (pickled, ours)."""
    return parts / f"{index:07d}.table.pkl"


def _open_parts(parts: Path, identity: dict, resume: bool, world: World) -> None:
    """Keep the parts of an earlier run of the same command, else start an empty folder (rank 0
    decides; the others wait for it)."""
    if world.is_main:
        marker = parts / "identity.json"
        same = resume and marker.exists() and json.loads(marker.read_text()) == identity
        if not same:
            shutil.rmtree(parts, ignore_errors=True)
            parts.mkdir(parents=True)
            atomic_write_json(marker, identity)
    world.barrier()


def score_file(inf: Influence, path: str | os.PathLike, out_csv: str | os.PathLike, config: StreamConfig | None = None,
               strict: bool = False, progress: bool = False, world: World | None = None) -> dict | None:
    """Score every row of the molecule file ``path`` with the fitted ``inf`` into ``out_csv`` (and its
    histogram and summary, :func:`~lipo_if.influence.outputs.output_paths`), chunk by chunk,
    resumably (see the module docstring); returns the summary (None on ranks other than 0).

    ``world`` (default: :func:`lipo_if.distributed.current`): under torchrun every rank calls this
    with the same arguments; chunk ``i`` is scored by rank ``i mod size`` and rank 0 merges."""
    from tqdm.auto import tqdm

    config = config or StreamConfig()
    world = world or current()
    path, paths = Path(path), output_paths(out_csv)
    parts = parts_dir(out_csv)
    identity = {"input": _fingerprint(path), "influence": inf.config.identity(), "chunk_rows": config.chunk_rows,
                "prefilter": config.prefilter, "model": [model_fingerprint(m.model) for m in getattr(inf.run, "members", [inf.run])]}
    _open_parts(parts, identity, config.resume, world)
    clock = time.perf_counter()
    featurizer = inf.run.featurizer
    smiles_col, label_col = inf.config.smiles_col, inf.config.label_col
    n_workers = max(1, config.n_workers // world.size) if not config.workers else config.workers
    nearest, left_out = None, ""
    if config.prefilter:
        heldout_smiles = getattr(inf.run, "members", [inf.run])[0].smiles(HELDOUT_PARTS[inf.config.heldout])
        nearest, left_out = NearestPool(heldout_smiles, config.prefilter), prefilter_reason(config.prefilter, inf.config.heldout)
    reading = (featurizer, smiles_col, label_col, str(path), strict)  # what every worker needs to read a piece
    workers = None
    if n_workers > 1:
        import multiprocessing

        workers = multiprocessing.get_context("fork").Pool(n_workers, _init_worker, (*reading, nearest, left_out))
    bar = tqdm(desc="scoring" if not world.active else f"scoring (rank {world.rank}/{world.size})", unit="rows",
               total=count_rows(path) if progress and world.is_main else None, disable=not progress or not world.is_main, delay=0.5)
    n_chunks, rows = 0, 0
    try:
        keep = None
        if nearest is not None:
            keep = _prefiltered_rows(nearest, path, config.chunk_rows, parts, workers, max(1, n_workers * 2), world,
                                     reading, progress)
        def complete(index: int, n_rows: int, finish) -> None:
            table, x = finish()
            scored = inf.scores(Pool.featurized(table, str(path), featurizer, x))
            columns = OUTPUT_COLUMNS + [c for c in scored.columns if c not in OUTPUT_COLUMNS]
            text = scored[columns].assign(**{_KEY: table["key"].to_numpy()}).to_csv(index=False, float_format="%.10g")
            atomic_write_bytes(_part(parts, index), text.encode())
            bar.update(n_rows * world.size)

        pending = None  # the chunk the workers are preparing while the one before is scored here
        for index, (first, frame) in enumerate(read_chunks(path, config.chunk_rows)):
            n_chunks, rows = index + 1, rows + len(frame)
            if not world.owns(index) or _part(parts, index).exists():
                continue
            first_pass = _first_pass_table(parts, index)
            prepared = pd.read_pickle(first_pass) if keep is not None and first_pass.exists() else None
            finish = start_chunk(workers, featurizer, first, frame, max(1, n_workers * 2), FEATURIZE_TIMEOUT_S,
                                 smiles_col, label_col, str(path), keep, left_out, prepared, strict)
            if pending is not None:
                complete(*pending)
            pending = (index, len(frame), finish)
        if pending is not None:
            complete(*pending)
    finally:
        bar.close()
        if workers is not None:
            workers.terminate()
            workers.join()
    if rows == 0:
        raise DataError(f"{path}: file has a header but no data rows")
    world.barrier()  # every shard written
    if not world.is_main:
        return None
    scores, reasons, most_helpful = _merge(parts, n_chunks, paths["csv"])
    summary = inf.digest(str(path), score_counts(reasons, scores), most_helpful)
    summary["outputs"] = {k: str(p) for k, p in paths.items()}
    summary["stream"] = {**asdict(config), "chunks": n_chunks, "rows": rows, "ranks": world.size,
                         "seconds_this_session": round(time.perf_counter() - clock, 2)}
    title = f"{len(scores)} molecules · {inf.config.hessian} · {inf.config.solver} · held-out: {inf.config.heldout}"
    atomic_write_bytes(paths["histogram"], histogram_png(scores, title))
    atomic_write_json(paths["summary"], summary)
    shutil.rmtree(parts, ignore_errors=True)
    return summary


def _prefiltered_rows(nearest: NearestPool, path: Path, chunk_rows: int, parts: Path, workers, n_pieces: int, world: World,
                      reading: tuple, progress: bool) -> np.ndarray:
    """The prefilter's first pass (parse, standardize, fingerprint; no descriptors): the rows to
    score, sorted. Each rank reads its own chunks, the ranks' candidates are gathered and merged;
    saved in ``parts`` so that a resumed run does not read the pool twice more."""
    from tqdm.auto import tqdm

    saved = parts / "prefilter_rows.npy"
    if world.all_true(saved.exists()):
        return np.load(saved)
    if workers is None:
        _configure(*reading, nearest)
    shown = progress and world.is_main
    with tqdm(desc="prefilter", unit="rows", total=count_rows(path) if shown else None, disable=not shown, delay=0.5) as bar:
        for index, (first, frame) in enumerate(read_chunks(path, chunk_rows)):
            if world.owns(index):
                jobs = _split(first, frame, n_pieces)
                tables = []
                for rows, sims, table in (workers.map(_nearest_piece, jobs) if workers is not None else map(_nearest_piece, jobs)):
                    nearest.merge(rows, sims)
                    tables.append(table)
                buffer = io.BytesIO()
                pd.concat(tables, ignore_index=True).to_pickle(buffer)
                atomic_write_bytes(_first_pass_table(parts, index), buffer.getvalue())
            bar.update(len(frame))
    if world.active:
        gathered = zip(world.all_gather(torch.from_numpy(nearest.rows)), world.all_gather(torch.from_numpy(nearest.similarity)))
        nearest.clear()
        for rows, sims in gathered:
            nearest.merge(rows.numpy(), sims.numpy())
    keep = nearest.chosen()
    if world.is_main:
        buffer = io.BytesIO()
        np.save(buffer, keep)
        atomic_write_bytes(saved, buffer.getvalue())
    return keep


#: Column of a part file holding each row's molecule key (for the duplicates across chunks); not in the output.
_KEY = "_key"


def _merge(parts: Path, n_chunks: int, out: Path, n_helpful: int = 10) -> tuple[np.ndarray, Counter, list[dict]]:
    """Concatenate the chunks' parts in file order into ``out`` (atomically), naming for every
    repeated molecule the first row of the whole file that holds it (a row excluded as a
    duplicate within its chunk, or a scored row whose molecule an earlier chunk scored); returns,
    from the same pass, the scores of the scored rows, the count of each exclusion reason and the
    ``n_helpful`` most helpful rows (lowest score) for the summary."""
    first_row: dict[str, int] = {}
    scores, reasons, best = array("d"), Counter(), None
    tmp = out.with_name(f".{out.name}.merging")
    with open(tmp, "w", newline="") as handle:
        for index in range(n_chunks):
            part = pd.read_csv(_part(parts, index), dtype=str, keep_default_na=False)
            for i, (key, reason, row) in enumerate(zip(part[_KEY], part["excluded"], part["row"])):
                if reason.startswith("duplicate row of row"):
                    part.loc[i, "excluded"] = f"duplicate row of row {first_row.get(key, reason.rsplit(' ', 1)[-1])}"
                elif reason:
                    continue
                elif key in first_row:
                    part.loc[i, ["excluded", "score", "in_domain"]] = [f"duplicate row of row {first_row[key]}", "", "False"]
                else:
                    first_row[key] = int(row)
            part = part.drop(columns=_KEY)
            handle.write(part.to_csv(index=False, header=index == 0))
            scored = part.loc[part["excluded"] == "", ["row", "smiles", "score"]].assign(score=lambda f: f["score"].astype(float))
            scores.extend(scored["score"].tolist())
            reasons.update(part["excluded"].tolist())
            best = pd.concat([best, scored.nsmallest(n_helpful, "score")]).nsmallest(n_helpful, "score") if best is not None \
                else scored.nsmallest(n_helpful, "score")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    helpful = [] if best is None else [{"row": int(r), "smiles": s, "score": float(v)}
                                       for r, s, v in zip(best["row"], best["smiles"], best["score"])]
    return np.asarray(scores, dtype=float), reasons, helpful
