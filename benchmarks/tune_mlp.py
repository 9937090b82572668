"""A documented search of the MLP's settings on VALIDATION only (the test set is never read).

    python benchmarks/tune_mlp.py --data-dir ../shared/data --trials 24 --seeds 0 1 2 --json OUT.json

A seeded random search (scikit-learn's ``ParameterSampler``, seed 0) over the space below, the
package defaults always evaluated first as trial 0. Each trial trains one model per split seed
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
from sklearn.model_selection import ParameterSampler

from lipo_if.data import load_dataset, make_split, resolve_lipophilicity_path
from lipo_if.featurize import Featurizer, FeaturizerConfig
from lipo_if.model import ModelConfig, build_model
from lipo_if.train import Run, TrainConfig, fit, predict_tensor, seed_everything

SPACE = {
    "hidden": [(512, 128), (1024, 256), (1024,), (2048, 512), (512, 256, 64), (256,), (1024, 512, 128)],
    "weight_decay": loguniform(1e-4, 3e-2),
    "lr": [3e-4, 1e-3, 2e-3],
    "batch_size": [32, 64, 128],
    "featurizer": ["morgan_count+rdkit2d", "morgan+rdkit2d", "morgan_count", "rdkit2d"],
    "radius": [2, 3],
    "n_bits": [1024, 2048, 4096],
}


def val_rmse(dataset, path: str, config: TrainConfig, features: FeaturizerConfig) -> float:
    """Train like ``train_run`` and evaluate on validation only."""
    seed_everything(config.seed)
    split = make_split(dataset, config.split, config.seed)
    featurizer = Featurizer(features).fit([dataset.smiles[i] for i in split.train])
    run = Run(None, None, featurizer, split, config, path, _dataset=dataset)  # type: ignore[arg-type]
    (xt, yt), (xv, yv) = run.tensors("train"), run.tensors("val")
    model = build_model(ModelConfig(featurizer.dim, config.hidden), seed=config.seed, init_bias=float(yt.mean()))
    fit(model, xt, yt, xv, yv, config, progress=False)
    return float(((predict_tensor(model, xv) - yv.double().numpy()) ** 2).mean() ** 0.5)


def trials(n: int) -> list[dict]:
    default = TrainConfig()
    features = FeaturizerConfig()
    first = {"hidden": default.hidden, "weight_decay": default.weight_decay, "lr": default.lr, "batch_size": default.batch_size,
             "featurizer": features.name, "radius": features.radius, "n_bits": features.n_bits}
    return [first, *ParameterSampler(SPACE, n_iter=n - 1, random_state=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LIPO_IF_DATA"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--json")
    args = parser.parse_args()
    path = resolve_lipophilicity_path(data_dir=args.data_dir)
    dataset = load_dataset(path)
    results = []
    for i, params in enumerate(trials(args.trials)):
        train = {k: params[k] for k in ("hidden", "weight_decay", "lr", "batch_size")}
        features = FeaturizerConfig(params["featurizer"], radius=params["radius"], n_bits=params["n_bits"])
        start = time.perf_counter()
        scores = [val_rmse(dataset, str(path), TrainConfig(seed=s, **train), features) for s in args.seeds]
        row = {"trial": i, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
               "val_rmse_mean": round(statistics.mean(scores), 4), "per_seed": [round(v, 4) for v in scores],
               "seconds": round(time.perf_counter() - start, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every trial: a killed search keeps what it measured
            Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seeds": args.seeds,
                                                   "results": results}, indent=1))
    print("\n| trial | val RMSE (mean) | per seed | hidden | λ | lr | batch | features | radius | bits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: r["val_rmse_mean"]):
        print(f"| {r['trial']} | {r['val_rmse_mean']:.4f} | {' / '.join(f'{v:.3f}' for v in r['per_seed'])} | {r['hidden']} | "
              f"{r['weight_decay']:.2g} | {r['lr']:g} | {r['batch_size']} | {r['featurizer']} | {r['radius']} | {r['n_bits']} |")


if __name__ == "__main__":
    main()
