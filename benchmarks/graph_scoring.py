"""Scoring a pool through the D-MPNN: the segment-summed fast path against per-molecule autodiff.

    python benchmarks/graph_scoring.py --data-dir ../shared/data --run runs/task1-dmpnn/random-0 \\
        --rows 10000 --reference-rows 200 --json runs/graph_scoring.json

The pool is the synthetic analog pool of ``benchmarks/stream_scale.py`` (single aromatic-H edits of
Lipophilicity molecules, deduplicated, labels = the parent's + N(0, 0.3); synthetic, not measured).
Three ways to compute ``s · ∇θ ℓ(z)`` for every pool molecule, timed in one process, one after the
other, on the same molecules and the same vector ``s`` (the validation-loss gradient: what the
scores cost does not depend on which vector is dotted, so no solve is run here):

- ``fast``: :func:`lipo_if.influence.scores.grad_dot_graph` — one forward and one backward per chunk
  of 256 molecules, then per Linear layer the compiled ``linear_grad_dot.segment`` op;
- ``twin``: the same with the op's pure-PyTorch twin (``lipo_if.ops_reference``);
- ``reference``: per-molecule gradients by ``torch.func.grad`` of one molecule at a time (a vmap over
  molecules is not possible: their graphs differ in size), on the first ``--reference-rows``
  molecules; its rate is molecules per second over those.

The fast scores are checked against the reference's on the molecules both scored. Peak memory:
``--memory`` re-runs the fast path on 1/4 of the rows and on all of them in fresh processes and
reports each process's peak RSS (it should not grow with the pool: chunks bound it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timed  # noqa: E402
from stream_scale import synthetic_pool  # noqa: E402  (a sibling benchmark script, not a package)

from lipo_if import ops_reference  # noqa: E402
from lipo_if.data import resolve_lipophilicity_path  # noqa: E402
from lipo_if.influence import scores as scores_module  # noqa: E402
from lipo_if.influence.api import Influence  # noqa: E402
from lipo_if.pool import Pool  # noqa: E402
from lipo_if.rundir import load_run  # noqa: E402


def pool_tensors(run, path: Path, rows: int):
    """The model input and labels of the pool's first ``rows`` rows (valid ones)."""
    pool = Pool.from_frame(pd.read_csv(path, nrows=rows))
    x = pool.features(run.featurizer)
    return x, torch.tensor(pool.table.loc[pool.valid, "label"].to_numpy(dtype=float))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--run", required=True, help="a D-MPNN run directory (lipo-if train --model dmpnn)")
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--reference-rows", type=int, default=200)
    parser.add_argument("--pool", default="runs/graph_scoring_pool.csv")
    parser.add_argument("--memory", action="store_true", help="also measure the fast path's peak RSS at 1/4 and all rows")
    parser.add_argument("--only-fast", action="store_true", help=argparse.SUPPRESS)  # the memory probe's mode
    parser.add_argument("--json")
    args = parser.parse_args()
    lipo = resolve_lipophilicity_path(data_dir=args.data_dir)
    pool_path = synthetic_pool(Path(lipo), args.rows, Path(args.pool))
    run = load_run(args.run)
    inf = Influence(run, precision="float32", progress=False)
    op = inf.operator
    s = inf.heldout_gradient()
    X, y = pool_tensors(run, pool_path, args.rows)
    if args.only_fast:
        scores_module.grad_dot_graph(op, s, X, y)
        print(json.dumps({"rows": len(X), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    scores_module.grad_dot_graph(op, s, X[:8], y[:8])  # warm-up (first-call allocations, lazy kernels)
    load = Path("/proc/loadavg").read_text().split()[:3]
    fast, t_fast = timed(lambda: scores_module.grad_dot_graph(op, s, X, y))
    real_op = scores_module.ops.linear_grad_dot_segment
    scores_module.ops.linear_grad_dot_segment = ops_reference.linear_grad_dot_segment
    try:
        twin, t_twin = timed(lambda: scores_module.grad_dot_graph(op, s, X, y))
    finally:
        scores_module.ops.linear_grad_dot_segment = real_op
    m = min(args.reference_rows, len(X))
    ref, t_ref = timed(lambda: scores_module.grad_dot_reference(op, s, X[:m], y[:m]))
    rel = float((fast[:m] - ref).abs().max() / ref.abs().max())
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run": args.run, "rows": len(X), "reference_rows": m,
        "n_params": op.n_params, "precision": "float32", "threads": torch.get_num_threads(), "loadavg_before": load,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "fast_seconds": round(t_fast, 2), "twin_seconds": round(t_twin, 2), "reference_seconds": round(t_ref, 2),
        "fast_mol_per_s": round(len(X) / t_fast, 1), "twin_mol_per_s": round(len(X) / t_twin, 1),
        "reference_mol_per_s": round(m / t_ref, 2),
        "speedup_vs_reference": round((len(X) / t_fast) / (m / t_ref), 1), "speedup_vs_twin": round(t_twin / t_fast, 2),
        "max_rel_diff_fast_vs_reference": rel, "twin_equals_fast": bool(torch.allclose(twin, fast, rtol=1e-4, atol=1e-6)),
    }
    if args.memory:
        probes = []
        for rows in (max(1, args.rows // 4), args.rows):
            out = subprocess.run([sys.executable, __file__, "--run", args.run, "--rows", str(rows), "--pool", args.pool,
                                  "--only-fast", *(["--data-dir", args.data_dir] if args.data_dir else [])],
                                 capture_output=True, text=True, check=True)
            probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        result["memory"] = probes
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
