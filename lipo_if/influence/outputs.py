"""The files ``lipo-if influence`` writes for one scores table, atomically.

- ``<out>.csv``: :data:`~lipo_if.influence.api.OUTPUT_COLUMNS` (input and standardized SMILES, label,
  prediction, residual, score, the applicability domain, ``excluded``), an ensemble's columns after;
- ``<out stem>_hist.png``: histogram of the scores;
- ``<out stem>_summary.json``: settings, λmax/scale/damping, convergence trace, counts, timings.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lipo_if.io import atomic_write_bytes, atomic_write_json, atomic_write_text

from .api import OUTPUT_COLUMNS, Influence


def output_paths(out_csv: str | Path) -> dict[str, Path]:
    """The three files written for ``out_csv``: csv, histogram PNG, summary JSON."""
    out = Path(out_csv)
    return {"csv": out, "histogram": out.with_name(out.stem + "_hist.png"),
            "summary": out.with_name(out.stem + "_summary.json")}


def histogram_png(scores: np.ndarray, title: str) -> bytes:
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


def write_scores(inf: Influence, table: pd.DataFrame, out_csv: str | Path, source: str = "<memory>") -> dict:
    """Write the CSV, histogram and summary of ``table`` (from ``inf.scores``); return the summary."""
    clock = time.perf_counter()
    paths = output_paths(out_csv)
    summary = inf.summary(table, source)
    summary["outputs"] = {k: str(p) for k, p in paths.items()}
    config = inf.config
    scores = table.loc[table["excluded"] == "", "score"].to_numpy(dtype=float)
    columns = OUTPUT_COLUMNS + [c for c in table.columns if c not in OUTPUT_COLUMNS]  # an ensemble's score_se, …
    atomic_write_text(paths["csv"], table[columns].to_csv(index=False, float_format="%.10g"))
    title = f"{len(scores)} molecules · {config.hessian} · {config.solver} · held-out: {config.heldout}"
    atomic_write_bytes(paths["histogram"], histogram_png(scores, title))
    summary["timings"]["write_seconds"] = round(time.perf_counter() - clock, 4)
    summary["timings"]["total_seconds"] = round(sum(summary["timings"].values()), 4)
    atomic_write_json(paths["summary"], summary)
    return summary
