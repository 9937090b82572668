"""Pools of 10⁴ … 10⁶ molecules through `lipo-if influence`'s streaming path: rows/s, peak memory.

    python benchmarks/stream_scale.py --data-dir ../shared/data --rows 10000 100000 [--workers 2] [--json OUT]
    python benchmarks/stream_scale.py --data-dir ../shared/data --rows 10000 --prefilter 0 5 20 --ranks 1 2

``--prefilter K …`` adds runs with FastIF's prefilter (0 = every molecule, always run first) and
reports, for each, how many of the full run's 100 most helpful (eligible) molecules it still
scores; ``--ranks N …`` runs each configuration under ``torchrun --nproc-per-node N`` too (each rank
then takes workers/N worker processes), side by side with one rank; ``--repeat R`` goes over all
configurations R times, interleaved, so that load on this shared machine falls on all of them.
Peak RSS is that of the largest process so far in this script (getrusage), so it is meaningful for
the first configuration and for growing pool sizes only.

The pool is synthetic, made here from real molecules: every Lipophilicity molecule and its RDKit
edits — one hydrogen on an aromatic carbon replaced by F, Cl, CH3, OH or OCH3 — and, beyond the
≈ 1.2 × 10⁵ that single edits give, edits of those edits (two substitutions); deduplicated,
shuffled (seed 0), labelled with the parent's logD + N(0, 0.3) (synthetic labels: a workload, not
data). The model is the Task-1 default trained on the random split, seed 0 (trained once, cached in
--work). Each size is scored in a fresh process (`lipo-if influence`, the same command a user runs)
so that its peak RSS (the process and its worker processes, from getrusage) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SUBSTITUENTS = ("F", "Cl", "C", "O", "OC")


def analogs(smiles: str) -> list[str]:
    """The molecule's single aromatic-H substitutions (canonical SMILES)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return []
    out = []
    for atom in mol.GetAtoms():
        if atom.GetIsAromatic() and atom.GetSymbol() == "C" and atom.GetTotalNumHs() == 1:
            for sub in SUBSTITUENTS:
                edit = Chem.RWMol(mol)
                frag = Chem.MolFromSmiles(sub)
                offset = edit.GetNumAtoms()
                for a in frag.GetAtoms():
                    edit.AddAtom(Chem.Atom(a.GetAtomicNum()))
                for b in frag.GetBonds():
                    edit.AddBond(b.GetBeginAtomIdx() + offset, b.GetEndAtomIdx() + offset, b.GetBondType())
                edit.AddBond(atom.GetIdx(), offset, Chem.BondType.SINGLE)
                edit.GetAtomWithIdx(atom.GetIdx()).SetNumExplicitHs(0)
                try:
                    Chem.SanitizeMol(edit)
                    out.append(Chem.MolToSmiles(edit))
                except Exception:  # noqa: BLE001 - an edit RDKit rejects is skipped
                    pass
    return out


def synthetic_pool(lipo: Path, rows: int, path: Path) -> Path:
    """The first ``rows`` of the shuffled analog pool, written to ``path`` (kept: reused when it exists).

    Generation 1 is every Lipophilicity molecule and its single edits (≈ 1.2 × 10⁵ unique); when
    more rows are asked for, generation 2 edits generation 1's analogs again (two substitutions),
    parents in file order, until ``rows`` unique molecules exist. Each keeps its Lipophilicity
    ancestor's logD + N(0, 0.3) per generation (synthetic labels)."""
    if path.exists():
        return path
    frame = pd.read_csv(lipo)
    rng = np.random.default_rng(0)
    smiles, labels, seen = [], [], set()

    def add(candidates: list[str], label: float) -> None:
        for s in candidates:
            if s not in seen:
                seen.add(s)
                smiles.append(s)
                labels.append(label + float(rng.normal(0, 0.3)))

    for parent, label in zip(frame["smiles"], frame["exp"]):
        add([parent, *analogs(parent)], float(label))
    first_generation = len(smiles)
    for i in range(first_generation):  # a second edit, only as far as needed
        if len(smiles) >= rows:
            break
        add(analogs(smiles[i]), labels[i])
    if len(smiles) < rows:
        raise SystemExit(f"only {len(smiles)} unique molecules from two rounds of edits; ask for fewer rows")
    order = rng.permutation(len(smiles))[:rows]
    pd.DataFrame({"smiles": [smiles[i] for i in order], "label": np.round([labels[i] for i in order], 3)}).to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("LIPO_IF_DATA"))
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--work", default="runs/stream_scale")
    parser.add_argument("--prefilter", type=int, nargs="+", default=[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1])
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the configurations (interleaved; compare the best of each)")
    parser.add_argument("--json")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lipo = Path(args.data_dir) / "lipophilicity.csv"
    run_dir = work / "run"
    cli = [sys.executable, "-m", "lipo_if.cli", "-q"]
    if not (run_dir / "model.pt").exists():
        subprocess.run([*cli, "train", "--data", str(lipo), "--out", str(run_dir)], check=True)
    results = []
    for n in args.rows:
        pool = synthetic_pool(lipo, n, work / f"pool_{n}.csv")
        full_top = None
        for ranks, k, rep in [(r, k, rep) for rep in range(args.repeat) for r in args.ranks for k in sorted(set([0, *args.prefilter]))]:
            tag = f"{n}_r{ranks}_k{k}"
            out = work / f"scores_{tag}.csv"
            for stale in work.glob(f"scores_{tag}*"):  # the saved solve too: every run solves afresh
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            launcher = cli if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc-per-node", str(ranks), "-m", "--", "lipo_if.cli", "-q"]
            cmd = [*launcher, "influence", "--run", str(run_dir), "--external", str(pool), "--out", str(out),
                   "--solver", "function-space", "--chunk-rows", str(args.chunk_rows), "--workers", str(args.workers),
                   "--prefilter", str(k), "--no-resume"]
            start = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - start
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far (KiB)
            summary = json.loads((work / f"scores_{tag}_summary.json").read_text())
            scores = pd.read_csv(out, usecols=["row", "score", "in_domain", "excluded"], keep_default_na=False, dtype=str)
            eligible = scores[(scores["excluded"] == "") & (scores["in_domain"] == "True")]
            top = set(eligible.assign(score=eligible["score"].astype(float)).nsmallest(100, "score")["row"])
            if k == 0 and ranks == 1:
                full_top = top
            row = {"rows": n, "ranks": ranks, "prefilter": k, "repeat": rep, "wall_s": round(wall, 1), "rows_per_s": round(n / wall, 1),
                   "peak_rss_mib_any_process": round(peak_kib / 1024, 1), "peak_rss_grew": peak_kib > before,
                   "scored": summary["counts"]["scored"], "chunks": summary["stream"]["chunks"],
                   "workers": args.workers or os.cpu_count(), "load_end": os.getloadavg()[0],
                   "full_top100_kept": len(top & full_top) if full_top is not None else None}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, indent=1))


if __name__ == "__main__":
    main()
