"""A documented search of a model family's settings on VALIDATION only (the test set is never read).

    python benchmarks/tune_model.py --data-dir ../shared/data --trials 24 --seeds 0 1 2 --json OUT.json
    python benchmarks/tune_model.py --model dmpnn --trials 4 --seeds 0 1 --max-epochs 100 --json OUT.json
    python benchmarks/tune_model.py --grid descriptors=all,fast --trials 2 --seeds 0 1 2 3 4 --json OUT.json

A seeded random search (scikit-learn's ``ParameterSampler``, seed 0) over the family's space below
(``SPACES``), the package defaults always evaluated first as trial 0. Each trial trains one model per split seed
exactly as ``lipo-if train`` does (split, featurizer fitted on the training part, early stopping on
validation) and scores it by the mean validation RMSE over the seeds. Prints a line per trial and
the table of all trials by that mean; writes them to ``--json``. The choice of defaults is then
re-measured on test over the five Task-1 splits by ``benchmarks/baseline_seeds.py`` — not here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from scipy.stats import loguniform
from sklearn.model_selection import ParameterGrid, ParameterSampler

from lipo_if.data import load_dataset, make_split, resolve_lipophilicity_path
from lipo_if.ensemble import member_config
from lipo_if.featurize import FeaturizerConfig
from lipo_if.train import Run, TrainConfig, build_network, fit, make_featurizer, predict_tensor, seed_everything

#: Per family: TrainConfig fields and (mlp) featurizer fields, as ParameterSampler spaces.
SPACES = {
    "mlp": {
        "hidden": [(512, 128), (1024, 256), (1024,), (2048, 512), (512, 256, 64), (256,), (1024, 512, 128)],
        "weight_decay": loguniform(1e-4, 3e-2),
        "lr": [3e-4, 1e-3, 2e-3],
        "batch_size": [32, 64, 128],
        "featurizer": ["morgan_count+rdkit2d", "morgan+rdkit2d", "morgan_count", "rdkit2d"],
        "radius": [2, 3],
        "n_bits": [1024, 2048, 4096],
    },
    # A D-MPNN epoch costs ≈ 4 s on one dev core (≈ 10× an MLP epoch), so its space is a small
    # grid around chemprop's defaults (hidden 300, depth 3, one 300-wide FFN layer): the two choices
    # this package adds, the descriptors as molecule features and the L2 term λ of the objective.
    "dmpnn": {
        "mol_features": ["rdkit2d", "none"],
        "weight_decay": [1e-3, 1e-4],
    },
}
FEATURIZER_KEYS = {"featurizer": "name", "radius": "radius", "n_bits": "n_bits", "descriptors": "descriptors"}


def val_rmse(dataset, path: str, config: TrainConfig, features: FeaturizerConfig, inits: int = 1) -> tuple[float, int]:
    """Train like ``train_run`` and evaluate on validation only: ``(val RMSE, best epoch)``; with
    ``inits`` > 1 the mean over that many initializations on the split of ``config.seed`` (seeds of
    an ensemble's members, ``seed + MEMBER_SEED_STRIDE·i``) and the first one's best epoch."""
    split = make_split(dataset, config.split, config.seed)
    featurizer = make_featurizer(config, features).fit([dataset.smiles[i] for i in split.train])
    run = Run(None, None, featurizer, split, config, path, _dataset=dataset)  # type: ignore[arg-type]
    (xt, yt), (xv, yv) = run.tensors("train"), run.tensors("val")
    scores, epochs = [], []
    for i in range(inits):
        member = member_config(config, i)
        seed_everything(member.seed)
        model = build_network(member, featurizer, seed=member.seed, init_bias=float(yt.mean()))
        epochs.append(fit(model, xt, yt, xv, yv, member, progress=False).best_epoch)
        scores.append(float(((predict_tensor(model, xv) - yv.double().numpy()) ** 2).mean() ** 0.5))
    return statistics.mean(scores), epochs[0]


def trials(model: str, n: int, space: dict | None = None) -> list[dict]:
    default, features = TrainConfig(), FeaturizerConfig()
    space = space or SPACES[model]
    first = {k: getattr(features, FEATURIZER_KEYS[k]) if k in FEATURIZER_KEYS else getattr(default, k) for k in space}
    grid = list(ParameterGrid(space)) if all(isinstance(v, list) for v in space.values()) else []
    if grid and n >= len(grid):  # a grid small enough: all of it, the defaults first
        return [first, *(p for p in grid if p != first)]
    return [first, *ParameterSampler(space, n_iter=n - 1, random_state=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LIPO_IF_DATA"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--model", choices=sorted(SPACES), default="mlp")
    parser.add_argument("--max-epochs", type=int, help="TrainConfig.max_epochs of every trial (default: the family's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="TrainConfig fields fixed in every trial (e.g. lr_decay=0.955 threads=1), over the searched value")
    parser.add_argument("--grid", nargs="*", default=[], metavar="FIELD=V1,V2",
                        help="search this grid instead of the family's space (e.g. descriptors=all,fast)")
    parser.add_argument("--inits", type=int, default=1, help="initializations per split seed, their validation RMSE averaged")
    parser.add_argument("--no-defaults", action="store_true", help="skip trial 0 (the package defaults), e.g. when measured already")
    parser.add_argument("--json")
    args = parser.parse_args()
    path = resolve_lipophilicity_path(data_dir=args.data_dir)
    dataset = load_dataset(path)
    results = []
    fixed = {key: type(getattr(TrainConfig(), key))(value) for key, value in (item.split("=", 1) for item in args.set)}
    grid = {}
    for item in args.grid:
        key, values = item.split("=", 1)
        default = getattr(FeaturizerConfig(), FEATURIZER_KEYS[key]) if key in FEATURIZER_KEYS else getattr(TrainConfig(), key)
        grid[key] = [type(default)(v) for v in values.split(",")]
    for i, params in enumerate(trials(args.model, args.trials, grid or None)):
        if args.no_defaults and i == 0:
            continue
        params = {**params, **{k: v for k, v in fixed.items() if k in params}}
        train = {**{k: v for k, v in params.items() if k not in FEATURIZER_KEYS}, **fixed}
        features = FeaturizerConfig(**{FEATURIZER_KEYS[k]: v for k, v in params.items() if k in FEATURIZER_KEYS})
        start = time.perf_counter()
        scores, epochs = zip(*(val_rmse(dataset, str(path), TrainConfig(seed=s, model=args.model, max_epochs=args.max_epochs, **train),
                                        features, args.inits) for s in args.seeds))
        row = {"trial": i, "model": args.model, "fixed": fixed, "inits": args.inits, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
               "val_rmse_mean": round(statistics.mean(scores), 4), "per_seed": [round(v, 4) for v in scores],
               "best_epochs": list(epochs), "seconds": round(time.perf_counter() - start, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every trial: a killed search keeps what it measured
            Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seeds": args.seeds,
                                                   "results": results}, indent=1))
    keys = list(grid or SPACES[args.model])
    print("\n| trial | val RMSE (mean) | per seed | best epochs | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 4) + "|")
    for r in sorted(results, key=lambda r: r["val_rmse_mean"]):
        cells = [f"{r[k]:.2g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print(f"| {r['trial']} | {r['val_rmse_mean']:.4f} | {' / '.join(f'{v:.3f}' for v in r['per_seed'])} | "
              f"{' / '.join(map(str, r['best_epochs']))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
