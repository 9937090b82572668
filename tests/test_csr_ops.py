"""Tests of the CSR kernels of the fused LiSSA step (lipo_if.ops.csr_linear, csr_lissa_update_)
against float64 references built from the dense matrix, on fresh random inputs with odd sizes.

Kernel-specific tests skip when ``lipo_if._C`` is not built (the wrappers then run the
pure-PyTorch twins, which are checked against the same references); CUDA cases skip without a
CUDA device and a CUDA build of the extension.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, needs_cuda, needs_ext

from lipo_if import ops, ops_reference

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


# --------------------------------------------------------------------------- csr_split


def _expected_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense columns, the dense matrix of the other columns) by the documented policy, from x."""
    n = x.shape[0]
    counts = (x != 0).sum(0)
    dense = (counts > 0.3 * n) & (n >= 32)
    cells = n * int((~dense).sum())
    if cells and int(counts[~dense].sum()) > 0.15 * cells:
        dense[:] = True
    cols = dense.nonzero()[:, 0]
    return cols, without(x, cols)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["mixed", "few-rows", "all-dense", "all-zero", "no-rows", "transposed"])
def test_csr_split_matches_policy(device, dtype, case):
    """ops.csr_split (the CPU / CUDA kernel when built) and its pure-PyTorch twin: the dense columns
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
    for split in (ops.csr_split, ops_reference.csr_split):
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


def test_csr_split_rejects_bad_input():
    with pytest.raises(ValueError, match="x"):
        ops.csr_split(torch.zeros(5))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.csr_split(torch.zeros(5, 3, dtype=torch.int64))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_csr_split_kernel_checks_and_opcheck(device):
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.lipo_if.csr_split(torch.zeros(5, dtype=torch.float64, device=device))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.lipo_if.csr_split(torch.zeros(5, 3, dtype=torch.int32, device=device))
    torch.library.opcheck(torch.ops.lipo_if.csr_split.default, (make_input(41, seed=5).to(device),))


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


# --------------------------------------------------------------------------- csr_linear


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 7, 129, 300])  # 300 > 256: the many-rows CPU kernel
@pytest.mark.parametrize("out", [1, 37, 67])
def test_csr_linear_matches_dense_product(device, dtype, batch, out):
    x = make_input(311, seed=batch + out)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(to(x, dtype, device), skip.to(device))
    gen = torch.Generator().manual_seed(batch)
    rows = torch.randint(0, 311, (batch,), generator=gen)  # repeats allowed
    wt = torch.randn(IN, out, generator=gen, dtype=torch.float64)
    init = torch.randn(batch, out, generator=gen, dtype=torch.float64)
    want = without(x, skip)[rows] @ wt
    for start, expected in ((None, want), (init, want + init)):
        got = ops.csr_linear(csr, rows.to(device), to(wt, dtype, device),
                             None if start is None else to(start, dtype, device))
        assert got.shape == (batch, out) and got.dtype == dtype and not torch.isnan(got).any()
        torch.testing.assert_close(got.double().cpu(), expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 128])
@pytest.mark.parametrize("dense", ["scattered", "range", "none"])
def test_csr_linear_with_dense_part(device, dtype, batch, dense):
    """csr_linear's dense_x / dense_cols part (a GEMM beside the sparse part): with the dense
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
                to(dense_x, dtype, device), skip.to(device))
        got = ops.csr_linear(*args)
        torch.testing.assert_close(got.double().cpu(), expected, **TOL[dtype])
        if device == "cpu":
            twin = ops_reference.csr_linear(*args)
            torch.testing.assert_close(got, twin, **TOL[dtype])


def test_csr_linear_reference_twin_agrees():
    x = make_input(40, seed=3)
    csr = ops.csr_from_dense(x)
    rows, wt, init = torch.tensor([3, 3, 39, 0]), torch.randn(IN, 11, dtype=torch.float64), torch.randn(4, 11, dtype=torch.float64)
    torch.testing.assert_close(ops.csr_linear(csr, rows, wt, init), ops_reference.csr_linear(csr, rows, wt, init),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- csr_lissa_update_


def expected_update(h, v, x_rows, q, damping, scale):
    """float64: h_new = v + (1 − damping) h − (x_rowsᵀ q)/scale and the two sums of squares."""
    h_new = v + (1.0 - damping) * h - (x_rows.T @ q) / scale
    return h_new, ((h_new - h) ** 2).sum(), (h_new ** 2).sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [0, 1, 9, 128])
@pytest.mark.parametrize("out", [1, 13, 70])
@pytest.mark.parametrize("with_dense", [True, False])
def test_csr_lissa_update_matches_formula(device, dtype, batch, out, with_dense):
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
    sums = ops.csr_lissa_update_(h, to(v, dtype, device), csr, rows.to(device), to(q, dtype, device),
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
def test_csr_lissa_update_dense_x_equals_formula(device, dtype, batch):
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
    sums = ops.csr_lissa_update_(h, *args, dense_x=to(dense_x, dtype, device))
    sums_grad = ops.csr_lissa_update_(h_grad, *args, to(dense_x.T @ q, dtype, device))
    want, step_sq, h_sq = expected_update(to(h0, dtype, "cpu").double(), to(v, dtype, "cpu").double(), x[rows],
                                          to(q, dtype, "cpu").double(), 0.0731, 3.7)
    torch.testing.assert_close(h.double().cpu(), want, **TOL[dtype])
    torch.testing.assert_close(h, h_grad, **TOL[dtype])
    rel = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(sums.cpu(), torch.stack([step_sq, h_sq]), rtol=rel, atol=rel)
    torch.testing.assert_close(sums, sums_grad, rtol=rel, atol=rel)
    if device == "cpu":
        h_twin = h0.to(dtype=dtype, copy=True)
        twin = ops_reference.csr_lissa_update_(h_twin, *args, None, to(dense_x, dtype, device))
        torch.testing.assert_close(h_twin, h, **TOL[dtype])
        torch.testing.assert_close(twin, sums, rtol=rel, atol=rel)


def test_csr_lissa_update_non_contiguous_inputs_and_reference_twin():
    x = make_input(50, seed=9)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    rows = torch.tensor([4, 17, 33, 2, 49])
    gen = torch.Generator().manual_seed(0)
    h0 = torch.randn(IN, 21, generator=gen, dtype=torch.float64)
    v = torch.randn(21, IN, generator=gen, dtype=torch.float64).t()  # non-contiguous
    q = torch.randn(21, 5, generator=gen, dtype=torch.float64).t()
    dense_grad = torch.randn(21, skip.numel(), generator=gen, dtype=torch.float64).t()
    a, b = h0.clone(), h0.clone()
    sa = ops.csr_lissa_update_(a, v, csr, rows, q, 0.2, -1.5, skip, dense_grad)
    sb = ops_reference.csr_lissa_update_(b, v, csr, rows, q, 0.2, -1.5, skip, dense_grad)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sa, sb, rtol=1e-12, atol=1e-12)


@needs_ext
def test_csr_lissa_update_is_deterministic_across_thread_counts():
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
            results.append((h, ops.csr_lissa_update_(h, v, csr, rows, q, 0.01, 7.0, skip, dense_grad)))
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
            sums = ops.csr_lissa_update_(h, v, csr, rows, q, 0.01, 7.0, skip, dense_x=x[rows][:, skip])
            other = torch.ones(IN, dtype=torch.bool)
            other[skip] = False
            assert torch.equal(h[other], results[0][0][other])
            torch.testing.assert_close(h, results[0][0], rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(sums, results[0][1], rtol=1e-13, atol=0)
    finally:
        torch.set_num_threads(old)


def test_csr_lissa_update_propagates_nan():
    x = make_input(30, seed=2)
    csr = ops.csr_from_dense(x)
    q = torch.randn(3, 8, dtype=torch.float64)
    q[1, 5] = float("nan")
    h = torch.zeros(IN, 8, dtype=torch.float64)
    sums = ops.csr_lissa_update_(h, torch.ones(IN, 8, dtype=torch.float64), csr, torch.tensor([0, 1, 2]), q, 0.1, 2.0)
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
    torch.library.opcheck(torch.ops.lipo_if.csr_linear.default, (csr.ptr, csr.cols, csr.vals, rows, wt, init))
    torch.library.opcheck(torch.ops.lipo_if.csr_linear.default, (csr.ptr, csr.cols, csr.vals, rows, wt, None))
    h, v = (torch.randn(IN, 9, dtype=dtype, device=device) for _ in range(2))
    q, dense_grad = torch.randn(3, 9, dtype=dtype, device=device), torch.randn(skip.numel(), 9, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.lipo_if.csr_lissa_update_.default,
                          (h, v, csr.ptr, csr.cols, csr.vals, rows, q, skip, dense_grad, 0.1, 2.0))
    torch.library.opcheck(torch.ops.lipo_if.csr_lissa_update_.default,
                          (h, v, csr.ptr, csr.cols, csr.vals, rows, q, None, None, 0.1, 2.0))
    dense_x = to(x[rows.cpu()][:, skip.cpu()], dtype, device)
    torch.library.opcheck(torch.ops.lipo_if.csr_lissa_update_.default,
                          (h, v, csr.ptr, csr.cols, csr.vals, rows, q, skip, None, 0.1, 2.0, dense_x))
    torch.library.opcheck(torch.ops.lipo_if.csr_linear.default, (csr.ptr, csr.cols, csr.vals, rows, wt, init, dense_x, skip))


def _small():
    x = make_input(20, seed=4)
    skip = dense_columns(x)
    csr = ops.csr_from_dense(x, skip)
    return x, skip, csr, torch.tensor([1, 2, 3]), torch.randn(IN, 6, dtype=torch.float64)


def test_wrapper_errors():
    x, skip, csr, rows, wt = _small()
    q = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match="csr must be a lipo_if.ops.CsrMatrix"):
        ops.csr_linear((csr.ptr, csr.cols, csr.vals), rows, wt)
    with pytest.raises(TypeError, match="rows must be a 1-D int64 tensor"):
        ops.csr_linear(csr, rows.int(), wt)
    with pytest.raises(ValueError, match=r"weight_t must have 301 rows"):
        ops.csr_linear(csr, rows, wt[:300])
    with pytest.raises(TypeError, match="csr.vals has dtype torch.float64 but weight_t has torch.float32"):
        ops.csr_linear(csr, rows, wt.float())
    with pytest.raises(ValueError, match=r"init must be \[B, out\] = \[3, 6\]"):
        ops.csr_linear(csr, rows, wt, torch.zeros(2, 6, dtype=torch.float64))
    h = torch.zeros(IN, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="h must be contiguous"):
        ops.csr_lissa_update_(torch.zeros(6, IN, dtype=torch.float64).t(), h, csr, rows, q, 0.1, 1.0)
    with pytest.raises(ValueError, match="dense_cols and dense_grad go together"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 1.0, dense_cols=skip)
    with pytest.raises(ValueError, match=r"grad_out must be \[B, out\] = \[3, 6\]"):
        ops.csr_lissa_update_(h, h, csr, rows, q[:2], 0.1, 1.0)
    with pytest.raises(ValueError, match=r"dense_grad must be \[nd, out\]"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 1.0, skip, torch.zeros(1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale must be non-zero"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 0.0)
    dense_x = x[rows][:, skip]
    with pytest.raises(ValueError, match="dense_grad or dense_x"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 1.0, skip, dense_x.T @ q, dense_x)
    with pytest.raises(ValueError, match="dense_x and dense_cols go together"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 1.0, dense_x=dense_x)
    with pytest.raises(ValueError, match=r"dense_x must be \[B, nd\]"):
        ops.csr_lissa_update_(h, h, csr, rows, q, 0.1, 1.0, skip, dense_x=dense_x[:2])
    with pytest.raises(ValueError, match="dense_x and dense_cols go together"):
        ops.csr_linear(csr, rows, wt, None, dense_x)
    with pytest.raises(ValueError, match=r"dense_x must be \[B, nd\]"):
        ops.csr_linear(csr, rows, wt, None, dense_x[:, 1:], skip)
    with pytest.raises(TypeError, match="dense_x has dtype torch.float32"):
        ops.csr_linear(csr, rows, wt, None, dense_x.float(), skip)


@needs_ext
def test_kernel_index_checks():
    """Index values are checked by the kernels (raw ops included): nothing is read out of bounds."""
    x, skip, csr, rows, wt = _small()
    q = torch.randn(3, 6, dtype=torch.float64)
    h = torch.zeros(IN, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 20 is out of range for a CSR matrix of 20 rows"):
        ops.csr_linear(csr, torch.tensor([0, 20]), wt)
    with pytest.raises(RuntimeError, match="is out of range for a CSR matrix"):
        ops.csr_lissa_update_(h, h, csr, torch.tensor([-1, 0, 1]), q, 0.1, 1.0)
    bad_cols = csr.cols.clone()
    bad_cols[csr.ptr[1]] = IN  # first entry of row 1
    with pytest.raises(RuntimeError, match=r"CSR column index 301 \(row 1\) is out of range"):
        torch.ops.lipo_if.csr_linear(csr.ptr, bad_cols, csr.vals, rows, wt, None)
    bad_ptr = csr.ptr.clone()
    bad_ptr[2] = csr.nnz + 5
    with pytest.raises(RuntimeError, match="malformed CSR ptr"):
        torch.ops.lipo_if.csr_linear(bad_ptr, csr.cols, csr.vals, rows, wt, None)
    dense_x = x[rows][:, skip]
    with pytest.raises(RuntimeError, match=r"dense_cols\[0\] = 301 is out of range"):
        torch.ops.lipo_if.csr_linear(csr.ptr, csr.cols, csr.vals, rows, wt, None, dense_x[:, :1], torch.tensor([IN]))
    with pytest.raises(RuntimeError, match="dense_grad or dense_x"):
        torch.ops.lipo_if.csr_lissa_update_(h, h, csr.ptr, csr.cols, csr.vals, rows, q, skip, dense_x.T @ q, 0.1, 1.0,
                                            dense_x)
    with pytest.raises(RuntimeError, match=r"dense_x must be \[B, nd\]"):
        torch.ops.lipo_if.csr_lissa_update_(h, h, csr.ptr, csr.cols, csr.vals, rows, q, skip, None, 0.1, 1.0,
                                            dense_x[:, 1:])
    with pytest.raises(RuntimeError, match="dense_cols repeats column"):
        dup = torch.cat([skip[:1], skip[:1]])
        torch.ops.lipo_if.csr_lissa_update_(h, h, csr.ptr, csr.cols, csr.vals, rows, q, dup,
                                            torch.zeros(2, 6, dtype=torch.float64), 0.1, 1.0)
    with pytest.raises(RuntimeError, match="ptr must be int64"):
        torch.ops.lipo_if.csr_linear(csr.ptr.int(), csr.cols, csr.vals, rows, wt, None)
    with pytest.raises(RuntimeError, match="h must be contiguous"):
        torch.ops.lipo_if.csr_lissa_update_(torch.zeros(6, IN, dtype=torch.float64).t(), h, csr.ptr, csr.cols,
                                            csr.vals, rows, q, None, None, 0.1, 1.0)
