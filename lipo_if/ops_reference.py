"""Pure-PyTorch reference implementations of the :mod:`lipo_if.ops` kernels.

Same names and signatures as :mod:`lipo_if.ops`, so tests and benchmarks can swap the two
modules. These are also the fallback that :mod:`lipo_if.ops` uses when the compiled extension
``lipo_if._C`` is not built. No input validation here (``lipo_if.ops`` does it).

:func:`mlp_grad_dot_vmap` is the *materializing* reference (``torch.func.vmap(grad)`` per-sample
gradients) used by the benchmarks and tests only: it is what the fused kernel avoids.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.func import functional_call, grad, vmap


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


def lissa_step(
    h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_new = v + (1 − damping)·h − hvp/scale`` and ``‖h_new − h‖₂`` (0-dim), all same shape."""
    h_new = v + (1.0 - damping) * h - hvp / scale
    return h_new, torch.linalg.vector_norm(h_new - h)


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` ``[n, out]`` (dense GEMM): x ``[n, in]``, weight ``[out, in]``, bias ``[out]``."""
    return torch.nn.functional.linear(x, weight, bias)


def sparse_linear_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x.T @ grad_out`` ``[in, out]`` (dense GEMM): x ``[n, in]``, grad_out ``[n, out]``; written
    into ``out`` (contiguous ``[in, out]``) when given."""
    if out is None:
        return x.T @ grad_out
    return torch.mm(x.T, grad_out, out=out)


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
