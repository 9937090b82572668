"""Native Hessian-vector products of the package's MLP (Gauss–Newton and exact), without autograd.

For :class:`~lipo_if.model.MLPRegressor` (Linear layers, ReLU between them, one output) and the
loss ``(1/|B|) Σ (f(xᵢ) − yᵢ)²`` of :class:`~lipo_if.influence.hvp.HessianOperator` on a batch
``B``, the two curvature products are::

    G_B v = (2/|B|) Jᵀ (J v) + λ v,                         J = ∂f/∂θ  [|B|, p]
    H_B v = G_B v + (2/|B|) Σᵢ rᵢ ∇²fᵢ v,                    rᵢ = f(xᵢ) − yᵢ

This module computes them with explicit matrix products instead of ``torch.func.jvp`` / ``vjp``
or double backward (which rebuild an autograd graph on every call):

- ``J v`` by forward-mode propagation of the tangent: ``dz₁ = x V₁ᵀ + c₁`` and
  ``dz_l = (m_{l−1} ⊙ dz_{l−1}) W_lᵀ + h_{l−1} V_lᵀ + c_l`` (``V, c`` = the weight/bias parts of
  ``v``, ``h`` = post-ReLU activations, ``m`` = ReLU masks);
- ``Jᵀ u`` by the usual backward pass: ``g_L = u``, grads ``g_lᵀ h_{l−1}`` and ``Σ g_l``,
  ``g_{l−1} = (g_l W_l) ⊙ m_{l−1}``;
- the exact Hessian by Pearlmutter's R-operator applied to that backward pass: with the
  first-order signals ``s_L = (2/|B|) r``, ``s_{l−1} = (s_l W_l) ⊙ m_{l−1}`` (cached per training
  row, θ̂ being fixed) and ``dh_l = m_l ⊙ dz_l``, the R-backward is ``q_L = (2/|B|) J v``,
  weight grads ``q_lᵀ h_{l−1} + s_lᵀ dh_{l−1}``, bias grads ``Σ q_l`` and
  ``q_{l−1} = (q_l W_l + s_l V_l) ⊙ m_{l−1}`` — the Gauss–Newton pass plus two small products
  per hidden layer (ReLU has no curvature, so there are no other terms);
- the first layer (≈ 94 % of the parameters, input = fingerprint bits ≈ 3 % set + dense
  descriptors) through :func:`lipo_if.ops.linear_strided` and
  :func:`lipo_if.ops.linear_weight_grad_strided`, which touch only the non-zero inputs;
- activations and masks of every training row computed **once** at θ̂ (θ̂ is fixed during a
  solve) and gathered per minibatch.

LiSSA steps (:meth:`NativeHessian.lissa_step_`) go one step further: the training inputs are split
once into dense columns (one GEMM per step) and a CSR matrix of the rest (minibatch rows read by
index, no per-step scan), and the first weight block's part of ``H h`` is never formed —
:func:`lipo_if.ops.lissa_step_update_csr` builds each of its rows from the minibatch's output
gradients and applies the LiSSA update in place, in one pass that also yields both norms.

Two exact simplifications for products over training rows, both set at construction:

- hidden units (layers 2…L−1) that are off on every training row are left out: their rows and
  columns of the product are exactly zero (λ·v aside), so every hidden-layer GEMM shrinks by
  their share (22 % of the second hidden layer of the trained model in ``benchmarks/peers``);
- the last hidden layer and the one-output layer are folded (:meth:`NativeHessian._folded_head`):
  with one output, that layer's output gradient is a rank-1 (exact: rank-2) pattern under its
  ReLU mask, and ``(m ⊙ w) W`` is fixed per training row — cached once, it replaces two of the
  head's four GEMMs for Gauss–Newton (two of six for the exact Hessian).

Internal layout: the solvers run in a permuted parameter layout in which the first weight block
is stored transposed (``[in, out]`` row-major, the layout the sparse kernels read and write) and
the units of hidden layers 2… are ordered live-first.
The permutation is orthogonal, so norms, dot products and the LiSSA/CG recursions are unchanged;
:meth:`NativeHessian.to_internal` / :meth:`~NativeHessian.from_internal` convert once per
solve. :meth:`NativeHessian.matvec` offers the standard layout and the
:class:`~lipo_if.influence.hvp.HessianOperator` signature (for spectrum estimates and checks).

The autograd path (``HessianOperator.matvec``) stays the named reference and is the only one for
restricted parameter blocks and for other models.
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch

from lipo_if import ops

from .curvature import Batch, WrappedCurvature
from .hvp import HessianOperator
from .mlp import MLP, mlp_unsupported_reason

#: ``hvp=`` choices of the solvers: native when supported (auto), always native, or autograd.
HVP_BACKENDS: tuple[str, ...] = ("auto", "native", "autograd")


def native_unsupported_reason(op: HessianOperator) -> str | None:
    """Why :class:`NativeHessian` cannot represent ``op`` (None when it can)."""
    if op.kind not in ("gauss-newton", "exact"):
        return f"the native HVP implements kind='gauss-newton' and 'exact', not kind={op.kind!r}"
    reason = mlp_unsupported_reason(op.model)
    if reason is not None:
        return reason
    expected = tuple(f"layers.{l}.{kind}" for l in range(len(op.model.layers)) for kind in ("weight", "bias"))
    if op.block.names != expected or op.frozen:
        return "the native HVP covers the full parameter vector only (no restricted --params block)"
    return None


class SplitInput(NamedTuple):
    """The training inputs of the first layer split once per operator: ``dense_cols`` (int64
    ``[nd]``), their values ``x_dense`` ``[n, nd]`` (contiguous), the other columns' non-zeros
    ``csr``, and ``dense_range`` — the same columns as a slice when they are contiguous, else None."""

    dense_cols: torch.Tensor
    x_dense: torch.Tensor
    csr: ops.CsrMatrix
    dense_range: slice | None


def _split_input(X: torch.Tensor) -> SplitInput:
    """``X`` split by :func:`lipo_if.ops.split_csr` (dense columns + CSR of the rest), with the
    dense columns' values copied out once."""
    dense_cols, csr = ops.split_csr(X)
    contiguous = dense_cols.numel() > 0 and int(dense_cols[-1] - dense_cols[0]) + 1 == dense_cols.numel()
    dense_range = slice(int(dense_cols[0]), int(dense_cols[-1]) + 1) if contiguous else None
    x_dense = X[:, dense_range] if dense_range is not None else X.index_select(1, dense_cols)
    return SplitInput(dense_cols, x_dense.contiguous(), csr, dense_range)


def _first_layer(
    split: SplitInput, idx: torch.Tensor | None, weight_t: torch.Tensor, bias: torch.Tensor,
    x_dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """``X[idx] Wᵀ + b`` ``[B, out]`` (all rows when idx is None) from the split input: the dense
    columns by one GEMM, the rest by :func:`lipo_if.ops.linear_csr`. ``weight_t`` ``[in, out]``;
    ``x_dense``: ``split.x_dense[idx]`` when the caller has it."""
    if x_dense is None:
        x_dense = split.x_dense if idx is None else split.x_dense.index_select(0, idx)
    rows = torch.arange(split.csr.n_rows, device=weight_t.device) if idx is None else idx
    if split.csr.nnz:  # dense columns' GEMM inside the op (beside the sparse part on a 2-thread CPU pool)
        z = ops.linear_csr(split.csr, rows, weight_t, None, split.dense_cols, x_dense)
        return z.add_(bias)
    w_dense = weight_t[split.dense_range] if split.dense_range is not None else weight_t.index_select(0, split.dense_cols)
    return torch.addmm(bias, x_dense, w_dense)


class RowCache(NamedTuple):
    """Per-row quantities at θ̂ for a set of rows: ``hidden`` / ``masks`` (post-ReLU activations,
    0/1 masks) of every hidden layer ``[n, width used]``, the exact Hessian's first-order
    ``signals`` (None where the products do not read them) and ``proj``, the folded head's
    ``(m_{L−2} ⊙ w_L) W_{L−2}`` ``[n, width of hidden L−3]`` (None when not folding)."""

    hidden: list
    masks: list
    signals: list
    proj: torch.Tensor | None

    def take(self, idx: torch.Tensor) -> "RowCache":
        """The rows ``idx`` (gathered copies)."""
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731 — faster than t[idx]
        return RowCache([pick(t) for t in self.hidden], [pick(t) for t in self.masks],
                        [pick(t) for t in self.signals], pick(self.proj))

    def rows(self, sl: slice) -> "RowCache":
        """The rows ``sl`` (views)."""
        cut = lambda t: None if t is None else t[sl]  # noqa: E731
        return RowCache([cut(t) for t in self.hidden], [cut(t) for t in self.masks],
                        [cut(t) for t in self.signals], cut(self.proj))


class NativeHessian(WrappedCurvature):
    """Gauss–Newton or exact curvature of an :class:`~lipo_if.model.MLPRegressor`, explicit products.

    Built from a ``HessianOperator`` ``op`` (``kind`` "gauss-newton" or "exact") over all
    parameters: the same facts (``kind``, ``n_params``, ``n_train``, ``weight_decay``, ``dtype``,
    ``theta``, the training rows) and the same products up to rounding; ``op`` stays the reference. Construction runs
    one forward pass over the training set and keeps ``[n, width]`` activations and masks of every
    hidden layer (and, for the exact Hessian, the first-order backward signals of layers 2…L).
    ``drop_dead_units``: leave the units of hidden layers 2… that are off on every training row
    out of the products (exactly zero there; :meth:`_drop_dead_units`). ``fold_head``: compute
    the last hidden layer and the one-output layer by the folded algebra of :meth:`_folded_head`
    (half the GEMMs there). False for either runs the plain layer-by-layer products (A/B
    benchmarks and tests).

    Raises:
        ValueError: the operator is not supported (see :func:`native_unsupported_reason`).
    """

    def __init__(self, op: HessianOperator, drop_dead_units: bool = True, fold_head: bool = True) -> None:
        reason = native_unsupported_reason(op)
        if reason is not None:
            raise ValueError(f"native HVP unavailable: {reason}; use hvp='autograd'")
        self.op = op
        self.kind, self.weight_decay, self.dtype, self.theta = op.kind, op.weight_decay, op.dtype, op.theta
        self.backend = "native"
        #: the solver product leaves λ·vec out (LiSSA folds λ/scale into its damping; CG adds it)
        self.folded_weight_decay = op.weight_decay
        params = op.param_dict()
        self.n_layers = len(op.model.layers)
        self.weights = [params[f"layers.{l}.weight"].contiguous() for l in range(self.n_layers)]
        self.biases = [params[f"layers.{l}.bias"].contiguous() for l in range(self.n_layers)]
        self._w0t = self.weights[0].t().contiguous()  # [in, out]: read without a copy by linear_strided
        self._shapes = list(op.block.shapes)
        self._sizes = [math.prod(s) for s in self._shapes]
        self._w0_shape = tuple(self._shapes[0])  # (out, in)
        self.exact = op.kind == "exact"
        #: The training inputs split once: dense columns + CSR of the rest (forward here, LiSSA steps).
        self._sparse_input = _split_input(op.X)
        hidden, masks, signals = self._forward(op.X, op.y, self._sparse_input)
        #: Per hidden layer: its units reordered live-first (None: all live, or the first hidden
        #: layer, whose reordering would move the big first block). See :meth:`_drop_dead_units`.
        self._unit_orders: list[torch.Tensor | None] = [None] * len(masks)
        self._tail_order: torch.Tensor | None = None  # internal tail position -> standard tail position
        self._tail_inverse: torch.Tensor | None = None
        if drop_dead_units:
            hidden, masks, signals = self._drop_dead_units(hidden, masks, signals)
        #: Fold the last hidden layer into the output layer's algebra (:meth:`_folded_head`); needs L ≥ 3.
        self.fold_head = fold_head and self.n_layers >= 3
        if self.fold_head and self.exact:
            signals[1] = None  # the head's signal is r·w_L ⊙ m: the folded head forms it from r
        self.hidden, self.masks, self.signals = hidden, masks, signals
        self.proj = self._head_projection(masks)
        self._tail_buffer: torch.Tensor | None = None
        self._step_views: tuple | None = None  # (h, v, their block views, tail, its views, tail-update args)
        #: LiSSA solvers call :meth:`lissa_step_` (fused first-block update) when True; False makes
        #: them use matvec_internal + lissa_step (kept for A/B benchmarks and tests).
        self.fused_lissa = True

    # ------------------------------------------------------------------ the CurvatureOperator interface


    def to_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        return self.to_internal(vec)

    def from_solver_layout(self, vec: torch.Tensor) -> torch.Tensor:
        return self.from_internal(vec)

    def solver_product(self, vec: torch.Tensor, idx: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.matvec_internal(vec, idx, weight_decay=False, out=out)

    def fused_lissa_step(self, h: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, damping: float,
                         scale: float) -> tuple[float, float] | None:
        return self.lissa_step_(h, v, idx, damping, scale) if self.fused_lissa else None

    def __repr__(self) -> str:
        return f"NativeHessian({self.op!r})"

    # ------------------------------------------------------------------ layout

    def to_internal(self, vec: torch.Tensor) -> torch.Tensor:
        """Standard ``[p]`` vector → internal layout (first weight block transposed, dead hidden
        units last); a new tensor."""
        vec = self.op.check_vec(vec)
        out_, in_ = self._w0_shape
        return self._permuted(vec, vec[: self._sizes[0]].view(out_, in_).t(), self._tail_order)

    def from_internal(self, vec: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_internal`; a new tensor."""
        out_, in_ = self._w0_shape
        return self._permuted(vec, vec[: self._sizes[0]].view(in_, out_).t(), self._tail_inverse)

    def _permuted(self, vec: torch.Tensor, first_block: torch.Tensor, tail_order: torch.Tensor | None) -> torch.Tensor:
        """A new ``[p]`` vector: ``first_block`` (a transposed view) copied in, the rest of ``vec``
        gathered by ``tail_order`` (as is when None) — one pass over each element."""
        n0 = self._sizes[0]
        out = torch.empty_like(vec, memory_format=torch.contiguous_format)
        out[:n0].view(first_block.shape).copy_(first_block)
        if tail_order is None:
            out[n0:].copy_(vec[n0:])
        else:
            torch.index_select(vec[n0:], 0, tail_order.to(vec.device), out=out[n0:])
        return out

    # ------------------------------------------------------------------ dead hidden units

    def _drop_dead_units(self, hidden: list, masks: list, signals: list) -> tuple[list, list, list]:
        """Reorder the units of hidden layers 2…L−1 live-first and keep only the live columns of
        their training-set caches.

        A unit whose ReLU is off on every training row is decoupled from every product over
        training rows: its tangent is masked, its activation is 0, so the rows of ``G v`` (and of
        the exact ``H v``) of its incoming weights and bias and the columns of its outgoing
        weights are exactly 0 (λ·v aside). Trained ReLU nets have such units (22 % of the second
        hidden layer of the model in ``benchmarks/peers``); dropping them shrinks every hidden-layer
        GEMM of a product by that fraction. The model is unchanged (same function); weights,
        biases and the internal layout are permuted accordingly. Products on other batches
        (:meth:`matvec` with ``batch``) run at full width in the permuted order.
        The first hidden layer is not reordered (its units index the first weight block, ≈95 %
        of ``p``, which the sparse kernels read in place).
        """
        for k in range(1, len(masks)):
            live = masks[k].sum(0) != 0
            if bool(live.all()):
                continue
            order = torch.cat([live.nonzero()[:, 0], (~live).nonzero()[:, 0]])
            self._unit_orders[k] = order
            alive = order[: int(live.sum())]
            self.weights[k] = self.weights[k].index_select(0, order).contiguous()
            self.biases[k] = self.biases[k].index_select(0, order).contiguous()
            self.weights[k + 1] = self.weights[k + 1].index_select(1, order).contiguous()
            hidden[k], masks[k] = hidden[k].index_select(1, alive), masks[k].index_select(1, alive)
            if self.exact:  # signals[L−1−l] is the output signal of layer l (width of hidden layer l)
                j = self.n_layers - 1 - k
                signals[j] = signals[j].index_select(1, alive)
        if any(order is not None for order in self._unit_orders):
            self._tail_order = self._tail_permutation()
            self._tail_inverse = torch.argsort(self._tail_order)
        return hidden, masks, signals

    def _tail_permutation(self) -> torch.Tensor:
        """int64 ``[p − n₀]``: for each internal position after the first weight block, its standard
        position (relative to the block's end), given the unit orders."""
        pieces, start = [], 0
        for block, (shape, size) in enumerate(zip(self._shapes[1:], self._sizes[1:]), start=1):
            layer, is_weight = block // 2, block % 2 == 0
            index = torch.arange(start, start + size).view(shape)
            out_order = self._unit_orders[layer] if layer < len(self._unit_orders) else None
            if out_order is not None:
                index = index.index_select(0, out_order)
            if is_weight and self._unit_orders[layer - 1] is not None:
                index = index.index_select(1, self._unit_orders[layer - 1])
            pieces.append(index.reshape(-1))
            start += size
        return torch.cat(pieces)

    def _views(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of an internal-layout vector (first weight as ``[in, out]``)."""
        chunks = list(torch.split(vec, self._sizes))
        out_, in_ = self._w0_shape
        views = [chunks[0].view(in_, out_)]
        views += [c.view(s) for c, s in zip(chunks[1:], self._shapes[1:])]
        return views

    # ------------------------------------------------------------------ forward cache

    def _forward(self, X: torch.Tensor, y: torch.Tensor, split: SplitInput | None = None) -> tuple[list, list, list]:
        """Post-ReLU activations ``h_l`` and masks ``m_l`` (0/1 in ``dtype``) of the hidden layers, and
        for the exact Hessian the unscaled first-order signals ``[r, …]`` of layers L, L−1, …, 2
        (``r = f − y`` ``[n, 1]``, then ``(s W_l) ⊙ m_{l−1}``; empty for Gauss–Newton).
        ``split``: ``X`` already split (:func:`_split_input`), read instead of scanning ``X`` again."""
        with torch.no_grad():
            first = (ops.linear_strided(X, self._w0t, self.biases[0]) if split is None
                     else _first_layer(split, None, self._w0t, self.biases[0]))
            fwd = MLP(self.weights, self.biases).forward(X, first=first)
            signals = []
            if self.exact:
                s = fwd.output - y.reshape(-1, 1)
                for l in range(self.n_layers - 1, 0, -1):
                    signals.append(s)
                    if l > 1:
                        s = (s @ self.weights[l]) * fwd.masks[l - 1]
        return fwd.hidden, fwd.masks, signals

    def _head_projection(self, masks: list) -> torch.Tensor | None:
        """``(m_k ⊙ w_L) W_k`` ``[n, width of hidden k−1]`` for the head layer ``k = L − 2`` (rows of
        ``masks``), or None when not folding. Fixed at θ̂: formed once per row set."""
        if not self.fold_head:
            return None
        k = self.n_layers - 2
        a, a_in = masks[k].shape[1], masks[k - 1].shape[1]
        return (masks[k] * self.weights[k + 1][0, :a]) @ self.weights[k][:a, :a_in]

    def _row_cache(self) -> RowCache:
        return RowCache(self.hidden, self.masks, self.signals, self.proj)

    def _cached_chunks(self, idx: torch.Tensor | None) -> Iterator[tuple]:
        """``(x, RowCache, 2/|B|-weight)`` for a minibatch ``idx`` or the whole set in chunks."""
        op = self.op
        cache = self._row_cache()
        if idx is not None:
            yield op.X[idx], cache.take(idx), 2.0 / idx.numel()
            return
        n = op.n_train
        for start in range(0, n, op.chunk_size):
            sl = slice(start, min(start + op.chunk_size, n))
            yield op.X[sl], cache.rows(sl), 2.0 / n

    # ------------------------------------------------------------------ products

    def _tangent_backward(
        self, V: list[torch.Tensor], dz: torch.Tensor, rows: RowCache, coef: float, O: list, first: bool,
    ) -> torch.Tensor:
        """From the first layer's tangent ``dz = x V₁ᵀ + c₁`` ``[B, out₁]``: the rest of ``J v``, then
        ``Jᵀ (coef·J v)`` (plus the R-operator terms of the exact Hessian) for every parameter block
        but the first weight, written (``first``) or added into ``O[1:]``. Returns the first layer's
        output gradient ``q`` ``[B, out₁]``, whose weight gradient ``xᵀ q`` is the first block.

        Hidden layers run on the units the caches hold (``masks[k].shape[1]``: the live ones,
        first in the permuted order; see :meth:`_drop_dead_units`); the rows and columns of the
        dropped units are written as zeros. With ``rows.proj`` the last hidden layer and the
        output layer are done by :meth:`_folded_head`."""
        L = self.n_layers
        hidden, masks, signals = rows.hidden, rows.masks, rows.signals
        widths = [m.shape[1] for m in masks] + [1]  # units in use per layer output
        top = L - 2 if rows.proj is not None else L  # layers below `top` go one by one
        dh = []  # tangents of the hidden outputs
        for l in range(1, top):
            a_in, a_out = widths[l - 1], widths[l]
            dh.append(dz * masks[l - 1])
            dz = torch.addmm(V[2 * l + 1][:a_out], dh[-1], self.weights[l][:a_out, :a_in].t())
            dz.addmm_(hidden[l - 1], V[2 * l][:a_out, :a_in].t())
        if rows.proj is not None:
            q = self._folded_head(V, dz, rows, widths, coef, O, first)
            dh.append(None)  # (the head's input tangent is used inside the fold only)
            below = top - 1
        else:
            q = dz * coef  # (2/B)·Jv as the output gradient, [B, 1]
            below = L - 1
        for l in range(below, 0, -1):
            a_in, a_out = widths[l - 1], widths[l]
            used_w, used_b = O[2 * l][:a_out, :a_in], O[2 * l + 1][:a_out]
            if first and used_w.is_contiguous():  # written straight into the output block
                grad_w = torch.mm(q.t(), hidden[l - 1], out=used_w)
            else:
                grad_w = q.t() @ hidden[l - 1]
            if self.exact:
                s = signals[L - 1 - l] * coef
                grad_w.addmm_(s.t(), dh[l - 1])
            if first:
                if grad_w is not used_w:
                    used_w.copy_(grad_w)
                torch.sum(q, 0, out=used_b)
                _zero_outside(O[2 * l], a_out, a_in)
                O[2 * l + 1][a_out:].zero_()
            else:
                used_w.add_(grad_w)
                used_b.add_(q.sum(0))
            q = q @ self.weights[l][:a_out, :a_in]
            if self.exact:
                q.addmm_(s, V[2 * l][:a_out, :a_in])
            q = q * masks[l - 1]
        _accumulate(O[1], q.sum(0), first)
        return q

    def _folded_head(
        self, V: list[torch.Tensor], dz: torch.Tensor, rows: RowCache, widths: list[int], coef: float, O: list,
        first: bool,
    ) -> torch.Tensor:
        """The head layer ``k = L − 2`` (``W_k`` ``[a, a_in]``, hidden ``k`` → the one output through
        the row ``w`` of ``W_{L−1}``) and the output layer in closed form, from the tangent ``dz``
        ``[B, a_in]`` of hidden layer ``k − 1``; writes (``first``) or adds the blocks of ``W_k``,
        ``b_k``, ``W_{L−1}``, ``b_{L−1}`` and returns the output gradient of layer ``k − 1``.

        With one output the head's output gradient is a rank-1 (exact: rank-2) pattern under its
        ReLU mask, ``q_k = (q w + c u) ⊙ m_k`` (``q`` = coef·J v, ``c`` = coef·r, ``u`` = V's row of
        ``W_{L−1}``), so with ``P = (m_k ⊙ w) W_k`` cached per row (:meth:`_head_projection`)::

            J v          = rowsum(dh P) + (m_k ⊙ T) w + h_k u + c_L,      T = h Vₖᵀ + cₖ
            ∂W_k         = diag(w) m_kᵀ (q ⊙ h + c ⊙ dh) + diag(u) m_kᵀ (c ⊙ h)
            ∂b_k         = w ⊙ m_kᵀ q + u ⊙ m_kᵀ c
            ∂w (exact)   = rowsum((m_kᵀ (q ⊙ h + c ⊙ dh)) ⊙ W_k) + b_k ⊙ m_kᵀ q + (m_k ⊙ T)ᵀ c
            q_{k−1}      = (q ⊙ P + c ⊙ m_k (diag(u) W_k + diag(w) V_k)) ⊙ m_{k−1}

        (``h``, ``dh``: hidden layer ``k − 1`` and its tangent; Gauss–Newton: ``c = 0`` and
        ``∂w = h_kᵀ q``). The ``∂w`` line uses ``h_k = m_k ⊙ (h W_kᵀ + b_k)``. Two GEMMs of the
        head's size for Gauss–Newton (four plain), four for the exact Hessian (six plain)."""
        L, k = self.n_layers, self.n_layers - 2
        a_in, a = widths[k - 1], widths[k]
        h, h_k, m_k, m_in, P = rows.hidden[k - 1], rows.hidden[k], rows.masks[k], rows.masks[k - 1], rows.proj
        dh = dz * m_in
        W, Vw, Vb = self.weights[k][:a, :a_in], V[2 * k][:a, :a_in], V[2 * k + 1][:a]
        w, u = self.weights[L - 1][0, :a], V[2 * L - 2][0, :a]
        T = torch.addmm(Vb, h, Vw.t())  # [B, a]
        mT = m_k * T
        q = ((dh * P).sum(1) + mT @ w + h_k @ u + V[2 * L - 1]).mul_(coef)  # [B]: coef · J v
        mq = m_k.t() @ q  # [a]
        if self.exact:
            c = rows.signals[0][:, 0] * coef  # [B]
            Y = m_k.t() @ torch.addcmul(h * q[:, None], dh, c[:, None])  # [a, a_in]
            grad_w_out = (Y * W).sum(1).add_(mq * self.biases[k][:a]).add_(mT.t() @ c)
            grad_W = Y.mul_(w[:, None]).add_((m_k.t() @ (h * c[:, None])).mul_(u[:, None]))
            grad_b = (w * mq).add_(u * (m_k.t() @ c))
            q_in = torch.addcmul((m_k @ torch.addcmul(W * u[:, None], Vw, w[:, None])).mul_(c[:, None]), P, q[:, None])
        else:
            grad_w_out = h_k.t() @ q
            grad_W = (m_k.t() @ (h * q[:, None])).mul_(w[:, None])
            grad_b = w * mq
            q_in = P * q[:, None]
        for block, value, used in ((O[2 * L - 2], grad_w_out[None], (1, a)), (O[2 * L - 1], q.sum().reshape(1), (1,)),
                                   (O[2 * k], grad_W, (a, a_in)), (O[2 * k + 1], grad_b, (a,))):
            corner = block[: used[0]] if len(used) == 1 else block[: used[0], : used[1]]
            if first:
                corner.copy_(value)
                if len(used) == 1:
                    block[used[0]:].zero_()
                else:
                    _zero_outside(block, *used)
            else:
                corner.add_(value)
        return q_in.mul_(m_in)

    def _product(
        self, vec: torch.Tensor, chunks, weight_decay: bool = True, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``Σ_chunks`` of the Gauss–Newton (or exact) product ``(+ λ vec)`` in the internal layout,
        written into ``out`` (a ``[p]`` buffer of vec's dtype, not aliasing vec) when given."""
        V = self._views(vec)
        if out is None:
            out = torch.empty_like(vec)
        elif out.shape != vec.shape or out.dtype != vec.dtype or not out.is_contiguous() or out.data_ptr() == vec.data_ptr():
            raise ValueError("out must be a contiguous buffer shaped and typed like vec, distinct from it")
        O = self._views(out)
        first = True
        with torch.no_grad():
            for x, rows, coef in chunks:
                dz = ops.linear_strided(x, V[0], V[1])
                q = self._tangent_backward(V, dz, rows, coef, O, first)
                if first:  # the first block (≈94 % of p) is written in place, not copied
                    ops.linear_weight_grad_strided(x, q, out=O[0])
                else:
                    O[0].add_(ops.linear_weight_grad_strided(x, q))
                first = False
            if first:  # no rows at all
                out.zero_()
            if weight_decay and self.op.weight_decay:
                out.add_(vec, alpha=self.op.weight_decay)
        return out

    def lissa_step_(
        self, h: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, damping: float, scale: float
    ) -> tuple[float, float]:
        """One LiSSA step on the minibatch ``idx``, in place on ``h`` (internal layout, ``[p]``)::

            h ← v + (1 − damping)·h − G_B h / scale

        with ``G_B`` the product of :meth:`matvec_internal` *without* the ``λ·h`` term (callers fold
        ``λ/scale`` into ``damping``, as the LiSSA solver does). Equal to ``matvec_internal`` +
        :func:`lipo_if.ops.lissa_step` up to rounding, but the first weight block's product is
        never formed: :func:`lipo_if.ops.lissa_step_update_csr` builds each of its rows from the
        minibatch's output gradients and applies the update at once (one pass over ≈95 % of ``p``
        instead of four), and the first layer's input is read from the training set compressed
        at construction (:func:`lipo_if.ops.linear_csr`; dense columns by one GEMM).

        Returns ``(‖h_new − h‖₂, ‖h_new‖₂)`` as Python floats (one host sync).
        """
        if h.shape != (self.n_params,) or v.shape != h.shape or not h.is_contiguous() or h.data_ptr() == v.data_ptr():
            raise ValueError(f"h and v must be distinct [p] = [{self.n_params}] vectors, h contiguous")
        sparse_in = self._sparse_input
        n0 = self._sizes[0]
        take = lambda t: t.index_select(0, idx)  # noqa: E731 — faster than t[idx] for row gathers
        if self._tail_buffer is None or self._tail_buffer.dtype != h.dtype or self._tail_buffer.device != h.device:
            self._tail_buffer = torch.empty(self.n_params - n0, dtype=h.dtype, device=h.device)
        tail = self._tail_buffer
        cached = self._step_views
        if cached is None or cached[0] is not h or cached[1] is not v or cached[4] is not tail:
            # h is updated in place, so a LiSSA chain passes the same h and v every step: their
            # per-block views are built once per chain (≈40 small tensor ops a step otherwise).
            O = [None] + [c.view(shape) for c, shape in zip(torch.split(tail, self._sizes[1:]), self._shapes[1:])]
            tail_args = (h[n0:], v[n0:], tail)
            cached = self._step_views = (h, v, self._views(h), self._views(v), tail, O, tail_args)
        V, Vv, O = cached[2], cached[3], cached[5]
        with torch.no_grad():
            x_dense = take(sparse_in.x_dense)
            dz = _first_layer(sparse_in, idx, V[0], V[1], x_dense)
            q = self._tangent_backward(V, dz, self._row_cache().take(idx), 2.0 / idx.numel(), O, True)
            # The dense columns' rows of G (x_denseᵀ q, a GEMM) are formed by the op itself, beside the
            # other rows' update on a 2-thread CPU pool.
            dense = (sparse_in.dense_cols, None, x_dense) if sparse_in.dense_cols.numel() else (None, None, None)
            sums = ops.lissa_step_update_csr(V[0], Vv[0], sparse_in.csr, idx, q, damping, scale, *dense)
            # The other blocks (≈5 % of p, their product in `tail`): the same in-place update.
            h_tail, v_tail, tail = cached[6]
            sums = sums + ops.lissa_step_update(h_tail, v_tail, tail, damping, scale)
            step_sq, h_sq = sums.tolist()
        return math.sqrt(step_sq), math.sqrt(h_sq)

    def matvec_internal(
        self, vec: torch.Tensor, idx: torch.Tensor | None = None, weight_decay: bool = True,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``G_B · vec`` (λ·vec included unless ``weight_decay=False``) in the internal layout, ``[p]``.

        ``idx``: training-row indices of the minibatch (``HessianOperator.sample_indices``), or
        None for the whole training set (exact ``1/n`` weighting, in chunks of ``chunk_size``).
        ``weight_decay=False`` leaves out the ``λ·vec`` term, for callers that fold it into their own
        update (the LiSSA recursion adds it to its damping), saving a pass over ``p`` elements.
        ``out``: a ``[p]`` buffer to write the product into (reused across LiSSA steps: a fresh
        10 MB tensor per step costs page faults when the allocator hands memory back to the OS).
        """
        return self._product(vec, self._cached_chunks(idx), weight_decay, out)

    def matvec(self, vec: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """Same contract as :meth:`HessianOperator.matvec` (standard layout, any batch ``(X, y)``)."""
        vec_int = self.to_internal(vec)
        if batch is None:
            return self.from_internal(self.matvec_internal(vec_int))
        X, y = self.op.as_batch(*batch)
        hidden, masks, signals = self._forward(X, y)
        rows = RowCache(hidden, masks, signals, self._head_projection(masks))
        return self.from_internal(self._product(vec_int, [(X, rows, 2.0 / X.shape[0])]))


def _zero_outside(block: torch.Tensor, rows: int, cols: int) -> None:
    """Zero a ``[R, C]`` block outside its leading ``[rows, cols]`` corner."""
    block[rows:].zero_()
    block[:rows, cols:].zero_()


def _accumulate(target: torch.Tensor, value: torch.Tensor, first: bool) -> None:
    if first:
        target.copy_(value)
    else:
        target.add_(value)


def select_hvp(op: HessianOperator, hvp: str = "auto") -> HessianOperator | NativeHessian:
    """The operator the solvers should use: ``NativeHessian(op)`` or ``op`` (autograd).

    ``hvp``: "auto" (native when :func:`native_unsupported_reason` is None), "native" (raise
    ValueError when unsupported) or "autograd" (the reference).
    """
    if hvp not in HVP_BACKENDS:
        raise ValueError(f"unknown hvp backend {hvp!r}; choose from {', '.join(HVP_BACKENDS)}")
    if isinstance(op, NativeHessian):
        return op if hvp != "autograd" else op.op
    if hvp == "autograd" or (hvp == "auto" and native_unsupported_reason(op) is not None):
        return op
    return NativeHessian(op)
