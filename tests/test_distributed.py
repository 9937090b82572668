"""torch.distributed (lipo_if.distributed, lipo_if.influence.data_parallel): 2 ranks with gloo on
this machine.

- the data-parallel curvature products equal the single process's (every element, float64), for
  the native and the autograd operator, on minibatches, on the full set and on a batch with fewer
  rows than ranks; LiSSA and CG solved on 2 ranks equal the single-process solve;
- ``torchrun … lipo-if influence`` on 2 ranks writes the file one process writes (same rows, same
  order, same exclusions, scores equal to float tolerance).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from lipo_if.distributed import World, current
from lipo_if.influence import HessianOperator, SolverConfig, solve
from lipo_if.influence.data_parallel import DataParallelCurvature, data_parallel, shard
from lipo_if.influence.native_hvp import NativeHessian
from lipo_if.influence.outputs import output_paths

from lipo_if.data import load_dataset
from lipo_if.ensemble import train_ensemble
from lipo_if.train import TrainConfig

from test_experiment import FEATURES, TINY, tiny_data, tiny_run  # noqa: F401 — fixtures
from test_native_hvp import WD, make_problem
from test_stream import pool_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_a_single_process_is_left_alone():
    model, X, y = make_problem(dtype=torch.float64)
    op = HessianOperator(model, X, y, WD, kind="gauss-newton", dtype=torch.float64)
    assert current() == World() and not current().active
    assert data_parallel(op) is op
    idx = torch.arange(10)
    assert shard(idx, World(1, 3)).tolist() == [1, 4, 7]


#: gloo on the loopback interface: the test must not depend on how this host's name resolves.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo"}


def _products_on_ranks(rank: int, size: int, init_file: str, out_dir: str) -> None:
    os.environ.update(LOOPBACK)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    torch.set_num_threads(1)
    results = {}
    try:
        for kind in ("gauss-newton", "exact"):
            model, X, y = make_problem(n=61, hidden=(17, 9), dtype=torch.float64, seed=3)
            ref = HessianOperator(model, X, y, WD, kind=kind, chunk_size=19, dtype=torch.float64)
            for name, op in (("autograd", ref), ("native", NativeHessian(ref))):
                dp = data_parallel(op)
                assert isinstance(dp, DataParallelCurvature)
                gen = torch.Generator().manual_seed(7)
                v = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
                u = op.to_solver_layout(v)
                idx = op.sample_indices(23, gen)
                results[f"{kind}/{name}/minibatch"] = dp.solver_product(u, idx)
                results[f"{kind}/{name}/full"] = dp.solver_product(u, None)
                results[f"{kind}/{name}/one_row"] = dp.solver_product(u, torch.tensor([5]))
                results[f"{kind}/{name}/matvec"] = dp.matvec(v)
                results[f"{kind}/{name}/out"] = dp.solver_product(u, idx, out=torch.empty_like(u))
        model, X, y = make_problem(n=61, hidden=(17, 9), dtype=torch.float64, seed=3)
        ref = HessianOperator(model, X, y, WD, kind="gauss-newton", dtype=torch.float64)
        v = torch.randn(ref.n_params, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        for method, config in (("lissa", SolverConfig(damping=0.05, batch_size=16, depth=400, tol=0.0, seed=2, progress=False)),
                               ("cg", SolverConfig(damping=0.05, progress=False))):
            results[f"solve/{method}"] = solve(ref, v, method, config).s
        torch.save(results, Path(out_dir) / f"rank_{rank}.pt")
    finally:
        torch.distributed.barrier()  # no rank tears the group down while another still talks to it
        torch.distributed.destroy_process_group()


def test_data_parallel_products_and_solves_equal_the_single_process(tmp_path):
    context = mp.start_processes(_products_on_ranks, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + 300  # a hung collective fails the test instead of stalling the suite
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-rank products did not finish within 300 s")
    ranks = [torch.load(tmp_path / f"rank_{r}.pt") for r in range(2)]
    for kind in ("gauss-newton", "exact"):
        model, X, y = make_problem(n=61, hidden=(17, 9), dtype=torch.float64, seed=3)
        ref = HessianOperator(model, X, y, WD, kind=kind, chunk_size=19, dtype=torch.float64)
        for name, op in (("autograd", ref), ("native", NativeHessian(ref))):
            gen = torch.Generator().manual_seed(7)
            v = torch.randn(op.n_params, generator=gen, dtype=torch.float64)
            u = op.to_solver_layout(v)
            idx = op.sample_indices(23, gen)
            expected = {"minibatch": op.solver_product(u, idx), "full": op.solver_product(u, None),
                        "one_row": op.solver_product(u, torch.tensor([5])), "matvec": op.matvec(v), "out": op.solver_product(u, idx)}
            for what, value in expected.items():
                for r in range(2):
                    torch.testing.assert_close(ranks[r][f"{kind}/{name}/{what}"], value, rtol=1e-12, atol=1e-13,
                                               msg=lambda m: f"{kind}/{name}/{what} on rank {r}: {m}")
    model, X, y = make_problem(n=61, hidden=(17, 9), dtype=torch.float64, seed=3)
    ref = HessianOperator(model, X, y, WD, kind="gauss-newton", dtype=torch.float64)
    v = torch.randn(ref.n_params, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    for method, config in (("lissa", SolverConfig(damping=0.05, batch_size=16, depth=400, tol=0.0, seed=2, progress=False)),
                           ("cg", SolverConfig(damping=0.05, progress=False))):
        alone = solve(ref, v, method, config).s
        assert torch.equal(ranks[0][f"solve/{method}"], ranks[1][f"solve/{method}"])  # broadcast: bit for bit
        # the same recursion; only the order of the sums differs (LiSSA's 400 steps carry it along)
        relative = float(torch.linalg.vector_norm(ranks[0][f"solve/{method}"] - alone) / torch.linalg.vector_norm(alone))
        assert relative < 1e-9, f"{method}: {relative:.2e}"


def _torchrun() -> list[str]:
    entry = shutil.which("lipo-if")
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return head + (["--", entry] if entry else ["-m", "--", "lipo_if.cli"])  # "--": torchrun would take --run for --run-path


def _influence_args(run_dir: Path, source: Path, out: Path, prefilter: int) -> list[str]:
    return ["-q", "influence", "--run", str(run_dir), "--external", str(source), "--out", str(out), "--solver", "lissa",
            "--damping", "0.1", "--chunk-rows", "9", "--workers", "1", "--prefilter", str(prefilter)]


def _compare(two: pd.DataFrame, one: pd.DataFrame) -> None:
    assert two.columns.tolist() == one.columns.tolist()
    pd.testing.assert_frame_equal(two.drop(columns="score"), one.drop(columns="score"))
    scores = [pd.to_numeric(t["score"], errors="coerce") for t in (two, one)]  # "" (excluded) → NaN
    assert scores[1].notna().sum() >= 5
    pd.testing.assert_series_equal(scores[0], scores[1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("prefilter", [0, 2])
def test_torchrun_on_two_ranks_writes_the_single_process_file(tiny_run, tmp_path, prefilter):  # noqa: F811
    """Also with the prefilter, whose first pass each rank runs on its chunks before the ranks merge."""
    tiny_run.save(tmp_path / "run")
    source = pool_file(tmp_path / "pool.csv")  # 196 rows, 22 chunks, repeats across chunks
    env = {**os.environ, "OMP_NUM_THREADS": "1", **LOOPBACK}
    single = tmp_path / "single.csv"
    subprocess.run([sys.executable, "-m", "lipo_if.cli", *_influence_args(tmp_path / "run", source, single, prefilter)], check=True, env=env, timeout=600)
    two = tmp_path / "two.csv"
    done = subprocess.run([*_torchrun(), *_influence_args(tmp_path / "run", source, two, prefilter)], env=env, timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one_table, two_table = (pd.read_csv(p, keep_default_na=False, dtype=str) for p in (single, two))
    _compare(two_table, one_table)
    if not prefilter:
        assert two_table.loc[17, "excluded"] == "duplicate row of row 3"  # across chunks owned by different ranks
    else:
        assert two_table["excluded"].str.startswith("prefilter:").sum() > 100
    assert not (tmp_path / "two.csv.parts").exists()
    summary = json.loads(output_paths(two)["summary"].read_text())
    assert summary["stream"]["ranks"] == 2 and summary["solver"]["info"]["hvp"].endswith("data-parallel over 2 ranks")
    assert summary["counts"] == json.loads(output_paths(single)["summary"].read_text())["counts"]


def test_torchrun_puts_ensemble_members_on_ranks(tiny_data, tmp_path):  # noqa: F811
    """An ensemble of 3 on 2 ranks: member i solved by rank i mod 2 alone (no data-parallel
    products), every member's s broadcast; the file equals the single process's."""
    lipo, _ = tiny_data
    train_ensemble(load_dataset(lipo), str(lipo), TrainConfig(seed=0, **TINY), 3, FEATURES, progress=False).save(tmp_path / "ensemble")
    source = pool_file(tmp_path / "pool.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **LOOPBACK}
    single, two = tmp_path / "single.csv", tmp_path / "two.csv"
    subprocess.run([sys.executable, "-m", "lipo_if.cli", *_influence_args(tmp_path / "ensemble", source, single, 0)],
                   check=True, env=env, timeout=600)
    done = subprocess.run([*_torchrun(), *_influence_args(tmp_path / "ensemble", source, two, 0)], env=env, timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one_table, two_table = (pd.read_csv(p, keep_default_na=False, dtype=str) for p in (single, two))
    _compare(two_table, one_table)
    for column in ("score_se", "score_ucb"):  # the members' spread is the single process's too
        pd.testing.assert_series_equal(*(pd.to_numeric(t[column], errors="coerce") for t in (two_table, one_table)), rtol=1e-6, atol=1e-12)
    summary = json.loads(output_paths(two)["summary"].read_text())
    assert summary["placement"] == "members on 2 ranks"
    assert [m["solved_on_rank"] for m in summary["members"]] == [0, 1, 0]
    assert all("data-parallel" not in m["solver"]["info"]["hvp"] for m in summary["members"])
