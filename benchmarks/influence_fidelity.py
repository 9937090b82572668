"""Influence fidelity on a real Lipophilicity model: LiSSA against exact references.

    python benchmarks/influence_fidelity.py --data-dir ../shared/data --run runs/fidelity

- block: a small parameter block (last layer + the bias of the layer before it) where the
  explicit curvature matrix fits: LiSSA vs ``torch.linalg.solve`` (Gauss–Newton and exact);
- full: all parameters: LiSSA vs conjugate gradients (Gauss–Newton).

Both sides of each comparison solve the same damped system (H + μI)s = v (μ = LiSSA's auto
damping, λmax/50), in float64, with v the validation-loss gradient. Scores are those of the
valid molecules of the external CSV. Trains (and saves) a run with ``--max-epochs`` first when
``--run`` does not hold one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from lipo_if.data import load_dataset, read_molecule_csv, resolve_lipophilicity_path
from lipo_if.influence import HessianOperator, SolverConfig, influence_scores, solve
from lipo_if.train import TrainConfig, train_run
from lipo_if.rundir import load_run

BLOCK = ["layers.1.bias", "layers.2.weight", "layers.2.bias"]


def get_run(args: argparse.Namespace):
    run_dir = Path(args.run)
    if (run_dir / "model.pt").exists():
        return load_run(run_dir)
    path = resolve_lipophilicity_path(data_dir=args.data_dir)
    run = train_run(load_dataset(path), str(path), TrainConfig(max_epochs=args.max_epochs, seed=0), progress=False)
    run.save(run_dir)
    return run


def compare(name: str, op: HessianOperator, reference: str, lissa_cfg: SolverConfig, ext) -> dict:
    """LiSSA vs ``reference`` on the same damped system; metrics on s and on the external scores."""
    v = op.gradient(*ext["val"])
    lissa = solve(op, v, "lissa", lissa_cfg)
    ref_cfg = SolverConfig(damping=lissa.info["damping"], tol=1e-8, max_iter=1000, progress=False)
    ref = solve(op, v, reference, ref_cfg)
    a = influence_scores(op, lissa.s, *ext["candidates"]).numpy()
    b = influence_scores(op, ref.s, *ext["candidates"]).numpy()
    k = 30
    top = len(set(np.argsort(a)[:k]) & set(np.argsort(b)[:k])) / k
    row = {
        "case": name, "hessian": op.kind, "n_params": op.n_params, "reference": reference,
        "damping": lissa.info["damping"], "scale": lissa.info["scale"], "lambda_max": lissa.info["lambda_max"],
        "lambda_min": lissa.info["lambda_min"], "lissa_steps": lissa.iterations,
        "s_rel_err": float(torch.linalg.vector_norm(lissa.s - ref.s) / torch.linalg.vector_norm(ref.s)),
        "score_pearson": float(pearsonr(a, b)[0]), "score_spearman": float(spearmanr(a, b)[0]),
        "score_rel_err": float(np.linalg.norm(a - b) / np.linalg.norm(b)), f"top{k}_overlap": top,
        "lissa_residual": lissa.info["relative_residual"], "ref_residual": ref.info.get("relative_residual"),
        "lissa_seconds": round(lissa.info["seconds"], 1), "ref_seconds": round(ref.info["seconds"], 1),
        "ref_iterations": ref.iterations,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--run", default="runs/fidelity", help="run directory (trained here if empty)")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--external", default=None, help="external CSV (default: <data-dir>/external.csv)")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", nargs="+", default=["block-gn", "block-exact", "full-gn"])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    start = time.perf_counter()
    run = get_run(args)
    external = args.external or str(Path(args.data_dir or "../shared/data") / "external.csv")
    table = read_molecule_csv(external)
    table = table[table["error"] == ""]
    ext = {"val": run.tensors("val"),
           "candidates": (run.featurize(table["smiles"].tolist()), torch.tensor(table["label"].to_numpy(float)))}
    X, y = run.tensors("train")
    wd = run.config.weight_decay
    lissa_cfg = SolverConfig(depth=args.depth, batch_size=args.batch_size, repeats=args.repeats, tol=1e-7,
                             progress=False)
    print(f"run: {run.model.n_params} params, n_train={len(y)}, weight_decay={wd}, "
          f"val metrics {run.metrics.get('val_rmse')}; {len(table)} external molecules", flush=True)
    rows = []
    cases = {
        "block-gn": lambda: compare("block", HessianOperator(run.model, X, y, wd, "gauss-newton", BLOCK), "direct",
                                    lissa_cfg, ext),
        "block-exact": lambda: compare("block", HessianOperator(run.model, X, y, wd, "exact", BLOCK), "direct",
                                       lissa_cfg, ext),
        "full-gn": lambda: compare("full", HessianOperator(run.model, X, y, wd, "gauss-newton"), "cg", lissa_cfg, ext),
        "full-exact": lambda: compare("full", HessianOperator(run.model, X, y, wd, "exact"), "cg", lissa_cfg, ext),
    }
    for case in args.cases:
        rows.append(cases[case]())
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
