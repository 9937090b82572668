"""Wrong-label detection: cleanlab's ``regression.learn.CleanLearning`` vs lipo_if's detectors.

Run from cleanlab's own virtual environment (cleanlab is not a dependency of lipo_if):
``make bench-cleanlab``. Two processes, two modes:

- ``--prepare FILE.npz`` (the project venv: RDKit, torch, lipo_if): for every scenario × seed
  (:func:`lipo_if.scenarios.build_scenario`), train lipo_if's base MLP on the scenario's base
  training split, export the features (the run's featurizer, fit on the base training SMILES:
  count-Morgan + standardized RDKit descriptors) of the base training set (``X_train``,
  ``y_train``: measured labels) and of the pool (``X_pool``, ``y_pool``: the possibly corrupted
  labels), the known corruptions (``corrupted``, ``kind``), and lipo_if's detector values for
  the pool (:func:`lipo_if.suspicion.suspicion_table`: ``residual``, ``self_influence``,
  ``leverage``; higher = more suspicious).
- ``--workload FILE.npz`` (the cleanlab venv: cleanlab, scikit-learn, numpy; no lipo_if, no
  torch): for every scenario × seed, ``CleanLearning(model, seed=…).find_label_issues(X, y)`` on
  train ∪ pool — cleanlab's intended use: cross-validated predictions over all the data, its
  search for the fraction of issues k, bootstrap (epistemic) + aleatoric uncertainty, all at
  cleanlab's defaults — and the pool rows' ``label_quality`` (lower = more suspicious, so
  ``−label_quality`` is the suspicion). AUC (sklearn ``roc_auc_score``) against the known
  corruptions: overall, shifts only (shifted vs clean rows) and swaps only (swapped vs clean
  rows), side by side with lipo_if's detectors from the workload, on the same pool rows.

Models: ``ridge`` (``Ridge(alpha)``; ``--alpha`` defaults to RidgeCV's (GCV) choice on noisy seed
0's base training set — measured labels —, ``--alpha-cv`` re-chooses it per scenario × seed) and, optionally, ``hgb``
(``HistGradientBoostingRegressor`` on the dense descriptor block only, fixed seed; ~65 fits per
call, so it costs minutes). A reference that isolates the model from cleanlab's machinery:
``ridge_resid`` = |Ridge residual| of the pool for a Ridge fit on the base training set only
(the same information lipo_if's detectors get: a clean training set, the pool scored).

Note the information asymmetry, inherent in the two designs: lipo_if's detectors score the pool
against a model of the clean base training set; cleanlab pools everything and cross-validates,
so its model also learns from the pool's wrong labels (≈9 % of train ∪ pool in ``noisy``, ≈21 %
in ``lowdata``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from peer_io import atomic_write  # benchmarks/peers/peer_io.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
OUR_DETECTORS = ("residual", "self_influence", "leverage")


def _key(scenario: str, seed: int, name: str) -> str:
    return f"{scenario}__{seed}__{name}"


# --------------------------------------------------------------------------- prepare (project venv)


def prepare(args: argparse.Namespace) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch

    import lipo_if
    from lipo_if import Influence
    from lipo_if.data import load_dataset, resolve_lipophilicity_path
    from lipo_if.scenarios import build_scenario
    from lipo_if.suspicion import suspicion_table
    from lipo_if.train import TrainConfig, train_run

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or os.environ.get("LIPO_IF_DATA")
    path = resolve_lipophilicity_path(data_dir=data_dir)
    dataset = load_dataset(path)
    arrays: dict[str, np.ndarray] = {}
    meta = {"data": str(path), "lipo_if": lipo_if.__version__, "torch": torch.__version__,
            "scenarios": args.scenarios, "seeds": args.seeds, "date": _dt.date.today().isoformat(),
            "combos": {}}
    out = Path(args.prepare)
    partial = out.with_name(out.stem + ".partial.npz")
    for seed in args.seeds:  # seed-major: a partial workload (below) has every scenario early
        for name in args.scenarios:
            t0 = time.perf_counter()
            sc = build_scenario(name, dataset, seed)
            run = train_run(dataset, str(path), TrainConfig(seed=seed), None, split=sc.split, progress=False)
            t_train = time.perf_counter() - t0
            inf = Influence(run, solver="function-space", damping="auto", progress=False).fit()
            table = suspicion_table(inf, sc.pool)
            t_ours = time.perf_counter() - t0 - t_train
            X_train, y_train = run.tensors("train")
            valid = sc.pool.valid
            X_pool = sc.pool.features(run.featurizer).numpy()  # valid rows, table order
            rows = sc.pool.table["row"].to_numpy(dtype=int)
            by_row = table.set_index("row")
            k = lambda n: _key(name, seed, n)  # noqa: E731
            arrays[k("X_train")] = X_train.numpy().astype(np.float32)
            arrays[k("y_train")] = y_train.numpy().astype(np.float64)
            arrays[k("X_pool")] = X_pool.astype(np.float32)
            arrays[k("y_pool")] = sc.pool.table["label"].to_numpy(dtype=float)[valid]
            arrays[k("true_pool")] = sc.true_labels[valid].astype(float)
            arrays[k("corrupted")] = sc.corrupted[valid].astype(bool)
            arrays[k("kind")] = np.array(sc.kind, dtype="U5")[valid]
            arrays[k("row")] = rows[valid]
            for det in OUR_DETECTORS:  # "<det>_suspicion" in newer lipo_if (there "<det>" is the raw evidence)
                col = f"{det}_suspicion" if f"{det}_suspicion" in by_row.columns else det
                arrays[k(det)] = by_row.loc[rows[valid], col].to_numpy(dtype=float)
            excluded = by_row.loc[rows[valid], "excluded"].astype(str).to_numpy()
            arrays[k("scored")] = excluded == ""
            meta["combos"][f"{name}/{seed}"] = {
                "n_train": int(len(y_train)), "n_pool": int(len(valid)), "n_pool_valid": int(valid.sum()),
                "n_scored": int((excluded == "").sum()), "n_corrupted": int(sc.corrupted[valid].sum()),
                "val_rmse": float(run.metrics["val_rmse"]), "train_s": round(t_train, 1),
                "detectors_s": round(t_ours, 1), "featurizer_dim": int(run.featurizer.dim),
                "n_fingerprint": int(run.featurizer.dim - _n_dense(run.featurizer))}
            print(f"{name} seed {seed}: n_train {len(y_train)}, pool {int(valid.sum())} "
                  f"({int(sc.corrupted[valid].sum())} corrupted), val RMSE {run.metrics['val_rmse']:.3f}, "
                  f"train {t_train:.0f} s, detectors {t_ours:.0f} s", flush=True)
            # what is done so far, usable by the peer (--workload …partial.npz --seeds/--scenarios …)
            arrays["meta_json"] = np.array(json.dumps(meta))
            atomic_write(partial, lambda tmp: np.savez_compressed(tmp, **arrays))
    arrays["meta_json"] = np.array(json.dumps(meta))
    atomic_write(out, lambda tmp: np.savez_compressed(tmp, **arrays))
    partial.unlink(missing_ok=True)
    print(f"workload saved to {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _n_dense(featurizer) -> int:
    """Columns of the dense (descriptor) block: every part but the Morgan fingerprints (which come first)."""
    parts = featurizer._parts  # noqa: SLF001 — read only
    return sum(int(part.dim) for part in parts if not part.name.startswith("morgan"))


# --------------------------------------------------------------------------- peer run (cleanlab venv)


def auc_table(suspicion: np.ndarray, corrupted: np.ndarray, kind: np.ndarray) -> dict:
    """AUC of ``suspicion`` (higher = more suspicious): overall, shifts vs clean, swaps vs clean."""
    from sklearn.metrics import roc_auc_score

    clean = ~corrupted
    out = {}
    for label, pos in (("overall", corrupted), ("shift", kind == "shift"), ("swap", kind == "swap")):
        sel = clean | pos
        out[label] = float(roc_auc_score(pos[sel], suspicion[sel])) if pos.any() and clean.any() else float("nan")
    return out


def make_model(name: str, alpha: float, seed: int, n_fp: int):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    if name == "ridge":
        return Ridge(alpha=alpha)
    if name == "hgb":  # the dense descriptor block only (a tree on 2048 count bits is slow and adds little)
        return make_pipeline(ColumnTransformer([("dense", "passthrough", slice(n_fp, None))]),
                             HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, random_state=seed))
    raise ValueError(name)


def run_peer(args: argparse.Namespace) -> None:
    try:
        import cleanlab
        from cleanlab.regression.learn import CleanLearning
    except ImportError as exc:
        sys.exit(f"bench_cleanlab.py --workload needs cleanlab, not importable here ({exc}): run "
                 f"`make bench-cleanlab` (creates .venv-cleanlab).")
    import sklearn
    from sklearn.linear_model import Ridge, RidgeCV

    data = np.load(args.workload, allow_pickle=False)
    meta = json.loads(str(data["meta_json"]))
    done = [tuple(c.split("/")) for c in meta["combos"]]  # a partial workload holds only some
    scenarios = args.scenarios or [n for n in meta["scenarios"] if any(d[0] == n for d in done)]
    seeds = args.seeds if args.seeds is not None else [s for s in meta["seeds"]
                                                       if all((n, str(s)) in done for n in scenarios)]
    env = {"python": platform.python_version(), "cleanlab": cleanlab.__version__, "sklearn": sklearn.__version__,
           "numpy": np.__version__, "dtype": args.dtype, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    print(f"versions: {env}; workload {args.workload} (lipo_if {meta['lipo_if']}, {meta['date']})", flush=True)
    results: dict = {}
    t_all = time.perf_counter()
    for name in scenarios:
        for seed in seeds:
            g = lambda n: data[_key(name, seed, n)]  # noqa: E731
            dt = np.dtype(args.dtype)  # float32 (the workload's) halves the time of each of cleanlab's ~65 fits
            Xt, yt, Xp, yp = g("X_train").astype(dt), g("y_train"), g("X_pool").astype(dt), g("y_pool")
            corrupted, kind, scored = g("corrupted"), g("kind"), g("scored")
            combo = meta["combos"][f"{name}/{seed}"]
            # the rows every detector scores (lipo_if excludes e.g. molecules already in a split)
            ok = scored & np.all([np.isfinite(g(d)) for d in OUR_DETECTORS], axis=0)
            entry: dict = {"n_train": int(len(yt)), "n_pool": int(len(yp)), "n_eval": int(ok.sum()),
                           "n_corrupted_eval": int(corrupted[ok].sum()), "auc": {}, "seconds": {}, "k": {}}
            for det in OUR_DETECTORS:
                entry["auc"][f"ours_{det}"] = auc_table(g(det)[ok], corrupted[ok], kind[ok])
            t0 = time.perf_counter()
            if args.alpha_cv:
                rcv = RidgeCV(alphas=np.logspace(0, 4, 9)).fit(Xt, yt)  # GCV on the (clean) base training set
                alpha = float(rcv.alpha_)
            else:
                alpha = float(args.alpha)
            ridge = Ridge(alpha=alpha).fit(Xt, yt)
            entry["alpha"] = alpha
            entry["auc"]["ridge_resid"] = auc_table(np.abs(ridge.predict(Xp) - yp)[ok], corrupted[ok], kind[ok])
            entry["seconds"]["ridge_resid"] = round(time.perf_counter() - t0, 2)
            X, y = np.vstack([Xt, Xp]), np.concatenate([yt, yp])
            is_pool = np.r_[np.zeros(len(yt), bool), np.ones(len(yp), bool)]
            for model_name in args.models:
                t0 = time.perf_counter()
                cl = CleanLearning(make_model(model_name, alpha, seed, combo["n_fingerprint"]), seed=seed)
                issues = cl.find_label_issues(X, y)
                quality = issues["label_quality"].to_numpy()[is_pool]
                flagged = issues["is_label_issue"].to_numpy()[is_pool]
                entry["auc"][f"cleanlab_{model_name}"] = auc_table(-quality[ok], corrupted[ok], kind[ok])
                entry["seconds"][f"cleanlab_{model_name}"] = round(time.perf_counter() - t0, 1)
                tp = int((flagged & corrupted)[ok].sum())
                entry["k"][f"cleanlab_{model_name}"] = {
                    "k": float(cl.k), "flagged_pool": int(flagged[ok].sum()), "flagged_corrupted": tp,
                    "precision": tp / max(1, int(flagged[ok].sum())), "recall": tp / max(1, int(corrupted[ok].sum())),
                    "flagged_train": int(issues["is_label_issue"].to_numpy()[~is_pool].sum())}
                a = entry["auc"][f"cleanlab_{model_name}"]
                print(f"{name} seed {seed}: cleanlab {model_name:5s} AUC {a['overall']:.3f} "
                      f"(shift {a['shift']:.3f}, swap {a['swap']:.3f}), k={cl.k:.3f}, "
                      f"{entry['seconds'][f'cleanlab_{model_name}']:.0f} s", flush=True)
            results[f"{name}/{seed}"] = entry
    wall = time.perf_counter() - t_all

    methods = [f"cleanlab_{m}" for m in args.models] + ["ridge_resid"] + [f"ours_{d}" for d in OUR_DETECTORS]
    summary: dict = {}
    print("\nAUC (mean ± sd over seeds; shift / swap = that corruption vs the clean rows)\n")
    print("| scenario | detector | overall | shift | swap |")
    print("|---|---|---|---|---|")
    for name in scenarios:
        summary[name] = {}
        for m in methods:
            cells = []
            summary[name][m] = {}
            for part in ("overall", "shift", "swap"):
                vals = np.array([results[f"{name}/{s}"]["auc"][m][part] for s in seeds])
                summary[name][m][part] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1
                                          else 0.0, "per_seed": vals.tolist()}
                cells.append(f"{vals.mean():.3f} ± {summary[name][m][part]['sd']:.3f}")
            print(f"| {name} | {m} | " + " | ".join(cells) + " |")
    print(f"\ncleanlab runs: {wall:.0f} s wall in all; load average start {env['loadavg_start']}, "
          f"end {os.getloadavg()}")
    result = {"date": _dt.date.today().isoformat(), "command": " ".join(sys.argv), "env": {**env,
              "loadavg_end": os.getloadavg()}, "workload_meta": meta, "models": args.models,
              "wall_s": round(wall, 1), "summary": summary, "per_combo": results}
    if args.json:
        out = Path(args.json)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", metavar="FILE.npz", help="build the workload (project venv) and save it here")
    mode.add_argument("--workload", metavar="FILE.npz", help="run cleanlab on this workload (cleanlab venv)")
    parser.add_argument("--scenarios", nargs="+", help="default: noisy lowdata (prepare); the workload's (peer)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (prepare); the workload's (peer)")
    parser.add_argument("--data-dir", help="folder with lipophilicity.csv (default $LIPO_IF_DATA)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in --prepare (0 = default)")
    parser.add_argument("--models", nargs="+", default=["ridge"], choices=("ridge", "hgb"),
                        help="cleanlab models (hgb: HistGradientBoosting on the descriptors; minutes)")
    parser.add_argument("--alpha", type=float, default=31.6,
                        help="Ridge alpha (default: RidgeCV's choice, GCV over logspace(0, 4, 9), on noisy seed 0's "
                             "base training set)")
    parser.add_argument("--alpha-cv", action="store_true", help="choose alpha by RidgeCV per scenario × seed "
                        "(on the base training set; slow on 2 shared cores)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="features in the peer run")
    parser.add_argument("--json", help="write the results here (peer mode)")
    args = parser.parse_args()
    if args.prepare:
        args.scenarios = args.scenarios or ["noisy", "lowdata"]
        args.seeds = args.seeds if args.seeds is not None else [0, 1, 2]
        prepare(args)
    else:
        run_peer(args)


if __name__ == "__main__":
    main()
