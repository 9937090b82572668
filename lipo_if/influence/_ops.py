"""Optional fused kernels from :mod:`lipo_if.ops`, with pure-PyTorch equivalents.

``lipo_if.ops`` is written alongside this subpackage (C++/CUDA extension plus its own fallback).
The influence code must work before it exists, and must not be broken by a half-finished or
unbuilt version of it, so the import is guarded and every kernel has a local twin here with
the same algebra. The local twins are also what the tests compare the kernels against.
"""
from __future__ import annotations

import logging
from types import ModuleType

import torch

log = logging.getLogger(__name__)


def _load_ops() -> ModuleType | None:
    try:
        from lipo_if import ops  # noqa: PLC0415 — optional, may not exist yet
    except Exception as exc:  # noqa: BLE001 — any failure means "use the local twin"
        log.debug("lipo_if.ops unavailable (%s: %s); using pure-PyTorch influence kernels", type(exc).__name__, exc)
        return None
    return ops


_OPS = _load_ops()


def ops_available(name: str) -> bool:
    """True when ``lipo_if.ops`` imported and offers a callable ``name``."""
    return _OPS is not None and callable(getattr(_OPS, name, None))


def torch_lissa_step(
    h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LiSSA update ``h_new = v + (1 − damping)·h − hvp/scale``; returns ``(h_new, ‖h_new − h‖)``.

    All vectors ``[p]``. ``damping`` here is the *recursion* damping (dimensionless, ``μ/scale``
    in the solver's convention), ``scale`` the LiSSA scale (Hessian-eigenvalue units).
    The step norm is returned as a 0-dim tensor so a device kernel need not synchronize.
    """
    h_new = v + (1.0 - damping) * h - hvp / scale
    return h_new, torch.linalg.vector_norm(h_new - h)


def lissa_step(
    h: torch.Tensor, v: torch.Tensor, hvp: torch.Tensor, damping: float, scale: float
) -> tuple[torch.Tensor, float]:
    """LiSSA update through ``lipo_if.ops.lissa_step`` when available, else :func:`torch_lissa_step`."""
    if ops_available("lissa_step"):
        h_new, step = _OPS.lissa_step(h, v, hvp, damping, scale)
    else:
        h_new, step = torch_lissa_step(h, v, hvp, damping, scale)
    return h_new, float(step)


def torch_linear_grad_dot(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor
) -> torch.Tensor:
    """Dot products of per-sample Linear-layer gradients with ``k`` parameter-shaped vectors.

    Sample ``i``'s gradient of a Linear layer is ``(out_grad[i] ⊗ act[i], out_grad[i])`` (weight,
    bias), so its dot with ``(W_k, b_k)`` is ``out_grad[i]ᵀ W_k act[i] + out_grad[i]·b_k`` —
    computed without forming any ``[out, in]`` per-sample matrix.

    Shapes: act ``[n, in]``, out_grad ``[n, out]``, vec_weight ``[k, out, in]``,
    vec_bias ``[k, out]`` → ``[n, k]``.
    """
    projected = torch.einsum("ni,koi->nko", act, vec_weight)  # W_k act_i, [n, k, out]
    weight_part = torch.einsum("nko,no->nk", projected, out_grad)
    return weight_part + out_grad @ vec_bias.T


def linear_grad_dot(
    act: torch.Tensor, out_grad: torch.Tensor, vec_weight: torch.Tensor, vec_bias: torch.Tensor
) -> torch.Tensor:
    """:func:`torch_linear_grad_dot` through ``lipo_if.ops.linear_grad_dot`` when available."""
    if ops_available("linear_grad_dot"):
        return _OPS.linear_grad_dot(act, out_grad, vec_weight, vec_bias)
    return torch_linear_grad_dot(act, out_grad, vec_weight, vec_bias)
