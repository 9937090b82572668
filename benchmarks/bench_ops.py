"""Benchmarks of the lipo_if._C kernels against pure-PyTorch formulations (pytest-benchmark).

Run: ``python -m pytest benchmarks -q --benchmark-only`` (or ``make bench``). Every benchmark
first checks that the timed implementation agrees with the reference on the same inputs.
Groups put the implementations side by side; compare medians within a group.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lipo_if import ops, ops_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ops_workload import make_data, make_model, make_vec, scoring_impls  # noqa: E402

pytestmark = pytest.mark.skipif(not ops.has_ops(), reason="lipo_if._C is not built")
SCORING_N = [4000] + ([] if os.environ.get("LIPO_IF_BENCH_SMALL") == "1" else [50_000])
_CACHE: dict = {}


def _scoring_setup(n: int):
    if n not in _CACHE:
        layers = make_model()
        _CACHE[n] = (layers, make_vec(layers), *make_data(n))
    return _CACHE[n]


@pytest.mark.parametrize("n", SCORING_N)
@pytest.mark.parametrize("impl", ["ext", "dense", "vmap"])
def test_scoring(benchmark, impl, n):
    """s · ∇θ ℓ(zᵢ) for all n molecules, float64, real model shape (whole forward + backward)."""
    if impl == "vmap" and n > 4000:
        pytest.skip("vmap(grad) reference only at n = 4000 (minutes per round beyond)")
    benchmark.group = f"scoring n={n} float64"
    layers, vec, X, y = _scoring_setup(n)
    fn = scoring_impls()[impl]
    expected = ops_reference.mlp_grad_dot_vmap(layers, vec, X[:256], y[:256])
    torch.testing.assert_close(fn(layers, vec, X[:256], y[:256]), expected, rtol=1e-9, atol=1e-9)
    rounds = 3 if (impl == "vmap" or n > 4000) else 7
    result = benchmark.pedantic(fn, args=(layers, vec, X, y), rounds=rounds, iterations=1, warmup_rounds=1)
    assert result.shape == (n,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["ext", "dense"])
@pytest.mark.parametrize("layer", ["first-sparse", "hidden-dense"])
def test_linear_grad_dot_layer(benchmark, impl, dtype, layer):
    """One layer, n = 4000, k = 1: first layer (2248 → 512, ≈11 % non-zero act) or a dense one
    (512 → 128, act = ReLU output ≈50 % non-zero: the kernel must not lose on dense input)."""
    benchmark.group = f"linear_grad_dot {layer} {dtype}".replace("torch.", "")
    gen = torch.Generator().manual_seed(0)
    if layer == "first-sparse":
        act = make_data(4000, dtype)[0]
    else:
        act = torch.relu(torch.randn(4000, 512, generator=gen, dtype=torch.float64)).to(dtype)
    out = 512 if layer == "first-sparse" else 128
    g = torch.randn(4000, out, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(1, out, act.shape[1], generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(1, out, generator=gen, dtype=torch.float64).to(dtype)
    fn = ops.linear_grad_dot if impl == "ext" else ops_reference.linear_grad_dot
    expected = ops_reference.linear_grad_dot(act.double(), g.double(), w.double(), b.double())
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(fn(act, g, w, b).double(), expected, rtol=tol, atol=tol * 100)
    benchmark.pedantic(fn, args=(act, g, w, b), rounds=9, iterations=1, warmup_rounds=1)


_SEGMENT_CACHE: dict = {}


def _segment_workload(dtype: torch.dtype):
    """A message-passing layer on a batch of 256 molecules with 30–70 directed bonds each (n ≈ 12,600
    rows, segment_csr pointer indptr [257]), in = out = 300 (hidden size), k = 1 vector with bias;
    act = ReLU hidden states, out_grad gaussian."""
    if dtype not in _SEGMENT_CACHE:
        gen = torch.Generator().manual_seed(0)
        lengths = torch.randint(30, 71, (256,), generator=gen)
        indptr = torch.zeros(257, dtype=torch.int64)
        indptr[1:] = torch.cumsum(lengths, 0)
        n = int(indptr[-1])
        act = torch.relu(torch.randn(n, 300, generator=gen, dtype=torch.float64))
        g = torch.randn(n, 300, generator=gen, dtype=torch.float64)
        w = 1e-2 * torch.randn(1, 300, 300, generator=gen, dtype=torch.float64)
        b = 1e-2 * torch.randn(1, 300, generator=gen, dtype=torch.float64)
        _SEGMENT_CACHE[dtype] = (*(t.to(dtype) for t in (act, g, w, b)), indptr)
    return _SEGMENT_CACHE[dtype]


def _segment_grad_dot_materialized(act, out_grad, vec_weight, vec_bias, indptr):
    """The naive way: every molecule's summed gradient G_s = out_grad[rows]ᵀ act[rows] formed
    ([S, out, in], one batched GEMM over the molecules' rows zero-padded to the longest) with
    Σ out_grad[rows], then dotted with the k vectors."""
    n_segments, n = indptr.shape[0] - 1, act.shape[0]
    lengths = indptr[1:] - indptr[:-1]
    segment = torch.repeat_interleave(torch.arange(n_segments), lengths, output_size=n)
    position = torch.arange(n) - indptr[segment]
    longest = int(lengths.max())
    a_pad = act.new_zeros((n_segments, longest, act.shape[1]))
    g_pad = out_grad.new_zeros((n_segments, longest, out_grad.shape[1]))
    a_pad[segment, position] = act
    g_pad[segment, position] = out_grad
    G = torch.bmm(g_pad.transpose(1, 2), a_pad)  # [S, out, in]
    return G.flatten(1) @ vec_weight.flatten(1).T + g_pad.sum(1) @ vec_bias.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["ext", "pytorch", "materialize"])
def test_linear_grad_dot_segment(benchmark, impl, dtype):
    """Per-molecule dots of a message-passing layer's gradient (summed over its bonds) with k = 1
    vector: the compiled op (ops.linear_grad_dot_segment) vs its pure-PyTorch twin (one GEMM, a row
    einsum, index_add_) vs materializing the per-molecule gradients ([256, 300, 300] by one padded
    bmm). Checked against the float64 twin first."""
    benchmark.group = f"linear_grad_dot.segment 256 mol x 30-70 bonds, 300->300, k=1, {dtype}".replace("torch.", "")
    act, g, w, b, indptr = _segment_workload(dtype)
    fn = {"ext": ops.linear_grad_dot_segment, "pytorch": ops_reference.linear_grad_dot_segment,
          "materialize": _segment_grad_dot_materialized}[impl]
    expected = ops_reference.linear_grad_dot_segment(*(t.double() for t in (act, g, w, b)), indptr)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(fn(act, g, w, b, indptr).double(), expected, rtol=tol, atol=tol)
    rounds = 7 if impl == "materialize" else 15
    result = benchmark.pedantic(fn, args=(act, g, w, b, indptr), rounds=rounds, iterations=1, warmup_rounds=2)
    assert result.shape == (256, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["ext", "pytorch"])
def test_lissa_step(benchmark, impl, dtype):
    """One LiSSA update on 1,225,985-element vectors (the model's parameter count)."""
    numel = 1_225_985
    benchmark.group = f"lissa_step {dtype}".replace("torch.", "")
    h, v, hvp = torch.randn(3, numel, dtype=dtype).unbind(0)
    fn = ops.lissa_step if impl == "ext" else ops_reference.lissa_step
    got, want = fn(h, v, hvp, 0.01, 40.0), ops_reference.lissa_step(h, v, hvp, 0.01, 40.0)
    torch.testing.assert_close(got[0], want[0])
    # The norm is checked against float64 arithmetic on the same h_new: torch's float32 norm is
    # itself ~1e-5 off at this size, the kernel (double partial sums) ~1e-7.
    exact = torch.linalg.vector_norm(got[0].double() - h.double()).to(dtype)
    torch.testing.assert_close(got[1], exact, rtol=1e-6 if dtype == torch.float64 else 1e-4, atol=0)
    benchmark.pedantic(fn, args=(h, v, hvp, 0.01, 40.0), rounds=50, iterations=1, warmup_rounds=3)
    # Effective bandwidth: read h, v, hvp and write h_new once each.
    bytes_moved = 4 * numel * h.element_size()
    benchmark.extra_info["GB/s (median)"] = round(bytes_moved / benchmark.stats.stats.median / 1e9, 2)


@pytest.mark.parametrize("impl", ["ext", "dense", "vmap"])
def test_scoring_peak_memory(benchmark, impl):
    """Peak-RSS growth of one scoring pass over n = 4000 (separate process per implementation)."""
    benchmark.group = "scoring peak RSS growth n=4000 (see extra_info)"
    script = Path(__file__).resolve().parent / "_ops_workload.py"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def probe() -> float:
        proc = subprocess.run([sys.executable, str(script), impl, "4000"], capture_output=True, text=True,
                              env=env, check=True)
        return float(proc.stdout.strip().splitlines()[-1])

    mib = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info["peak RSS growth MiB"] = mib
    print(f"\npeak RSS growth {impl}: {mib:.1f} MiB")


_SOLVE_CACHE: dict = {}
LISSA_DEPTH = 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("impl", ["ext-fused", "ext-product-then-step", "pytorch"])
def test_first_block_lissa_update(benchmark, impl, dtype):
    """The LiSSA update of the first weight block [2248, 512] on a minibatch of 128 fingerprint-like
    rows, given the layer's output gradient q: fused (ops.lissa_step_update_csr on the training rows
    compressed once, dense columns' rows by one GEMM inside the op — beside the other rows' update
    on a 2-thread pool; the block of H·h never formed; both norms)
    vs the previous native path (ops.linear_weight_grad_strided into a buffer, ops.lissa_step, the
    norm of h_new) vs the pure-PyTorch twin (dense GEMM). Checked against float64 first."""
    from lipo_if.influence.native_hvp import _split_input

    benchmark.group = f"first-block LiSSA update {dtype}".replace("torch.", "")
    X, _ = make_data(3000, dtype=dtype)
    split = _split_input(X)
    gen = torch.Generator().manual_seed(3)
    rows = torch.randperm(3000, generator=gen)[:128]
    q = 1e-2 * torch.randn(128, 512, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(X.shape[1], 512, generator=gen, dtype=torch.float64).to(dtype)
    h0 = v.clone()
    damping, scale = 0.01, 40.0
    hvp_block = torch.empty_like(v)

    def fused(h):
        return ops.lissa_step_update_csr(h, v, split.csr, rows, q, damping, scale, split.dense_cols,
                                         dense_x=split.x_dense.index_select(0, rows))

    def product_then_step(h):
        ops.linear_weight_grad_strided(X.index_select(0, rows), q, out=hvp_block)
        h_new, step = ops.lissa_step(h, v, hvp_block, damping, scale)
        h.copy_(h_new)  # the solver rebinds h instead; the copy keeps the benchmark's state the same
        return step, torch.linalg.vector_norm(h_new)

    csr_all = ops.csr_from_dense(X)  # the reference reads every column from the CSR

    def reference(h):
        return ops_reference.lissa_step_update_csr(h, v, csr_all, rows, q, damping, scale)

    fn = {"ext-fused": fused, "ext-product-then-step": product_then_step, "pytorch": reference}[impl]
    h, want = h0.clone(), h0.double().clone()
    fn(h)
    want = v.double() + (1 - damping) * want - (X.index_select(0, rows).double().t() @ q.double()) / scale
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(h.double(), want, rtol=tol, atol=tol)
    benchmark.pedantic(fn, args=(h,), rounds=50, iterations=1, warmup_rounds=3)


def _solve_setup(hessian: str):
    """Real model shape (2248 → 512 → 128 → 1, random init), n_train = 3,000 fingerprint-like rows,
    v = held-out gradient of 500 other rows; float64 HessianOperator (``hessian``, λ = 1e-4)."""
    if hessian not in _SOLVE_CACHE:
        from lipo_if.influence import HessianOperator
        from lipo_if.model import ModelConfig, build_model

        model = build_model(ModelConfig(in_dim=2248, hidden=(512, 128)), seed=0)
        X, y = make_data(3500)
        op = HessianOperator(model, X[:3000], y[:3000], 1e-4, kind=hessian)
        _SOLVE_CACHE[hessian] = (op, op.gradient(X[3000:], y[3000:]))
    return _SOLVE_CACHE[hessian]


@pytest.mark.parametrize("hvp", ["native", "autograd"])
@pytest.mark.parametrize("hessian", ["gauss-newton", "exact"])
def test_lissa_solve(benchmark, hessian, hvp):
    """LiSSA solve, batch 128, fixed depth LISSA_DEPTH with tol = 0 (both run exactly the same steps
    on the same seeded minibatches), float64: native explicit-matmul HVP (sparse first layer,
    activations cached once per solve — that setup is inside the timed call) vs the autograd
    reference loop (jvp + vjp for Gauss–Newton, double backward for the exact Hessian).
    Correctness is checked first (4 steps, both backends, every element)."""
    from lipo_if.influence import SolverConfig, solve
    from lipo_if.influence.native_hvp import NativeHessian

    benchmark.group = f"LiSSA solve depth {LISSA_DEPTH}, batch 128, float64, 2248-512-128-1, {hessian}"
    op, v = _solve_setup(hessian)

    # The exact Hessian at this random init has λmin ≈ −8.3 (Lanczos): damping 10. Its Lanczos
    # definiteness check (≈ 60 full-set products, longer than the recursion) is switched off here so
    # that both sides time the recursion only, as pyDVL does.
    damping = 0.01 if hessian == "gauss-newton" else 10.0

    def config(depth: int, which: str) -> SolverConfig:
        return SolverConfig(damping=damping, scale=500.0, depth=depth, tol=0.0, batch_size=128, progress=False,
                            hvp=which, check_definite=False)

    fast = solve(op, v, "lissa", config(4, hvp), check_residual=False)
    ref = solve(op, v, "lissa", config(4, "autograd"), check_residual=False)
    assert fast.info["hvp"] == hvp and fast.info["hessian"] == hessian
    torch.testing.assert_close(fast.s, ref.s, rtol=1e-9, atol=1e-12)
    result = benchmark.pedantic(lambda: solve(op, v, "lissa", config(LISSA_DEPTH, hvp), check_residual=False),
                                rounds=3, iterations=1, warmup_rounds=0)
    assert result.iterations == LISSA_DEPTH
    benchmark.extra_info["ms per step (median, setup included)"] = round(benchmark.stats.stats.median / LISSA_DEPTH * 1e3, 2)
    if hvp == "native":
        start = time.perf_counter()
        NativeHessian(op)
        benchmark.extra_info["native setup ms (one run)"] = round((time.perf_counter() - start) * 1e3, 1)
