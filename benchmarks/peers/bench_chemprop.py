"""Task-1 peer: chemprop's D-MPNN (chemprop 2.3.1, its defaults) on exactly lipo_if's splits.

A peer comparison, run from chemprop's own virtual environment (``.venv-chemprop``: torch
2.13.0 CPU + chemprop 2.3.1 from PyPI); chemprop is never a dependency of lipo_if, and this
script only *calls* chemprop (its ``chemprop train`` / ``chemprop predict`` command lines).
Two processes, two modes:

- ``--prepare DIR`` (the project venv: lipo_if, RDKit)::

      .venv/bin/python benchmarks/peers/bench_chemprop.py --prepare runs/peers/chemprop_splits \\
          --data-dir ../shared/data --seeds 0 1 2 3 4 --splits random scaffold

  For every (split, seed) writes ``DIR/<split>_<seed>/{train,val,test}.csv`` (columns
  ``smiles,label``) and ``split.json`` — the split ``lipo-if train --seed S --split KIND``
  uses: the data are loaded as the CLI loads them (``resolve_lipophilicity_path`` +
  ``load_dataset``: invalid SMILES dropped, stereo-insensitive duplicates merged, labels
  averaged), the split is ``make_split(dataset, TrainConfig(seed=S, split=KIND).split, .seed)``
  as in ``train_run``, and the SMILES are the dataset's own strings (isomeric canonical), the
  labels written with ``repr`` (exact float round trip). Unless ``--no-check``, each split is
  checked against a tiny ``train_run`` (1 epoch, 64-bit Morgan, no feature cache): same
  train/val/test indices, and the CSVs read back give that run's SMILES and labels exactly.

- ``--run DIR --json OUT.json`` (the chemprop venv)::

      .venv-chemprop/bin/python benchmarks/peers/bench_chemprop.py --run runs/peers/chemprop_splits \\
          --splits random --json runs/peers/chemprop_random.json

  For every prepared split: ``chemprop train --data-path train.csv val.csv test.csv
  --task-type regression --smiles-columns smiles --target-columns label --epochs 50
  --output-dir …`` (everything else at chemprop's defaults; 50 epochs *is* chemprop 2.3.1's
  default, passed explicitly), then ``chemprop predict`` with ``model_0/best.pt`` (the
  best-validation checkpoint) on the test SMILES, and test RMSE / MAE / R² computed here with
  numpy in the original label units (logD; chemprop un-scales its own outputs). The JSON
  (written atomically after every split, so a long run can be followed and ``--resume``-d)
  holds per-(split, seed) metrics, wall seconds and versions; a Markdown table of mean ± sd
  over seeds is printed at the end.

Note: at its defaults chemprop draws its PyTorch seed at random (``--pytorch-seed`` unset), so a
rerun differs by about the seed-to-seed noise of the initialization; ``--pytorch-seed-from-split``
passes ``--pytorch-seed SEED`` for a reproducible (but no longer default) run.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from peer_io import atomic_write_text  # benchmarks/peers/peer_io.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("train", "val", "test")


def _csv_text(rows: list[tuple[str, float]] | list[tuple[str]], header: tuple[str, ...]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def read_split_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return [r["smiles"] for r in rows], np.array([float(r["label"]) for r in rows], dtype=float)


# --------------------------------------------------------------------------- prepare (project venv)


def prepare(args: argparse.Namespace) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import lipo_if
    from lipo_if.data import load_dataset, make_split, resolve_lipophilicity_path

    from lipo_if.featurize import FeaturizerConfig
    from lipo_if.train import TrainConfig, train_run

    out = Path(args.prepare)
    path = resolve_lipophilicity_path(data_dir=args.data_dir)  # as `lipo-if train --data-dir DIR`
    dataset = load_dataset(path)  # as the CLI without --strict
    data_path = str(Path(path).resolve())
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    print(f"{data_path}: {len(dataset)} molecules (sha256 {sha[:16]}…, fingerprint {dataset.fingerprint()})", flush=True)
    prepared = []
    for kind in args.splits:
        for seed in args.seeds:
            config = TrainConfig(seed=seed, split=kind)
            split = make_split(dataset, config.split, config.seed)  # what train_run does with split=None
            folder = out / f"{kind}_{seed}"
            for part in PARTS:
                idx = split.part(part)
                rows = [(dataset.smiles[i], repr(float(dataset.labels[i]))) for i in idx]
                atomic_write_text(folder / f"{part}.csv", _csv_text(rows, ("smiles", "label")))
            split.save(folder / "split.json", dataset)
            if args.check:
                tiny = TrainConfig(seed=seed, split=kind, hidden=(4,), max_epochs=1, min_epochs=1, patience=1)
                run = train_run(dataset, data_path, tiny, FeaturizerConfig(name="morgan", n_bits=64),
                                progress=False, cache_dir=False)
                for part in PARTS:
                    assert run.split.part(part) == split.part(part), f"{kind}/{seed} {part}: indices differ from train_run's"
                    smiles, labels = read_split_csv(folder / f"{part}.csv")
                    assert smiles == run.smiles(part), f"{kind}/{seed} {part}: SMILES differ from train_run's"
                    assert np.array_equal(labels, run.labels(part)), f"{kind}/{seed} {part}: labels differ from train_run's"
                assert set(read_split_csv(folder / "test.csv")[0]) == set(run.smiles("test"))
                assert not (set(run.keys("test")) & set(run.keys("train"))), f"{kind}/{seed}: test and train share a structure"
            sizes = {p: len(split.part(p)) for p in PARTS}
            prepared.append({"split": kind, "seed": seed, "dir": folder.name, "sizes": sizes})
            print(f"{kind} seed {seed}: {sizes['train']}/{sizes['val']}/{sizes['test']} -> {folder}"
                  + (" (checked against train_run)" if args.check else ""), flush=True)
    meta = {"date": _dt.date.today().isoformat(), "lipo_if": lipo_if.__version__, "data_path": data_path,
            "data_sha256": sha, "data_fingerprint": dataset.fingerprint(), "n_molecules": len(dataset),
            "checked_against_train_run": bool(args.check), "prepared": prepared}
    old = out / "meta.json"
    if old.exists():  # a later --prepare of other splits/seeds adds to the list
        previous = json.loads(old.read_text())
        if previous.get("data_fingerprint") == meta["data_fingerprint"]:
            keep = [p for p in previous.get("prepared", []) if (p["split"], p["seed"]) not in {(q["split"], q["seed"]) for q in prepared}]
            meta["prepared"] = keep + prepared
    atomic_write_text(old, json.dumps(meta, indent=1))
    print(f"wrote {len(prepared)} splits under {out} (meta.json)")


# --------------------------------------------------------------------------- run (chemprop venv)


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    resid = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(resid**2))), "mae": float(np.mean(np.abs(resid))),
            "r2": float(1.0 - np.sum(resid**2) / ss_tot) if ss_tot > 0 else float("nan"),
            "pearson": float(np.corrcoef(y, p)[0, 1]) if len(y) > 1 else float("nan")}


def _run_logged(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"{cmd[1]} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    return seconds


def run_one(folder: Path, seed: int, args: argparse.Namespace, chemprop_bin: str) -> dict:
    work = folder / "chemprop"
    done = work / "result.json"
    if args.resume and done.exists():
        entry = json.loads(done.read_text())
        if entry.get("epochs") == args.epochs and entry.get("pytorch_seed_from_split") == args.pytorch_seed_from_split:
            print(f"{folder.name}: reusing {done}", flush=True)
            return entry
    work.mkdir(parents=True, exist_ok=True)
    train_cmd = [chemprop_bin, "train", "--data-path", str(folder / "train.csv"), str(folder / "val.csv"),
                 str(folder / "test.csv"), "--task-type", "regression", "--smiles-columns", "smiles",
                 "--target-columns", "label", "--epochs", str(args.epochs), "--output-dir", str(work / "train")]
    if args.pytorch_seed_from_split:
        train_cmd += ["--pytorch-seed", str(seed)]
    print(f"{folder.name}: chemprop train ({args.epochs} epochs) …", flush=True)
    train_s = _run_logged(train_cmd, work / "train.log")
    model_dir = work / "train" / "model_0"
    best = model_dir / "best.pt"
    if not best.exists():
        sys.exit(f"{best}: not written by chemprop train (see {work / 'train.log'})")
    # the checkpoint chemprop keeps is named best-epoch=E-val_loss=….ckpt (E 0-based, as lightning counts)
    epochs = [int(c.name.split("=")[1].split("-")[0]) for c in (model_dir / "checkpoints").glob("best-epoch=*.ckpt")]
    best_epoch = max(epochs) if epochs else None

    smiles, y = read_split_csv(folder / "test.csv")
    query = work / "test_smiles.csv"  # SMILES only: chemprop predict writes its prediction into the target's column
    atomic_write_text(query, _csv_text([(s,) for s in smiles], ("smiles",)))
    preds_path = work / "test_preds.csv"
    predict_cmd = [chemprop_bin, "predict", "--test-path", str(query), "--model-paths", str(best),
                   "--smiles-columns", "smiles", "--preds-path", str(preds_path)]
    predict_s = _run_logged(predict_cmd, work / "predict.log")
    with open(preds_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if [r["smiles"] for r in rows] != smiles:
        sys.exit(f"{preds_path}: rows do not match {folder / 'test.csv'} (order or count)")
    pred = np.array([float(r["label"]) for r in rows])
    entry = {"split": folder.name.rsplit("_", 1)[0], "seed": seed, "epochs": args.epochs,
             "pytorch_seed_from_split": args.pytorch_seed_from_split,
             "n_train": len(read_split_csv(folder / "train.csv")[0]), "n_val": len(read_split_csv(folder / "val.csv")[0]),
             "n_test": len(smiles), "test": metrics(y, pred), "best_epoch": best_epoch,
             "train_s": round(train_s, 1), "predict_s": round(predict_s, 1), "wall_s": round(train_s + predict_s, 1),
             "train_cmd": train_cmd, "predict_cmd": predict_cmd}
    own = model_dir / "test_predictions.csv"  # chemprop train's own test predictions (best checkpoint): a cross-check
    if own.exists():
        with open(own, newline="", encoding="utf-8") as handle:
            own_pred = np.array([float(r["label"]) for r in csv.DictReader(handle)])
        if len(own_pred) == len(pred):
            entry["max_abs_diff_vs_train_test_predictions"] = float(np.max(np.abs(own_pred - pred)))
    atomic_write_text(done, json.dumps(entry, indent=1))
    m = entry["test"]
    print(f"{folder.name}: test RMSE {m['rmse']:.3f}  MAE {m['mae']:.3f}  R² {m['r2']:.3f}  "
          f"(best epoch {best_epoch}; train {train_s:.0f} s, predict {predict_s:.0f} s)", flush=True)
    return entry


def summarize(results: dict, kinds: list[str]) -> tuple[dict, str]:
    summary: dict = {}
    lines = ["| split | seeds | test RMSE | test MAE | test R² | wall s (sum) |", "|---|---|---|---|---|---|"]
    for kind in kinds:
        entries = sorted((e for e in results.values() if e["split"] == kind), key=lambda e: e["seed"])
        if not entries:
            continue
        s: dict = {"seeds": [e["seed"] for e in entries], "wall_s": round(sum(e["wall_s"] for e in entries), 1)}
        cells = []
        for name in ("rmse", "mae", "r2"):
            vals = np.array([e["test"][name] for e in entries])
            sd = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            s[name] = {"mean": float(vals.mean()), "sd": sd, "per_seed": vals.tolist()}
            cells.append(f"{vals.mean():.3f} ± {sd:.3f}")
        summary[kind] = s
        lines.append(f"| {kind} | {' '.join(map(str, s['seeds']))} | " + " | ".join(cells) + f" | {s['wall_s']:.0f} |")
    lines += ["", "| split | seed | test RMSE | test MAE | test R² | best epoch | wall s |", "|---|---|---|---|---|---|---|"]
    for kind in kinds:
        for e in sorted((e for e in results.values() if e["split"] == kind), key=lambda e: e["seed"]):
            t = e["test"]
            lines.append(f"| {kind} | {e['seed']} | {t['rmse']:.3f} | {t['mae']:.3f} | {t['r2']:.3f} | "
                         f"{e['best_epoch']} | {e['wall_s']:.0f} |")
    return summary, "\n".join(lines)


def run_peer(args: argparse.Namespace) -> None:
    try:
        import chemprop
        import torch
    except ImportError as exc:
        sys.exit(f"bench_chemprop.py --run needs chemprop, not importable here ({exc}): create .venv-chemprop "
                 f"(torch==2.13.0 first, then chemprop==2.3.1) and run it with .venv-chemprop/bin/python")
    chemprop_bin = str(Path(sys.executable).parent / "chemprop")
    if not Path(chemprop_bin).exists():
        sys.exit(f"{chemprop_bin}: no chemprop command next to {sys.executable}")
    base = Path(args.run)
    meta = json.loads((base / "meta.json").read_text())
    todo = [p for p in meta["prepared"] if (not args.splits or p["split"] in args.splits)
            and (args.seeds is None or p["seed"] in args.seeds)]
    if not todo:
        sys.exit(f"{base}: no prepared split matches --splits {args.splits} --seeds {args.seeds}")
    kinds = [k for k in ("random", "scaffold") if any(p["split"] == k for p in todo)]
    env = {"python": platform.python_version(), "chemprop": chemprop.__version__, "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "cpus": os.cpu_count(),
           "loadavg_start": os.getloadavg(), "nice": os.nice(0)}
    try:
        import lightning
        import rdkit

        env.update(lightning=lightning.__version__, rdkit=rdkit.__version__)
    except ImportError:
        pass
    print(f"versions: {env}; splits from {base} (lipo_if {meta['lipo_if']}, data {meta['data_fingerprint']})", flush=True)
    deviations = [] if not args.pytorch_seed_from_split else ["--pytorch-seed SEED (default: a random seed per run)"]
    if args.epochs != 50:
        deviations.append(f"--epochs {args.epochs} (default 50)")
    results: dict = {}
    t_all = time.perf_counter()
    out = Path(args.json) if args.json else None

    def write(final: bool) -> str:
        summary, table = summarize(results, kinds)
        doc = {"date": _dt.date.today().isoformat(), "command": " ".join(sys.argv), "complete": final,
               "env": {**env, "loadavg_end": os.getloadavg()}, "epochs": args.epochs,
               "deviations_from_chemprop_defaults": deviations, "splits_meta": meta,
               "wall_s": round(time.perf_counter() - t_all, 1), "summary": summary, "per_run": results}
        if out is not None:
            atomic_write_text(out, json.dumps(doc, indent=1))
        return table

    for p in todo:
        results[f"{p['split']}/{p['seed']}"] = run_one(base / p["dir"], p["seed"], args, chemprop_bin)
        write(final=False)
    table = write(final=True)
    print(f"\nchemprop {chemprop.__version__} D-MPNN, {args.epochs} epochs, test metrics (mean ± sd over seeds, sd with ddof=1)\n")
    print(table)
    print(f"\n{time.perf_counter() - t_all:.0f} s wall in all; load average start {env['loadavg_start']}, end {os.getloadavg()}")
    if out is not None:
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", metavar="DIR", help="write lipo_if's splits as CSVs here (project venv)")
    mode.add_argument("--run", metavar="DIR", help="train and evaluate chemprop on the splits prepared here (chemprop venv)")
    parser.add_argument("--splits", nargs="+", choices=("random", "scaffold"),
                        help="default: random scaffold (prepare); all prepared (run)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 3 4 (prepare); all prepared (run)")
    parser.add_argument("--data-dir", help="folder with lipophilicity.csv (default $LIPO_IF_DATA, then the download cache)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="prepare: skip the check against a tiny train_run")
    parser.add_argument("--epochs", type=int, default=50, help="chemprop --epochs (run; 50 = chemprop's default)")
    parser.add_argument("--pytorch-seed-from-split", action="store_true",
                        help="run: pass --pytorch-seed SEED (reproducible; chemprop's default is a random seed)")
    parser.add_argument("--resume", action="store_true", help="run: reuse a split's finished chemprop/result.json")
    parser.add_argument("--json", help="run: write the results here (atomically, after every split)")
    args = parser.parse_args()
    if args.prepare:
        args.splits = args.splits or ["random", "scaffold"]
        args.seeds = args.seeds if args.seeds is not None else [0, 1, 2, 3, 4]
        prepare(args)
    else:
        run_peer(args)


if __name__ == "__main__":
    main()
