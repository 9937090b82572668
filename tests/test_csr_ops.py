"""Tests of the CSR ops of the fused LiSSA step (lipo_if.ops.split_csr, linear_csr,
lissa_step_update_csr) against float64 references built from the dense matrix, on fresh random
inputs with odd sizes.

Every result is compared with an independent float64 formula, so the tests mean the same without
``lipo_if._C`` (the wrappers then run the pure-PyTorch twins, and those are what is checked);
comparisons of a kernel with its twin, the C++ checks and opcheck require the extension. CUDA cases
skip without a CUDA device and a CUDA build of the extension.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, HAS_EXT, needs_cuda, needs_ext

from lipo_if import ops, ops_reference, split_policy

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}
IN = 301  # input columns: 250 sparse (two of them ≈35 % set) + 51 dense


def make_input(n: int, seed: int = 0) -> torch.Tensor:
    """float64 ``[n, IN]``: count-like sparse columns (≈4 % set), two frequent ones, 51 gaussian
    columns scattered among them (so the dense columns are not one range)."""
    gen = torch.Generator().manual_seed(seed)
    sparse = torch.randint(1, 4, (n, 250), generator=gen).double() * (torch.rand(n, 250, generator=gen) < 0.04)
    sparse[:, 7] = (torch.rand(n, generator=gen) < 0.35).double()
    sparse[:, 133] = (torch.rand(n, generator=gen) < 0.35).double() * 2.5
    x = torch.cat([sparse, torch.randn(n, 51, generator=gen, dtype=torch.float64)], 1)
    return x[:, torch.randperm(IN, generator=gen)]


def dense_columns(x: torch.Tensor) -> torch.Tensor:
    return ((x != 0).double().mean(0) > 0.5).nonzero()[:, 0]


def without(x: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    x = x.clone()
    if cols is not None:
        x[:, cols] = 0
    return x


def to(t, dtype, device):
    return t.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- split_csr


def _expected_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense columns, the dense matrix of the other columns) by the documented policy, from x."""
    n = x.shape[0]
    counts = (x != 0).sum(0)
    dense = (counts > split_policy.DENSE_COLUMN_DENSITY * n) & (n >= split_policy.MIN_ROWS_FOR_SPLIT)
    cells = n * int((~dense).sum())
    if cells and int(counts[~dense].sum()) > split_policy.SPARSE_MAX_DENSITY * cells:
        dense[:] = True
    cols = dense.nonzero()[:, 0]
    return cols, without(x, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["mixed", "few-rows", "all-dense", "all-zero", "no-rows", "transposed"])
def test_split_csr_matches_policy(device, dtype, case):
    """ops.split_csr (the CPU / CUDA kernel when built) and its pure-PyTorch twin: the dense columns
    and the CSR of the rest as the policy says — on fingerprint-like input, fewer than 32 rows (no
    dense columns), a gaussian input (every column dense, no entries), zeros, no rows, a transposed
    view."""
    x = {"mixed": lambda: make_input(203, seed=21), "few-rows": lambda: make_input(19, seed=22),
         "all-dense": lambda: torch.randn(45, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
         "all-zero": lambda: torch.zeros(40, IN, dtype=torch.float64), "no-rows": lambda: make_input(0),
         "transposed": lambda: make_input(IN, seed=23).t()}[case]().to(dtype)
    expected_cols, expected_rest = _expected_split(x)
    if case == "mixed":
        assert 51 < expected_cols.numel() < IN  # the gaussian columns and the two frequent bits
    for split in (ops.split_csr, ops_reference.split_csr):
        dense_cols, csr = split(x.to(device))
        assert dense_cols.device == csr.cols.device == csr.vals.device == torch.device(device)
        dense_cols, csr = dense_cols.cpu(), ops.CsrMatrix(csr.ptr.cpu(), csr.cols.cpu(), csr.vals.cpu(), csr.n_cols)
        assert dense_cols.dtype == torch.int64 and torch.equal(dense_cols, expected_cols)
        assert (csr.n_rows, csr.n_cols, csr.nnz) == (x.shape[0], x.shape[1], int((expected_rest != 0).sum()))
        assert csr.vals.dtype == dtype and csr.cols.dtype == torch.int64 and int(csr.ptr[0]) == 0
        assert torch.equal(ops_reference._csr_rows_dense(csr, torch.arange(x.shape[0])), expected_rest)
        for i in range(x.shape[0]):  # columns increase within a row
            cols = csr.cols[csr.ptr[i]:csr.ptr[i + 1]]
            assert bool((cols[1:] > cols[:-1]).all())


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_split_csr_checks_and_opcheck(device):
    for fn in (ops.split_csr, torch.ops.lipo_if.split_csr):
        with pytest.raises(RuntimeError, match=r"lipo_if.split_csr: x must be 2-D \[n, in\], got shape \[5\]"):
            fn(torch.zeros(5, dtype=torch.float64, device=device))
        with pytest.raises(RuntimeError, match="lipo_if.split_csr: x must be float32 or float64, got Int"):
            fn(torch.zeros(5, 3, dtype=torch.int32, device=device))
    torch.library.opcheck(torch.ops.lipo_if.split_csr.default, (make_input(41, seed=5).to(device),))


# --------------------------------------------------------------------------- csr_from_dense


def test_csr_from_dense_round_trip():
    x = make_input(57, seed=1)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    assert (csr.n_rows, csr.n_cols, csr.nnz) == (57, IN, int((without(x, skip) != 0).sum()))
    assert csr.ptr[0] == 0 and bool((csr.ptr[1:] >= csr.ptr[:-1]).all())
    for i in (0, 13, 56):  # columns increase within a row
        cols = csr.cols[csr.ptr[i]:csr.ptr[i + 1]]
        assert bool((cols[1:] > cols[:-1]).all())
    rebuilt = ops_reference._csr_rows_dense(csr, torch.arange(57))
    assert torch.equal(rebuilt, without(x, skip))
    empty = ops.csr_from_dense(torch.zeros(0, 5))
    assert empty.n_rows == 0 and empty.nnz == 0 and empty.ptr.tolist() == [0]


# --------------------------------------------------------------------------- linear_csr


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 7, 129, 300])  # 300 > 256: the many-rows CPU kernel
@pytest.mark.parametrize("out", [1, 37, 67])
def test_linear_csr_matches_dense_product(device, dtype, batch, out):
    x = make_input(311, seed=batch + out)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(to(x, dtype, device), skip.to(device))
    gen = torch.Generator().manual_seed(batch)
    rows = torch.randint(0, 311, (batch,), generator=gen)  # repeats allowed
    wt = torch.randn(IN, out, generator=gen, dtype=torch.float64)
    init = torch.randn(batch, out, generator=gen, dtype=torch.float64)
    want = without(x, skip)[rows] @ wt
    for start, expected in ((None, want), (init, want + init)):
        got = ops.linear_csr(csr, rows.to(device), to(wt, dtype, device),
                             None if start is None else to(start, dtype, device))
        assert got.shape == (batch, out) and got.dtype == dtype and not torch.isnan(got).any()
        torch.testing.assert_close(got.double().cpu(), expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 128])
@pytest.mark.parametrize("dense", ["scattered", "range", "none"])
def test_linear_csr_with_dense_part(device, dtype, batch, dense):
    """linear_csr's dense_cols / dense_x part (a GEMM beside the sparse part): with the dense
    columns out of the CSR, the whole product x[rows] @ wt (+ init); scattered dense columns (index
    copy), a contiguous range (view) and none."""
    x = make_input(203, seed=batch + 2)
    if dense == "range":  # move the dense columns to the end: one contiguous range
        order = torch.cat([torch.tensor([c for c in range(IN) if c not in set(dense_columns(x).tolist())]),
                           dense_columns(x)])
        x = x[:, order]
    skip = dense_columns(x) if dense != "none" else torch.zeros(0, dtype=torch.int64)
    if dense == "range":
        assert int(skip[-1] - skip[0]) + 1 == skip.numel()
    csr = ops.csr_from_dense(to(x, dtype, device), skip.to(device))
    gen = torch.Generator().manual_seed(batch)
    rows = torch.randint(0, 203, (batch,), generator=gen)
    wt = torch.randn(IN, 37, generator=gen, dtype=torch.float64)
    init = torch.randn(batch, 37, generator=gen, dtype=torch.float64)
    dense_x = x[rows][:, skip]
    for start, expected in ((None, x[rows] @ wt), (init, x[rows] @ wt + init)):
        args = (csr, rows.to(device), to(wt, dtype, device), None if start is None else to(start, dtype, device),
                skip.to(device), to(dense_x, dtype, device))
        got = ops.linear_csr(*args)
        torch.testing.assert_close(got.double().cpu(), expected, **TOL[dtype])
        if device == "cpu" and HAS_EXT:  # the kernel and its twin (without the extension both are the twin)
            twin = ops_reference.linear_csr(*args)
            torch.testing.assert_close(got, twin, **TOL[dtype])


@needs_ext
def test_linear_csr_reference_twin_agrees():
    """The compiled kernel and its pure-PyTorch twin on the same inputs (repeated rows)."""
    x = make_input(40, seed=3)
    csr = ops.csr_from_dense(x)
    rows, wt, init = torch.tensor([3, 3, 39, 0]), torch.randn(IN, 11, dtype=torch.float64), torch.randn(4, 11, dtype=torch.float64)
    got = ops.linear_csr(csr, rows, wt, init)
    torch.testing.assert_close(got, ops_reference.linear_csr(csr, rows, wt, init), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, x[rows] @ wt + init, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- lissa_step_update_csr


def expected_update(h, v, x_rows, q, damping, scale):
    """float64: h_new = v + (1 − damping) h − (x_rowsᵀ q)/scale and the two sums of squares."""
    h_new = v + (1.0 - damping) * h - (x_rows.T @ q) / scale
    return h_new, ((h_new - h) ** 2).sum(), (h_new ** 2).sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 9, 128])
@pytest.mark.parametrize("out", [1, 13, 70])
@pytest.mark.parametrize("with_dense", [True, False])
def test_lissa_step_update_csr_matches_formula(device, dtype, batch, out, with_dense):
    """Every element of h (NaN-free, in place) and both sums, against the float64 formula with the
    gradient block formed explicitly; dense columns through dense_grad or left in the CSR."""
    x = make_input(203, seed=batch * 3 + out)
    skip = dense_columns(x) if with_dense else None
    csr = ops.csr_from_dense(to(x, dtype, device), None if skip is None else skip.to(device))
    gen = torch.Generator().manual_seed(out)
    rows = torch.randperm(203, generator=gen)[:batch]
    h0, v = (torch.randn(IN, out, generator=gen, dtype=torch.float64) for _ in range(2))
    q = torch.randn(batch, out, generator=gen, dtype=torch.float64)
    damping, scale = 0.0731, 3.7
    dense = (None, None)
    if skip is not None:
        dense = (skip.to(device), to(x[rows][:, skip].T @ q, dtype, device))
    h = h0.to(dtype=dtype, device=device, copy=True)  # a copy even for float64 on CPU: updated in place
    ptr = h.data_ptr()
    sums = ops.lissa_step_update_csr(h, to(v, dtype, device), csr, rows.to(device), to(q, dtype, device),
                                 damping, scale, *dense)
    want, step_sq, h_sq = expected_update(to(h0, dtype, "cpu").double(), to(v, dtype, "cpu").double(), x[rows],
                                          to(q, dtype, "cpu").double(), damping, scale)
    assert h.data_ptr() == ptr and not torch.isnan(h).any()
    assert sums.dtype == torch.float64 and sums.shape == (2,)
    torch.testing.assert_close(h.double().cpu(), want, **TOL[dtype])
    rel = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(sums.cpu(), torch.stack([step_sq, h_sq]), rtol=rel, atol=rel)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 128])
def test_lissa_step_update_csr_dense_x_equals_formula(device, dtype, batch):
    """dense_x instead of dense_grad: the op forms dense_xᵀ grad_out itself (beside the update of the
    other rows on a 2-thread CPU pool); every element and both sums against the float64 formula,
    and the same h as with dense_grad given."""
    x = make_input(203, seed=batch + 40)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(to(x, dtype, device), skip.to(device))
    gen = torch.Generator().manual_seed(batch + 1)
    rows = torch.randperm(203, generator=gen)[:batch]
    h0, v = (torch.randn(IN, 70, generator=gen, dtype=torch.float64) for _ in range(2))
    q = torch.randn(batch, 70, generator=gen, dtype=torch.float64)
    dense_x = x[rows][:, skip]
    h, h_grad = (h0.to(dtype=dtype, device=device, copy=True) for _ in range(2))
    args = (to(v, dtype, device), csr, rows.to(device), to(q, dtype, device), 0.0731, 3.7, skip.to(device))
    sums = ops.lissa_step_update_csr(h, *args, dense_x=to(dense_x, dtype, device))
    sums_grad = ops.lissa_step_update_csr(h_grad, *args, to(dense_x.T @ q, dtype, device))
    want, step_sq, h_sq = expected_update(to(h0, dtype, "cpu").double(), to(v, dtype, "cpu").double(), x[rows],
                                          to(q, dtype, "cpu").double(), 0.0731, 3.7)
    torch.testing.assert_close(h.double().cpu(), want, **TOL[dtype])
    torch.testing.assert_close(h, h_grad, **TOL[dtype])
    rel = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(sums.cpu(), torch.stack([step_sq, h_sq]), rtol=rel, atol=rel)
    torch.testing.assert_close(sums, sums_grad, rtol=rel, atol=rel)
    if device == "cpu" and HAS_EXT:  # the kernel and its twin (without the extension both are the twin)
        h_twin = h0.to(dtype=dtype, copy=True)
        twin = ops_reference.lissa_step_update_csr(h_twin, *args, None, to(dense_x, dtype, device))
        torch.testing.assert_close(h_twin, h, **TOL[dtype])
        torch.testing.assert_close(twin, sums, rtol=rel, atol=rel)


def test_lissa_step_update_csr_non_contiguous_inputs():
    """Non-contiguous v, grad_out and dense_grad, a negative scale: every element and both sums
    against the float64 formula (the gradient block formed explicitly)."""
    x = make_input(50, seed=9)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    rows = torch.tensor([4, 17, 33, 2, 49])
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(IN, 21, generator=gen, dtype=torch.float64)
    v = torch.randn(21, IN, generator=gen, dtype=torch.float64).t()  # non-contiguous
    q = torch.randn(21, 5, generator=gen, dtype=torch.float64).t()
    dense_grad = torch.randn(21, skip.numel(), generator=gen, dtype=torch.float64).t()
    a = h0.clone()
    sums = ops.lissa_step_update_csr(a, v, csr, rows, q, 0.2, -1.5, skip, dense_grad)
    g = without(x, skip)[rows].T @ q
    g[skip] += dense_grad
    want = v + 0.8 * h0 - g / -1.5
    torch.testing.assert_close(a, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums, torch.stack([((want - h0) ** 2).sum(), (want ** 2).sum()]), rtol=1e-12, atol=0)
    if HAS_EXT:  # the kernel and its twin
        b = h0.clone()
        twin = ops_reference.lissa_step_update_csr(b, v, csr, rows, q, 0.2, -1.5, skip, dense_grad)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sums, twin, rtol=1e-12, atol=1e-12)


@needs_ext
def test_lissa_step_update_csr_is_deterministic_across_thread_counts():
    x = make_input(400, seed=5)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    rows = torch.randperm(400)[:128]
    q = torch.randn(128, 64, dtype=torch.float64)
    v = torch.randn(IN, 64, dtype=torch.float64)
    h0 = torch.randn(IN, 64, dtype=torch.float64)
    dense_grad = x[rows][:, skip].T @ q
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            h = h0.clone()
            results.append((h, ops.lissa_step_update_csr(h, v, csr, rows, q, 0.01, 7.0, skip, dense_grad)))
    finally:
        torch.set_num_threads(old)
    for h, sums in results[1:]:
        assert torch.equal(h, results[0][0]) and torch.equal(sums, results[0][1])
    # dense_x: the dense rows come from a BLAS product (its rounding may follow the thread count);
    # the other rows are still bit-identical
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            h = h0.clone()
            sums = ops.lissa_step_update_csr(h, v, csr, rows, q, 0.01, 7.0, skip, dense_x=x[rows][:, skip])
            other = torch.ones(IN, dtype=torch.bool)
            other[skip] = False
            assert torch.equal(h[other], results[0][0][other])
            torch.testing.assert_close(h, results[0][0], rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(sums, results[0][1], rtol=1e-13, atol=0)
    finally:
        torch.set_num_threads(old)


def test_lissa_step_update_csr_propagates_nan():
    x = make_input(30, seed=2)
    csr = ops.csr_from_dense(x)
    q = torch.randn(3, 8, dtype=torch.float64)
    q[1, 5] = float("nan")
    h = torch.zeros(IN, 8, dtype=torch.float64)
    sums = ops.lissa_step_update_csr(h, torch.ones(IN, 8, dtype=torch.float64), csr, torch.tensor([0, 1, 2]), q, 0.1, 2.0)
    assert torch.isnan(sums).all()


# --------------------------------------------------------------------------- opcheck and errors


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_csr_ops(device, dtype):
    x = make_input(40, seed=11)
    skip = dense_columns(x).to(device)
    csr = ops.csr_from_dense(to(x, dtype, device), skip)
    rows = torch.tensor([5, 0, 39], device=device)
    wt = torch.randn(IN, 9, dtype=dtype, device=device)
    init = torch.randn(3, 9, dtype=dtype, device=device)
    linear_csr, update = torch.ops.lipo_if.linear_csr.default, torch.ops.lipo_if.lissa_step_update.csr
    torch.library.opcheck(linear_csr, (csr.ptr, csr.cols, csr.vals, rows, wt, init))
    torch.library.opcheck(linear_csr, (csr.ptr, csr.cols, csr.vals, rows, wt, None))
    h, v = (torch.randn(IN, 9, dtype=dtype, device=device) for _ in range(2))
    q, dense_grad = torch.randn(3, 9, dtype=dtype, device=device), torch.randn(skip.numel(), 9, dtype=dtype, device=device)
    torch.library.opcheck(update, (h, v, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 2.0, skip, dense_grad))
    torch.library.opcheck(update, (h, v, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 2.0))
    dense_x = to(x[rows.cpu()][:, skip.cpu()], dtype, device)
    torch.library.opcheck(update, (h, v, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 2.0, skip, None, dense_x))
    torch.library.opcheck(linear_csr, (csr.ptr, csr.cols, csr.vals, rows, wt, init, skip, dense_x))


def _small():
    x = make_input(20, seed=4)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    return x, skip, csr, torch.tensor([1, 2, 3]), torch.randn(IN, 6, dtype=torch.float64)


@needs_ext
def test_csr_op_errors_name_the_bad_value():
    """The C++ checks (the only ones), through lipo_if.ops: each message names the op, the argument
    and the bad value / shape / dtype."""
    x, skip, csr, rows, wt = _small()
    q = torch.randn(3, 6, dtype=torch.float64)
    nd = skip.numel()
    lin = "lipo_if.linear_csr: "
    with pytest.raises(RuntimeError, match=lin + "rows must be int64, got Int"):
        ops.linear_csr(csr, rows.int(), wt)
    with pytest.raises(RuntimeError, match=lin + r"rows must be 1-D \[B\], got shape \[3, 1\]"):
        ops.linear_csr(csr, rows[:, None], wt)
    with pytest.raises(RuntimeError, match=lin + "vals has dtype Double but weight_t has dtype Float"):
        ops.linear_csr(csr, rows, wt.float())
    with pytest.raises(RuntimeError, match=lin + r"init must be 2-D \[B, out\] = \[3, 6\], got shape \[2, 6\]"):
        ops.linear_csr(csr, rows, wt, torch.zeros(2, 6, dtype=torch.float64))
    dense_x = x[rows][:, skip]
    with pytest.raises(RuntimeError, match=lin + "dense_cols and its values \\(dense_x\\) go together, got dense_cols None"):
        ops.linear_csr(csr, rows, wt, None, None, dense_x)
    with pytest.raises(RuntimeError, match=lin + f"dense_x must be 2-D \\[B, nd\\] = \\[3, {nd}\\], got shape \\[3, {nd - 1}\\]"):
        ops.linear_csr(csr, rows, wt, None, skip, dense_x[:, 1:])
    with pytest.raises(RuntimeError, match=lin + "dense_x has dtype Float but weight_t has dtype Double"):
        ops.linear_csr(csr, rows, wt, None, skip, dense_x.float())
    with pytest.raises(RuntimeError, match=lin + "dense_cols must be a 1-D int64 tensor on cpu, got Int"):
        ops.linear_csr(csr, rows, wt, None, skip.int(), dense_x)
    h = torch.zeros(IN, 6, dtype=torch.float64)
    upd = "lipo_if.lissa_step_update.csr: "
    with pytest.raises(RuntimeError, match=upd + r"h must be contiguous \(the op writes through it\), got strides \[1, 301\]"):
        ops.lissa_step_update_csr(torch.zeros(6, IN, dtype=torch.float64).t(), h, csr, rows, q, 0.1, 1.0)
    with pytest.raises(RuntimeError, match=upd + "dense_cols and its values \\(dense_grad or dense_x\\) go together, "
                                                 "got dense_cols given and dense_grad or dense_x None"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 1.0, dense_cols=skip)
    with pytest.raises(RuntimeError, match=upd + r"grad_out must be 2-D \[B, out\] = \[3, 6\], got shape \[2, 6\]"):
        ops.lissa_step_update_csr(h, h, csr, rows, q[:2], 0.1, 1.0)
    with pytest.raises(RuntimeError, match=upd + f"dense_grad must be 2-D \\[nd, out\\] = \\[{nd}, 6\\], got shape \\[1, 6\\]"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 1.0, skip, torch.zeros(1, 6, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=upd + "scale must be non-zero, got 0"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 0.0)
    with pytest.raises(RuntimeError, match=upd + "give dense_grad or dense_x"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 1.0, skip, dense_x.T @ q, dense_x)
    with pytest.raises(RuntimeError, match=upd + "dense_cols and its values"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 1.0, dense_x=dense_x)
    with pytest.raises(RuntimeError, match=upd + f"dense_x must be 2-D \\[B, nd\\] = \\[3, {nd}\\], got shape \\[2, {nd}\\]"):
        ops.lissa_step_update_csr(h, h, csr, rows, q, 0.1, 1.0, skip, dense_x=dense_x[:2])
    with pytest.raises(RuntimeError, match=upd + r"v must have the shape of h \[301, 6\], got \[300, 6\]"):
        ops.lissa_step_update_csr(h, h[:300], csr, rows, q, 0.1, 1.0)


@needs_ext
def test_kernel_index_checks():
    """Index values are checked by the kernels (raw ops included): nothing is read out of bounds;
    dense_cols in one place (check_dense_cols) for both CSR ops: range and repeats."""
    x, skip, csr, rows, wt = _small()
    q = torch.randn(3, 6, dtype=torch.float64)
    h = torch.zeros(IN, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 20 is out of range for a CSR matrix of 20 rows"):
        ops.linear_csr(csr, torch.tensor([0, 20]), wt)
    with pytest.raises(RuntimeError, match=r"rows\[0\] = -1 is out of range for a CSR matrix"):
        ops.lissa_step_update_csr(h, h, csr, torch.tensor([-1, 0, 1]), q, 0.1, 1.0)
    bad_cols = csr.cols.clone()
    bad_cols[csr.ptr[1]] = IN  # first entry of row 1
    with pytest.raises(RuntimeError, match=r"CSR column index 301 \(row 1\) is out of range"):
        torch.ops.lipo_if.linear_csr(csr.ptr, bad_cols, csr.vals, rows, wt, None)
    bad_ptr = csr.ptr.clone()
    bad_ptr[2] = csr.nnz + 5
    with pytest.raises(RuntimeError, match="malformed CSR ptr"):
        torch.ops.lipo_if.linear_csr(bad_ptr, csr.cols, csr.vals, rows, wt, None)
    dense_x = x[rows][:, skip]
    update = torch.ops.lipo_if.lissa_step_update.csr
    for call in (lambda dc, dx: torch.ops.lipo_if.linear_csr(csr.ptr, csr.cols, csr.vals, rows, wt, None, dc, dx),
                 lambda dc, dx: update(h, h, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 1.0, dc, None, dx)):
        with pytest.raises(RuntimeError, match=r"dense_cols\[0\] = 301 is out of range \[0, 301\)"):
            call(torch.tensor([IN]), dense_x[:, :1])
        with pytest.raises(RuntimeError, match=r"dense_cols\[1\] = -2 is out of range"):
            call(torch.tensor([0, -2]), dense_x[:, :2])
        dup = torch.cat([skip[:1], skip[:1]])
        with pytest.raises(RuntimeError, match=f"dense_cols repeats column {int(skip[0])} \\(at \\[1\\]\\)"):
            call(dup, dense_x[:, :2])
    with pytest.raises(RuntimeError, match="give dense_grad or dense_x"):
        update(h, h, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 1.0, skip, dense_x.T @ q, dense_x)
    with pytest.raises(RuntimeError, match=r"dense_x must be 2-D \[B, nd\]"):
        update(h, h, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 1.0, skip, None, dense_x[:, 1:])
    with pytest.raises(RuntimeError, match="lipo_if.linear_csr: ptr must be int64, got Int"):
        torch.ops.lipo_if.linear_csr(csr.ptr.int(), csr.cols, csr.vals, rows, wt, None)
    with pytest.raises(RuntimeError, match="h must be contiguous"):
        update(torch.zeros(6, IN, dtype=torch.float64).t(), h, csr.ptr, csr.cols, csr.vals, rows, q, 0.1, 1.0)
