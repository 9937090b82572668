"""Speed ratios as medians of interleaved pairs: ext / native vs the pure-PyTorch reference.

pytest-benchmark (bench_ops.py) times one implementation's rounds after the other's; on a shared,
noisy machine that order alone moves a ratio by ±20 %. Here the two sides alternate call by call
in one process, so load from elsewhere hits both alike, and the ratio reported is the median of
the per-pair ratios (reference time / ext time). Every case checks its results against the
reference before timing.

Cases (float64 unless noted; the real model shape 2248 → 512 → 128 → 1 of _ops_workload.py):
- ``dense-layer``: linear_grad_dot on a dense ReLU layer 512 → 128, n = 4,000 (float32, float64);
- ``scoring``: s·∇ℓ(zᵢ) for all rows, ext vs the best dense formulation, n = 4,000 and 50,000;
- ``lissa``: a LiSSA solve (batch 128, fixed depth, tol = 0, same seeded minibatches), native HVP
  vs the autograd reference, Gauss–Newton and exact Hessian, n_train = 3,000;
- ``lissa-fused``: the same solve with the fused native step (``NativeHessian.lissa_step_``) vs
  the native product followed by ``ops.lissa_step`` (the A/B of the fusion alone);
- ``lissa-head``: on the trained model of ``benchmarks/peers`` (``--workload``, real data; its
  LiSSA settings), the native solve as it is vs with ``drop_dead_units=False, fold_head=False``
  (the A/B of leaving out units that are off on every training row and of the folded head).

Run: ``PYTHONPATH=. python benchmarks/interleaved_pairs.py [--cases dense-layer,scoring,lissa,lissa-fused,lissa-head]
[--workload runs/peers/workload.pt] [--json FILE]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ops_workload import make_data, make_model, make_vec, scoring_impls  # noqa: E402

from lipo_if import ops, ops_reference  # noqa: E402


def pairs(fast: Callable[[], object], reference: Callable[[], object], rounds: int) -> dict:
    """Alternate ``fast`` and ``reference`` ``rounds`` times (one warm-up each); medians and ratio."""
    fast(), reference()
    t_fast, t_ref = [], []
    for _ in range(rounds):
        for fn, times in ((fast, t_fast), (reference, t_ref)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    ratios = [r / f for f, r in zip(t_fast, t_ref)]
    return {"rounds": rounds, "fast_ms": statistics.median(t_fast) * 1e3, "reference_ms": statistics.median(t_ref) * 1e3,
            "ratio_median_of_pairs": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def dense_layer_cases() -> dict:
    out = {}
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(0)
        act = torch.relu(torch.randn(4000, 512, generator=gen, dtype=torch.float64)).to(dtype)
        g, w, b = (torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
                   for shape in ((4000, 128), (1, 128, 512), (1, 128)))
        tol = 1e-3 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(ops.linear_grad_dot(act, g, w, b).double(),
                                   ops_reference.linear_grad_dot(act.double(), g.double(), w.double(), b.double()),
                                   rtol=tol, atol=tol * 100)
        name = f"dense-layer 512→128 n=4000 {str(dtype).replace('torch.', '')}"
        out[name] = pairs(lambda: ops.linear_grad_dot(act, g, w, b),
                          lambda: ops_reference.linear_grad_dot(act, g, w, b), rounds=60)
    return out


def scoring_cases() -> dict:
    out = {}
    impls = scoring_impls()
    layers = make_model()
    vec = make_vec(layers)
    for n, rounds in ((4000, 15), (50_000, 4)):
        X, y = make_data(n)
        expected = ops_reference.mlp_grad_dot_vmap(layers, vec, X[:256], y[:256])
        torch.testing.assert_close(impls["ext"](layers, vec, X[:256], y[:256]), expected, rtol=1e-9, atol=1e-9)
        out[f"scoring n={n} float64 (ext vs best dense)"] = pairs(
            lambda: impls["ext"](layers, vec, X, y), lambda: impls["dense"](layers, vec, X, y), rounds=rounds)
    return out


def lissa_problems():
    """``(hessian, damping, op, v)`` for both curvatures: the real model shape (random init),
    n_train = 3,000 fingerprint-like rows, v = the gradient on 500 other rows, λ = 1e-4."""
    from lipo_if.influence import HessianOperator
    from lipo_if.model import ModelConfig, build_model

    model = build_model(ModelConfig(in_dim=2248, hidden=(512, 128)), seed=0)
    X, y = make_data(3500)
    for hessian, damping in (("gauss-newton", 0.01), ("exact", 10.0)):
        op = HessianOperator(model, X[:3000], y[:3000], 1e-4, kind=hessian)
        yield hessian, damping, op, op.gradient(X[3000:], y[3000:])


def lissa_cases(depth: int = 50) -> dict:
    from lipo_if.influence import SolverConfig, solve

    out = {}
    for hessian, damping, op, v in lissa_problems():

        def run(hvp: str, steps: int = depth):
            cfg = SolverConfig(damping=damping, scale=500.0, depth=steps, tol=0.0, batch_size=128, progress=False,
                               hvp=hvp, check_definite=False)
            return solve(op, v, "lissa", cfg, check_residual=False)

        torch.testing.assert_close(run("native", 4).s, run("autograd", 4).s, rtol=1e-9, atol=1e-12)
        result = pairs(lambda: run("native"), lambda: run("autograd"), rounds=5)
        result["fast_ms_per_step"] = result["fast_ms"] / depth
        result["reference_ms_per_step"] = result["reference_ms"] / depth
        out[f"LiSSA solve {hessian} depth {depth} batch 128 float64 (native setup included)"] = result
    return out


def lissa_fused_cases(depth: int = 50) -> dict:
    """The native LiSSA step fused (NativeHessian.lissa_step_: first block updated in place, never
    formed; training input compressed once) vs the same native HVP then ops.lissa_step."""
    from lipo_if.influence import SolverConfig, solve
    from lipo_if.influence.native_hvp import NativeHessian

    out = {}
    for hessian, damping, op, v in lissa_problems():

        def run(fused: bool, steps: int = depth):
            native = NativeHessian(op)  # setup on both sides (the fused one also splits X)
            native.fused_lissa = fused
            cfg = SolverConfig(damping=damping, scale=500.0, depth=steps, tol=0.0, batch_size=128, progress=False,
                               hvp="native", check_definite=False)
            return solve(native, v, "lissa", cfg, check_residual=False)

        torch.testing.assert_close(run(True, 4).s, run(False, 4).s, rtol=1e-10, atol=1e-13)
        result = pairs(lambda: run(True), lambda: run(False), rounds=7)
        result["fast_ms_per_step"] = result["fast_ms"] / depth
        result["reference_ms_per_step"] = result["reference_ms"] / depth
        out[f"LiSSA solve {hessian} depth {depth} batch 128 float64: fused step vs native product + lissa_step"] = result
    return out


WORKLOAD = Path(__file__).resolve().parents[1] / "runs" / "peers" / "workload.pt"


def lissa_head_cases(depth: int = 100) -> dict:
    """The native LiSSA solve as it is vs without dropping dead hidden units and without the folded
    head, on the trained model and real training set of ``benchmarks/peers`` (float64, its
    damping and scale, setup included on both sides)."""
    from lipo_if.influence import HessianOperator, SolverConfig, solve
    from lipo_if.influence.native_hvp import NativeHessian
    from peers.bench_pydvl import load_model

    if not WORKLOAD.exists():
        print(f"lissa-head skipped: no {WORKLOAD} (make bench-peers, or bench_pydvl.py --prepare FILE, builds it)")
        return {}
    workload = torch.load(WORKLOAD, weights_only=False)
    model = load_model(workload, torch.float64)
    X, y = workload["X_train"].double(), workload["y_train"].double()
    wd = workload["weight_decay"]
    out = {}
    for hessian in ("gauss-newton", "exact"):
        op = HessianOperator(model, X, y, wd, kind=hessian)
        v = op.gradient(workload["X_val"].double(), workload["y_val"].double())

        def run(new: bool, steps: int = depth):
            native = NativeHessian(HessianOperator(model, X, y, wd, kind=hessian), drop_dead_units=new, fold_head=new)
            cfg = SolverConfig(damping=0.562184432771151, scale=35.83925758916087, depth=steps, tol=0.0, batch_size=128,
                               progress=False, check_definite=False)
            return solve(native, v, "lissa", cfg, check_residual=False)

        torch.testing.assert_close(run(True, 4).s, run(False, 4).s, rtol=1e-10, atol=1e-13)
        result = pairs(lambda: run(True), lambda: run(False), rounds=9)
        result["fast_ms_per_step"] = result["fast_ms"] / depth
        result["reference_ms_per_step"] = result["reference_ms"] / depth
        out[f"LiSSA solve {hessian} depth {depth} batch 128 float64, trained model: dead units dropped + folded head "
            f"vs plain native"] = result
    return out


CASES = {"dense-layer": dense_layer_cases, "scoring": scoring_cases, "lissa": lissa_cases,
         "lissa-fused": lissa_fused_cases, "lissa-head": lissa_head_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--workload", type=Path, default=WORKLOAD, help="workload of benchmarks/peers (lissa-head)")
    args = parser.parse_args()
    globals()["WORKLOAD"] = args.workload
    if not ops.has_ops():
        raise SystemExit("lipo_if._C is not built: nothing to compare (pip install --no-build-isolation -e .)")
    results = {}
    for case in args.cases.split(","):
        for name, res in CASES[case]().items():
            results[name] = res
            print(f"{name}: ext/native {res['fast_ms']:.2f} ms, reference {res['reference_ms']:.2f} ms, "
                  f"median of {res['rounds']} pairs reference/ext = {res['ratio_median_of_pairs']:.2f}× "
                  f"(pairs {res['ratio_min']:.2f}–{res['ratio_max']:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
