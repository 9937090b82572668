"""``lipo-if validate``: does the influence score predict what adding a molecule actually does?

For a sample of external molecules spread across the score range, and for the top-k group, the
molecules are actually added and the model retrained; the actual change of validation MSE is
compared with the predicted one, ``score(z) + offset`` (Σ over a group), where ``offset =
−(λ/n) s·θ̂`` is the shift every addition shares because the mean loss is renormalized over n+1
points (see :func:`lipo_if.influence.renormalization_offset`).

Retraining modes (``retrain``):

- ``gd`` (default) — full-batch gradient descent on R(θ) from θ̂, deterministic, ``steps`` steps
  of size ``lr``. The influence solve damps H by μ; T steps of size η from θ̂ act on the added
  gradient like ``(H + μ')⁻¹`` with ``μ' ≈ 1/(ηT)``, so the defaults pick ``η = 1/λmax`` and
  ``T = λmax/μ`` — the retraining the damped influence actually predicts;
- ``finetune`` — Adam fine-tuning from θ̂ (the experiment's retraining), averaged over seeds;
- ``scratch`` — retraining from a fresh initialization, averaged over seeds (slow).

Every actual change is measured against the same retraining with **nothing** added (θ̂ is an
early-stopped point, not a minimum, so retraining moves the validation loss on its own).
"""
from __future__ import annotations

import copy
import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .graph import cat_inputs
from .influence import HessianOperator, Influence, output_paths, write_scores
from .influence.spectrum import dominant_eigenvalue
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .model import objective
from .pool import Molecules, Pool
from .select import eligible, load_scores
from .train import FinetuneConfig, Run, finetune_run, predict_tensor

RETRAIN_MODES = ("gd", "finetune", "scratch")
#: bounds on the automatic number of gradient-descent steps (cost grows linearly with it)
AUTO_STEPS_RANGE = (10, 200)


@dataclass
class ValidateConfig:
    """Settings of ``lipo-if validate``."""

    n_sample: int = field(default=20, metadata={"help": "single molecules to add one at a time, spread across the score range"})
    top_k: int = field(default=25, metadata={"help": "size of the most-helpful group added at once"})
    retrain: str = field(default="gd", metadata={"help": "gd (full-batch gradient descent from θ̂), finetune (Adam from θ̂) or scratch", "choices": RETRAIN_MODES})
    steps: int = field(default=0, metadata={"help": "gd steps (0 = λmax/damping of the influence solve, within 10–200)"})
    lr: float = field(default=0.0, metadata={"help": "gd step size (0 = 1/λmax of the influence solve)"})
    seeds: int = field(default=1, metadata={"help": "finetune/scratch: seeds averaged per retraining"})

    def __post_init__(self) -> None:
        checks = [
            (self.n_sample >= 3, f"n_sample must be ≥ 3, got {self.n_sample}"),
            (self.top_k >= 1, f"top_k must be ≥ 1, got {self.top_k}"),
            (self.retrain in RETRAIN_MODES, f"retrain must be one of {', '.join(RETRAIN_MODES)}, got {self.retrain!r}"),
            (self.steps >= 0 and self.lr >= 0, "steps and lr must be ≥ 0 (0 = automatic)"),
            (self.seeds >= 1, f"seeds must be ≥ 1, got {self.seeds}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def spread_sample(pool: pd.DataFrame, n: int) -> list[int]:
    """``n`` rows of ``pool`` at evenly spaced ranks of the score (both extremes included)."""
    ranked = pool.sort_values(["score", "row"], kind="mergesort")
    positions = np.unique(np.round(np.linspace(0, len(ranked) - 1, min(n, len(ranked)))).astype(int))
    return [int(r) for r in ranked["row"].iloc[positions]]


def gd_retrain(run: Run, x_extra: torch.Tensor, y_extra: torch.Tensor, lr: float, steps: int) -> float:
    """Validation MSE after ``steps`` full-batch gradient-descent steps on R(θ) over train ∪ extra, from θ̂.

    ``x_extra`` ``[m, d]``, ``y_extra`` ``[m]`` (m may be 0). The run's model is not modified.
    """
    x_train, y_train = run.tensors("train")
    x, y = cat_inputs([x_train, x_extra]), torch.cat([y_train, y_extra])
    model = copy.deepcopy(run.model).train()
    params = list(model.parameters())
    for _ in range(steps):
        loss = objective(model, x, y, run.config.weight_decay)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    x_val, y_val = run.tensors("val")
    return float(np.mean((predict_tensor(model, x_val) - y_val.double().numpy()) ** 2))


class _Retrainer:
    """Validation MSE after adding a set of the pool's rows, by the configured retraining."""

    def __init__(self, run: Run, pool: Pool, config: ValidateConfig, finetune_config: FinetuneConfig,
                 lr: float, steps: int) -> None:
        self.run, self.pool, self.config, self.lr, self.steps = run, pool, config, lr, steps
        self.finetune_config = replace(finetune_config, from_scratch=config.retrain == "scratch")

    def val_mse(self, rows: list[int]) -> float:
        if self.config.retrain == "gd":
            x, y = self.pool.rows_features(self.run.featurizer, rows)
            return gd_retrain(self.run, x, y, self.lr, self.steps)
        base_seed = self.run.config.seed if self.finetune_config.seed < 0 else self.finetune_config.seed
        values = [finetune_run(self.run, self.pool, replace(self.finetune_config, seed=base_seed + i), progress=False,
                               rows=rows).metrics["val_rmse"] ** 2
                  for i in range(self.config.seeds)]
        return float(np.mean(values))


def _auto_gd(run: Run, summary: dict, config: ValidateConfig) -> tuple[float, int]:
    """(lr, steps) from the influence solve: η = 1/λmax, T = λmax/μ (clamped).

    A solve at a fixed damping (e.g. CG) records no λmax; it is then estimated here by power
    iteration on the Gauss–Newton curvature (the kind the step size must respect).
    """
    info = summary.get("solver", {}).get("info", {})
    lam, mu = info.get("lambda_max"), info.get("damping")
    if not lam and not config.lr:
        x, y = run.tensors("train")
        op = HessianOperator(run.model, x, y, float(run.config.weight_decay), kind="gauss-newton")
        lam = abs(float(dominant_eigenvalue(op, None, iters=30, seed=0)[0]))
    lr = config.lr or (1.0 / abs(lam) if lam else 0.0)
    if not lr:
        raise ValueError("gd retraining needs lr (the influence summary has no λmax): pass --lr")
    steps = config.steps or int(np.clip(round(abs(lam) / mu) if lam and mu else 50, *AUTO_STEPS_RANGE))
    return lr, steps


def _correlations(pred: np.ndarray, act: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    ok = np.isfinite(pred) & np.isfinite(act)
    out = {"n": int(ok.sum()), "pearson": float("nan"), "spearman": float("nan")}
    if ok.sum() >= 3 and np.std(pred[ok]) > 0 and np.std(act[ok]) > 0:
        out["pearson"] = float(pearsonr(pred[ok], act[ok])[0])
        out["spearman"] = float(spearmanr(pred[ok], act[ok])[0])
    return out


def _plot(singles: pd.DataFrame, corr: dict, group: dict, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(singles["predicted"], singles["actual"], s=20, color="tab:blue", label="single molecules")
    values = np.concatenate([singles["predicted"].to_numpy(), singles["actual"].to_numpy()])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("predicted Δ validation MSE (score + offset)")
    ax.set_ylabel("actual Δ validation MSE (vs retraining with nothing added)")
    ax.set_title(f"{title}\nsingles: Pearson {corr['pearson']:.3f}, Spearman {corr['spearman']:.3f}\n"
                 f"top-{group['k']} group: predicted {group['predicted']:+.2g}, actual {group['actual']:+.2g}", fontsize=9)
    ax.ticklabel_format(style="sci", scilimits=(-3, 3))
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def run_validation(
    run: Run, external: Molecules, out_dir: str | os.PathLike, config: ValidateConfig | None = None,
    finetune_config: FinetuneConfig | None = None, scores_csv: str | os.PathLike | None = None, progress: bool = True,
    influence: Influence | None = None,
) -> dict:
    """Retrain with single molecules and the top-k group; write ``validate.json``, ``validate.csv``, ``validate.png``.

    The scores come from ``influence`` (a fitted :class:`~lipo_if.influence.Influence` of ``run``),
    else from ``scores_csv`` (a table written by ``lipo-if influence`` for this run, with its summary
    beside it), else from a default validation solve (written to ``out_dir/influence_val.csv``)."""
    from tqdm.auto import tqdm

    config = config or ValidateConfig()
    finetune_config = finetune_config or FinetuneConfig()
    out = Path(out_dir)
    molecules = Pool.coerce(external)
    if scores_csv is not None and influence is None:
        summary_path = output_paths(scores_csv)["summary"]
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        scores = load_scores(scores_csv)
    else:
        influence = influence or Influence(run, progress=progress).fit()
        scores = influence.scores(molecules)
        scores_csv = out / "influence_val.csv"
        summary = write_scores(influence, scores, scores_csv, source=molecules.source)
    pool = eligible(scores)
    offset = float(summary.get("renormalization_offset") or 0.0)
    lr, steps = _auto_gd(run, summary, config) if config.retrain == "gd" else (0.0, 0)
    retrainer = _Retrainer(run, molecules, config, finetune_config, lr, steps)
    score_of = pool.set_index("row")["score"]

    sample = spread_sample(pool, config.n_sample)
    group = [int(r) for r in pool.sort_values(["score", "row"], kind="mergesort")["row"].head(config.top_k)]
    jobs = [[]] + [[r] for r in sample] + [group]
    with tqdm(total=len(jobs), desc=f"validate ({config.retrain})", disable=not progress) as bar:
        mses = []
        for rows in jobs:
            mses.append(retrainer.val_mse(rows))
            bar.update(1)
    base = mses[0]
    singles = pd.DataFrame({"row": sample, "score": [float(score_of.loc[r]) for r in sample],
                            "predicted": [float(score_of.loc[r]) + offset for r in sample],
                            "actual": [m - base for m in mses[1:-1]]})
    corr = _correlations(singles["predicted"].to_numpy(), singles["actual"].to_numpy())
    group_result = {"k": len(group), "rows": group, "predicted": float(score_of.loc[group].sum()) + offset * len(group),
                    "actual": mses[-1] - base}
    result = {
        "run": str(run.run_dir) if run.run_dir else None, "external": molecules.source, "scores": str(scores_csv),
        "config": asdict(config), "finetune_config": asdict(finetune_config) if config.retrain != "gd" else None,
        "gd": {"lr": lr, "steps": steps} if config.retrain == "gd" else None,
        "influence": {k: summary.get("solver", {}).get("info", {}).get(k) for k in ("damping", "lambda_max", "relative_residual")},
        "renormalization_offset": offset, "baseline_val_mse": base,
        "singles": corr, "group": group_result, "per_molecule": singles.to_dict(orient="records"),
    }
    atomic_write_json(out / "validate.json", result)
    atomic_write_text(out / "validate.csv", singles.to_csv(index=False, float_format="%.8g"))
    title = f"{config.retrain} retraining" + (f" ({steps} steps of {lr:.3g})" if config.retrain == "gd" else f" ({config.seeds} seed(s))")
    atomic_write_bytes(out / "validate.png", _plot(singles, corr, group_result, title))
    return result
