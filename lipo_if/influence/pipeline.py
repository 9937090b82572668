"""End to end: score every molecule of an external CSV by its predicted effect on held-out loss.

``run_influence`` reads the external file (one output row per input row), excludes rows that
must not be selected (invalid SMILES, molecules already in the run's splits, repeated rows),
computes ``s = (H + μI)⁻¹ ∇L_heldout`` once, scores the remaining rows with
``score(z) = −(1/n) s·∇ℓ(z)`` (negative = adding z is predicted to lower the held-out MSE; see
:mod:`lipo_if.influence.scores`) and writes three files atomically:

- ``<out>.csv``: ``row, smiles, label, prediction, residual, score, excluded``;
- ``<out stem>_hist.png``: histogram of the scores;
- ``<out stem>_summary.json``: settings, λmax/scale/damping, convergence trace, counts, timings.

The ``run`` object needs: ``model`` (MLPRegressor), ``config.weight_decay``,
``tensors(part) → (X, y)`` and ``keys(part)`` for part in train/val/test, and
``featurize(smiles) → X``.
"""
from __future__ import annotations

import io
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from .hvp import HESSIAN_KINDS, HessianOperator
from .scores import SCORE_METHODS, influence_scores, renormalization_offset
from .solvers import SOLVER_METHODS, SolveResult, SolverConfig, solve

log = logging.getLogger(__name__)

#: CLI-facing held-out names → the run's split part names.
HELDOUT_PARTS = {"validation": "val", "test": "test"}
OUTPUT_COLUMNS = ["row", "smiles", "label", "prediction", "residual", "score", "excluded"]
#: ``--precision`` choices (torch dtype names).
PRECISIONS = ("float64", "float32")


class RunLike(Protocol):
    """What :func:`run_influence` uses of a trained run (see :class:`lipo_if.train.Run`)."""

    model: torch.nn.Module
    config: Any  # has .weight_decay

    def tensors(self, part: str) -> tuple[torch.Tensor, torch.Tensor]: ...
    def keys(self, part: str) -> list[str]: ...
    def featurize(self, smiles: list[str]) -> torch.Tensor: ...


@dataclass
class InfluenceConfig(SolverConfig):
    """Settings of ``lipo-if influence`` (the solver settings are inherited from SolverConfig)."""

    heldout: str = field(
        default="validation",
        metadata={"help": "held-out set whose loss the selection should lower; 'test' makes later test "
                          "metrics optimistic", "choices": tuple(HELDOUT_PARTS)},
    )
    hessian: str = field(
        default="gauss-newton",
        metadata={"help": "curvature: gauss-newton (PSD) or exact (indefinite for a ReLU net; needs damping "
                          "above −λmin)", "choices": HESSIAN_KINDS},
    )
    solver: str = field(
        default="lissa", metadata={"help": "inverse-HVP solver: lissa, cg or direct (small --params blocks only)",
                                   "choices": SOLVER_METHODS},
    )
    exclude_overlap: bool = field(
        default=True,
        metadata={"help": "leave unscored the molecules already in the run's train/validation/test splits "
                          "(stereo-insensitive match)"},
    )
    params: str = field(
        default="",
        metadata={"help": "comma-separated parameter names to restrict the influence to, e.g. "
                          "'layers.2.weight,layers.2.bias' (empty = all parameters)"},
    )
    score_method: str = field(
        default="fast", metadata={"help": "per-sample gradient dots: fast (per-layer identity) or reference (vmap)",
                                  "choices": SCORE_METHODS},
    )
    chunk_size: int = field(default=2048, metadata={"help": "rows per chunk in full-set products and scoring"})
    precision: str = field(
        default="float64",
        metadata={"help": "working precision of the curvature products, the solve and the scores: float32 moves "
                          "half the bytes (LiSSA ≈1.4× faster on the dev box) at ≈1e-7 relative rounding, far below "
                          "LiSSA's minibatch noise; float64 for fidelity studies", "choices": PRECISIONS},
    )
    smiles_col: str | None = field(default=None, metadata={"help": "SMILES column of the external CSV (auto if unset)"})
    label_col: str | None = field(default=None, metadata={"help": "label column of the external CSV (auto if unset)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (("heldout", tuple(HELDOUT_PARTS)), ("hessian", HESSIAN_KINDS),
                              ("solver", SOLVER_METHODS), ("score_method", SCORE_METHODS), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size}")

    @property
    def param_names(self) -> list[str] | None:
        """``params`` as a list, or None for all parameters."""
        names = [p.strip() for p in self.params.split(",") if p.strip()]
        return names or None


# --------------------------------------------------------------------------- exclusions


def exclusion_reasons(table: pd.DataFrame, split_keys: dict[str, set[str]] | None) -> list[str]:
    """Why each row of ``read_molecule_csv``'s table is not scored (``""`` = scored).

    Precedence: the reader's error (e.g. "invalid SMILES"), then membership of a split in the
    order of ``split_keys`` (e.g. {"validation": …, "test": …, "training": …}; None = no overlap
    check), then repetition of an earlier scored row ("duplicate row of row N", N = its ``row``).
    """
    reasons: list[str] = []
    first_row: dict[str, int] = {}
    for row, key, error in zip(table["row"], table["key"], table["error"]):
        reason = error or next(
            (f"duplicate of a {name} molecule" for name, keys in (split_keys or {}).items() if key in keys), ""
        )
        if not reason and key in first_row:
            reason = f"duplicate row of row {first_row[key]}"
        if not reason:
            first_row[key] = int(row)
        reasons.append(reason)
    return reasons


def _split_keys(run: RunLike) -> dict[str, set[str]]:
    return {"validation": set(run.keys("val")), "test": set(run.keys("test")), "training": set(run.keys("train"))}


# --------------------------------------------------------------------------- outputs


def output_paths(out_csv: str | Path) -> dict[str, Path]:
    """The three files written for ``out_csv``: csv, histogram PNG, summary JSON."""
    out = Path(out_csv)
    return {"csv": out, "histogram": out.with_name(out.stem + "_hist.png"),
            "summary": out.with_name(out.stem + "_summary.json")}


def _histogram_png(scores: np.ndarray, title: str) -> bytes:
    """PNG bytes of a score histogram (Agg canvas; no global matplotlib state touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if scores.size:
        ax.hist(scores, bins=min(50, max(5, scores.size // 3)), color="tab:blue", alpha=0.85)
        ax.axvline(0.0, color="black", lw=0.8)
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("predicted Δ held-out MSE (logD²) from adding the molecule — negative = helpful")
    ax.set_ylabel("molecules")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _counts(reasons: Sequence[str], scores: np.ndarray) -> dict:
    kinds = Counter("duplicate row" if r.startswith("duplicate row") else r for r in reasons if r)
    return {"rows": len(reasons), "scored": int(scores.size), "excluded": int(sum(kinds.values())),
            "excluded_by_reason": dict(kinds), "helpful": int((scores < 0).sum()), "harmful": int((scores > 0).sum())}


def _warnings(config: InfluenceConfig, result: SolveResult) -> list[str]:
    out = []
    if config.heldout == "test":
        out.append("the selection saw the test set (heldout=test): test metrics after adding the selected "
                   "molecules are optimistic; use heldout=validation for an honest test estimate")
    if not result.converged:
        out.append(f"{result.method} did not reach tol={config.tol:g} (expected for minibatch LiSSA; "
                   f"see relative_residual)")
    residual = result.info.get("relative_residual")
    if residual is not None and residual > 0.1:
        out.append(f"relative residual ‖(H+μI)s − v‖/‖v‖ = {residual:.3g} > 0.1: scores are rough — raise depth, "
                   f"repeats or batch_size, or use solver=cg")
    return out


# --------------------------------------------------------------------------- the pipeline


def _score_rows(
    run: RunLike, op: HessianOperator, result: SolveResult, table: pd.DataFrame, reasons: list[str],
    config: InfluenceConfig,
) -> pd.DataFrame:
    """Output frame: predictions for every valid row, scores for every non-excluded row."""
    out = pd.DataFrame({"row": table["row"], "smiles": table["smiles_input"], "label": table["label"],
                        "prediction": np.nan, "residual": np.nan, "score": np.nan, "excluded": reasons})
    valid = (table["error"] == "").to_numpy()
    if valid.any():
        X = run.featurize(table.loc[valid, "smiles"].tolist())
        y = torch.tensor(table.loc[valid, "label"].to_numpy(dtype=float), dtype=op.dtype)
        with torch.no_grad():
            pred = torch.cat([op.predict(op.theta, X[i:i + config.chunk_size].to(op.dtype))
                              for i in range(0, X.shape[0], config.chunk_size)])
        out.loc[valid, "prediction"] = pred.numpy()
        out.loc[valid, "residual"] = (pred - y).numpy()  # prediction − label, the (f − y) of ℓ
        keep = np.array([r == "" for r, ok in zip(reasons, valid) if ok])
        if keep.any():
            scores = influence_scores(op, result.s, X[keep], y[keep], config.score_method, config.chunk_size)
            out.loc[out["excluded"] == "", "score"] = scores.numpy()
    return out


def run_influence(
    run: RunLike, external_path: str | Path, config: InfluenceConfig | None = None,
    out_csv: str | Path = "influence.csv",
) -> dict:
    """Score an external CSV against a trained run; write CSV, histogram and summary; return the summary.

    Raises ``lipo_if.data.DataError`` for an unreadable external file and the solver errors of
    :func:`lipo_if.influence.solvers.solve` (with advice) when the inverse-HVP fails.
    """
    from lipo_if.data import atomic_write_bytes, atomic_write_json, atomic_write_text, read_molecule_csv

    config = config or InfluenceConfig()
    paths = output_paths(out_csv)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    table = read_molecule_csv(external_path, config.smiles_col, config.label_col)
    reasons = exclusion_reasons(table, _split_keys(run) if config.exclude_overlap else None)
    lap("read_seconds")

    X_train, y_train = run.tensors("train")
    op = HessianOperator(run.model, X_train, y_train, float(run.config.weight_decay), kind=config.hessian,
                         params=config.param_names, chunk_size=config.chunk_size,
                         dtype=getattr(torch, config.precision))
    X_ho, y_ho = run.tensors(HELDOUT_PARTS[config.heldout])
    v = op.gradient(X_ho, y_ho)
    lap("gradient_seconds")
    result = solve(op, v, config.solver, config)
    lap("solve_seconds")
    frame = _score_rows(run, op, result, table, reasons, config)
    lap("score_seconds")

    scores = frame.loc[frame["excluded"] == "", "score"].to_numpy(dtype=float)
    helpful = frame[frame["excluded"] == ""].nsmallest(10, "score")[["row", "smiles", "score"]]
    summary = {
        "external": str(external_path),
        "outputs": {k: str(p) for k, p in paths.items()},
        "settings": asdict(config),
        "heldout": config.heldout,
        "selection_saw_test_set": config.heldout == "test",
        "n_train": op.n_train,
        "n_heldout": int(X_ho.shape[0]),
        "n_params": op.n_params,
        "weight_decay": op.weight_decay,
        "v_norm": float(torch.linalg.vector_norm(v)),
        "renormalization_offset": renormalization_offset(op, result.s),
        "solver": result.summary(),
        "counts": _counts(reasons, scores),
        "most_helpful": helpful.to_dict(orient="records"),
        "warnings": _warnings(config, result),
        "timings": timings,
    }
    for warning in summary["warnings"]:
        log.warning(warning)

    atomic_write_text(paths["csv"], frame[OUTPUT_COLUMNS].to_csv(index=False, float_format="%.10g"))
    title = f"{len(scores)} molecules · {config.hessian} · {config.solver} · held-out: {config.heldout}"
    atomic_write_bytes(paths["histogram"], _histogram_png(scores, title))
    lap("write_seconds")
    timings["total_seconds"] = round(sum(timings.values()), 4)
    atomic_write_json(paths["summary"], summary)
    return summary
