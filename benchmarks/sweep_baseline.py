"""Choose baseline hyperparameters by mean VALIDATION RMSE over seeds (the test set is never read).

    python benchmarks/sweep_baseline.py --data-dir ../shared/data --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics

from lipo_if.data import load_dataset, make_split, resolve_lipophilicity_path
from lipo_if.featurize import Featurizer, FeaturizerConfig
from lipo_if.model import ModelConfig, build_model
from lipo_if.train import Run, TrainConfig, fit, predict_tensor, seed_everything

GRID = {
    "default": {},
    "wd3e-3": {"weight_decay": 3e-3},
    "wd1e-2": {"weight_decay": 1e-2},
    "lr3e-4": {"lr": 3e-4},
    "bs128": {"batch_size": 128},
    "wide": {"hidden": (1024, 256)},
}


def val_rmse(dataset, path, config: TrainConfig) -> float:
    """Train like train_run but evaluate only on validation."""
    seed_everything(config.seed)
    split = make_split(dataset, config.split, config.seed)
    featurizer = Featurizer(FeaturizerConfig()).fit([dataset.smiles[i] for i in split.train])
    run = Run(None, None, featurizer, split, config, path, _dataset=dataset)  # type: ignore[arg-type]
    (xt, yt), (xv, yv) = run.tensors("train"), run.tensors("val")
    model = build_model(ModelConfig(featurizer.dim, config.hidden), seed=config.seed, init_bias=float(yt.mean()))
    fit(model, xt, yt, xv, yv, config, progress=False)
    return float(((predict_tensor(model, xv) - yv.double().numpy()) ** 2).mean() ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(GRID))
    args = parser.parse_args()
    path = resolve_lipophilicity_path(data_dir=args.data_dir)
    dataset = load_dataset(path)
    for name in args.configs:
        scores = [val_rmse(dataset, str(path), TrainConfig(seed=s, **GRID[name])) for s in args.seeds]
        print(json.dumps({"config": name, "val_rmse_mean": round(statistics.mean(scores), 4), "per_seed": [round(v, 4) for v in scores]}), flush=True)


if __name__ == "__main__":
    main()
