"""lipo_if's LiSSA vs pyDVL's ``LissaInfluence`` on the same model, data, v, damping, scale, depth, batch.

Run from pyDVL's own virtual environment (pyDVL pins numpy<2, so it is not a dependency of
lipo_if): ``make bench-peers``. Two modes:

- ``--prepare FILE`` (no pyDVL needed; the project venv): build the workload — a short lipo_if
  training run on the real data (``--data-dir`` / ``$LIPO_IF_DATA``; or load ``--run DIR``), or,
  without data, synthetic fingerprint-like inputs of the same shape — and save it with torch.save.
- default (needs pyDVL): load ``--workload FILE`` (or build it in-process if none is given),
  then check agreement and time both solvers side by side.

What is solved, by both: ``s = (H + μI)⁻¹ v`` with

- ``H = ∇²R(θ̂)``, ``R = (1/n) Σ (f(xᵢ) − yᵢ)² + (λ/2)‖θ‖²`` (the training objective of lipo_if);
  ``v`` = gradient of the mean squared error on the validation split;
- the same LiSSA recursion with the same ``scale`` and ``depth`` (no early stop on either
  side: ``tol = 0`` / ``rtol = 0``), minibatches of the same size drawn without replacement.

Convention mapping (both libraries read; see lipo_if/influence/solvers.py and pyDVL's
``LissaOperator``):

- lipo_if: ``hⱼ = v + (1 − d)·hⱼ₋₁ − H_B hⱼ₋₁ / scale``, ``d = μ / scale``, result ``h/scale``;
  its ``H_B`` includes the L2 term ``λI`` (it is part of the objective).
- pyDVL: ``hⱼ = v + (1 − dampen)·hⱼ₋₁ − (A_B + r·I) hⱼ₋₁ / scale``, result ``h/scale``, where
  ``A_B`` is the Hessian (``SecondOrderMode.HESSIAN``) of ``loss(model(x), y)`` on the batch and
  ``r = regularization``. Its fixed point is ``(A + r·I + dampen·scale·I)⁻¹ v``.
- So: ``loss = mean squared error`` (no L2 term), ``regularization = λ`` (weight decay — the
  L2 part of H, *not* μ), ``dampen = μ / scale`` and ``scale = scale``. Then the two
  recursions are the same formula step by step (verified below on a full batch, where both
  are deterministic).

pyDVL's ``SecondOrderMode.GAUSS_NEWTON`` is the *empirical Fisher* ``(1/|B|) Σ ∇ℓᵢ∇ℓᵢᵀ``
(= ``(4/|B|) Σ rᵢ² ∇fᵢ∇fᵢᵀ`` for squared error), not lipo_if's Gauss–Newton ``(2/|B|) Σ ∇fᵢ∇fᵢᵀ``,
so it is not used; pyDVL is run with the exact Hessian. lipo_if is timed twice: with the exact
Hessian (same system as pyDVL) and with Gauss–Newton (its default, fast path; a different,
PSD curvature — its s differs from the exact-Hessian s by the model-curvature terms).

lipo_if is called only through its public API (``HessianOperator`` + ``solve``), so a faster
HVP or LiSSA inside lipo_if is picked up by rerunning this script.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing lipo_if into this venv
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- workload


def _synthetic_workload(n_train: int, n_val: int, seed: int, train_steps: int) -> dict:
    """Same shape as the real model: 2048 bits (≈3 % set) + 200 dense descriptors → 512 → 128 → 1."""
    from lipo_if.model import ModelConfig, build_model, objective

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _ops_workload import make_data  # noqa: PLC0415

    X, _ = make_data(n_train + n_val, dtype=torch.float32, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    teacher = torch.randn(X.shape[1], generator=gen) / math.sqrt(X.shape[1])
    y = 2.0 + 3.0 * torch.tanh(X @ teacher) + 0.3 * torch.randn(X.shape[0], generator=gen)
    wd = 1e-3
    model = build_model(ModelConfig(in_dim=X.shape[1]), seed=seed, init_bias=float(y[:n_train].mean()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(train_steps):  # a short full-batch fit, so θ̂ is not a random point
        opt.zero_grad()
        objective(model, X[:n_train], y[:n_train], wd).backward()
        opt.step()
    return {"source": f"synthetic (seed {seed}, {train_steps} Adam steps)", "model_config": model.config.to_dict(),
            "state_dict": model.state_dict(), "X_train": X[:n_train], "y_train": y[:n_train],
            "X_val": X[n_train:], "y_val": y[n_train:], "weight_decay": wd}


def _real_workload(args: argparse.Namespace) -> dict | None:
    """A short lipo_if training run on the real data, or a saved run dir; None if no data."""
    from lipo_if.train import TrainConfig, train_run
    from lipo_if.rundir import load_run

    run_dir = Path(args.run) if args.run else None
    if run_dir is not None and (run_dir / "model.pt").exists():
        run, source = load_run(run_dir), f"run dir {run_dir}"
    else:
        from lipo_if.data import load_dataset, resolve_lipophilicity_path

        data_dir = args.data_dir or os.environ.get("LIPO_IF_DATA")
        if not data_dir or not (Path(data_dir) / "lipophilicity.csv").exists():
            return None
        path = resolve_lipophilicity_path(data_dir=data_dir)
        config = TrainConfig(max_epochs=args.max_epochs, min_epochs=min(10, args.max_epochs), seed=0)
        run = train_run(load_dataset(path), str(path), config, progress=False)
        source = f"real data {path}, lipo_if TrainConfig(max_epochs={args.max_epochs}, seed=0)"
        if run_dir is not None:
            run.save(run_dir)
    X_train, y_train = run.tensors("train")
    X_val, y_val = run.tensors("val")
    return {"source": source, "model_config": run.model.config.to_dict(), "state_dict": run.model.state_dict(),
            "X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "weight_decay": float(run.config.weight_decay), "val_rmse": run.metrics.get("val_rmse")}


def build_workload(args: argparse.Namespace) -> dict:
    workload = None if args.synthetic else _real_workload(args)
    if workload is None:
        print("no real data (--data-dir / $LIPO_IF_DATA) — using synthetic inputs of the same shape", flush=True)
        workload = _synthetic_workload(3281, 410, seed=0, train_steps=args.synthetic_steps)
    return workload


def load_model(workload: dict, dtype: torch.dtype) -> torch.nn.Module:
    from lipo_if.model import MLPRegressor, ModelConfig

    cfg = workload["model_config"]
    model = MLPRegressor(ModelConfig(in_dim=int(cfg["in_dim"]), hidden=tuple(cfg["hidden"])))
    model.load_state_dict(workload["state_dict"])
    return model.to(dtype).eval()


# --------------------------------------------------------------------------- the two solvers


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pyDVL's loss: mean squared error of the batch (the L2 term goes in as ``regularization``)."""
    return torch.mean((pred - target) ** 2)


def pydvl_solve(model, X, y, v, *, weight_decay, damping, scale, depth, batch_size, seed) -> torch.Tensor:
    """``(H + μI)⁻¹ v`` by pyDVL's LissaInfluence (exact Hessian), same conventions as lipo_if."""
    from pydvl.influence.torch import LissaInfluence
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)  # pyDVL shuffles with the global generator
    infl = LissaInfluence(model, mse, regularization=weight_decay if weight_decay > 0 else None, maxiter=depth,
                          dampen=damping / scale, scale=scale, rtol=0.0, progress=False,
                          warn_on_max_iteration=False)
    infl.fit(DataLoader(TensorDataset(X, y), batch_size=batch_size))
    (_, block), = infl.block_mapper.items()  # BlockMode.FULL: one block holding every parameter
    return block.op.apply(v)


def lipo_solve(model, X, y, v, *, kind, weight_decay, damping, scale, depth, batch_size, seed, dtype):
    """``(H + μI)⁻¹ v`` through lipo_if's public API (whatever HVP/step backend it picks)."""
    from lipo_if.influence import HessianOperator, SolverConfig, solve

    op = HessianOperator(model, X, y, weight_decay, kind=kind, dtype=dtype)
    # check_definite=False: damping and scale are fixed, and pyDVL runs no definiteness check either
    # (lipo_if's default would add a Lanczos λmin estimate of full-batch products for the exact Hessian).
    cfg = SolverConfig(damping=damping, scale=scale, depth=depth, batch_size=batch_size, tol=0.0, seed=seed,
                       check_definite=False, progress=False)
    return solve(op, v, "lissa", cfg, check_residual=False)


# --------------------------------------------------------------------------- metrics


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Relative error ‖a − b‖/‖b‖ and cosine of two solutions (b = the reference)."""
    a, b = a.double(), b.double()
    return {"rel_err": float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)),
            "cosine": float(a @ b / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))}


def residual(op, s, v, damping) -> float:
    r = op.matvec(s.to(op.dtype)) + damping * s.to(op.dtype) - v.to(op.dtype)
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(v.to(op.dtype)))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", metavar="FILE", help="only build the workload and save it here (no pyDVL)")
    parser.add_argument("--workload", metavar="FILE", help="workload saved by --prepare (else built here)")
    parser.add_argument("--data-dir", help="folder with lipophilicity.csv (default $LIPO_IF_DATA)")
    parser.add_argument("--run", help="lipo_if run dir to load (or to save the short training run to)")
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs of the short training run")
    parser.add_argument("--synthetic", action="store_true", help="ignore real data, use synthetic inputs")
    parser.add_argument("--synthetic-steps", type=int, default=100)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--depth", type=int, default=200, help="LiSSA steps (both; no early stop)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=3, help="alternating timed pairs (median reported)")
    parser.add_argument("--damping", type=float, help="μ (default: max(0.02·λmax, 2·|λmin|) of the exact H)")
    parser.add_argument("--scale", type=float, help="LiSSA scale (default: lipo_if's auto rule for μ)")
    parser.add_argument("--power-iters", type=int, default=20, help="Lanczos steps for the default μ/scale")
    parser.add_argument("--check-rows", type=int, default=256, help="rows of the full-batch mapping check")
    parser.add_argument("--check-depth", type=int, default=30)
    parser.add_argument("--cg-iters", type=int, default=0, help="CG reference iterations (0 = skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.prepare:
        workload = build_workload(args)
        Path(args.prepare).parent.mkdir(parents=True, exist_ok=True)
        torch.save(workload, args.prepare)
        print(f"workload ({workload['source']}) saved to {args.prepare}")
        return

    try:
        import pydvl
        from pydvl.influence.torch import LissaInfluence  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_pydvl.py needs pyDVL, which is not importable here ({exc}). pyDVL pins numpy<2, so it "
                 f"lives in its own virtual environment: run `make bench-peers` (creates .venv-peers), or "
                 f"`.venv-peers/bin/python {Path(__file__).relative_to(ROOT)}`.")

    import lipo_if
    from lipo_if.influence import HessianOperator, SolverConfig, estimate_spectrum, solve
    import numpy

    dtype = getattr(torch, args.dtype)
    workload = torch.load(args.workload, weights_only=False) if args.workload else build_workload(args)
    model = load_model(workload, dtype)
    X, y = workload["X_train"].to(dtype), workload["y_train"].to(dtype)
    Xv, yv = workload["X_val"].to(dtype), workload["y_val"].to(dtype)
    wd = float(workload["weight_decay"])
    op_exact = HessianOperator(model, X, y, wd, kind="exact", dtype=dtype)
    op_gn = HessianOperator(model, X, y, wd, kind="gauss-newton", dtype=dtype)
    v = op_exact.gradient(Xv, yv)
    load = os.getloadavg()
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "pydvl": pydvl.__version__, "lipo_if": lipo_if.__version__, "lipo_if_backend": lipo_if.backend(),
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_start": load}
    print(f"workload: {workload['source']}; {op_exact.n_params} params, n_train={len(y)}, λ={wd}, dtype={args.dtype}")
    print(f"versions: {env}", flush=True)

    # --- damping μ and scale, fixed and shared by every solver below
    t0 = time.perf_counter()
    spec = estimate_spectrum(op_exact, iters=args.power_iters, seed=0) if args.damping is None or args.scale is None \
        else None
    damping = args.damping if args.damping is not None else max(
        0.02 * spec.lambda_max, 2.0 * max(0.0, -spec.lambda_min))
    if args.scale is not None:
        scale, batch_lmax = args.scale, None
    else:  # lipo_if's own auto rule (full-set λmax and a few minibatch λmax) for this μ, via a 1-step solve
        probe = solve(op_gn, v, "lissa", SolverConfig(damping=damping, scale="auto", depth=1, tol=0.0,
                                                      batch_size=args.batch_size, power_iters=args.power_iters,
                                                      progress=False), check_residual=False)
        batch_lmax = probe.info["batch_lambda_max"]
        scale = max(probe.info["scale"], 1.25 * (spec.lambda_max + damping))
    settings = {"damping_mu": damping, "scale": scale, "lipo_if_recursion_damping": damping / scale,
                "pydvl_dampen": damping / scale, "pydvl_regularization": wd, "pydvl_scale": scale,
                "lambda_max_exact": spec.lambda_max if spec else None,
                "lambda_min_exact": spec.lambda_min if spec else None, "batch_lambda_max_gn": batch_lmax,
                "depth": args.depth, "batch_size": args.batch_size, "seconds": time.perf_counter() - t0}
    print(f"settings: {settings}", flush=True)
    common = dict(weight_decay=wd, damping=damping, scale=scale)

    # --- 1. agreement first: full batch (deterministic) on a subset — the two recursions must coincide
    m = min(args.check_rows, len(y))
    Xs, ys = X[:m], y[:m]
    s_py = pydvl_solve(model, Xs, ys, v, **common, depth=args.check_depth, batch_size=m, seed=0)
    s_li = lipo_solve(model, Xs, ys, v, kind="exact", **common, depth=args.check_depth, batch_size=m, seed=0,
                      dtype=dtype).s
    mapping = {"rows": m, "depth": args.check_depth, **compare(s_py, s_li)}
    print(f"mapping check (full batch of {m}, exact H, {args.check_depth} steps): pyDVL vs lipo_if {mapping}",
          flush=True)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    if not mapping["rel_err"] < tol:
        sys.exit(f"the two LiSSA recursions disagree on a deterministic full batch (rel err {mapping['rel_err']:.3g} "
                 f"≥ {tol:g}): the damping/scale/Hessian mapping is wrong — not timing anything")

    # --- 2. timed pairs at the benchmark setting (minibatch), alternating order
    impls = {
        "pydvl_exact": lambda seed: pydvl_solve(model, X, y, v, **common, depth=args.depth,
                                                batch_size=args.batch_size, seed=seed),
        "lipo_exact": lambda seed: lipo_solve(model, X, y, v, kind="exact", **common, depth=args.depth,
                                              batch_size=args.batch_size, seed=seed, dtype=dtype).s,
        "lipo_gn": lambda seed: lipo_solve(model, X, y, v, kind="gauss-newton", **common, depth=args.depth,
                                           batch_size=args.batch_size, seed=seed, dtype=dtype).s,
    }
    times: dict[str, list[float]] = {k: [] for k in impls}
    sols: dict[str, list[torch.Tensor]] = {k: [] for k in impls}
    names = list(impls)
    # warm-up (lazy init, allocator, first-call dispatch), not timed
    for name, fn in (("pydvl_exact", lambda: pydvl_solve(model, X, y, v, **common, depth=3,
                                                          batch_size=args.batch_size, seed=99)),
                     ("lipo_exact", lambda: lipo_solve(model, X, y, v, kind="exact", **common, depth=3,
                                                       batch_size=args.batch_size, seed=99, dtype=dtype)),
                     ("lipo_gn", lambda: lipo_solve(model, X, y, v, kind="gauss-newton", **common, depth=3,
                                                    batch_size=args.batch_size, seed=99, dtype=dtype))):
        sec, _ = _timed(fn)
        print(f"warm-up {name:12s} (3 steps) {sec:6.2f} s", flush=True)
    for pair in range(args.pairs):
        order = names if pair % 2 == 0 else names[::-1]
        for name in order:
            sec, s = _timed(lambda: impls[name](pair))
            times[name].append(sec)
            sols[name].append(s)
            print(f"pair {pair}: {name:12s} {sec:7.2f} s", flush=True)
    load_end = os.getloadavg()

    # --- 3. agreement at the benchmark setting (stochastic: different minibatch sequences)
    def pairwise(a: str, b: str) -> dict:
        rows = [compare(x, z) for i, x in enumerate(sols[a]) for j, z in enumerate(sols[b]) if a != b or i < j]
        return {k: statistics.median(r[k] for r in rows) for k in ("rel_err", "cosine")} if rows else None

    agreement = {"pydvl_exact vs lipo_exact": pairwise("pydvl_exact", "lipo_exact"),
                 "lipo_exact vs lipo_exact (other seeds)": pairwise("lipo_exact", "lipo_exact"),
                 "pydvl_exact vs pydvl_exact (other seeds)": pairwise("pydvl_exact", "pydvl_exact"),
                 "lipo_gn vs pydvl_exact (different H)": pairwise("lipo_gn", "pydvl_exact")}
    # full-set products are costly (≈ n/batch minibatch HVPs each): residual of the first pair's solutions
    residuals = {name: residual(op_exact, ss[0], v, damping) for name, ss in sols.items()}
    residuals["lipo_gn (its own H = Gauss–Newton)"] = residual(op_gn, sols["lipo_gn"][0], v, damping)
    reference = {}
    if args.cg_iters > 0:  # deterministic reference of the exact-Hessian system
        for kind, op in (("exact", op_exact), ("gauss-newton", op_gn)):
            try:
                cg = solve(op, v, "cg", SolverConfig(damping=damping, tol=1e-8, max_iter=args.cg_iters,
                                                     progress=False), check_residual=False)
            except Exception as exc:  # noqa: BLE001 — e.g. negative curvature: report, don't stop
                reference[kind] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            key = "lipo_gn" if kind == "gauss-newton" else None
            reference[kind] = {"cg_iterations": cg.iterations, "cg_converged": cg.converged,
                               **({n: statistics.median(compare(s, cg.s)["rel_err"] for s in sols[n])
                                   for n in ([key] if key else ["pydvl_exact", "lipo_exact"])})}
    print(f"agreement (median over pairs): {json.dumps(agreement, indent=1)}")
    print(f"relative residual ‖(H+μI)s − v‖/‖v‖, exact H unless noted: {residuals}")
    print(f"vs CG reference (rel err): {reference}", flush=True)

    med = {k: statistics.median(t) for k, t in times.items()}
    ratios = {"pydvl_exact / lipo_exact": med["pydvl_exact"] / med["lipo_exact"],
              "pydvl_exact / lipo_gn": med["pydvl_exact"] / med["lipo_gn"]}
    pair_ratios = {"pydvl_exact / lipo_exact": [a / b for a, b in zip(times["pydvl_exact"], times["lipo_exact"])],
                   "pydvl_exact / lipo_gn": [a / b for a, b in zip(times["pydvl_exact"], times["lipo_gn"])]}
    print("\n| solver | Hessian | median s | ms / step | s per pair |")
    print("|---|---|---|---|---|")
    for name, hess in (("pydvl_exact", "exact"), ("lipo_exact", "exact"), ("lipo_gn", "Gauss–Newton")):
        print(f"| {name} | {hess} | {med[name]:.2f} | {1e3 * med[name] / args.depth:.1f} | "
              f"{', '.join(f'{t:.2f}' for t in times[name])} |")
    print(f"ratios of medians: {ratios}; per pair: {pair_ratios}")
    print(f"load average start {load}, end {load_end}")

    result = {"date": _dt.date.today().isoformat(), "command": " ".join(sys.argv), "workload": workload["source"],
              "n_params": op_exact.n_params, "n_train": len(y), "weight_decay": wd, "dtype": args.dtype,
              "env": {**env, "loadavg_end": load_end}, "settings": settings, "mapping_check": mapping,
              "times_s": times, "median_s": med, "ratios": ratios, "pair_ratios": pair_ratios,
              "agreement": agreement, "relative_residual_first_pair": residuals, "cg_reference": reference}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
