"""Training the baseline regressor, metrics, and run directories (save / :func:`load_run`).

A *run directory* holds everything a later step needs to reproduce the model's view of the data:

- ``model.pt``     — weights, model/featurizer/training configs, feature statistics, the split;
- ``split.json``   — the split (indices into the cleaned dataset and the molecules' keys);
- ``metrics.json`` — validation/test metrics and training diagnostics;
- ``history.json`` — per-epoch training and validation loss.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DataError, MoleculeDataset, Split, load_dataset, make_split
from .io import atomic_write_bytes, atomic_write_text
from .dmpnn import AGGREGATIONS, DMPNN, MESSAGE_SKIPS, DMPNNConfig, build_dmpnn
from .featurize import Featurizer, FeaturizerConfig
from .graph import GraphFeaturizer, GraphFeaturizerConfig, cat_inputs
from .model import MLPRegressor, ModelConfig, build_model, objective
from .pool import Molecules, Pool
from .standardize import standardize

log = logging.getLogger(__name__)

#: TracIn-CP's checkpoints in a run directory
CHECKPOINTS_FILE = "checkpoints.pt"
#: ``TrainConfig.model`` choices: the MLP on fingerprints + descriptors, or the D-MPNN on graphs.
MODEL_FAMILIES = ("mlp", "dmpnn")

#: What an unset (None) TrainConfig field means, per family: the MLP's are the package's long-standing
#: defaults; the D-MPNN's were chosen on validation (benchmarks/tune_model.py, benchmarks/RESULTS.md).
FAMILY_DEFAULTS = {
    "mlp": {"weight_decay": 1e-3, "lr_decay": 1.0, "max_epochs": 300, "warmup_epochs": 0},
    "dmpnn": {"weight_decay": 1e-5, "lr_decay": 0.955, "max_epochs": 100, "warmup_epochs": 2},
}


def exact_gauss_newton_solver(family: str) -> str:
    """The solver of an exact damped Gauss–Newton system that a model family allows:
    ``function-space`` (closed form) for the MLP, ``cg`` for the D-MPNN (the closed form needs the MLP)."""
    return "function-space" if family == "mlp" else "cg"


@dataclass
class TrainConfig:
    """How the baseline is trained (every field is a ``lipo-if train`` option)."""

    model: str = field(default="mlp", metadata={"help": "model family: mlp (on --featurizer's vectors) or dmpnn (directed "
                                                          "message passing on the molecular graph, Yang et al. 2019)",
                                                  "choices": MODEL_FAMILIES})
    hidden: tuple[int, ...] = field(default=(512, 128), metadata={"help": "hidden layer widths (mlp)"})
    mp_hidden: int = field(default=300, metadata={"help": "message width (dmpnn)"})
    mp_depth: int = field(default=3, metadata={"help": "message-passing steps, the initial one included (dmpnn)"})
    ffn_hidden: tuple[int, ...] = field(default=(300,), metadata={"help": "hidden widths of the feed-forward head (dmpnn)"})
    mol_features: str = field(default="rdkit2d", metadata={"help": "molecule-level features beside the graph embedding (dmpnn): "
                                                                    "a featurizer name (e.g. rdkit2d) or 'none'"})
    aggregation: str = field(default="sum", metadata={"help": "atoms → molecule readout (dmpnn): mean, sum, or norm (sum / 100, "
                                                               "chemprop's)", "choices": AGGREGATIONS})
    message_skip: str = field(default="linear", metadata={"help": "skip term of the message update (dmpnn): relu (activated "
                                                                   "W_i output) or linear (its pre-activation, chemprop's)",
                                                         "choices": MESSAGE_SKIPS})
    weight_decay: float | None = field(default=None, metadata={"help": "λ of the L2 term (λ/2)‖θ‖² written into the loss "
                                                                       "(unset: the family's, 1e-3 mlp, 1e-5 dmpnn)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    lr_decay: float | None = field(default=None, metadata={"help": "multiply the learning rate by this after every epoch, 1 = "
                                                                   "constant (unset: the family's, 1 mlp, 0.955 dmpnn)"})
    warmup_epochs: int | None = field(default=None, metadata={"help": "raise the learning rate linearly from lr/10 to lr over "
                                                                      "this many epochs, step by step, before lr_decay starts "
                                                                      "(unset: the family's, 0 mlp, 2 dmpnn)"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    max_epochs: int | None = field(default=None, metadata={"help": "upper bound on epochs (unset: the family's, 300 mlp, 100 dmpnn)"})
    patience: int = field(default=30, metadata={"help": "early stopping: epochs without a better validation RMSE"})
    min_epochs: int = field(default=10, metadata={"help": "never stop before this many epochs"})
    seed: int = field(default=0, metadata={"help": "seed of the split and the initialization"})
    split: str = field(default="random", metadata={"help": "random or scaffold (Bemis–Murcko)", "choices": ("random", "scaffold")})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    checkpoint_every: int = field(default=0, metadata={"help": "keep the weights every N epochs up to the best one, for TracIn-CP "
                                                                "(lipo-if influence --scorer tracin; 0 = none)"})

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.ffn_hidden = tuple(int(h) for h in self.ffn_hidden)
        if self.model not in MODEL_FAMILIES:
            raise ValueError(f"model must be one of {', '.join(MODEL_FAMILIES)}, got {self.model!r}")
        for name, value in FAMILY_DEFAULTS[self.model].items():
            given = getattr(self, name)
            if given is None:
                setattr(self, name, value)
            elif isinstance(given, str) or not isinstance(given, (int, float)):
                raise ValueError(f"{name} must be a number, got {given!r}")
        checks = [
            (self.model in MODEL_FAMILIES, f"model must be one of {', '.join(MODEL_FAMILIES)}, got {self.model!r}"),
            (self.mp_hidden > 0 and self.mp_depth >= 1, f"mp_hidden must be positive and mp_depth ≥ 1, got {self.mp_hidden}, {self.mp_depth}"),
            (all(h > 0 for h in self.ffn_hidden), f"ffn_hidden widths must be positive, got {self.ffn_hidden}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be ≥ 0, got {self.warmup_epochs}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.max_epochs > 0, f"max_epochs must be positive, got {self.max_epochs}"),
            (self.patience > 0, f"patience must be positive, got {self.patience}"),
            (self.split in ("random", "scaffold"), f"split must be 'random' or 'scaffold', got {self.split!r}"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be ≥ 0, got {self.checkpoint_every}"),
            (all(h > 0 for h in self.hidden), f"hidden widths must be positive, got {self.hidden}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.model == "dmpnn":
            GraphFeaturizerConfig(self.mol_features)  # a bad featurizer name fails here, not after the split


# --------------------------------------------------------------------------- model families


def make_featurizer(config: TrainConfig, featurizer_config: FeaturizerConfig | None,
                    cache_dir: str | os.PathLike | None | bool = True) -> Featurizer | GraphFeaturizer:
    """The unfitted featurizer of ``config.model``: vectors for the MLP, graphs (and
    ``config.mol_features``) for the D-MPNN; ``featurizer_config`` applies to the MLP."""
    if config.model == "dmpnn":
        return GraphFeaturizer(GraphFeaturizerConfig(config.mol_features), cache_dir=cache_dir)
    return Featurizer(featurizer_config, cache_dir=cache_dir)


def build_network(config: TrainConfig, featurizer: Featurizer | GraphFeaturizer, seed: int | None,
                  init_bias: float | None) -> MLPRegressor | DMPNN:
    """A freshly initialized model of ``config.model`` for ``featurizer``'s input."""
    if config.model == "dmpnn":
        shape = DMPNNConfig(mol_dim=featurizer.dim, hidden=config.mp_hidden, depth=config.mp_depth, ffn_hidden=config.ffn_hidden,
                            aggregation=config.aggregation, message_skip=config.message_skip)
        return build_dmpnn(shape, seed=seed, init_bias=init_bias)
    return build_model(ModelConfig(featurizer.dim, config.hidden), seed=seed, init_bias=init_bias)


def rebuild_network(model: MLPRegressor | DMPNN, seed: int | None, init_bias: float | None) -> MLPRegressor | DMPNN:
    """A freshly initialized model of ``model``'s family and shape."""
    if isinstance(model, DMPNN):
        return build_dmpnn(model.config, seed=seed, init_bias=init_bias)
    return build_model(model.config, seed=seed, init_bias=init_bias)


def _network_from_checkpoint(checkpoint: dict) -> MLPRegressor | DMPNN:
    if checkpoint.get("model_kind", "mlp") == "dmpnn":
        return DMPNN(DMPNNConfig(**checkpoint["model_config"]))
    return MLPRegressor(ModelConfig(**checkpoint["model_config"]))


def _featurizer_from_state(state: dict) -> Featurizer | GraphFeaturizer:
    return GraphFeaturizer.from_state(state) if state.get("kind") == GraphFeaturizer.kind else Featurizer.from_state(state)


# --------------------------------------------------------------------------- metrics


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² and Pearson r (logD units for the first two)."""
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if len(y_true) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan"), "pearson": float("nan")}
    pearson = float(pearsonr(y_true, y_pred)[0]) if len(y_true) > 1 and np.std(y_pred) > 0 and np.std(y_true) > 0 else float("nan")
    return {
        "rmse": float(math.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan"),
        "pearson": pearson,
    }


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def predict_tensor(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    out = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return (torch.cat(out) if out else torch.zeros(0)).double().numpy()


def full_objective_grad_norm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> float:
    """‖∇R(θ)‖₂ over the whole training set: how far the model is from a stationary point."""
    model.zero_grad(set_to_none=True)
    loss = objective(model, x, y, weight_decay)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


@dataclass
class Checkpoint:
    """Weights during training (for TracIn-CP): after ``epoch`` epochs at learning rate ``lr``."""

    epoch: int
    lr: float
    state_dict: dict


@dataclass
class FitResult:
    model: MLPRegressor | DMPNN
    best_epoch: int
    epochs_run: int
    history: list[dict]
    seconds: float
    checkpoints: list[Checkpoint] = field(default_factory=list)


def fit(
    model: MLPRegressor | DMPNN,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
    desc: str = "train",
    restore_best: bool = True,
    sample_weight: torch.Tensor | None = None,
) -> FitResult:
    """Adam on R(θ) with early stopping on validation RMSE; returns the best-validation weights.

    Shuffling uses a generator seeded with ``config.seed`` so a run is reproducible. With
    ``restore_best=False`` the weights of the last epoch are kept (fixed-epoch fine-tuning).
    ``sample_weight`` ``[N]`` (optional, ≥ 0): each training row's weight in the squared error
    (:func:`~lipo_if.model.objective`); None = every row 1.
    """
    if sample_weight is not None and (sample_weight.shape != (len(x_train),) or not bool(torch.all(sample_weight >= 0))):
        raise ValueError(f"sample_weight must be [{len(x_train)}] and ≥ 0, got shape {tuple(sample_weight.shape)}")
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    best_rmse, best_epoch, best_state = float("inf"), 0, None
    checkpoints: list[Checkpoint] = []
    history: list[dict] = []
    start = time.perf_counter()
    n = len(x_train)
    warmup_steps = config.warmup_epochs * math.ceil(n / config.batch_size)
    bar = tqdm(range(1, config.max_epochs + 1), desc=desc, disable=not progress, leave=False)
    epoch, step = 0, 0
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            if step < warmup_steps:  # the exponential decay's epochs start counting after the warm-up
                optimizer.param_groups[0]["lr"] = config.lr * (0.1 + 0.9 * step / warmup_steps)
            elif step == warmup_steps and warmup_steps:
                optimizer.param_groups[0]["lr"] = config.lr
            step += 1
            optimizer.zero_grad(set_to_none=True)
            loss = objective(model, x_train[idx], y_train[idx], config.weight_decay,
                             None if sample_weight is None else sample_weight[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        lr_of_epoch = optimizer.param_groups[0]["lr"]
        if epoch > config.warmup_epochs:
            schedule.step()
        val_rmse = float(np.sqrt(np.mean((predict_tensor(model, x_val) - y_val.double().numpy()) ** 2))) if len(x_val) else float("nan")
        history.append({"epoch": epoch, "train_objective": total / n, "val_rmse": val_rmse})
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss is {total}); lower --lr")
        if val_rmse < best_rmse - 1e-6 or best_state is None:
            best_rmse, best_epoch = val_rmse, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if config.checkpoint_every and epoch % config.checkpoint_every == 0:
            checkpoints.append(Checkpoint(epoch, lr_of_epoch, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        bar.set_postfix(val_rmse=f"{val_rmse:.3f}", best=f"{best_rmse:.3f}@{best_epoch}")
        if epoch >= config.min_epochs and epoch - best_epoch >= config.patience:
            break
    bar.close()
    assert best_state is not None
    if restore_best:
        model.load_state_dict(best_state)
    model.eval()
    kept = [c for c in checkpoints if c.epoch <= best_epoch] if restore_best else checkpoints  # the trajectory to θ̂
    return FitResult(model, best_epoch, epoch, history, time.perf_counter() - start, kept)


# --------------------------------------------------------------------------- run directories


@dataclass
class Run:
    """A trained model with everything needed to use it on new molecules.

    ``model`` is the :class:`MLPRegressor` or the :class:`~lipo_if.dmpnn.DMPNN` (float32, eval
    mode; ``config.model`` says which); ``featurizer`` is fitted on the
    run's training split; ``split`` indexes ``dataset`` (loaded lazily from ``data_path``).
    """

    run_dir: Path | None
    model: MLPRegressor | DMPNN
    featurizer: Featurizer | GraphFeaturizer
    split: Split
    config: TrainConfig
    data_path: str
    metrics: dict = field(default_factory=dict)
    #: weights along the training trajectory (``TrainConfig.checkpoint_every``), for TracIn-CP
    checkpoints: list[Checkpoint] = field(default_factory=list)
    _dataset: MoleculeDataset | None = None
    _tensor_cache: dict = field(default_factory=dict)

    # ----- data
    @property
    def dataset(self) -> MoleculeDataset:
        if self._dataset is None:
            dataset = load_dataset(self.data_path)
            if self.split.data_fingerprint and dataset.fingerprint() != self.split.data_fingerprint:
                raise DataError(
                    f"{self.data_path}: the data differ from those the run was trained on "
                    f"(fingerprint {dataset.fingerprint()} ≠ {self.split.data_fingerprint})"
                )
            self._dataset = dataset
        return self._dataset

    def smiles(self, part: str) -> list[str]:
        return [self.dataset.smiles[i] for i in self.split.part(part)]

    def keys(self, part: str) -> list[str]:
        """Stereo-insensitive canonical SMILES of the molecules in ``part`` (train/val/test)."""
        return [self.dataset.keys[i] for i in self.split.part(part)]

    def split_keys(self) -> dict[str, set[str]]:
        """Stereo-insensitive keys of the validation, test and training molecules (the order in which
        an overlap is reported)."""
        return {"validation": set(self.keys("val")), "test": set(self.keys("test")), "training": set(self.keys("train"))}

    def labels(self, part: str) -> np.ndarray:
        return self.dataset.labels[self.split.part(part)]

    def tensors(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y [n] float32)`` of a split part, featurized as the model expects (X ``[n, dim]``
        float32 for the MLP, :class:`~lipo_if.graph.MolGraphs` for the D-MPNN)."""
        part = "val" if part == "validation" else part
        if part not in self._tensor_cache:
            x = self.featurizer.tensor(self.smiles(part))
            y = torch.from_numpy(self.labels(part).astype(np.float32))
            self._tensor_cache[part] = (x, y)
        return self._tensor_cache[part]

    def featurize(self, smiles: Sequence[str]) -> torch.Tensor:
        """The model input for arbitrary (valid) SMILES (``[n, dim]`` float32, or graphs)."""
        return self.featurizer.tensor(list(smiles))

    def predict(self, smiles: Sequence[str]) -> np.ndarray:
        """Predicted logD7.4 for each SMILES (standardized first, :mod:`lipo_if.standardize`; a
        rejected structure raises DataError with the reason)."""
        canonical = []
        for s in smiles:
            std, _, reason = standardize(s)
            if reason:
                raise DataError(f"SMILES {s!r}: {reason}")
            canonical.append(std)
        return predict_tensor(self.model, self.featurize(canonical))

    def evaluate(self) -> dict:
        """Metrics on validation and test (keys ``val_rmse``, ``test_rmse``, …)."""
        out = {}
        for part in ("val", "test"):
            x, y = self.tensors(part)
            for name, value in regression_metrics(y.numpy(), predict_tensor(self.model, x)).items():
                out[f"{part}_{name}"] = value
        return out

    # ----- persistence
    def save(self, run_dir: str | os.PathLike) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = {
            "format": 1,
            "model_kind": "dmpnn" if isinstance(self.model, DMPNN) else "mlp",
            "model_config": self.model.config.to_dict(),
            "state_dict": self.model.state_dict(),
            "featurizer": self.featurizer.state_dict(),
            "train_config": asdict(self.config),
            "split": self.split.to_dict(),
            "data_path": str(self.data_path),
        }
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(run_dir / "model.pt", buffer.getvalue())
        self.split.save(run_dir / "split.json", self.dataset)
        if self.metrics:
            atomic_write_text(run_dir / "metrics.json", json.dumps(self.metrics, indent=1))
        if self.checkpoints:
            buffer = io.BytesIO()
            torch.save([asdict(c) for c in self.checkpoints], buffer)
            atomic_write_bytes(run_dir / CHECKPOINTS_FILE, buffer.getvalue())
        self.run_dir = run_dir
        return run_dir


def load_single_run(run_dir: str | os.PathLike, data_path: str | os.PathLike | None = None) -> Run:
    """Load a (single-model) run directory written by ``lipo-if train`` (or :meth:`Run.save`);
    :func:`lipo_if.rundir.load_run` loads ensembles too.

    ``data_path`` overrides the data file recorded in the run (e.g. on another machine); the run
    checks that it holds the same molecules and labels.
    """
    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.exists():
        raise DataError(f"{run_dir}: not a run directory (no model.pt); create one with 'lipo-if train'")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = _network_from_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    cfg = checkpoint["train_config"]
    config = TrainConfig(**{f.name: cfg[f.name] for f in fields(TrainConfig) if f.name in cfg})
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    saved = run_dir / CHECKPOINTS_FILE
    checkpoints = [Checkpoint(**c) for c in torch.load(saved, map_location="cpu", weights_only=True)] if saved.exists() else []
    return Run(
        run_dir=run_dir,
        model=model,
        featurizer=_featurizer_from_state(checkpoint["featurizer"]),
        split=Split.from_dict(checkpoint["split"]),
        config=config,
        data_path=str(data_path) if data_path is not None else checkpoint["data_path"],
        metrics=metrics,
        checkpoints=checkpoints,
    )


def train_run(
    dataset: MoleculeDataset,
    data_path: str,
    config: TrainConfig,
    featurizer_config: FeaturizerConfig | None = None,
    split: Split | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None | bool = True,
    featurizer: Featurizer | GraphFeaturizer | None = None,
) -> Run:
    """Split (unless given), featurize, train and evaluate: the Task-1 baseline as a :class:`Run`.

    ``featurizer``: one already fitted on this split's training part (ensemble members share it)."""
    seed_everything(config.seed)
    split = split or make_split(dataset, config.split, config.seed)
    if featurizer is None:
        featurizer = make_featurizer(config, featurizer_config, cache_dir=cache_dir)
        featurizer.fit([dataset.smiles[i] for i in split.train])
    run = Run(None, None, featurizer, split, config, data_path, _dataset=dataset)  # type: ignore[arg-type]
    x_train, y_train = run.tensors("train")
    x_val, y_val = run.tensors("val")
    model = build_network(config, featurizer, seed=config.seed, init_bias=float(y_train.mean()))
    result = fit(model, x_train, y_train, x_val, y_val, config, progress=progress)
    run.model = result.model
    run.checkpoints = result.checkpoints
    metrics = run.evaluate()
    train_metrics = regression_metrics(y_train.numpy(), predict_tensor(run.model, x_train))
    metrics.update(
        train_rmse=train_metrics["rmse"],
        n_train=len(split.train),
        n_val=len(split.val),
        n_test=len(split.test),
        seed=config.seed,
        split=split.method,
        featurizer=featurizer.config.name,
        n_features=featurizer.dim,
        n_params=run.model.n_params,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        train_seconds=round(result.seconds, 2),
        final_objective_grad_norm=full_objective_grad_norm(run.model, x_train, y_train, config.weight_decay),
        weight_decay=config.weight_decay,
    )
    run.metrics = metrics
    run._history = result.history  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------- retraining with extra molecules


@dataclass
class FinetuneConfig:
    """How a trained run is retrained on train ∪ extra molecules (``lipo-if finetune`` options).

    Fine-tuning starts from the run's weights θ̂ with a lower learning rate; ``from_scratch``
    instead re-initializes and trains with the run's own :class:`TrainConfig`. Either way the
    featurizer (and its training-split statistics) stays the run's, and model selection only
    looks at the validation split.
    """

    finetune_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of fine-tuning (lower than training's)"})
    finetune_epochs: int = field(default=20, metadata={"help": "fine-tuning epochs (the maximum when early stopping)"})
    finetune_patience: int = field(default=10, metadata={"help": "early stopping: epochs without a better validation RMSE"})
    early_stopping: bool = field(default=True, metadata={"help": "keep the best-validation epoch (else the last of finetune_epochs)"})
    from_scratch: bool = field(default=False, metadata={"help": "re-initialize and train with the run's training settings instead of fine-tuning"})
    seed: int = field(default=-1, metadata={"help": "seed of the shuffling (and of the initialization with from_scratch); -1 = the run's seed"})

    def __post_init__(self) -> None:
        checks = [
            (self.finetune_lr > 0, f"finetune_lr must be positive, got {self.finetune_lr}"),
            (self.finetune_epochs >= 1, f"finetune_epochs must be ≥ 1, got {self.finetune_epochs}"),
            (self.finetune_patience >= 1, f"finetune_patience must be ≥ 1, got {self.finetune_patience}"),
            (self.seed >= -1, f"seed must be ≥ 0 (or -1 for the run's seed), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def filter_extra(run: Run, pool: Pool, rows: Sequence[int] | None = None) -> tuple[list[int], list[dict]]:
    """Which extra molecules may join the training set: ``(kept row ids, dropped records)``.

    ``rows``: the pool's ``row`` ids to consider, in order (default: all). The leakage guard: a
    molecule whose stereo-insensitive key matches a validation or test molecule is never added (it
    would leak the evaluation labels), nor one already in training, an invalid SMILES, or a repeat
    of an earlier extra molecule. Each dropped record is ``{"position", "smiles", "reason"}``
    (``position`` within ``rows``).
    """
    split_keys = run.split_keys()
    table = pool.table.set_index("row", drop=False)
    rows = [int(r) for r in (table["row"] if rows is None else rows)]
    kept, dropped, seen = [], [], set()
    for position, row in enumerate(rows):
        entry = table.loc[row]
        key = entry["key"]
        if entry["error"]:
            reason = entry["error"]
        elif not math.isfinite(float(entry["label"])):
            reason = "label is not a finite number"
        else:
            reason = next((f"duplicate of a {name} molecule" for name, keys in split_keys.items() if key in keys), "")
            if not reason and key in seen:
                reason = "repeated extra molecule"
        if reason:
            dropped.append({"position": position, "smiles": entry["smiles_input"], "reason": reason})
        else:
            seen.add(key)
            kept.append(row)
    return kept, dropped


def _extra_weights(pool: Pool, rows: Sequence[int] | None, weights: Sequence[float] | None, kept: Sequence[int],
                   n_train: int) -> torch.Tensor | None:
    """The ``[n_train + len(kept)]`` sample weights of train ∪ kept extra rows (train rows 1), or
    None when no ``weights`` are given."""
    if weights is None:
        return None
    given = [int(r) for r in (pool.table["row"] if rows is None else rows)]
    values = np.asarray(weights, dtype=float)
    if values.shape != (len(given),) or not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = next((w for w in values.ravel() if not (np.isfinite(w) and w >= 0)), None) if values.ndim == 1 else None
        raise ValueError(f"weights must be one finite value ≥ 0 per row ({len(given)}), got shape {values.shape}"
                         + (f" with the value {bad}" if bad is not None else ""))
    weight_of = dict(zip(given, values))
    return torch.cat([torch.ones(n_train, dtype=torch.float32),
                      torch.tensor([weight_of[int(r)] for r in kept], dtype=torch.float32)])


def finetune_run(
    run: Run,
    extra: Molecules,
    config: FinetuneConfig | None = None,
    progress: bool = True,
    desc: str = "finetune",
    rows: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> Run:
    """Retrain ``run`` on its training split plus extra molecules; a new :class:`Run`.

    ``extra``: the candidate molecules (a :class:`~lipo_if.pool.Pool`, a CSV path, a DataFrame or
    ``(smiles, labels)``, logD units); ``rows``: which of its ``row`` ids to add, in order (default:
    all); ``weights``: one per entry of ``rows`` (or of the pool), each added molecule's weight in
    the squared error (:func:`~lipo_if.model.objective`; the training rows weigh 1; default: all 1).
    Those rejected by :func:`filter_extra` are left out and listed in
    ``metrics["extra_dropped"]``. The new run keeps the split and featurizer; its ``metrics`` has
    the keys of :func:`train_run` plus ``n_added``, ``mode`` and ``base_*`` (the starting run's
    metrics). ``run`` is not modified.
    """
    config = config or FinetuneConfig()
    seed = run.config.seed if config.seed < 0 else config.seed
    pool = Pool.coerce(extra)
    kept, dropped = filter_extra(run, pool, rows)
    n_given = len(pool) if rows is None else len(rows)
    x_train, y_train = run.tensors("train")
    x_val, y_val = run.tensors("val")
    sample_weight = _extra_weights(pool, rows, weights, kept, len(x_train))
    if kept:
        x_extra, y_extra = pool.rows_features(run.featurizer, kept)
        x_train, y_train = cat_inputs([x_train, x_extra]), torch.cat([y_train, y_extra])
    if config.from_scratch:
        train_config = TrainConfig(**{**asdict(run.config), "seed": seed})
        model = rebuild_network(run.model, seed=seed, init_bias=float(y_train.mean()))
        restore_best = True
    else:
        # Early stopping here is "keep the best-validation epoch"; patience may end it sooner.
        train_config = TrainConfig(**{
            **asdict(run.config), "seed": seed, "lr": config.finetune_lr, "max_epochs": config.finetune_epochs,
            "patience": config.finetune_patience if config.early_stopping else config.finetune_epochs,
            "min_epochs": min(run.config.min_epochs, config.finetune_epochs),
            "warmup_epochs": 0,  # a warm-up protects a random initialization; θ̂ is not one
        })
        model = copy.deepcopy(run.model)
        restore_best = config.early_stopping
    seed_everything(seed)
    result = fit(model, x_train, y_train, x_val, y_val, train_config, progress=progress, desc=desc, restore_best=restore_best,
                 sample_weight=sample_weight)
    new = Run(None, result.model, run.featurizer, run.split, run.config, run.data_path, _dataset=run._dataset)
    new._tensor_cache = {p: run._tensor_cache[p] for p in ("val", "test", "train") if p in run._tensor_cache}
    metrics = new.evaluate()
    metrics.update(
        train_rmse=regression_metrics(y_train.numpy(), predict_tensor(new.model, x_train))["rmse"],
        n_train=int(len(x_train)), n_val=len(run.split.val), n_test=len(run.split.test),
        seed=seed, split=run.split.method, featurizer=run.featurizer.config.name, n_features=run.featurizer.dim,
        n_params=new.model.n_params, best_epoch=result.best_epoch, epochs_run=result.epochs_run,
        train_seconds=round(result.seconds, 2),
        final_objective_grad_norm=full_objective_grad_norm(new.model, x_train, y_train, run.config.weight_decay),
        weight_decay=run.config.weight_decay,
        mode="from_scratch" if config.from_scratch else "finetune", n_added=len(kept), n_extra_given=n_given,
        extra_dropped=dropped, finetune_config=asdict(config),
        **{f"base_{k}": run.metrics[k] for k in ("val_rmse", "test_rmse") if k in run.metrics},
    )
    new.metrics = metrics
    new._history = result.history  # type: ignore[attr-defined]
    return new
