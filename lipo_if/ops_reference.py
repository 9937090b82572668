"""Pure-PyTorch reference implementations of the :mod:`lipo_if.ops` kernels.

Same names and signatures as :mod:`lipo_if.ops`, so tests and benchmarks can swap the two
modules. These are also the fallback that :mod:`lipo_if.ops` uses when the compiled extension
``lipo_if._C`` is not built (or has no kernel for the inputs' device). No input validation here:
the checks live in the C++ operators (``csrc/checks.h``) only.

:func:`mlp_grad_dot_vmap` is the *materializing* reference (``torch.func.vmap(grad)`` per-sample
gradients) used by the benchmarks and tests only: it is what the fused kernel avoids.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch.func import functional_call, grad, vmap

from . import split_policy


def linear_grad_dot(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``result[i, j] = out_grad[i]ᵀ W_j act[i] + out_grad[i] · b_j`` by one GEMM and a row sum.

    act ``[n, in]``, out_grad ``[n, out]``, vec_weight ``[k, out, in]``, vec_bias ``[k, out]`` or
    None → ``[n, k]``. The ``[n, k, out]`` temporary ``act @ W_jᵀ`` is the only intermediate — the
    best dense pure-PyTorch formulation (GEMM-bound); per-sample gradients are never formed.
    """
    n, k = act.shape[0], vec_weight.shape[0]
    out, in_dim = vec_weight.shape[1], vec_weight.shape[2]
    proj = (act @ vec_weight.reshape(k * out, in_dim).T).view(n, k, out)  # W_j act_i
    if vec_bias is not None:
        proj = proj + vec_bias  # broadcast over samples: (W_j act_i + b_j)
    return torch.einsum("nko,no->nk", proj, out_grad)


def linear_grad_dot_segment(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor | None,
    indptr: torch.Tensor,
) -> torch.Tensor:
    """:func:`linear_grad_dot` per row, then summed per segment (``index_add_``): ``[S, k]``.

    act ``[n, in]``, out_grad ``[n, out]``, vec_weight ``[k, out, in]``, vec_bias ``[k, out]`` or
    None, indptr int64 ``[S + 1]`` (segment s = rows ``indptr[s]:indptr[s+1]``; empty ones give 0).
    """
    per_row = linear_grad_dot(act, out_grad, vec_weight, vec_bias)  # [n, k]
    n_segments = indptr.shape[0] - 1
    segment = torch.repeat_interleave(
        torch.arange(n_segments, device=indptr.device), indptr[1:] - indptr[:-1], output_size=act.shape[0])
    return per_row.new_zeros((n_segments, per_row.shape[1])).index_add_(0, segment, per_row)


def lissa_step(
    h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_new = v + (1 − damping)·h − hvp/scale`` and ``‖h_new − h‖₂`` (0-dim), all same shape."""
    h_new = v + (1.0 - damping) * h - hvp / scale
    return h_new, torch.linalg.vector_norm(h_new - h)


def lissa_step_update(h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float) -> torch.Tensor:
    """The :func:`lissa_step` formula written into ``h``; returns float64 ``[‖h_new − h‖², ‖h_new‖²]``."""
    h_new = v + (1.0 - damping) * h - hvp / scale
    sums = torch.stack([((h_new - h).double() ** 2).sum(), (h_new.double() ** 2).sum()])
    h.copy_(h_new)
    return sums


def linear_strided(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight_t + bias`` ``[n, out]`` (dense GEMM): x ``[n, in]``, weight_t ``[in, out]``, bias ``[out]``."""
    return torch.nn.functional.linear(x, weight_t.t(), bias)


def linear_weight_grad_strided(
    x: torch.Tensor, grad_out: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x.T @ grad_out`` ``[in, out]`` (dense GEMM): x ``[n, in]``, grad_out ``[n, out]``; written
    into ``out`` (contiguous ``[in, out]``) and returned when given."""
    if out is None:
        return x.T @ grad_out
    return torch.mm(x.T, grad_out, out=out)


class CsrMatrix(NamedTuple):
    """A ``[n_rows, n_cols]`` matrix in compressed sparse rows, as plain tensors (one device).

    Row ``i``'s entries are ``cols[ptr[i]:ptr[i+1]]`` (int64 column indices, increasing) with values
    ``vals[ptr[i]:ptr[i+1]]``. Built once by ``split_csr`` (or :func:`csr_from_dense`); read by
    ``linear_csr`` and ``lissa_step_update_csr``, which take a row subset per call.
    """

    ptr: torch.Tensor   # [n_rows + 1] int64
    cols: torch.Tensor  # [nnz] int64
    vals: torch.Tensor  # [nnz] float
    n_cols: int

    @property
    def n_rows(self) -> int:
        return self.ptr.shape[0] - 1

    @property
    def nnz(self) -> int:
        return self.cols.shape[0]


def csr_from_dense(
    x: torch.Tensor, skip_cols: torch.Tensor | None = None, nonzero: torch.Tensor | None = None
) -> CsrMatrix:
    """The non-zeros of a dense ``[n, in]`` matrix as a :class:`CsrMatrix`, leaving out the columns
    ``skip_cols`` (int64 indices, e.g. the dense descriptor columns handled by a GEMM instead).
    ``nonzero``: ``x.nonzero()`` when the caller has it already (one pass over x saved)."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [n, in], got shape {tuple(x.shape)}")
    rows, cols = (x.nonzero() if nonzero is None else nonzero).unbind(1)  # row-major: columns increase in a row
    if skip_cols is not None and skip_cols.numel():
        keep = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        keep[skip_cols] = False
        keep = keep[cols]
        rows, cols = rows[keep], cols[keep]
    ptr = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(torch.bincount(rows, minlength=x.shape[0]), 0, out=ptr[1:])
    return CsrMatrix(ptr, cols.contiguous(), x[rows, cols], x.shape[1])


def split_csr(x: torch.Tensor) -> tuple[torch.Tensor, CsrMatrix]:
    """``(dense_cols, csr)``: the columns of ``x`` ``[n, in]`` non-zero in more than
    ``DENSE_COLUMN_DENSITY`` of the rows (int64, increasing; none below ``MIN_ROWS_FOR_SPLIT``
    rows) and the :class:`CsrMatrix` of the others — or every column dense and no entries when
    those are denser than ``SPARSE_MAX_DENSITY`` overall (:mod:`lipo_if.split_policy`)."""
    n, in_dim = x.shape
    nonzero = (x != 0).nonzero()  # one pass over x; counts and CSR both come from it
    counts = torch.bincount(nonzero[:, 1], minlength=in_dim)
    dense = counts > split_policy.DENSE_COLUMN_DENSITY * n
    if n < split_policy.MIN_ROWS_FOR_SPLIT:
        dense[:] = False
    sparse_cells = n * int((~dense).sum())
    if sparse_cells and int(counts[~dense].sum()) > split_policy.SPARSE_MAX_DENSITY * sparse_cells:
        dense[:] = True
    dense_cols = dense.nonzero()[:, 0]
    return dense_cols, csr_from_dense(x, dense_cols, nonzero)


def _csr_rows_dense(csr: CsrMatrix, rows: torch.Tensor) -> torch.Tensor:
    """``X[rows]`` ``[B, n_cols]`` as a dense tensor (entries of repeated columns add)."""
    starts = csr.ptr[rows]
    counts = csr.ptr[rows + 1] - starts
    batch = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    entries = torch.repeat_interleave(starts, counts) + torch.arange(batch.shape[0], device=rows.device) - first
    dense = csr.vals.new_zeros(rows.shape[0], csr.n_cols)
    return dense.index_put_((batch, csr.cols[entries]), csr.vals[entries], accumulate=True)


def linear_csr(
    csr: CsrMatrix, rows: torch.Tensor, weight_t: torch.Tensor, init: torch.Tensor | None = None,
    dense_cols: torch.Tensor | None = None, dense_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """``X[rows] @ weight_t (+ init) (+ dense_x @ weight_t[dense_cols])`` ``[B, out]`` by densifying
    the B rows and one GEMM."""
    y = _csr_rows_dense(csr, rows) @ weight_t
    if dense_x is not None:
        y = y + dense_x @ weight_t[dense_cols]
    return y if init is None else y + init


def lissa_step_update_csr(
    h: torch.Tensor, v: torch.Tensor, csr: CsrMatrix, rows: torch.Tensor, grad_out: torch.Tensor, damping: float,
    scale: float, dense_cols: torch.Tensor | None = None, dense_grad: torch.Tensor | None = None,
    dense_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """``G = X[rows]ᵀ grad_out`` (+ dense_grad — or ``dense_xᵀ grad_out`` — at rows dense_cols)
    formed explicitly, then :func:`lissa_step_update` with ``hvp = G``; returns float64
    ``[‖h_new − h‖², ‖h_new‖²]``."""
    if dense_x is not None:
        dense_grad = dense_x.T @ grad_out
    g = _csr_rows_dense(csr, rows).T @ grad_out
    if dense_cols is not None:
        g.index_add_(0, dense_cols, dense_grad)
    return lissa_step_update(h, v, g, damping, scale)


def mlp_grad_dot_vmap(
    layers: Sequence[torch.nn.Linear], vec: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor,
    chunk_size: int = 256,
) -> torch.Tensor:
    """``vec · ∇θ (f(xᵢ) − yᵢ)²`` for every row of ``X`` by materialized per-sample gradients.

    ``layers``: the Linear layers of an MLP with ReLU between them (last layer has 1 output);
    ``vec``: one tensor per parameter, in ``layer.weight, layer.bias`` order; ``X`` ``[n, d]``,
    ``y`` ``[n]`` → ``[n]``. Memory: one ``[chunk_size, p]`` block of gradients at a time.
    """
    module = torch.nn.Sequential()
    for i, layer in enumerate(layers):
        module.append(layer)
        if i < len(layers) - 1:
            module.append(torch.nn.ReLU())
    params = {name: p.detach() for name, p in module.named_parameters()}
    names = list(params)
    if len(names) != len(vec):
        raise ValueError(f"vec needs one tensor per parameter ({len(names)}), got {len(vec)}")

    def sample_loss(theta: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (functional_call(module, theta, (x.unsqueeze(0),)).squeeze() - t) ** 2

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    out = []
    for start in range(0, X.shape[0], chunk_size):
        grads = per_sample(params, X[start:start + chunk_size], y[start:start + chunk_size])
        out.append(sum((grads[nm].flatten(1) @ v.flatten()) for nm, v in zip(names, vec)))
    return torch.cat(out) if out else X.new_zeros(0)
