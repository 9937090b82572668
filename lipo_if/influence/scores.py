"""Influence scores of candidate points: ``score(z) = −(1/n) s · ∇θ ℓ(z, θ̂)``.

With ``s = (H + μI)⁻¹ v`` and ``v = ∇θ L_heldout(θ̂)``, ``score(z)`` is the first-order predicted
change of the held-out mean loss when ``z`` is added to the ``n`` training points
(upweighting ``z`` by ε moves θ̂ by ``−ε H⁻¹ ∇ℓ(z)``; one point among n is ε = 1/n; and
``dL = v · dθ``). Units: held-out loss (logD²). **Negative = helpful** (loss goes down).

One caveat of "adding a point": retraining on ``n+1`` points with a *mean* loss also rescales
the data term against the fixed L2 term, which shifts every candidate's actual change by the
same constant ``−(λ/n) s·θ̂`` (see :func:`renormalization_offset`); rankings are unaffected.

Two ways to compute ``s · ∇ℓ(zᵢ)`` for a batch, neither holding more than one chunk of
per-sample gradients:

- :func:`grad_dot_reference` — ``torch.func.vmap(grad(ℓ))`` per-sample gradients ``[c, p]``
  for chunks of ``c`` samples, dotted with ``s``. Generic; the named reference.
- :func:`grad_dot_fast` — per Linear layer, sample i's weight gradient is
  ``out_grad[i] ⊗ act[i]`` (bias: ``out_grad[i]``), so
  ``s · ∇ℓ(zᵢ) = Σ_l out_gradᵢᵀ S_W,l actᵢ + out_gradᵢ · s_b,l`` — one forward pass, a manual
  backward of ``ℓ = (f − y)²`` (``out_grad`` of the last layer = ``2(f − y)``) and per-layer
  contractions (:func:`lipo_if.ops.linear_grad_dot`; the first layer's forward by
  :func:`lipo_if.ops.linear_strided`, which skips the zero fingerprint bits).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch.func import functional_call, grad, vmap

from lipo_if import ops
from lipo_if.graph import MolGraphs

from .hvp import HessianOperator
from .mlp import MLP

ScoreMethod = Literal["fast", "reference"]
SCORE_METHODS: tuple[str, ...] = ("fast", "reference")


def _as_matrix(vecs: torch.Tensor, op: HessianOperator) -> torch.Tensor:
    """``[p]`` or ``[k, p]`` → ``[k, p]`` in the operator's dtype."""
    vecs = vecs.to(op.dtype)
    vecs = vecs.unsqueeze(0) if vecs.dim() == 1 else vecs
    if vecs.dim() != 2 or vecs.shape[1] != op.n_params:
        raise ValueError(f"expected vectors [p] or [k, p] with p = {op.n_params}, got {tuple(vecs.shape)}")
    return vecs


def per_sample_grads(op: HessianOperator, X: torch.Tensor | MolGraphs, y: torch.Tensor) -> torch.Tensor:
    """``∇θ ℓ(zᵢ, θ̂)`` for every row, ``[B, p]`` (block parameters only). Materializes all of them.

    Feature rows by ``torch.func.vmap(grad(ℓ))``; graphs (:class:`~lipo_if.graph.MolGraphs`), whose
    sizes differ from molecule to molecule, by ``grad(ℓ)`` of one molecule at a time."""
    if isinstance(X, MolGraphs):
        X, y = X.to(op.dtype), y.to(op.dtype)
        graph_loss = lambda theta, i: (op.predict(theta, X[[i]])[0] - y[i]) ** 2  # noqa: E731
        return torch.stack([grad(graph_loss)(op.theta, i) for i in range(len(X))]) if len(X) else op.theta.new_zeros(0, op.n_params)

    def sample_loss(theta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (op.predict(theta, x.unsqueeze(0)).squeeze(0) - t) ** 2

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(op.theta, X.to(op.dtype), y.to(op.dtype))


def grad_dot_reference(
    op: HessianOperator, vecs: torch.Tensor, X: torch.Tensor, y: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """``vecs_k · ∇θ ℓ(zᵢ)`` by vmapped per-sample gradients in chunks: ``[B, k]``.

    ``vecs``: ``[k, p]`` (or ``[p]``, giving ``[B, 1]``). Memory: one ``[chunk_size, p]`` block.
    """
    vecs = _as_matrix(vecs, op)
    out = [per_sample_grads(op, X[i:i + chunk_size], y[i:i + chunk_size]) @ vecs.T
           for i in range(0, len(X), chunk_size)]
    return torch.cat(out) if out else vecs.new_zeros(0, vecs.shape[0])


def grad_dot_graph(
    op: HessianOperator, vecs: torch.Tensor, X: MolGraphs, y: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """:func:`grad_dot_reference` (``[B, k]``) for the D-MPNN (:class:`~lipo_if.dmpnn.DMPNN`) without
    per-molecule gradients.

    One forward pass over a chunk of molecules records every Linear application (its
    :class:`~lipo_if.dmpnn.Tap`), one backward of ``Σᵢ (f(zᵢ) − yᵢ)²`` gives ``∂/∂output`` of each —
    molecule i's own gradient on i's rows, since the molecules' graphs are disjoint — and a
    molecule's dot with each vector is the segment sum over its bonds (``W_i``, every ``W_h`` step)
    or atoms (``W_o``) of the per-row Linear-gradient dot, :func:`lipo_if.ops.linear_grad_dot_segment`;
    the feed-forward head's rows are molecules (:func:`lipo_if.ops.linear_grad_dot`).
    """
    vecs = _as_matrix(vecs, op)
    names = set(op.block.names)
    block = [op.block.unflatten(row) for row in vecs]
    params = op.param_dict()
    out = []
    for start in range(0, len(X), chunk_size):
        g, yc = X[start:start + chunk_size].to(op.dtype), y[start:start + chunk_size].to(op.dtype)
        taps: list = []
        with torch.enable_grad():
            live = {name: t.detach().requires_grad_(True) for name, t in params.items()}
            f = functional_call(op.model, live, (g,), {"taps": taps})
            taps = [t for t in taps if f"{t.layer}.weight" in names or f"{t.layer}.bias" in names]
            grads = torch.autograd.grad(((f - yc) ** 2).sum(), [t.output for t in taps]) if taps else []
        total = vecs.new_zeros(len(g), vecs.shape[0])
        for tap, out_grad in zip(taps, grads):
            w_name, b_name = f"{tap.layer}.weight", f"{tap.layer}.bias"
            w = params[w_name]
            vec_w = torch.stack([d[w_name] for d in block]) if w_name in names else w.new_zeros(len(block), *w.shape)
            vec_b = torch.stack([d[b_name] for d in block]) if b_name in names else None
            ptr = {"bonds": g.bond_ptr, "atoms": g.atom_ptr}.get(tap.rows)
            act = tap.input.detach()
            total += (ops.linear_grad_dot(act, out_grad, vec_w, vec_b) if ptr is None
                      else ops.linear_grad_dot_segment(act, out_grad, vec_w, vec_b, ptr))
        out.append(total)
    return torch.cat(out) if out else vecs.new_zeros(0, vecs.shape[0])


def grad_dot_fast(
    op: HessianOperator, vecs: torch.Tensor, X: torch.Tensor, y: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Same as :func:`grad_dot_reference` (``[B, k]``) by the per-layer outer-product identity.

    Works on :class:`~lipo_if.model.MLPRegressor` (Linear layers, ReLU between); parameters
    outside ``op``'s block contribute nothing, and the backward pass stops at the earliest
    layer that has block parameters.
    """
    vecs = _as_matrix(vecs, op)
    params = op.param_dict()
    try:
        mlp = MLP.from_params(params)
    except ValueError as exc:
        raise ValueError(f"the fast path needs an MLPRegressor ({exc}); use method='reference'") from None
    n_layers = mlp.n_layers
    block = [op.block.unflatten(row) for row in vecs]  # k dicts of views
    per_layer = []
    for l in range(n_layers):
        w_name, b_name = f"layers.{l}.weight", f"layers.{l}.bias"
        if w_name not in op.block.names and b_name not in op.block.names:
            per_layer.append(None)
            continue
        w, b = params[w_name], params[b_name]
        vec_w = torch.stack([d[w_name] for d in block]) if w_name in op.block.names else w.new_zeros(len(block), *w.shape)
        vec_b = torch.stack([d[b_name] for d in block]) if b_name in op.block.names else b.new_zeros(len(block), *b.shape)
        per_layer.append((vec_w, vec_b))
    first = next(l for l, item in enumerate(per_layer) if item is not None)
    # First layer: one sparse pass for its forward and its score terms together.
    fused = None if per_layer[0] is None else ops.first_layer_with_vectors(
        params["layers.0.weight"], params["layers.0.bias"], *per_layer[0])
    out = [_grad_dot_chunk(mlp, per_layer, first, X[i:i + chunk_size].to(op.dtype), y[i:i + chunk_size].to(op.dtype),
                           fused)
           for i in range(0, X.shape[0], chunk_size)]
    return torch.cat(out)


def _grad_dot_chunk(
    mlp: MLP, per_layer: list, first: int, X: torch.Tensor, y: torch.Tensor,
    fused: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward, backward of ``(f − y)²`` down to layer ``first``, and the contractions: ``[c, k]``.

    ``fused``: :func:`lipo_if.ops.first_layer_with_vectors` of layer 0 (its forward and the ``k``
    projections ``x V_jᵀ + c_j`` in one sparse pass), or None (layer 0 outside the block).
    """
    with torch.no_grad():
        first_proj = None
        if fused is not None:  # sparse fingerprint input: only its non-zeros are multiplied
            width = mlp.biases[0].shape[0]
            both = ops.linear_strided(X, *fused)  # [c, (k+1)·out]
            z, first_proj = both[:, :width], both[:, width:].reshape(X.shape[0], -1, width)
        else:
            z = ops.linear_strided(X, mlp.weights[0].t(), mlp.biases[0])
        fwd = mlp.forward(X, first=z)
        total = None
        for l, out_grad in mlp.backward(fwd, 2.0 * (fwd.output - y.unsqueeze(1)), stop=first):  # ∂(f − y)²/∂f first
            if l == 0 and first_proj is not None:
                term = torch.einsum("cko,co->ck", first_proj, out_grad)
            elif per_layer[l] is not None:
                term = ops.linear_grad_dot(fwd.inputs[l], out_grad, *per_layer[l])
            else:
                continue
            total = term if total is None else total + term
    return total


def grad_dots(
    op: HessianOperator, vecs: torch.Tensor, X: torch.Tensor, y: torch.Tensor, method: ScoreMethod = "fast",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``vecs · ∇θ ℓ(zᵢ)`` ``[B, k]`` by ``method`` ("fast" or "reference"); graphs take
    :func:`grad_dot_graph` as their fast path."""
    if method == "fast" and isinstance(X, MolGraphs):
        return grad_dot_graph(op, vecs, X, y, min(chunk_size, 256))
    if method == "fast":
        return grad_dot_fast(op, vecs, X, y, chunk_size)
    if method == "reference":
        return grad_dot_reference(op, vecs, X, y, min(chunk_size, 256))
    raise ValueError(f"unknown score method {method!r}; choose from {', '.join(SCORE_METHODS)}")


def influence_scores(
    op: HessianOperator, s: torch.Tensor, X: torch.Tensor, y: torch.Tensor, method: ScoreMethod = "fast",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``score(zᵢ) = −(1/n) s · ∇θ ℓ(zᵢ, θ̂)`` ``[B]`` (held-out-loss units; negative = helpful).

    ``s`` ``[p]`` is the inverse-HVP of the held-out gradient, ``X`` ``[B, d]`` the candidates'
    (standardized) features, ``y`` ``[B]`` their labels, ``n = op.n_train``.
    """
    return -grad_dots(op, s, X, y, method, chunk_size)[:, 0] / op.n_train


def renormalization_offset(op: HessianOperator, s: torch.Tensor) -> float:
    """``−(λ/n) s·θ̂``: the extra change every candidate shares when retraining uses ``1/(n+1)``.

    Retraining on n+1 points minimizes ``(1/(n+1)) Σ ℓ + (λ/2)‖θ‖²``, proportional to
    ``R(θ) + (1/n)ℓ(z) + (1/n)(λ/2)‖θ‖²``; the last term moves θ̂ by ``−(λ/n) H⁻¹θ̂`` for every z.
    So the first-order actual change is ``score(z) + renormalization_offset``.
    """
    return float(-(op.weight_decay / op.n_train) * (s.to(op.dtype) @ op.theta))
