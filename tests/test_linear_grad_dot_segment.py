"""Tests of lipo_if.ops.linear_grad_dot_segment (the linear_grad_dot.segment overload) against float64.

Every output element is compared, on fresh random inputs with odd shapes, with an independent
float64 formula that forms each segment's summed gradient G_s = Σ_r out_grad[r] ⊗ act[r] (and
Σ_r out_grad[r] for the bias) explicitly and dots it with the vectors — not the kernel against its
twin — so the tests mean the same with and without the extension (without it, lipo_if.ops runs the
twin, and that is what is checked). The twin is also checked against the formula on its own. The C++
input checks, opcheck and the thread-count determinism need the extension; CUDA cases skip without
a CUDA device and a CUDA build of it.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, needs_cuda, needs_ext

from lipo_if import ops, ops_reference

TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float64: dict(rtol=1e-11, atol=1e-11)}


def exact_segment_grad_dot(act, out_grad, vec_weight, vec_bias, indptr):
    """float64 [S, k]: per segment, the summed gradient (G_s, g_s) formed, then dotted with each vector."""
    a, g, w = act.double().cpu(), out_grad.double().cpu(), vec_weight.double().cpu()
    b = None if vec_bias is None else vec_bias.double().cpu()
    ip = indptr.cpu().tolist()
    result = torch.zeros(len(ip) - 1, w.shape[0], dtype=torch.float64)
    for s in range(len(ip) - 1):
        rows = slice(ip[s], ip[s + 1])
        G = (g[rows, :, None] * a[rows, None, :]).sum(0)  # [out, in], Σ_r out_grad[r] ⊗ act[r]
        for j in range(w.shape[0]):
            result[s, j] = (G * w[j]).sum()
            if b is not None:
                result[s, j] += (g[rows].sum(0) * b[j]).sum()
    return result


def make_inputs(lengths, in_dim, out, k, dtype, device="cpu", bias=True, seed=0):
    """act [n, in], out_grad [n, out], vec_weight [k, out, in], vec_bias [k, out] or None (float64
    draws cast to dtype) and indptr int64 [S + 1] from the segment lengths."""
    gen = torch.Generator().manual_seed(seed)
    n = int(sum(lengths))
    tensors = [torch.randn(n, in_dim, generator=gen, dtype=torch.float64),
               torch.randn(n, out, generator=gen, dtype=torch.float64),
               torch.randn(k, out, in_dim, generator=gen, dtype=torch.float64),
               torch.randn(k, out, generator=gen, dtype=torch.float64) if bias else None]
    indptr = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return [None if t is None else t.to(dtype=dtype, device=device) for t in tensors] + [indptr.to(device)]


def assert_matches(result, expected, dtype, scale=1.0):
    assert result.dtype == dtype and result.shape == expected.shape
    assert not torch.isnan(result).any(), "some output elements were never written"
    tol = TOL[dtype]
    torch.testing.assert_close(result.double().cpu(), expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def _scale(lengths, in_dim, out):
    """Rounding grows like sqrt(terms): rows of the longest segment × in × out."""
    return (max([1, *lengths]) * in_dim * out) ** 0.5


# Segment lengths: empty ones (leading, inside, trailing), one segment, one row each, no rows at all.
LENGTHS = {
    "mixed-with-empty": [0, 3, 0, 5, 1, 0, 7, 2, 0],
    "single-segment": [37],
    "one-row-each": [1] * 23,
    "all-empty": [0, 0, 0],
    "no-segments": [],
    "long-and-short": [1, 61, 2, 0, 29],
}
WIDTHS = [(13, 5, 1), (7, 33, 3), (1, 1, 1), (257, 17, 2), (29, 70, 5)]  # (in, out, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(LENGTHS))
def test_segment_odd_shapes(device, dtype, case):
    """Every segment layout × (in, out, k), bias given and None; every element against the formula;
    empty segments exactly 0."""
    lengths = LENGTHS[case]
    for idx, (in_dim, out, k) in enumerate(WIDTHS):
        for bias in (True, False):
            act, g, w, b, ip = make_inputs(lengths, in_dim, out, k, dtype, device, bias=bias, seed=idx)
            result = ops.linear_grad_dot_segment(act, g, w, b, ip)
            assert result.device == act.device and result.shape == (len(lengths), k)
            assert_matches(result, exact_segment_grad_dot(act, g, w, b, ip), dtype, scale=_scale(lengths, in_dim, out))
            empty = torch.tensor([length == 0 for length in lengths], dtype=torch.bool)
            assert (result.cpu()[empty] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_twin_matches_formula(dtype):
    """The pure-PyTorch twin (ops_reference, the fallback) against the same independent formula."""
    for idx, (case, lengths) in enumerate(LENGTHS.items()):
        for bias in (True, False):
            act, g, w, b, ip = make_inputs(lengths, 19, 11, 3, dtype, bias=bias, seed=100 + idx)
            assert_matches(ops_reference.linear_grad_dot_segment(act, g, w, b, ip),
                           exact_segment_grad_dot(act, g, w, b, ip), dtype, scale=_scale(lengths, 19, 11))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_segments_across_row_blocks(device, dtype):
    """k·out = 2,100 makes the CPU kernel's row block ≈ 499 rows: many random segments (0–300 rows),
    several of which straddle block boundaries, plus one spanning several blocks."""
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 300, (11,), generator=gen).tolist() + [1700] + torch.randint(0, 40, (9,), generator=gen).tolist()
    act, g, w, b, ip = make_inputs(lengths, 9, 700, 3, dtype, device, seed=6)
    assert_matches(ops.linear_grad_dot_segment(act, g, w, b, ip), exact_segment_grad_dot(act, g, w, b, ip), dtype,
                   scale=_scale(lengths, 9, 700))


@pytest.mark.parametrize("device", DEVICES)
def test_segment_non_contiguous(device):
    """Transposed / strided views (indptr too) are accepted and give the formula's values."""
    lengths = [4, 0, 9, 1, 6, 0, 3]
    act, g, w, b, ip = make_inputs(lengths, 29, 11, 3, torch.float64, device, seed=11)
    act_t = act.T.contiguous().T                      # column-major [n, in]
    g_s = torch.stack([g, g], -1).flatten(1)[:, ::2]  # stride 2 along out
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)
    b_s = torch.stack([b, b], 1).flatten(0, 1)[::2]   # row stride 2·out
    ip_s = torch.stack([ip, ip], 1)[:, 0]             # stride 2
    assert not any(t.is_contiguous() for t in (act_t, g_s, w_t, b_s, ip_s))
    expected = exact_segment_grad_dot(act, g, w, b, ip)
    assert_matches(ops.linear_grad_dot_segment(act_t, g_s, w_t, b_s, ip_s), expected, torch.float64)
    assert_matches(ops_reference.linear_grad_dot_segment(act_t, g_s, w_t, b_s, ip_s), expected, torch.float64)


def test_segment_is_the_sum_of_linear_grad_dot_rows():
    """Consistency with the per-sample op: segment sums of ops.linear_grad_dot's [n, k] rows."""
    lengths = [5, 0, 12, 3]
    act, g, w, b, ip = make_inputs(lengths, 31, 17, 2, torch.float64, seed=12)
    per_row = ops.linear_grad_dot(act, g, w, b)
    expected = torch.stack([per_row[ip[s]:ip[s + 1]].sum(0) for s in range(len(lengths))])
    torch.testing.assert_close(ops.linear_grad_dot_segment(act, g, w, b, ip), expected, rtol=1e-12, atol=1e-12)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_kernel_is_deterministic_across_thread_counts_and_matches_twin(dtype):
    """Same bits with 1, 2 and 3 threads (fixed row blocks, each segment's sums in a fixed order) on a
    message-passing-like layer (≈ 6,700 rows in ≈ 16 row blocks, segments crossing them); the
    kernel equals the twin."""
    gen = torch.Generator().manual_seed(13)
    lengths = torch.randint(0, 90, (151,), generator=gen).tolist()
    act, g, w, b, ip = make_inputs(lengths, 300, 300, 1, dtype, seed=14)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(ops.linear_grad_dot_segment(act, g, w, b, ip))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(results[0], r) for r in results[1:])
    tol = dict(rtol=1e-4, atol=1e-2) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(results[0], ops_reference.linear_grad_dot_segment(act, g, w, b, ip), **tol)


# --------------------------------------------------------------------------- opcheck
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_opcheck(device, dtype):
    """Schema and fake kernel of the overload (output [S, k] from indptr's length)."""
    for lengths, bias in (([2, 0, 5, 1], True), ([7], False), ([], True)):
        act, g, w, b, ip = make_inputs(lengths, 21, 5, 2, dtype, device, bias=bias)
        torch.library.opcheck(torch.ops.lipo_if.linear_grad_dot.segment, (act, g, w, b, ip))


# --------------------------------------------------------------------------- errors (C++ checks)
def _good(device="cpu"):
    return make_inputs([1, 0, 3], 6, 3, 2, torch.float64, device)  # n = 4, in = 6, out = 3, k = 2, S = 3


def _both():
    """The public wrapper and the raw dispatcher overload (the same checks)."""
    return [ops.linear_grad_dot_segment, torch.ops.lipo_if.linear_grad_dot.segment]


OP = r"lipo_if\.linear_grad_dot\.segment: "
ERRORS = [
    (lambda a, g, w, b, ip: (a, g, w, b, torch.tensor([0, 1, 1, 3])), OP + r"indptr must end at n = 4 \(the rows of act\), got indptr\[3\] = 3"),
    (lambda a, g, w, b, ip: (a, g, w, b, torch.tensor([0, 1, 1, 5])), r"indptr must end at n = 4 .*got indptr\[3\] = 5"),
    (lambda a, g, w, b, ip: (a, g, w, b, torch.tensor([0, 3, 2, 4])), OP + r"indptr must be non-decreasing, got indptr\[1\] = 3 > indptr\[2\] = 2"),
    (lambda a, g, w, b, ip: (a, g, w, b, torch.tensor([1, 1, 2, 4])), OP + r"indptr must start at 0, got indptr\[0\] = 1"),
    (lambda a, g, w, b, ip: (a, g, w, b, ip.int()), OP + r"indptr must be int64, got Int"),
    (lambda a, g, w, b, ip: (a, g, w, b, ip[None]), OP + r"indptr must be 1-D \[S \+ 1\] with at least one element, got shape \[1, 4\]"),
    (lambda a, g, w, b, ip: (a, g, w, b, ip[:0]), r"indptr must be 1-D \[S \+ 1\] with at least one element, got shape \[0\]"),
    (lambda a, g, w, b, ip: (a, g.float(), w, b, ip), OP + r"out_grad has dtype Float but act has dtype Double"),
    (lambda a, g, w, b, ip: (a, g, w, b.float(), ip), OP + r"vec_bias has dtype Float but act has dtype Double"),
    (lambda a, g, w, b, ip: (a, g[:3], w, b, ip), OP + r"out_grad must be 2-D \[n, out\] = \[4, \*\], got shape \[3, 3\]"),
    (lambda a, g, w, b, ip: (a, g, w[:, :2], b, ip), OP + r"vec_weight must be \[k, out, in\] = \[k, 3, 6\], got shape \[2, 2, 6\]"),
    (lambda a, g, w, b, ip: (a, g, w, b[:1], ip), OP + r"vec_bias must be 2-D \[k, out\] = \[2, 3\], got shape \[1, 3\]"),
    (lambda a, g, w, b, ip: (a[0], g, w, b, ip), OP + r"act must be 2-D \[n, in\], got shape \[6\]"),
    (lambda a, g, w, b, ip: (a.int(), g.int(), w.int(), None, ip), OP + r"act must be float32 or float64, got Int"),
]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mutate, match", ERRORS)
def test_segment_errors(device, mutate, match):
    for fn in _both():
        args = [t if t is None else t.to(device) for t in mutate(*_good())]
        with pytest.raises(RuntimeError, match=match):
            fn(*args)


@needs_cuda
def test_segment_cuda_device_mismatch_is_rejected():
    a, g, w, b, ip = _good("cuda")
    for fn in _both():
        with pytest.raises(RuntimeError, match=r"indptr is on device cpu but act is on device cuda"):
            fn(a, g, w, b, ip.cpu())
        with pytest.raises(RuntimeError, match="out_grad is on device cpu but act is on device cuda"):
            fn(a, g.cpu(), w, b, ip)
