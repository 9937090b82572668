"""Tests of the fused kernels (lipo_if.ops / lipo_if._C) against float64 references.

Every op is compared, on fresh random inputs with odd shapes and every output element, with an
independent float64 formula (not with its pure-PyTorch twin), so the tests mean the same with and
without the extension: without it, lipo_if.ops runs the twins and they are what is checked.
Extension-specific tests (the C++ input checks and their messages, opcheck, determinism) skip with
a reason when ``lipo_if._C`` is not built; CUDA tests skip without a CUDA device and a CUDA build
of the extension. The CSR ops are in test_csr_ops.py.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DEVICES, HAS_EXT, needs_cuda, needs_ext

from lipo_if import ops, ops_reference

REPO = Path(__file__).resolve().parents[1]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-11, atol=1e-11)}


def exact_grad_dot(act, out_grad, vec_weight, vec_bias):
    """float64, loop-free but independent of both implementations: materialized per-sample grads."""
    a, g, w = act.double().cpu(), out_grad.double().cpu(), vec_weight.double().cpu()
    per_sample_w = g[:, :, None] * a[:, None, :]                       # [n, out, in]
    result = torch.einsum("noi,koi->nk", per_sample_w, w)
    if vec_bias is not None:
        result = result + torch.einsum("no,ko->nk", g, vec_bias.double().cpu())
    return result


def make_inputs(n, in_dim, out, k, dtype, device="cpu", density=1.0, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    act = torch.randn(n, in_dim, generator=gen, dtype=torch.float64)
    if density < 1.0:
        act = act * (torch.rand(n, in_dim, generator=gen, dtype=torch.float64) < density)
    tensors = [act, torch.randn(n, out, generator=gen, dtype=torch.float64),
               torch.randn(k, out, in_dim, generator=gen, dtype=torch.float64),
               torch.randn(k, out, generator=gen, dtype=torch.float64) if bias else None]
    return [None if t is None else t.to(dtype=dtype, device=device) for t in tensors]


def assert_matches(result, expected, dtype, scale=1.0):
    assert result.dtype == dtype
    assert not torch.isnan(result).any(), "some output elements were never written"
    tol = TOL[dtype]
    torch.testing.assert_close(result.double().cpu(), expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


# --------------------------------------------------------------------------- linear_grad_dot
SHAPES = list(itertools.product([0, 1, 7, 131], [1, 13, 257], [1, 5, 33], [1, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [1.0, 0.03])
def test_linear_grad_dot_odd_shapes(dtype, density):
    """Every (n, in, out, k) combination, bias given and None, sparse and dense act."""
    for idx, (n, in_dim, out, k) in enumerate(SHAPES):
        for bias in (True, False):
            act, g, w, b = make_inputs(n, in_dim, out, k, dtype, density=density, bias=bias, seed=idx)
            result = ops.linear_grad_dot(act, g, w, b)
            assert result.shape == (n, k)
            # Errors grow like sqrt(in·out) for float32; scale atol by the magnitude of the sum.
            assert_matches(result, exact_grad_dot(act, g, w, b), dtype, scale=(in_dim * out) ** 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_grad_dot_both_paths_large(device, dtype):
    """Real-ish layer (in=600, out=64): sparse (≈3 % non-zero, fingerprint-like 0/1) and dense act,
    n not a multiple of any tile/block size; the sparse and dense algorithms both run on CPU."""
    for density in (0.03, 0.5, 1.0):
        act, g, w, b = make_inputs(517, 600, 64, 2, dtype, device, density=density, seed=3)
        if density == 0.03:
            act = (act != 0).to(dtype)  # binary fingerprint bits
        assert_matches(ops.linear_grad_dot(act, g, w, b), exact_grad_dot(act, g, w, b), dtype, scale=200.0)


def test_linear_grad_dot_rows_of_zeros_and_sentinel_memory():
    """All-zero rows (nnz = 0) give exactly the bias term; repeated calls reuse freed (garbage)
    memory, so an unwritten element would show up as a mismatch or NaN."""
    act, g, w, b = make_inputs(64, 40, 9, 3, torch.float64, density=0.05, seed=7)
    act[::2] = 0.0
    for _ in range(3):
        garbage = torch.full((64 * 3 + 17,), float("nan"), dtype=torch.float64)  # freed right away
        del garbage
        result = ops.linear_grad_dot(act, g, w, b)
        assert_matches(result, exact_grad_dot(act, g, w, b), torch.float64)
    torch.testing.assert_close(result[::2], g[::2] @ b.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("density", [1.0, 0.03])
def test_linear_grad_dot_non_contiguous(density):
    """Transposed / strided views are accepted and give the same result as contiguous copies."""
    act, g, w, b = make_inputs(37, 29, 11, 3, torch.float64, density=density, seed=11)
    act_t = act.T.contiguous().T                      # column-major [n, in]
    g_s = torch.stack([g, g], -1).flatten(1)[:, ::2]  # stride 2 along out
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)
    b_s = torch.stack([b, b], 1).flatten(0, 1)[::2]  # row stride 2·out
    assert not (act_t.is_contiguous() or g_s.is_contiguous() or w_t.is_contiguous() or b_s.is_contiguous())
    assert_matches(ops.linear_grad_dot(act_t, g_s, w_t, b_s), exact_grad_dot(act, g, w, b), torch.float64)


def test_first_layer_with_vectors_gives_forward_and_projections():
    """linear_strided on first_layer_with_vectors' [in, (k+1)·out] block: the layer's forward in the
    first out columns, x V_jᵀ + c_j in the next k blocks — against broadcast float64 sums."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(23, 41, generator=gen, dtype=torch.float64) * (torch.rand(23, 41, generator=gen) < 0.1)
    w, b = torch.randn(7, 41, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)
    vw, vb = torch.randn(3, 7, 41, generator=gen, dtype=torch.float64), torch.randn(3, 7, generator=gen, dtype=torch.float64)
    weight_t, bias = ops.first_layer_with_vectors(w, b, vw, vb)
    assert weight_t.shape == (41, 28) and weight_t.is_contiguous() and bias.shape == (28,)
    both = ops.linear_strided(x, weight_t, bias)
    assert_matches(both[:, :7], exact_linear(x, w.T, b), torch.float64)
    for j in range(3):
        assert_matches(both[:, 7 * (j + 1):7 * (j + 2)], exact_linear(x, vw[j].T, vb[j]), torch.float64)


def test_benchmark_mlp_grad_dot_matches_vmap_per_sample_gradients():
    """The benchmarks' scoring workload (benchmarks/_ops_workload.mlp_grad_dot: one forward + manual
    backward, linear_grad_dot per layer, the first layer by linear_strided) gives s·∇θ(f(x)−y)²
    exactly like materialized vmap(grad) per-sample gradients — on a fingerprint-like sparse input."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _ops_workload import mlp_grad_dot

    torch.manual_seed(0)
    layers = [torch.nn.Linear(300, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 1)]
    layers = [layer.double() for layer in layers]
    X = torch.cat([(torch.rand(45, 280) < 0.03).double(), torch.randn(45, 20, dtype=torch.float64)], 1)
    y = torch.randn(45, dtype=torch.float64)
    vec = [torch.randn_like(p) for layer in layers for p in (layer.weight, layer.bias)]
    expected = ops_reference.mlp_grad_dot_vmap(layers, vec, X, y, chunk_size=16)
    torch.testing.assert_close(mlp_grad_dot(layers, vec, X, y), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        mlp_grad_dot(layers, vec, X, y, kernel=ops_reference.linear_grad_dot), expected, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- lissa_step
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [0, 1, 15, 16, 17, 16384 + 3, 100_003])
def test_lissa_step_formula(device, dtype, numel):
    gen = torch.Generator().manual_seed(numel)
    h, v, hvp = (torch.randn(numel, generator=gen, dtype=torch.float64) for _ in range(3))
    damping, scale = 0.013, 37.5
    h_new, step = ops.lissa_step(*(t.to(dtype=dtype, device=device) for t in (h, v, hvp)), damping, scale)
    expected = v + (1 - damping) * h - hvp / scale
    assert h_new.shape == h.shape and h_new.dtype == dtype and step.shape == () and step.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(h_new.double().cpu(), expected, **tol)
    torch.testing.assert_close(step.double().cpu(), torch.linalg.vector_norm(expected - h), **tol)
    if numel == 0:
        assert step.item() == 0.0


def test_lissa_step_non_contiguous_and_2d():
    base = torch.randn(3, 50, 40, dtype=torch.float64)
    h, v, hvp = base[0].T, base[1].T, base[2].T  # [40, 50], non-contiguous
    h_new, step = ops.lissa_step(h, v, hvp, 0.1, 2.0)
    expected = v + 0.9 * h - hvp / 2.0
    assert h_new.shape == (40, 50)
    torch.testing.assert_close(h_new, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(step, torch.linalg.vector_norm(expected - h), rtol=1e-12, atol=0)


@needs_ext
def test_lissa_step_norm_is_deterministic_across_thread_counts():
    """Partial sums per fixed chunk → identical bits with 1 and 2 threads."""
    h, v, hvp = torch.randn(3, 300_001, dtype=torch.float32).unbind(0)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.lissa_step(h, v, hvp, 0.01, 5.0)[1].item()
        torch.set_num_threads(2)
        two = ops.lissa_step(h, v, hvp, 0.01, 5.0)[1].item()
    finally:
        torch.set_num_threads(old)
    assert one == two


# --------------------------------------------------------------------------- lissa_step_update
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (15,), (17,), (16384 + 3,), (37, 29), (3, 5, 7)])
def test_lissa_step_update_formula(device, dtype, shape):
    """In place: h ← v + (1 − d)·h − hvp/scale (every element), returns float64 [‖h_new − h‖², ‖h_new‖²];
    v and hvp given as non-contiguous views."""
    gen = torch.Generator().manual_seed(sum(shape) + 1)
    h0, v, hvp = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    damping, scale = 0.013, -3.7
    expected = v + (1 - damping) * h0 - hvp / scale
    h = h0.to(dtype=dtype, device=device, copy=True)
    as_view = lambda t: t.to(dtype=dtype, device=device).flip(0) if t.dim() else t  # noqa: E731
    v_in, hvp_in = as_view(v.flip(0)), as_view(hvp.flip(0))  # flipped twice: same values, negative strides
    sums = ops.lissa_step_update(h, v_in, hvp_in, damping, scale)
    assert sums.dtype == torch.float64 and sums.shape == (2,) and sums.device == h.device
    tol = TOL[dtype]
    torch.testing.assert_close(h.double().cpu(), expected, **tol)
    h_new = h.double().cpu()  # the sums are of the h_new the op wrote (its rounding), in double
    want = torch.stack([((h_new - h0.to(dtype).double()) ** 2).sum(), (h_new ** 2).sum()])
    torch.testing.assert_close(sums.cpu(), want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-300)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lissa_step_update_is_the_csr_update_without_entries(dtype):
    """Bit for bit what the LiSSA solver's update of the other parameter blocks computed before it
    had its own op: lissa_step_update.csr on a [1, t] block with an empty CSR matrix, the whole
    gradient row given as dense_grad of column 0."""
    t = 100_003
    h, v, hvp = torch.randn(3, t, dtype=torch.float64).to(dtype).unbind(0)
    a, b = h.clone(), h.clone().view(1, t)
    none = torch.zeros(0, dtype=torch.int64)
    sums = ops.lissa_step_update(a, v, hvp, 0.07, 13.0)
    sums_csr = torch.ops.lipo_if.lissa_step_update.csr(
        b, v.view(1, t), torch.zeros(1, dtype=torch.int64), none, h.new_empty(0), none, h.new_empty(0, t), 0.07, 13.0,
        torch.zeros(1, dtype=torch.int64), hvp.view(1, t))
    assert torch.equal(a, b.view(t)) and torch.equal(sums, sums_csr)


# --------------------------------------------------------------------------- linear_strided / weight grad
SPARSE_SHAPES = list(itertools.product([0, 1, 7, 131], [1, 13, 257], [1, 5, 33, 70]))


def make_strided_inputs(n, in_dim, out, dtype, device="cpu", density=1.0, seed=0):
    """x [n, in] (gaussian, kept at `density`), weight_t [in, out] (contiguous), bias [out],
    grad_out [n, out] — float64 draws cast to dtype."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=gen, dtype=torch.float64)
    if density < 1.0:
        x = x * (torch.rand(n, in_dim, generator=gen, dtype=torch.float64) < density)
    w = torch.randn(in_dim, out, generator=gen, dtype=torch.float64)
    b = torch.randn(out, generator=gen, dtype=torch.float64)
    g = torch.randn(n, out, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (x, w, b, g)]


def exact_linear(x, wt, b):
    """float64 x weight_t + b by broadcasting and summation (independent of GEMM and of the kernels)."""
    y = (x.double().cpu()[:, :, None] * wt.double().cpu()[None, :, :]).sum(1)
    return y if b is None else y + b.double().cpu()


def exact_weight_grad(x, g):
    return (x.double().cpu()[:, :, None] * g.double().cpu()[:, None, :]).sum(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [1.0, 0.03, 0.0])
def test_linear_strided_odd_shapes(dtype, density):
    """Every (n, in, out) combination incl. n = 0 and 1, out not a multiple of the register block,
    bias given and None, sparse / dense / all-zero input; every output element compared."""
    for idx, (n, in_dim, out) in enumerate(SPARSE_SHAPES):
        x, w, b, g = make_strided_inputs(n, in_dim, out, dtype, density=density, seed=idx)
        for bias in (b, None):
            y = ops.linear_strided(x, w, bias)
            assert y.shape == (n, out)
            assert_matches(y, exact_linear(x, w, bias), dtype, scale=in_dim ** 0.5)
        wg = ops.linear_weight_grad_strided(x, g)
        assert wg.shape == (in_dim, out)
        assert_matches(wg, exact_weight_grad(x, g), dtype, scale=max(n, 1) ** 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_strided_real_layer(device, dtype):
    """First-layer-like input (2048 binary bits ≈3 % set + 200 dense columns, out = 512 and 515),
    n = 517 (not a multiple of any chunk), a contiguous weight_t (the no-copy layout) and the
    W.t() view of an nn.Linear-layout weight (copied once)."""
    gen = torch.Generator().manual_seed(4)
    bits = (torch.rand(517, 2048, generator=gen) < 0.03).double()
    x = torch.cat([bits, torch.randn(517, 200, generator=gen, dtype=torch.float64)], 1)
    for out in (512, 515):
        wt = torch.randn(2248, out, generator=gen, dtype=torch.float64)
        b = torch.randn(out, generator=gen, dtype=torch.float64)
        g = torch.randn(517, out, generator=gen, dtype=torch.float64)
        xd, wtd, bd, gd = (t.to(dtype=dtype, device=device) for t in (x, wt, b, g))
        # float64 BLAS reference here (the broadcast one would need a 4.7 GB temporary)
        assert_matches(ops.linear_strided(xd, wtd, bd), torch.addmm(b, x, wt), dtype, scale=50.0)
        assert_matches(ops.linear_strided(xd, wtd.t().contiguous().t(), bd), torch.addmm(b, x, wt), dtype, scale=50.0)
        assert_matches(ops.linear_weight_grad_strided(xd, gd), x.T @ g, dtype, scale=25.0)


@pytest.mark.parametrize("density", [1.0, 0.03])
def test_linear_strided_non_contiguous_and_sentinel_memory(density):
    """Strided / transposed views are accepted; results equal the contiguous ones; repeated calls
    on freed NaN-filled memory would expose an unwritten element."""
    x, w, b, g = make_strided_inputs(37, 29, 41, torch.float64, density=density, seed=13)
    x_t = x.T.contiguous().T                           # column-major [n, in]
    w_s = torch.stack([w, w], -1).flatten(1)[:, ::2]   # stride 2 along out
    b_s = torch.stack([b, b], -1).flatten()[::2]       # stride 2
    g_t = g.T.contiguous().T
    assert not (x_t.is_contiguous() or w_s.is_contiguous() or b_s.is_contiguous() or g_t.is_contiguous())
    for _ in range(3):
        garbage = torch.full((37 * 41 + 29 * 41,), float("nan"), dtype=torch.float64)
        del garbage
        assert_matches(ops.linear_strided(x_t, w_s, b_s), exact_linear(x, w, b), torch.float64)
        assert_matches(ops.linear_weight_grad_strided(x_t, g_t), exact_weight_grad(x, g), torch.float64)


def test_linear_strided_rows_of_zeros():
    """All-zero rows give exactly the bias; all-zero input columns give exactly zero gradient rows."""
    x, w, b, g = make_strided_inputs(40, 60, 35, torch.float64, density=0.05, seed=3)
    x[::3] = 0.0
    x[:, ::2] = 0.0
    y = ops.linear_strided(x, w, b)
    assert torch.equal(y[::3], b.expand(len(y[::3]), -1))
    wg = ops.linear_weight_grad_strided(x, g)
    assert torch.equal(wg[::2], torch.zeros_like(wg[::2]))
    assert_matches(y, exact_linear(x, w, b), torch.float64)
    assert_matches(wg, exact_weight_grad(x, g), torch.float64)


def make_mixed_input(n, dtype, layout, seed=0):
    """[n, 301] fingerprint-like input with dense columns: 250 count-like sparse columns (≈4 % set,
    two of them ≈35 % set), plus 51 dense gaussian columns — one contiguous block at the end
    (layout "block", the descriptor layout) or scattered among the sparse ones ("scattered")."""
    gen = torch.Generator().manual_seed(seed)
    sparse = torch.randint(1, 4, (n, 250), generator=gen).double() * (torch.rand(n, 250, generator=gen) < 0.04)
    sparse[:, 7] *= 0.0
    sparse[:, 7] += (torch.rand(n, generator=gen) < 0.35).double()
    sparse[:, 133] = (torch.rand(n, generator=gen) < 0.35).double() * 2.5
    x = torch.cat([sparse, torch.randn(n, 51, generator=gen, dtype=torch.float64)], 1)
    if layout == "scattered":
        x = x[:, torch.randperm(301, generator=gen)]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["block", "scattered"])
def test_strided_kernels_mixed_dense_columns(dtype, layout):
    """Sparse columns plus dense (descriptor-like) columns, which the CPU kernels route to BLAS
    and add to the sparse part: row counts below the split minimum, on both sides of the few-rows
    / many-rows switch, odd output widths; every output element against float64 references."""
    for n in (1, 31, 33, 100, 256, 257, 517):
        x = make_mixed_input(n, dtype, layout, seed=n)
        gen = torch.Generator().manual_seed(n + 1)
        for out in (37, 70):
            w, g = torch.randn(301, out, generator=gen, dtype=torch.float64), torch.randn(n, out, generator=gen, dtype=torch.float64)
            b = torch.randn(out, generator=gen, dtype=torch.float64)
            wd, gd, bd = w.to(dtype), g.to(dtype), b.to(dtype)
            for bias in (bd, None):
                assert_matches(ops.linear_strided(x, wd, bias), exact_linear(x, w, None if bias is None else b), dtype, scale=20.0)
            assert_matches(ops.linear_weight_grad_strided(x, gd), exact_weight_grad(x, g), dtype, scale=max(n, 1) ** 0.5 * 4)
            for k, bias in ((1, True), (3, False)):
                act, og, vw, vb = make_inputs(n, 301, out, k, torch.float64, bias=bias, seed=n + k)
                act = x.double()
                got = ops.linear_grad_dot(act.to(dtype), og.to(dtype), vw.to(dtype), None if vb is None else vb.to(dtype))
                assert_matches(got, exact_grad_dot(act, og, vw, vb), dtype, scale=(301 * out) ** 0.5 * 4)


@pytest.mark.parametrize("n", [5, 100, 300])
def test_strided_kernels_propagate_nan_like_dense(n):
    """A NaN input counts as a non-zero (it is not skipped): the rows / gradient rows it touches
    come out NaN exactly where the dense formula gives NaN, and nowhere else."""
    x = make_mixed_input(n, torch.float64, "scattered", seed=2)
    x[1, 3] = float("nan")
    gen = torch.Generator().manual_seed(5)
    w, g = torch.randn(301, 37, generator=gen, dtype=torch.float64), torch.randn(n, 37, generator=gen, dtype=torch.float64)
    y, wg = ops.linear_strided(x, w, None), ops.linear_weight_grad_strided(x, g)
    assert torch.equal(torch.isnan(y), torch.isnan(x @ w))
    assert torch.equal(torch.isnan(wg), torch.isnan(x.T @ g))
    assert torch.isnan(y[1]).all() and not torch.isnan(y[0]).any()


@needs_ext
@pytest.mark.parametrize("n", [100, 300])
def test_strided_kernels_with_dense_columns_deterministic_across_thread_counts(n):
    x = make_mixed_input(n, torch.float64, "scattered", seed=5)
    gen = torch.Generator().manual_seed(6)
    w, g = torch.randn(301, 70, generator=gen, dtype=torch.float64), torch.randn(n, 70, generator=gen, dtype=torch.float64)
    vw = torch.randn(2, 70, 301, generator=gen, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((ops.linear_strided(x, w, w[0]), ops.linear_weight_grad_strided(x, g),
                            ops.linear_grad_dot(x, g, vw, None)))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@needs_ext
def test_linear_strided_deterministic_across_thread_counts():
    x, w, b, g = make_strided_inputs(300, 500, 130, torch.float32, density=0.05, seed=8)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (ops.linear_strided(x, w, b), ops.linear_weight_grad_strided(x, g))
        torch.set_num_threads(2)
        two = (ops.linear_strided(x, w, b), ops.linear_weight_grad_strided(x, g))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 100, 300])
def test_linear_weight_grad_strided_out_writes_a_block_of_a_flat_buffer(dtype, n):
    """out= writes every element of a contiguous [in, out] view of a bigger buffer (NaN-filled
    first), leaves the rest of the buffer alone and returns that view."""
    x = make_mixed_input(n, dtype, "block", seed=n) if n else torch.zeros(0, 301, dtype=dtype)
    g = torch.randn(n, 37, dtype=torch.float64)
    flat = torch.full((301 * 37 + 11,), float("nan"), dtype=dtype)
    block = flat[: 301 * 37].view(301, 37)
    returned = ops.linear_weight_grad_strided(x, g.to(dtype), out=block)
    assert returned.data_ptr() == block.data_ptr()
    assert_matches(block, exact_weight_grad(x, g), dtype, scale=max(n, 1) ** 0.5 * 4)
    assert torch.isnan(flat[301 * 37:]).all()


@needs_ext
def test_linear_weight_grad_strided_out_errors():
    """The .out overload's checks (C++): shape, contiguity, dtype — the messages name the value."""
    x, w, b, g = make_strided_inputs(9, 13, 5, torch.float64, density=0.2)
    for call in (lambda out: ops.linear_weight_grad_strided(x, g, out=out),
                 lambda out: torch.ops.lipo_if.linear_weight_grad_strided.out(x, g, out=out)):
        with pytest.raises(RuntimeError, match=r"linear_weight_grad_strided: out must be 2-D \[in, out\] = \[13, 5\], got shape \[5, 13\]"):
            call(torch.empty(5, 13, dtype=torch.float64))
        with pytest.raises(RuntimeError, match=r"out must be contiguous \(the op writes through it\), got strides \[1, 13\]"):
            call(torch.empty(5, 13, dtype=torch.float64).t())
        with pytest.raises(RuntimeError, match="out has dtype Float but x has dtype Double"):
            call(torch.empty(13, 5, dtype=torch.float32))


# --------------------------------------------------------------------------- opcheck / dispatcher
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, dtype):
    """Schemas, fake kernels and the in-place / out= annotations of the dense ops (the CSR ops:
    test_csr_ops.py)."""
    for density, bias in ((1.0, True), (0.03, False)):
        act, g, w, b = make_inputs(9, 21, 5, 2, dtype, device, density=density, bias=bias)
        torch.library.opcheck(torch.ops.lipo_if.linear_grad_dot.default, (act, g, w, b))
    h, v, hvp = (torch.randn(1000, dtype=dtype, device=device) for _ in range(3))
    torch.library.opcheck(torch.ops.lipo_if.lissa_step.default, (h, v, hvp, 0.05, 3.0))
    torch.library.opcheck(torch.ops.lipo_if.lissa_step_update.default, (h.clone(), v, hvp, 0.05, 3.0))
    for density in (0.03, 1.0):
        x, w, b, g = make_strided_inputs(11, 23, 19, dtype, device, density=density)
        torch.library.opcheck(torch.ops.lipo_if.linear_strided.default, (x, w, b))
        torch.library.opcheck(torch.ops.lipo_if.linear_strided.default, (x, w, None))
        torch.library.opcheck(torch.ops.lipo_if.linear_weight_grad_strided.default, (x, g))
        out = torch.empty(23, 19, dtype=dtype, device=device)
        # Not test_aot_dispatch_dynamic: PyTorch does not functionalize custom ops whose output has an
        # alias annotation (`-> Tensor(a!)`, ATen's .out convention); the functional overload covers it.
        torch.library.opcheck(torch.ops.lipo_if.linear_weight_grad_strided.out, (x, g), {"out": out},
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@needs_ext
def test_backend_reports_cpp_and_every_op_has_a_cpu_kernel():
    assert ops.backend() in ("cpp", "cpp+cuda")
    for name in ops.OPERATORS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lipo_if::{name}", "CPU"), name


@needs_ext
def test_extension_reports_the_split_policy_it_was_compiled_with():
    """The constants are defined once (lipo_if/split_policy.py) and compiled in."""
    from lipo_if import _C, split_policy

    assert _C.SPLIT_POLICY == split_policy.as_dict()
    passed = {name.removeprefix("LIPO_IF_"): float(value) for name, value in split_policy.compile_definitions()}
    assert passed == split_policy.as_dict()  # repr round-trips: the kernels get the very same doubles


def test_import_lipo_if_registers_the_ops():
    """`import lipo_if` alone (no `import lipo_if.ops`) makes torch.ops.lipo_if.<op> exist (with the
    extension built; without it, lipo_if.ops is imported all the same and falls back)."""
    code = (
        "import sys, torch, lipo_if\n"
        "assert 'lipo_if.ops' in sys.modules\n"
        "if lipo_if.backend() == 'pytorch':\n"
        "    print('NO-EXT')\n"
        "else:\n"
        "    op = torch.ops.lipo_if.linear_grad_dot\n"
        "    assert op.default is not None and torch.ops.lipo_if.lissa_step_update.csr is not None\n"
        "    print('OK')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LIPO_IF_JIT", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == ("OK" if HAS_EXT else "NO-EXT")


@needs_ext
def test_extension_matches_pure_pytorch_path():
    """The twins (ops_reference, same names and signatures) give the results of the compiled kernels."""
    for density in (1.0, 0.03):
        act, g, w, b = make_inputs(200, 257, 33, 3, torch.float64, density=density, seed=5)
        torch.testing.assert_close(ops.linear_grad_dot(act, g, w, b), ops_reference.linear_grad_dot(act, g, w, b),
                                   rtol=1e-12, atol=1e-10)
    h, v, hvp = torch.randn(3, 5000, dtype=torch.float64).unbind(0)
    for got, want in zip(ops.lissa_step(h, v, hvp, 0.2, 4.0), ops_reference.lissa_step(h, v, hvp, 0.2, 4.0)):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    a, b2 = h.clone(), h.clone()
    torch.testing.assert_close(ops.lissa_step_update(a, v, hvp, 0.2, 4.0),
                               ops_reference.lissa_step_update(b2, v, hvp, 0.2, 4.0), rtol=1e-13, atol=0)
    torch.testing.assert_close(a, b2, rtol=1e-13, atol=1e-13)
    for density in (1.0, 0.03):
        x, w, b, g = make_strided_inputs(200, 257, 33, torch.float64, density=density, seed=5)
        torch.testing.assert_close(ops.linear_strided(x, w, b), ops_reference.linear_strided(x, w, b),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ops.linear_weight_grad_strided(x, g), ops_reference.linear_weight_grad_strided(x, g),
                                   rtol=1e-12, atol=1e-12)


def test_fallback_without_extension_warns_once_and_works():
    """With lipo_if._C unimportable, lipo_if.ops warns exactly once and every function runs its twin
    (checked against independent formulas)."""
    code = (
        "import sys, warnings; sys.modules['lipo_if._C'] = None\n"
        "import torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import lipo_if.ops as ops\n"
        "    import lipo_if.ops\n"
        "msgs = [str(w.message) for w in caught if 'lipo_if._C is not available' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert ops.backend() == 'pytorch', ops.backend()\n"
        "a, g, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), "
        "torch.randn(2, 3, 4, dtype=torch.float64)\n"
        "exp = torch.einsum('no,koi,ni->nk', g, w, a)\n"
        "torch.testing.assert_close(ops.linear_grad_dot(a, g, w), exp)\n"
        "h = torch.ones(5, dtype=torch.float64)\n"
        "hn, s = ops.lissa_step(h, h, h, 0.5, 2.0)\n"
        "torch.testing.assert_close(hn, torch.full((5,), 1.0, dtype=torch.float64))\n"
        "h2 = torch.full((5,), 2.0, dtype=torch.float64)\n"
        "sums = ops.lissa_step_update(h2, h, h, 0.5, 2.0)\n"
        "torch.testing.assert_close(h2, torch.full((5,), 1.5, dtype=torch.float64))\n"
        "torch.testing.assert_close(sums, torch.tensor([5 * 0.25, 5 * 2.25], dtype=torch.float64))\n"
        "x, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)\n"
        "torch.testing.assert_close(ops.linear_strided(x, w), x @ w)\n"
        "torch.testing.assert_close(ops.linear_weight_grad_strided(x, a[:, :3]), x.T @ a[:, :3])\n"
        "print('OK')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LIPO_IF_JIT", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# --------------------------------------------------------------------------- errors (C++ checks)
# The checks live in C++ only: through lipo_if.ops (which calls the op) and torch.ops.lipo_if.* alike,
# each message names the op, the argument and the bad value.
def _good(dtype=torch.float64):
    return make_inputs(4, 6, 3, 2, dtype)


def _both(name):
    """The public wrapper and the raw dispatcher op of `name` (the same checks)."""
    return [getattr(ops, name), getattr(torch.ops.lipo_if, name)]


@needs_ext
@pytest.mark.parametrize("mutate, match", [
    (lambda a, g, w, b: (a[0], g, w, b), r"linear_grad_dot: act must be 2-D \[n, in\], got shape \[6\]"),
    (lambda a, g, w, b: (a, g[:3], w, b), r"out_grad must be 2-D \[n, out\] = \[4, \*\], got shape \[3, 3\]"),
    (lambda a, g, w, b: (a, g, w[:, :2], b), r"vec_weight must be \[k, out, in\] = \[k, 3, 6\], got shape \[2, 2, 6\]"),
    (lambda a, g, w, b: (a, g, w[0], b), r"vec_weight must be \[k, out, in\] = \[k, 3, 6\], got shape \[3, 6\]"),
    (lambda a, g, w, b: (a, g, w, b[:1]), r"vec_bias must be 2-D \[k, out\] = \[2, 3\], got shape \[1, 3\]"),
    (lambda a, g, w, b: (a, g.float(), w, b), r"out_grad has dtype Float but act has dtype Double"),
    (lambda a, g, w, b: (a.int(), g.int(), w.int(), None), r"act must be float32 or float64, got Int"),
])
def test_linear_grad_dot_errors(mutate, match):
    for fn in _both("linear_grad_dot"):
        with pytest.raises(RuntimeError, match=match):
            fn(*mutate(*_good()))


@needs_ext
@pytest.mark.parametrize("name", ["lissa_step", "lissa_step_update"])
@pytest.mark.parametrize("args, match", [
    (lambda h: (h, h[:-1], h), r"v must have the shape of h \[10\], got \[9\]"),
    (lambda h: (h, h, h.reshape(2, 5)), r"hvp must have the shape of h \[10\], got \[2, 5\]"),
    (lambda h: (h, h, h.float()), r"hvp has dtype Float but h has dtype Double"),
    (lambda h: (h.long(), h.long(), h.long()), r"h must be float32 or float64, got Long"),
])
def test_lissa_step_errors(name, args, match):
    for fn in _both(name):
        with pytest.raises(RuntimeError, match=f"lipo_if.{name}: {match}"):
            fn(*args(torch.randn(10, dtype=torch.float64)), 0.1, 1.0)
        with pytest.raises(RuntimeError, match=f"lipo_if.{name}: scale must be non-zero, got 0"):
            fn(*(torch.randn(10, dtype=torch.float64),) * 3, 0.1, 0.0)


@needs_ext
def test_lissa_step_update_needs_a_contiguous_h():
    h = torch.randn(6, 5, dtype=torch.float64).t()
    for fn in (ops.lissa_step_update, torch.ops.lipo_if.lissa_step_update):
        with pytest.raises(RuntimeError, match=r"lissa_step_update: h must be contiguous .*got strides \[1, 5\]"):
            fn(h, h, h, 0.1, 1.0)


@needs_ext
@pytest.mark.parametrize("mutate, match", [
    (lambda x, w, b: (x[0], w, b), r"linear_strided: x must be 2-D \[n, in\], got shape \[6\]"),
    (lambda x, w, b: (x, w[:5], b), r"weight_t must be 2-D \[in, out\] = \[6, \*\], got shape \[5, 3\]"),
    (lambda x, w, b: (x, w.t(), b), r"weight_t must be 2-D \[in, out\] = \[6, \*\], got shape \[3, 6\]"),
    (lambda x, w, b: (x, w, b[:2]), r"bias must be \[out\] = \[3\], got shape \[2\]"),
    (lambda x, w, b: (x, w.float(), b), r"weight_t has dtype Float but x has dtype Double"),
    (lambda x, w, b: (x.int(), w.int(), None), r"x must be float32 or float64, got Int"),
])
def test_linear_strided_errors(mutate, match):
    x, w, b, _ = make_strided_inputs(4, 6, 3, torch.float64)
    for fn in _both("linear_strided"):
        with pytest.raises(RuntimeError, match=match):
            fn(*mutate(x, w, b))


@needs_ext
@pytest.mark.parametrize("mutate, match", [
    (lambda x, g: (x, g[:3]), r"linear_weight_grad_strided: grad_out must be 2-D \[n, out\] = \[4, \*\], got shape \[3, 3\]"),
    (lambda x, g: (x, g[0]), r"grad_out must be 2-D \[n, out\] = \[4, \*\], got shape \[3\]"),
    (lambda x, g: (x, g.float()), r"grad_out has dtype Float but x has dtype Double"),
    (lambda x, g: (x.long(), g), r"x must be float32 or float64, got Long"),
])
def test_linear_weight_grad_strided_errors(mutate, match):
    x, _, _, g = make_strided_inputs(4, 6, 3, torch.float64)
    for fn in _both("linear_weight_grad_strided"):
        with pytest.raises(RuntimeError, match=match):
            fn(*mutate(x, g))


@needs_cuda
def test_cuda_device_mismatch_is_rejected():
    a, g, w, b = _good()
    for fn in _both("linear_grad_dot"):
        with pytest.raises(RuntimeError, match="must be on one device"):
            fn(a.cuda(), g, w.cuda(), b.cuda())
    x, w2, b2, g2 = make_strided_inputs(4, 6, 3, torch.float64)
    with pytest.raises(RuntimeError, match="weight_t is on device cpu but x is on device cuda"):
        torch.ops.lipo_if.linear_strided(x.cuda(), w2, None)
    with pytest.raises(RuntimeError, match="must be on one device"):
        torch.ops.lipo_if.linear_weight_grad_strided(x.cuda(), g2)
