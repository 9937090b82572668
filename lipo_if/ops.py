"""Fused kernels for influence scoring and LiSSA, from the compiled extension ``lipo_if._C``.

``import lipo_if`` (or this module) loads the extension, so the operators exist as
``torch.ops.lipo_if.*``. The functions here are thin: each calls the compiled operator when it has
a kernel for the inputs' device, else its pure-PyTorch twin of the same name and signature in
:mod:`lipo_if.ops_reference` (tests and benchmarks swap the two modules).

Operators (the convention is written once, at the top of ``csrc/lipo_if.cpp``)::

    Python (lipo_if.ops)                                       operator (torch.ops.lipo_if)
    linear_grad_dot(act, out_grad, vec_weight, vec_bias=None)  linear_grad_dot
    linear_grad_dot_segment(act, out_grad, vec_weight, vec_bias, indptr)
                                                               linear_grad_dot.segment
    lissa_step(h, v, hvp, damping, scale) -> (h_new, norm)     lissa_step
    lissa_step_update(h, v, hvp, damping, scale) -> sums       lissa_step_update        (mutates h)
    lissa_step_update_csr(h, v, csr, rows, grad_out, damping, scale,
                          dense_cols=None, dense_grad=None, dense_x=None) -> sums
                                                               lissa_step_update.csr    (mutates h)
    linear_strided(x, weight_t, bias=None)                     linear_strided
    linear_weight_grad_strided(x, grad_out, *, out=None)       linear_weight_grad_strided[.out]
    linear_csr(csr, rows, weight_t, init=None, dense_cols=None, dense_x=None)
                                                               linear_csr
    split_csr(x) -> (dense_cols, CsrMatrix)                    split_csr

- Names are ``operation_form``: ``_strided`` ops take a dense strided input and skip its zeros;
  ``_csr`` ops take rows ``rows`` of a :class:`CsrMatrix` compressed once (:func:`split_csr`).
- First-layer weights are passed *transposed*, ``weight_t`` ``[in, out]`` (the ``nn.Linear``
  weight is ``weight_t.T``; pass ``W.t()`` or a contiguous ``[in, out]`` block of a flat vector —
  read without a copy), and the weight gradient comes back in that layout.
- ATen's rules: ``.out`` overloads take a keyword-only ``out`` and return it. ``lissa_step_update``
  mutates ``h`` and returns float64 ``[2]`` = ``(‖h_new − h‖², ‖h_new‖²)``, so its name has no
  trailing ``_`` (the style of ``native_batch_norm``; why: ``csrc/lipo_if.cpp``).
- :func:`linear_grad_dot` and :func:`lissa_step` are the public contracts users call; their names
  and signatures do not change.

Checks: every input check is in C++ (``csrc/checks.h``): a bad shape, dtype, device or index raises
``RuntimeError`` ``"lipo_if.<op>: <arg> must be …, got …"``. The twins do not re-check (bad inputs
there fail inside PyTorch). Non-contiguous inputs are accepted (the kernels copy them once);
tensors an op writes through (``out``, the in-place ``h``) must be contiguous.

Backends (:func:`backend`): ``"cpp"`` (CPU kernels), ``"cpp+cuda"`` (CPU and CUDA kernels) or
``"pytorch"`` when ``lipo_if._C`` is not built (or ``LIPO_IF_NO_EXT=1``): then every call goes
to the twin and one ``RuntimeWarning`` is issued at import. Tensors on a device without a compiled
kernel (CUDA with a CPU-only build) also go to the twin. ``LIPO_IF_JIT=1`` compiles ``csrc/`` with
:func:`load_jit` instead of importing the prebuilt module (development).

The column split constants are defined once, in :mod:`lipo_if.split_policy`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from . import ops_reference, split_policy
from .ops_reference import CsrMatrix, csr_from_dense

__all__ = [
    "CsrMatrix", "backend", "csr_from_dense", "first_layer_with_vectors", "has_ops", "linear_csr",
    "linear_grad_dot", "linear_grad_dot_segment", "linear_strided", "linear_weight_grad_strided", "lissa_step",
    "lissa_step_update", "lissa_step_update_csr", "load_jit", "split_csr",
]

#: Every operator overload of the extension (``name`` or ``name.overload``).
OPERATORS = (
    "linear_grad_dot", "linear_grad_dot.segment", "lissa_step", "lissa_step_update", "lissa_step_update.csr",
    "linear_strided", "linear_weight_grad_strided", "linear_weight_grad_strided.out", "linear_csr", "split_csr",
)
_CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _overload(qualified: str):
    name, _, overload = qualified.partition(".")
    return getattr(getattr(torch.ops.lipo_if, name), overload or "default")


def has_ops() -> bool:
    """True when every ``torch.ops.lipo_if`` operator is registered (extension loaded)."""
    try:
        for name in OPERATORS:
            _overload(name)
    except (AttributeError, RuntimeError):
        return False
    return True


_KERNEL_FOUND: dict[str, bool] = {}  # device type → every operator has a kernel (reset by load_jit)


def _has_kernel(device_type: str) -> bool:
    """True when every operator has a kernel for ``device_type`` ("CPU" or "CUDA"); cached (the
    lookup costs ≈ 15 µs per op call otherwise, noticeable in a LiSSA step)."""
    found = _KERNEL_FOUND.get(device_type)
    if found is None:
        found = _KERNEL_FOUND[device_type] = has_ops() and all(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"lipo_if::{name}", device_type) for name in OPERATORS)
    return found


def _use_kernel(device: torch.device) -> bool:
    """The one switch: the compiled operator for tensors on ``device``, or the twin."""
    return device.type in ("cpu", "cuda") and _has_kernel("CUDA" if device.type == "cuda" else "CPU")


def backend() -> str:
    """``"cpp+cuda"``, ``"cpp"`` or ``"pytorch"`` (no extension: reference kernels)."""
    if not _has_kernel("CPU"):
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
    policy = [f"-D{name}={value}" for name, value in split_policy.compile_definitions()]
    load(
        name="lipo_if_C",
        sources=sources,
        extra_cflags=["-O3", "-g0", "-march=native", "-fopenmp", *policy] + (["-DWITH_CUDA"] if with_cuda else []),
        extra_ldflags=["-fopenmp"],  # at::parallel_for is serial without _OPENMP (see setup.py)
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", *policy],
        is_python_module=False,  # the library only registers operators
        verbose=verbose,
    )
    _KERNEL_FOUND.clear()
    _register_fakes()


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
        from . import _C  # noqa: PLC0415 — importing registers torch.ops.lipo_if.*
    except ImportError as exc:
        warnings.warn(
            f"lipo_if._C is not available ({exc}); using the pure-PyTorch kernels of lipo_if.ops_reference "
            "(slower). Build it with `pip install -e .` or `python setup.py build_ext --inplace`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    compiled = getattr(_C, "SPLIT_POLICY", None)
    if compiled != split_policy.as_dict():
        warnings.warn(
            f"lipo_if._C was compiled with the split policy {compiled}, but lipo_if/split_policy.py says "
            f"{split_policy.as_dict()}: a stale build — rebuild it (`python setup.py build_ext --inplace`).",
            RuntimeWarning,
            stacklevel=3,
        )
    if not has_ops():
        warnings.warn(
            "lipo_if._C does not register every operator of this version (a stale build?); using the "
            "pure-PyTorch kernels of lipo_if.ops_reference. Rebuild it with `python setup.py build_ext --inplace`.",
            RuntimeWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes only, so torch.compile / opcheck can trace the ops. The checks are
# the C++ ones; these only state the output shapes.
def _register_fakes() -> None:
    if not has_ops() or getattr(_register_fakes, "done", False):
        return
    _register_fakes.done = True  # type: ignore[attr-defined]
    fake = torch.library.register_fake

    @fake("lipo_if::linear_grad_dot")
    def _linear_grad_dot(act, out_grad, vec_weight, vec_bias):
        return act.new_empty((act.shape[0], vec_weight.shape[0]))

    @fake("lipo_if::linear_grad_dot.segment")
    def _linear_grad_dot_segment(act, out_grad, vec_weight, vec_bias, indptr):
        return act.new_empty((indptr.shape[0] - 1, vec_weight.shape[0]))

    @fake("lipo_if::lissa_step")
    def _lissa_step(h, v, hvp, damping, scale):
        return h.new_empty(h.shape), h.new_empty(())

    @fake("lipo_if::lissa_step_update")
    def _lissa_step_update(h, v, hvp, damping, scale):
        return h.new_empty((2,), dtype=torch.float64)

    @fake("lipo_if::lissa_step_update.csr")
    def _lissa_step_update_csr(h, v, ptr, cols, vals, rows, grad_out, damping, scale, dense_cols=None,
                               dense_grad=None, dense_x=None):
        return h.new_empty((2,), dtype=torch.float64)

    @fake("lipo_if::linear_strided")
    def _linear_strided(x, weight_t, bias=None):
        return x.new_empty((x.shape[0], weight_t.shape[1]))

    @fake("lipo_if::linear_weight_grad_strided")
    def _linear_weight_grad_strided(x, grad_out):
        return x.new_empty((x.shape[1], grad_out.shape[1]))

    @fake("lipo_if::linear_weight_grad_strided.out")
    def _linear_weight_grad_strided_out(x, grad_out, *, out):
        return out

    @fake("lipo_if::linear_csr")
    def _linear_csr(ptr, cols, vals, rows, weight_t, init=None, dense_cols=None, dense_x=None):
        return weight_t.new_empty((rows.shape[0], weight_t.shape[1]))

    @fake("lipo_if::split_csr")
    def _split_csr(x):
        ctx = torch.library.get_ctx()
        nd, nnz = ctx.new_dynamic_size(), ctx.new_dynamic_size()
        index = dict(dtype=torch.int64, device=x.device)
        return torch.empty(nd, **index), torch.empty(x.shape[0] + 1, **index), torch.empty(nnz, **index), x.new_empty(nnz)


_load_extension()
_register_fakes()


# ---------------------------------------------------------------------------------------------
# Public API: one switch per function, compiled operator or twin (same name in ops_reference).
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
    if _use_kernel(act.device):
        return torch.ops.lipo_if.linear_grad_dot(act, out_grad, vec_weight, vec_bias)
    return ops_reference.linear_grad_dot(act, out_grad, vec_weight, vec_bias)


def linear_grad_dot_segment(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor | None,
    indptr: torch.Tensor,
) -> torch.Tensor:
    """:func:`linear_grad_dot` summed over row segments: ``[S, k]``.

    ``result[s, j] = Σ_{r=indptr[s]}^{indptr[s+1]-1} (out_grad[r]ᵀ·vec_weight[j]·act[r] + out_grad[r]·vec_bias[j])``
    — for a layer applied to many rows per molecule (its bonds or atoms, message passing), molecule
    s's gradient of the layer is ``Σ_r (out_grad[r] ⊗ act[r], out_grad[r])``; neither it nor any
    per-row gradient is formed. One GEMM ``act @ W_flatᵀ`` and a fused row dot reduced per segment.

    Args:
        act: ``[n, in]`` layer inputs (dense: hidden states), the rows of all segments in order.
        out_grad: ``[n, out]`` gradients of the loss w.r.t. the layer outputs, row by row.
        vec_weight: ``[k, out, in]`` the weight part of the k vectors.
        vec_bias: ``[k, out]`` their bias part, or None (weight only).
        indptr: int64 ``[S + 1]``, segment s is rows ``indptr[s]:indptr[s+1]`` (torch_scatter's
            ``segment_csr`` convention: ``indptr[0] == 0``, non-decreasing, ``indptr[S] == n``;
            an empty segment gives a row of zeros). Checked by the op (on CUDA with one host sync).
    """
    if _use_kernel(act.device):
        return torch.ops.lipo_if.linear_grad_dot.segment(act, out_grad, vec_weight, vec_bias, indptr)
    return ops_reference.linear_grad_dot_segment(act, out_grad, vec_weight, vec_bias, indptr)


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
    if _use_kernel(h.device):
        return torch.ops.lipo_if.lissa_step(h, v, hvp, float(damping), float(scale))
    return ops_reference.lissa_step(h, v, hvp, float(damping), float(scale))


def lissa_step_update(h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float) -> torch.Tensor:
    """:func:`lissa_step` in place: ``h ← v + (1 − damping)·h − hvp/scale``; returns float64 ``[2]``
    = ``(‖h_new − h‖², ‖h_new‖²)`` (no host sync).

    ``h`` contiguous (any shape), ``v`` and ``hvp`` of its shape. The CPU kernel is the row update
    of :func:`lissa_step_update_csr` (the gradient term applied as ``(−1/scale)·hvp``: equal to
    :func:`lissa_step` up to rounding), one pass on one thread — meant for the LiSSA solver's
    update of the blocks other than the first weight block (≈5 % of ``p``).
    """
    if _use_kernel(h.device):
        return torch.ops.lipo_if.lissa_step_update(h, v, hvp, float(damping), float(scale))
    return ops_reference.lissa_step_update(h, v, hvp, float(damping), float(scale))


def lissa_step_update_csr(
    h: torch.Tensor, v: torch.Tensor, csr: CsrMatrix, rows: torch.Tensor, grad_out: torch.Tensor, damping: float,
    scale: float, dense_cols: torch.Tensor | None = None, dense_grad: torch.Tensor | None = None,
    dense_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place: ``h ← v + (1 − damping)·h − G/scale`` with ``G = X[rows]ᵀ grad_out`` (+ dense part).

    :func:`lissa_step_update` for a first-layer weight block, fused with that block's
    Hessian-vector product: ``G`` — the layer's weight gradient for output gradient ``grad_out``,
    in the ``[in, out]`` layout — is never formed (one pass reading ``h``, ``v`` and writing ``h``).

    Args:
        h: ``[in, out]`` contiguous, the block of the current iterate (updated in place).
        v: ``[in, out]`` the same block of the right-hand side.
        csr: the sparse columns of the layer input ``X`` ``[n_rows, in]`` (:func:`split_csr`).
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
    if _use_kernel(h.device):
        return torch.ops.lipo_if.lissa_step_update.csr(
            h, v, csr.ptr, csr.cols, csr.vals, rows, grad_out, float(damping), float(scale), dense_cols, dense_grad,
            dense_x)
    return ops_reference.lissa_step_update_csr(
        h, v, csr, rows, grad_out, float(damping), float(scale), dense_cols, dense_grad, dense_x)


def linear_strided(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight_t + bias`` ``[n, out]`` computed over the non-zero entries of ``x`` only.

    ``torch.nn.functional.linear(x, weight_t.T, bias)``, for the first layer on fingerprint
    inputs (≈3 % of 2,048 bits set + dense descriptors ≈ 12 % non-zero): cost ``nnz(x)·out``
    instead of ``n·in·out``. The CPU kernel takes a dense BLAS path when more than 15 % of ``x`` is
    non-zero, and gives the columns non-zero in most rows (descriptors) to one GEMM.

    Args:
        x: ``[n, in]`` layer input (dense strided storage; its zeros are skipped).
        weight_t: ``[in, out]``, the transposed ``nn.Linear`` weight (``W.t()`` or a contiguous
            ``[in, out]`` block — read without a copy when contiguous).
        bias: ``[out]`` or None.
    """
    if _use_kernel(x.device):
        return torch.ops.lipo_if.linear_strided(x, weight_t, bias)
    return ops_reference.linear_strided(x, weight_t, bias)


def linear_weight_grad_strided(
    x: torch.Tensor, grad_out: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x.T @ grad_out`` ``[in, out]`` over the non-zero entries of ``x`` only.

    The weight gradient of a Linear layer with input ``x`` and output gradient ``grad_out``, in the
    ``weight_t`` layout of :func:`linear_strided` (the ``nn.Linear`` layout is ``result.T``).
    Summed over the n rows; n = 0 gives zeros.

    Args:
        x: ``[n, in]`` layer input (its zeros are skipped).
        grad_out: ``[n, out]`` gradient with respect to the layer output.
        out: optional contiguous ``[in, out]`` tensor (same dtype and device) to write the result
            into and return (the ``.out`` overload) — e.g. a view of a block of a flat parameter
            vector, which saves an allocation and a copy per call.
    """
    if _use_kernel(x.device):
        if out is None:
            return torch.ops.lipo_if.linear_weight_grad_strided(x, grad_out)
        return torch.ops.lipo_if.linear_weight_grad_strided.out(x, grad_out, out=out)
    return ops_reference.linear_weight_grad_strided(x, grad_out, out=out)


def linear_csr(
    csr: CsrMatrix, rows: torch.Tensor, weight_t: torch.Tensor, init: torch.Tensor | None = None,
    dense_cols: torch.Tensor | None = None, dense_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """``X[rows] @ weight_t + init (+ dense_x @ weight_t[dense_cols])`` ``[B, out]`` for a
    :class:`CsrMatrix` ``X``, over its non-zeros only.

    The first layer's forward on a training minibatch when the training inputs were compressed once
    (:func:`split_csr`): no per-call scan of the dense rows. Row indices are checked.

    Args:
        csr: ``X`` ``[n_rows, in]`` in compressed sparse rows (vals of weight_t's dtype).
        rows: int64 ``[B]`` row indices into ``X`` (repeats allowed).
        weight_t: ``[in, out]``, the transposed Linear weight (e.g. a block of a flat vector).
        init: ``[B, out]`` added to the product (e.g. the bias, expanded), or None.
        dense_cols, dense_x: the columns ``dense_cols`` (int64 ``[nd]``, distinct) kept out of
            ``csr`` and the minibatch's values ``[B, nd]`` of them — their part is one GEMM, which
            the CPU kernel runs beside the sparse part on a 2-thread pool; both or neither.
    """
    if _use_kernel(weight_t.device):
        return torch.ops.lipo_if.linear_csr(csr.ptr, csr.cols, csr.vals, rows, weight_t, init, dense_cols, dense_x)
    return ops_reference.linear_csr(csr, rows, weight_t, init, dense_cols, dense_x)


def split_csr(x: torch.Tensor) -> tuple[torch.Tensor, CsrMatrix]:
    """Split a layer input once for the CSR ops: ``(dense_cols, csr)``.

    ``dense_cols``: int64 ``[nd]`` (increasing) — the columns non-zero in more than
    :data:`~lipo_if.split_policy.DENSE_COLUMN_DENSITY` of the rows (standardized descriptors,
    frequent bits; their part of a product is one GEMM; none below
    :data:`~lipo_if.split_policy.MIN_ROWS_FOR_SPLIT` rows); ``csr``: the :class:`CsrMatrix`
    ``[n, in]`` of the other columns' non-zeros. When those are denser than
    :data:`~lipo_if.split_policy.SPARSE_MAX_DENSITY` overall, every column is dense and ``csr`` has
    no entries — the same policy as the CPU kernels' per-call split. ``x``: float32/float64
    ``[n, in]``. CPU: one parallel pass (C++ kernel); CUDA: the same policy with ATen's device
    primitives; without the extension: the pure-PyTorch twin.
    """
    if _use_kernel(x.device):
        dense_cols, ptr, cols, vals = torch.ops.lipo_if.split_csr(x)
        return dense_cols, CsrMatrix(ptr, cols, vals, x.shape[1])
    return ops_reference.split_csr(x)


def first_layer_with_vectors(
    weight: torch.Tensor, bias: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight_t, bias)`` for :func:`linear_strided`: ``[W; V_1; …; V_k]ᵀ`` as a contiguous
    ``[in, (k+1)·out]`` block and ``[b; c_1; …; c_k]``.

    One sparse pass over the first layer's input then gives both its forward ``x Wᵀ + b`` (the
    first ``out`` columns) and the projections ``x V_jᵀ + c_j`` that :func:`linear_grad_dot` would
    compute in a second pass (``Σ_o out_grad[i, o]·(x_i V_jᵀ + c_j)[o]`` is the layer's term of the
    score). ``weight`` ``[out, in]`` and ``bias`` ``[out]`` as in ``nn.Linear``, ``vec_weight``
    ``[k, out, in]``, ``vec_bias`` ``[k, out]``.
    """
    in_dim = weight.shape[1]
    weight_t = torch.cat([weight, vec_weight.reshape(-1, in_dim)], 0).t().contiguous()
    return weight_t, torch.cat([bias, vec_bias.reshape(-1)])
