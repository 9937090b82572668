"""Fused kernels for influence scoring and LiSSA, from the compiled extension ``lipo_if._C``.

Operators (registered with the PyTorch dispatcher as ``torch.ops.lipo_if.*``):

- :func:`linear_grad_dot` — dot products of every sample's Linear-layer gradient with ``k``
  parameter-shaped vectors, without materializing per-sample gradients (sparse-aware on CPU).
- :func:`lissa_step` — one fused LiSSA update plus its step norm.
- :func:`sparse_linear` — ``x Wᵀ + b`` over the non-zero entries of ``x`` (the first layer's
  forward on fingerprint inputs); on CPU, columns that are non-zero in most rows (descriptors)
  go to one BLAS GEMM and the rest to a scatter (few rows) or cache-blocked gather (many rows).
- :func:`sparse_linear_weight_grad` — ``xᵀ G`` (the transposed weight gradient of that layer)
  over the non-zero entries of ``x``, optionally written into a caller's buffer
  (``torch.ops.lipo_if.sparse_linear_weight_grad_into``, a mutating op).
- :func:`csr_linear` — ``X[rows] Wᵀ + init`` for a :class:`CsrMatrix` ``X`` compressed once
  (:func:`csr_from_dense`): the first layer's forward on training minibatches without scanning them.
- :func:`csr_lissa_update_` — the LiSSA update of the first weight block fused with that block's
  Hessian-vector product ``X[rows]ᵀ G`` (never formed), in place, with both norms.

This module is the one home of the kernels' fallback logic: the influence code
(:mod:`lipo_if.influence`) calls these wrappers, which pick the compiled kernel or the
pure-PyTorch twin of :mod:`lipo_if.ops_reference`.

Backends (:func:`backend`): ``"cpp"`` (CPU kernels), ``"cpp+cuda"`` (CPU and CUDA kernels) or
``"pytorch"`` when ``lipo_if._C`` is not built (or ``LIPO_IF_NO_EXT=1``) — then :mod:`lipo_if.ops_reference` is used and
one ``RuntimeWarning`` is issued at import. ``LIPO_IF_JIT=1`` compiles the sources from
``csrc/`` with :func:`load_jit` instead of importing the prebuilt module (development).

Input policy: shapes, dtypes (float32/float64, all equal) and devices are validated here with
``ValueError``/``TypeError`` naming the argument; non-contiguous inputs are accepted (the kernels
copy them to a contiguous layout). Tensors on a device without a compiled kernel (e.g. CUDA with
a CPU-only build) go through the pure-PyTorch reference.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import ops_reference
from .ops_reference import CsrMatrix, csr_from_dense

__all__ = [
    "CsrMatrix", "backend", "csr_from_dense", "csr_linear", "csr_lissa_update_", "csr_split", "first_layer_with_vectors",
    "has_ops", "linear_grad_dot", "lissa_step", "load_jit", "mlp_grad_dot", "sparse_linear",
    "sparse_linear_weight_grad",
]

_OPS_NAMES = (
    "linear_grad_dot", "lissa_step", "sparse_linear", "sparse_linear_weight_grad", "sparse_linear_weight_grad_into",
    "csr_linear", "csr_lissa_update_", "csr_split",
)
_CSRC = Path(__file__).resolve().parents[1] / "csrc"


def has_ops() -> bool:
    """True when the ``torch.ops.lipo_if`` operators are registered (extension loaded)."""
    try:
        for name in _OPS_NAMES:
            getattr(torch.ops.lipo_if, name).default  # noqa: B018 — attribute lookup is the test
    except (AttributeError, RuntimeError):
        return False
    return True


_KERNEL_FOUND: dict[str, bool] = {}  # device type → all kernels registered (cached once True)


def _has_kernel(device_type: str) -> bool:
    """True when every operator has a kernel for ``device_type`` ("CPU" or "CUDA").

    A positive answer is cached (kernels are never unregistered; the lookup costs ≈ 15 µs per op
    call otherwise, noticeable in a LiSSA step); a negative one is asked again, so that a later
    :func:`load_jit` is seen."""
    if _KERNEL_FOUND.get(device_type):
        return True
    found = has_ops() and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"lipo_if::{name}", device_type) for name in _OPS_NAMES
    )
    if found:
        _KERNEL_FOUND[device_type] = True
    return found


def backend() -> str:
    """``"cpp+cuda"``, ``"cpp"`` or ``"pytorch"`` (no extension: reference kernels)."""
    if not has_ops():
        return "pytorch"
    return "cpp+cuda" if _has_kernel("CUDA") else "cpp"


def load_jit(verbose: bool = False) -> None:
    """Compile ``csrc/`` with ``torch.utils.cpp_extension.load`` (ninja) and register the ops.

    For development (``LIPO_IF_JIT=1``): rebuilds only what changed, in torch's extension cache.
    CUDA sources are included when torch has CUDA and a toolkit is found. No-op when the ops are
    already registered (a second registration of the ``lipo_if`` library would fail).
    """
    if has_ops():
        return
    from torch.utils.cpp_extension import CUDA_HOME, load  # noqa: PLC0415 — heavy, only for JIT

    if not (_CSRC / "lipo_if.cpp").exists():
        raise FileNotFoundError(f"LIPO_IF_JIT needs the C++ sources, not found under {_CSRC}")
    sources = [str(_CSRC / "lipo_if.cpp"), *sorted(str(p) for p in (_CSRC / "cpu").glob("*.cpp"))]
    with_cuda = torch.cuda.is_available() and CUDA_HOME is not None
    if with_cuda:
        sources += sorted(str(p) for p in (_CSRC / "cuda").glob("*.cu"))
    load(
        name="lipo_if_C",
        sources=sources,
        extra_cflags=["-O3", "-g0", "-march=native", "-fopenmp"] + (["-DWITH_CUDA"] if with_cuda else []),
        extra_ldflags=["-fopenmp"],  # at::parallel_for is serial without _OPENMP (see setup.py)
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
        is_python_module=False,  # the library only registers operators
        verbose=verbose,
    )


def _load_extension() -> None:
    """Load the kernels: JIT when ``LIPO_IF_JIT=1``, else ``lipo_if._C``; warn once if absent.

    ``LIPO_IF_NO_EXT=1`` skips the extension (pure-PyTorch path, one warning), as if not built.
    """
    if os.environ.get("LIPO_IF_NO_EXT") == "1":
        warnings.warn(
            "lipo_if._C is not available (disabled by LIPO_IF_NO_EXT=1); using the pure-PyTorch kernels of "
            "lipo_if.ops_reference (slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    if os.environ.get("LIPO_IF_JIT") == "1":
        load_jit()
        return
    try:
        from . import _C  # noqa: F401, PLC0415 — importing registers torch.ops.lipo_if.*
    except ImportError as exc:
        warnings.warn(
            f"lipo_if._C is not available ({exc}); using the pure-PyTorch kernels of lipo_if.ops_reference "
            "(slower). Build it with `pip install -e .` or `python setup.py build_ext --inplace`.",
            RuntimeWarning,
            stacklevel=3,
        )


_load_extension()


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes only, so torch.compile / opcheck can trace the ops.
if has_ops():

    @torch.library.register_fake("lipo_if::linear_grad_dot")
    def _linear_grad_dot_fake(
        act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor | None
    ) -> torch.Tensor:
        torch._check(act.dim() == 2 and out_grad.dim() == 2 and vec_weight.dim() == 3)
        return act.new_empty((act.shape[0], vec_weight.shape[0]))

    @torch.library.register_fake("lipo_if::lissa_step")
    def _lissa_step_fake(
        h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return h.new_empty(h.shape), h.new_empty(())

    @torch.library.register_fake("lipo_if::sparse_linear")
    def _sparse_linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        torch._check(x.dim() == 2 and weight.dim() == 2 and weight.shape[1] == x.shape[1])
        return x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("lipo_if::sparse_linear_weight_grad")
    def _sparse_linear_weight_grad_fake(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        torch._check(x.dim() == 2 and grad_out.dim() == 2 and grad_out.shape[0] == x.shape[0])
        return x.new_empty((x.shape[1], grad_out.shape[1]))

    @torch.library.register_fake("lipo_if::sparse_linear_weight_grad_into")
    def _sparse_linear_weight_grad_into_fake(x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor) -> None:
        torch._check(out.dim() == 2 and out.shape[0] == x.shape[1] and out.shape[1] == grad_out.shape[1])

    @torch.library.register_fake("lipo_if::csr_linear")
    def _csr_linear_fake(
        ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, weight_t: torch.Tensor,
        init: torch.Tensor | None, dense_x: torch.Tensor | None = None, dense_cols: torch.Tensor | None = None,
    ) -> torch.Tensor:
        torch._check(weight_t.dim() == 2 and rows.dim() == 1)
        return weight_t.new_empty((rows.shape[0], weight_t.shape[1]))

    @torch.library.register_fake("lipo_if::csr_split")
    def _csr_split_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        torch._check(x.dim() == 2)
        ctx = torch.library.get_ctx()
        nd, nnz = ctx.new_dynamic_size(), ctx.new_dynamic_size()
        index = dict(dtype=torch.int64, device=x.device)
        return (torch.empty(nd, **index), torch.empty(x.shape[0] + 1, **index), torch.empty(nnz, **index),
                x.new_empty(nnz))

    @torch.library.register_fake("lipo_if::csr_lissa_update_")
    def _csr_lissa_update_fake(
        h: torch.Tensor, v: torch.Tensor, ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
        rows: torch.Tensor, grad_out: torch.Tensor, dense_cols: torch.Tensor | None, dense_grad: torch.Tensor | None,
        damping: float, scale: float, dense_x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        torch._check(h.dim() == 2 and grad_out.dim() == 2)
        return h.new_empty((2,), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Validation
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _check_tensor(t: object, name: str, dims: int | None, shape_doc: str) -> torch.Tensor:
    """``t`` must be a float32/float64 tensor with ``dims`` dimensions (any when None)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {shape_doc}, got shape {tuple(t.shape)}")
    return t


def _check_alike(tensors: dict[str, torch.Tensor], ref_name: str) -> None:
    """All ``tensors`` share the dtype and device of ``tensors[ref_name]``."""
    ref = tensors[ref_name]
    for name, t in tensors.items():
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; all inputs must share one dtype")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; all inputs must share one device")


def _use_kernel(device: torch.device) -> bool:
    return _has_kernel("CUDA" if device.type == "cuda" else "CPU") if device.type in ("cpu", "cuda") else False


# ---------------------------------------------------------------------------------------------
# Public API
def linear_grad_dot(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample Linear-layer gradients dotted with ``k`` parameter-shaped vectors: ``[n, k]``.

    ``result[i, j] = Σ_{o,c} out_grad[i,o]·vec_weight[j,o,c]·act[i,c] + Σ_o out_grad[i,o]·vec_bias[j,o]``
    — sample i's gradient of the layer is ``(out_grad[i] ⊗ act[i], out_grad[i])``; it is never formed.

    Args:
        act: ``[n, in]`` layer inputs (sparse rows, e.g. fingerprints, take a faster CPU path).
        out_grad: ``[n, out]`` gradients of the per-sample loss w.r.t. the layer outputs.
        vec_weight: ``[k, out, in]`` the weight part of the k vectors.
        vec_bias: ``[k, out]`` their bias part, or None (weight only).
    """
    _check_tensor(act, "act", 2, "[n, in]")
    _check_tensor(out_grad, "out_grad", 2, "[n, out]")
    _check_tensor(vec_weight, "vec_weight", 3, "[k, out, in]")
    tensors = {"act": act, "out_grad": out_grad, "vec_weight": vec_weight}
    n, in_dim = act.shape
    out, k = out_grad.shape[1], vec_weight.shape[0]
    if out_grad.shape[0] != n:
        raise ValueError(f"out_grad must be [n, out] with n = {n} (rows of act), got shape {tuple(out_grad.shape)}")
    if tuple(vec_weight.shape[1:]) != (out, in_dim):
        raise ValueError(f"vec_weight must be [k, out, in] = [k, {out}, {in_dim}], got shape {tuple(vec_weight.shape)}")
    if vec_bias is not None:
        _check_tensor(vec_bias, "vec_bias", 2, "[k, out]")
        if tuple(vec_bias.shape) != (k, out):
            raise ValueError(f"vec_bias must be [k, out] = [{k}, {out}], got shape {tuple(vec_bias.shape)}")
        tensors["vec_bias"] = vec_bias
    _check_alike(tensors, "act")
    if _use_kernel(act.device):
        return torch.ops.lipo_if.linear_grad_dot(act, out_grad, vec_weight, vec_bias)
    return ops_reference.linear_grad_dot(act, out_grad, vec_weight, vec_bias)


def lissa_step(
    h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LiSSA update in a single fused pass.

    Returns ``(h_new, step_norm)`` with ``h_new = v + (1 − damping)·h − hvp/scale`` (shape of
    ``h``, contiguous) and ``step_norm = ‖h_new − h‖₂`` as a 0-dim tensor (no host sync).

    Args:
        h, v, hvp: current estimate, right-hand side and ``H h``; one shape, usually ``[p]``.
        damping: recursion damping (dimensionless); scale: LiSSA scale (> 0 in practice, ≠ 0).
    """
    tensors = {name: _check_tensor(t, name, None, "(same shape as h)") for name, t in (("h", h), ("v", v), ("hvp", hvp))}
    for name in ("v", "hvp"):
        if tensors[name].shape != h.shape:
            raise ValueError(f"{name} must have the shape of h {tuple(h.shape)}, got {tuple(tensors[name].shape)}")
    _check_alike(tensors, "h")
    damping, scale = float(damping), float(scale)
    if scale == 0.0:
        raise ValueError("scale must be non-zero")
    if _use_kernel(h.device):
        return torch.ops.lipo_if.lissa_step(h, v, hvp, damping, scale)
    return ops_reference.lissa_step(h, v, hvp, damping, scale)


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` ``[n, out]`` computed over the non-zero entries of ``x`` only.

    Same result as ``torch.nn.functional.linear``; meant for the first layer on fingerprint inputs
    (≈3 % of 2,048 bits set + dense descriptors ≈ 12 % non-zero): cost ``nnz(x)·out`` instead of
    ``n·in·out``. The CPU kernel takes a dense BLAS path when more than 15 % of ``x`` is non-zero.

    Args:
        x: ``[n, in]`` layer input (dense storage; its zeros are skipped).
        weight: ``[out, in]`` as in ``nn.Linear``. The kernel reads it as ``weight.T`` ``[in, out]``:
            passing the transposed view of a contiguous ``[in, out]`` tensor (``wt.T``) avoids
            one transposed copy per call.
        bias: ``[out]`` or None.
    """
    _check_tensor(x, "x", 2, "[n, in]")
    _check_tensor(weight, "weight", 2, "[out, in]")
    tensors = {"x": x, "weight": weight}
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [out, in] with in = {x.shape[1]} (columns of x), got shape {tuple(weight.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias", 1, "[out]")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [out] = [{weight.shape[0]}], got shape {tuple(bias.shape)}")
        tensors["bias"] = bias
    _check_alike(tensors, "x")
    if _use_kernel(x.device):
        return torch.ops.lipo_if.sparse_linear(x, weight, bias)
    return ops_reference.sparse_linear(x, weight, bias)


def sparse_linear_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x.T @ grad_out`` ``[in, out]`` over the non-zero entries of ``x`` only.

    This is the weight gradient of a Linear layer with input ``x`` and output gradient
    ``grad_out``, **transposed** (``[in, out]``, the layout :func:`sparse_linear` reads its weight
    in; the ``nn.Linear`` layout is ``result.T``). Summed over the n rows.

    Args:
        x: ``[n, in]`` layer input (its zeros are skipped); n = 0 gives zeros.
        grad_out: ``[n, out]`` gradient with respect to the layer output.
        out: optional contiguous ``[in, out]`` tensor (same dtype and device) to write the result
            into and return — e.g. a view of a block of a flat parameter vector, which saves an
            allocation and a copy per call.
    """
    _check_tensor(x, "x", 2, "[n, in]")
    _check_tensor(grad_out, "grad_out", 2, "[n, out]")
    if grad_out.shape[0] != x.shape[0]:
        raise ValueError(f"grad_out must be [n, out] with n = {x.shape[0]} (rows of x), got shape {tuple(grad_out.shape)}")
    _check_alike({"x": x, "grad_out": grad_out}, "x")
    if out is not None:
        _check_tensor(out, "out", 2, "[in, out]")
        if tuple(out.shape) != (x.shape[1], grad_out.shape[1]):
            raise ValueError(f"out must be [in, out] = [{x.shape[1]}, {grad_out.shape[1]}], got shape {tuple(out.shape)}")
        _check_alike({"x": x, "out": out}, "x")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous (the kernel writes through its data pointer)")
        if _use_kernel(x.device):
            torch.ops.lipo_if.sparse_linear_weight_grad_into(x, grad_out, out)
            return out
        return ops_reference.sparse_linear_weight_grad(x, grad_out, out=out)
    if _use_kernel(x.device):
        return torch.ops.lipo_if.sparse_linear_weight_grad(x, grad_out)
    return ops_reference.sparse_linear_weight_grad(x, grad_out)


def _check_csr(csr: object, rows: object, ref: torch.Tensor, ref_name: str) -> None:
    """``csr`` a :class:`CsrMatrix` and ``rows`` int64 ``[B]`` indices, on ``ref``'s device, vals of its dtype."""
    if not isinstance(csr, CsrMatrix):
        raise TypeError(f"csr must be a lipo_if.ops.CsrMatrix (see csr_from_dense), got {type(csr).__name__}")
    if not isinstance(rows, torch.Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
        raise TypeError(f"rows must be a 1-D int64 tensor [B] of row indices, got {getattr(rows, 'dtype', type(rows))} "
                        f"of shape {tuple(getattr(rows, 'shape', ()))}")
    for name, t in (("csr.ptr", csr.ptr), ("csr.cols", csr.cols)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if csr.vals.dim() != 1 or csr.vals.shape != csr.cols.shape:
        raise ValueError(f"csr.vals must be 1-D like csr.cols {tuple(csr.cols.shape)}, got {tuple(csr.vals.shape)}")
    if ref.dim() >= 1 and csr.n_cols != ref.shape[0]:
        raise ValueError(f"{ref_name} must have {csr.n_cols} rows (the columns of the CSR matrix), got shape {tuple(ref.shape)}")
    _check_alike({ref_name: ref, "csr.vals": csr.vals}, ref_name)
    for name, t in (("csr.ptr", csr.ptr), ("csr.cols", csr.cols), ("rows", rows)):
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; all inputs must share one device")


def csr_split(x: torch.Tensor) -> tuple[torch.Tensor, CsrMatrix]:
    """Split a layer input once for the CSR ops: ``(dense_cols, csr)``.

    ``dense_cols``: int64 ``[nd]`` (increasing) — the columns non-zero in more than 30 % of the rows
    (standardized descriptors, frequent bits; their part of a product is one GEMM; none when
    ``n < 32``); ``csr``: the :class:`CsrMatrix` ``[n, in]`` of the other columns' non-zeros. When
    those are denser than 15 % overall, every column is dense and ``csr`` has no entries. The same
    policy as the CPU kernels' per-call split. ``x``: float32/float64 ``[n, in]``. CPU: one parallel
    pass (C++ kernel); CUDA: the same policy with ATen's device primitives; without the extension:
    the pure-PyTorch twin.
    """
    _check_tensor(x, "x", 2, "[n, in]")
    if _use_kernel(x.device):
        dense_cols, ptr, cols, vals = torch.ops.lipo_if.csr_split(x)
        return dense_cols, CsrMatrix(ptr, cols, vals, x.shape[1])
    return ops_reference.csr_split(x)


def _check_dense_x(
    dense_x: torch.Tensor | None, dense_cols: torch.Tensor | None, rows: torch.Tensor, ref: torch.Tensor, ref_name: str,
) -> None:
    """``dense_x`` ``[B, nd]`` with ``dense_cols`` int64 ``[nd]`` (entries in ``[0, ref.shape[0])``), both or neither."""
    if (dense_x is None) != (dense_cols is None):
        raise ValueError("dense_x and dense_cols go together (both or neither)")
    if dense_x is None:
        return
    if dense_cols.dtype != torch.int64 or dense_cols.dim() != 1 or dense_cols.device != ref.device:
        raise TypeError(f"dense_cols must be a 1-D int64 tensor on {ref.device}, got {dense_cols.dtype} "
                        f"of shape {tuple(dense_cols.shape)} on {dense_cols.device}")
    _check_tensor(dense_x, "dense_x", 2, "[B, nd]")
    if tuple(dense_x.shape) != (rows.shape[0], dense_cols.shape[0]):
        raise ValueError(f"dense_x must be [B, nd] = [{rows.shape[0]}, {dense_cols.shape[0]}], got {tuple(dense_x.shape)}")
    _check_alike({ref_name: ref, "dense_x": dense_x}, ref_name)


def csr_linear(
    csr: CsrMatrix, rows: torch.Tensor, weight_t: torch.Tensor, init: torch.Tensor | None = None,
    dense_x: torch.Tensor | None = None, dense_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """``X[rows] @ weight_t + init (+ dense_x @ weight_t[dense_cols])`` ``[B, out]`` for a
    :class:`CsrMatrix` ``X``, over its non-zeros only.

    The first layer's forward on a training minibatch when the training inputs were compressed once
    (:func:`csr_split`): no per-call scan of the dense rows. Row indices are checked.

    Args:
        csr: ``X`` ``[n_rows, in]`` in compressed sparse rows (vals of weight_t's dtype).
        rows: int64 ``[B]`` row indices into ``X`` (repeats allowed).
        weight_t: ``[in, out]``, the *transposed* Linear weight (e.g. a block of a flat vector).
        init: ``[B, out]`` added to the product (e.g. the bias, expanded), or None.
        dense_x, dense_cols: the minibatch's values ``[B, nd]`` of the columns ``dense_cols``
            (int64 ``[nd]``) kept out of ``csr`` — their part is one GEMM, which the CPU kernel
            runs beside the sparse part on a 2-thread pool; both or neither.
    """
    _check_tensor(weight_t, "weight_t", 2, "[in, out]")
    _check_csr(csr, rows, weight_t, "weight_t")
    if init is not None:
        _check_tensor(init, "init", 2, "[B, out]")
        if tuple(init.shape) != (rows.shape[0], weight_t.shape[1]):
            raise ValueError(f"init must be [B, out] = [{rows.shape[0]}, {weight_t.shape[1]}], got {tuple(init.shape)}")
        _check_alike({"weight_t": weight_t, "init": init}, "weight_t")
    _check_dense_x(dense_x, dense_cols, rows, weight_t, "weight_t")
    if _use_kernel(weight_t.device):
        return torch.ops.lipo_if.csr_linear(csr.ptr, csr.cols, csr.vals, rows, weight_t, init, dense_x, dense_cols)
    return ops_reference.csr_linear(csr, rows, weight_t, init, dense_x, dense_cols)


def csr_lissa_update_(
    h: torch.Tensor, v: torch.Tensor, csr: CsrMatrix, rows: torch.Tensor, grad_out: torch.Tensor, damping: float,
    scale: float, dense_cols: torch.Tensor | None = None, dense_grad: torch.Tensor | None = None,
    dense_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place: ``h ← v + (1 − damping)·h − G/scale`` with ``G = X[rows]ᵀ grad_out`` (+ dense part).

    The LiSSA update (:func:`lissa_step`) of a first-layer weight block, fused with that block's
    Hessian-vector product: ``G`` — the layer's weight gradient for output gradient ``grad_out``,
    transposed — is never formed (one pass reading ``h``, ``v`` and writing ``h``).

    Args:
        h: ``[in, out]`` contiguous, the block of the current iterate (updated in place).
        v: ``[in, out]`` the same block of the right-hand side.
        csr: the sparse columns of the layer input ``X`` ``[n_rows, in]`` (:func:`csr_from_dense`).
        rows: int64 ``[B]`` the minibatch (row indices into ``X``).
        grad_out: ``[B, out]`` gradient with respect to the layer output (any loss weights included).
        damping, scale: as in :func:`lissa_step` (scale ≠ 0).
        dense_cols: int64 ``[nd]`` distinct input columns kept out of ``csr`` (descriptors), or None;
        dense_grad: ``[nd, out]`` their rows of ``G`` (``X[rows][:, dense_cols]ᵀ grad_out``, one GEMM);
        dense_x: ``[B, nd]`` = ``X[rows][:, dense_cols]`` instead of ``dense_grad``: the op forms
            ``dense_xᵀ grad_out`` itself (on a 2-thread CPU pool beside the other rows' update).

    Returns:
        float64 ``[2]`` = ``(‖h_new − h‖², ‖h_new‖²)`` (no host sync).
    """
    _check_tensor(h, "h", 2, "[in, out]")
    _check_tensor(v, "v", 2, "[in, out]")
    _check_tensor(grad_out, "grad_out", 2, "[B, out]")
    _check_csr(csr, rows, h, "h")
    tensors = {"h": h, "v": v, "grad_out": grad_out}
    if v.shape != h.shape:
        raise ValueError(f"v must have the shape of h {tuple(h.shape)}, got {tuple(v.shape)}")
    if tuple(grad_out.shape) != (rows.shape[0], h.shape[1]):
        raise ValueError(f"grad_out must be [B, out] = [{rows.shape[0]}, {h.shape[1]}], got {tuple(grad_out.shape)}")
    if not h.is_contiguous():
        raise ValueError("h must be contiguous (it is updated in place)")
    if dense_grad is not None and dense_x is not None:
        raise ValueError("give dense_grad or dense_x (it is computed from dense_x), not both")
    if dense_x is not None:
        _check_dense_x(dense_x, dense_cols, rows, h, "h")
    elif (dense_cols is None) != (dense_grad is None):
        raise ValueError("dense_cols and dense_grad go together (both or neither)")
    elif dense_cols is not None:
        if dense_cols.dtype != torch.int64 or dense_cols.dim() != 1 or dense_cols.device != h.device:
            raise TypeError(f"dense_cols must be a 1-D int64 tensor on {h.device}, got {dense_cols.dtype} "
                            f"of shape {tuple(dense_cols.shape)} on {dense_cols.device}")
        _check_tensor(dense_grad, "dense_grad", 2, "[nd, out]")
        if tuple(dense_grad.shape) != (dense_cols.shape[0], h.shape[1]):
            raise ValueError(f"dense_grad must be [nd, out] = [{dense_cols.shape[0]}, {h.shape[1]}], "
                             f"got {tuple(dense_grad.shape)}")
        tensors["dense_grad"] = dense_grad
    _check_alike(tensors, "h")
    damping, scale = float(damping), float(scale)
    if scale == 0.0:
        raise ValueError("scale must be non-zero")
    if _use_kernel(h.device):
        return torch.ops.lipo_if.csr_lissa_update_(
            h, v, csr.ptr, csr.cols, csr.vals, rows, grad_out, dense_cols, dense_grad, damping, scale, dense_x)
    return ops_reference.csr_lissa_update_(h, v, csr, rows, grad_out, damping, scale, dense_cols, dense_grad, dense_x)


def mlp_grad_dot(
    layers: Sequence[torch.nn.Linear], vec: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor,
    kernel: Callable[..., torch.Tensor] = linear_grad_dot, chunk_size: int = 2048,
) -> torch.Tensor:
    """``vec · ∇θ (f(xᵢ) − yᵢ)²`` for all rows: per chunk of ``chunk_size`` rows one forward, a
    manual backward, and one :func:`linear_grad_dot` per layer (``kernel`` lets benchmarks swap in
    the reference). Chunking bounds the ``[chunk, width]`` temporaries, as the scoring of
    ``lipo-if influence`` does (:func:`lipo_if.influence.scores.grad_dot_fast`, 2,048 rows by default).

    With ``kernel`` = :func:`linear_grad_dot` the first layer (sparse fingerprint input) is one
    :func:`sparse_linear` pass that yields its forward and its score term together
    (:func:`first_layer_with_vectors`); with another ``kernel`` the whole pass is dense pure
    PyTorch (the benchmarks' "best dense formulation").

    ``layers``: Linear layers of an MLP with ReLU between them and 1 output; ``vec``: one tensor
    per parameter in ``weight, bias`` order per layer; ``X`` ``[n, d]``, ``y`` ``[n]`` → ``[n]``.
    """
    if len(vec) != 2 * len(layers):
        raise ValueError(f"vec needs weight and bias per layer ({2 * len(layers)} tensors), got {len(vec)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    fused = None
    if kernel is linear_grad_dot:
        fused = first_layer_with_vectors(layers[0].weight, layers[0].bias, vec[0].unsqueeze(0), vec[1].unsqueeze(0))
    parts = [_mlp_grad_dot_chunk(layers, vec, X[i:i + chunk_size], y[i:i + chunk_size], kernel, fused)
             for i in range(0, X.shape[0], chunk_size)]
    return torch.cat(parts) if parts else X.new_zeros(0)


def first_layer_with_vectors(
    weight: torch.Tensor, bias: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([W; V_1; …; V_k]ᵀ as a transposed view, [b; c_1; …; c_k])`` for :func:`sparse_linear`.

    One sparse pass over the first layer's input then gives both its forward ``x Wᵀ + b`` and the
    projections ``x V_jᵀ + c_j`` that :func:`linear_grad_dot` would compute in a second pass
    (``Σ_o out_grad[i, o]·(x_i V_jᵀ + c_j)[o]`` is the layer's term of the score). The weight is
    built once as a contiguous ``[in, (k+1)·out]`` block, the layout the kernel reads without a copy.
    ``weight`` ``[out, in]``, ``bias`` ``[out]``, ``vec_weight`` ``[k, out, in]``, ``vec_bias`` ``[k, out]``.
    """
    out, in_dim = weight.shape
    stacked_t = torch.cat([weight, vec_weight.reshape(-1, in_dim)], 0).t().contiguous()
    return stacked_t.t(), torch.cat([bias, vec_bias.reshape(-1)])


def _mlp_grad_dot_chunk(
    layers: Sequence[torch.nn.Linear], vec: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor,
    kernel: Callable[..., torch.Tensor], fused: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    with torch.no_grad():
        inputs, masks, h, first_proj = [], [], X, None
        for i, layer in enumerate(layers):
            inputs.append(h)
            if i == 0 and fused is not None:
                both = sparse_linear(h, *fused)  # [n, 2·out]: forward | x Vᵀ + c
                h, first_proj = both[:, :layer.out_features], both[:, layer.out_features:]
            else:
                h = layer(h)
            if i < len(layers) - 1:
                masks.append(h > 0)
                h = torch.relu(h)
        out_grad = 2.0 * (h - y.unsqueeze(1))  # ∂(f − y)²/∂f, [n, 1]
        total = X.new_zeros(X.shape[0])
        for i in range(len(layers) - 1, -1, -1):
            if i == 0 and first_proj is not None:
                total += (out_grad * first_proj).sum(1)
            else:
                total += kernel(inputs[i], out_grad, vec[2 * i].unsqueeze(0), vec[2 * i + 1].unsqueeze(0))[:, 0]
            if i > 0:  # back through layer i and the ReLU after layer i−1
                out_grad = (out_grad @ layers[i].weight) * masks[i - 1]
    return total
