"""The package's MLP as explicit tensors: one forward pass with its cached activations, one backward.

:class:`~lipo_if.model.MLPRegressor` is ``L`` Linear layers with a ReLU after every layer but the
last, and one output. Every hand-written derivative in the package — the fused influence scores
(:mod:`.scores`), the native Hessian-vector products (:mod:`.native_hvp`) and the function-space
solve (:mod:`.function_space`) — starts from the same two passes, which live here:

- :meth:`MLP.forward`: the layer inputs ``a_l`` (``a_0 = x``, ``a_l`` = post-ReLU activations of
  hidden layer ``l``), the ReLU masks ``m_l`` (0/1 in the input's dtype) and the output ``f``;
- :meth:`MLP.backward`: from an output gradient ``g_L`` ``[B, 1]``, the gradients with respect to
  every layer's output, ``g_{l−1} = (g_l W_l) ⊙ m_{l−1}``. Sample ``i``'s gradient of layer ``l`` is
  ``(g_l[i] ⊗ a_l[i], g_l[i])``, which is what the fused ops contract without forming it.

:func:`mlp_unsupported_reason` is the one test of "is this our MLP?" (the native products, the
fused scores and the function-space solve all need it; other models take the autograd paths).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import nn

from lipo_if.model import MLPRegressor


def mlp_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` is not the package's MLP (None when it is)."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not layers or not all(isinstance(m, nn.Linear) for m in layers):
        return "the model is not the package's MLP (a `layers` ModuleList of nn.Linear with ReLU between)"
    if any(layer.bias is None for layer in layers) or layers[-1].out_features != 1:
        return "the MLP needs biases in every layer and one output"
    if type(model).forward is not MLPRegressor.forward:
        return "the model's forward is not MLPRegressor.forward (ReLU between Linear layers)"
    return None


def layer_count(params: dict[str, torch.Tensor]) -> int:
    """``L`` for a parameter dict holding exactly ``layers.<l>.weight`` / ``layers.<l>.bias``, l < L.

    Raises ValueError for any other parameter set."""
    count = 0
    while f"layers.{count}.weight" in params:
        count += 1
    if count == 0 or len(params) != 2 * count or any(f"layers.{l}.bias" not in params for l in range(count)):
        raise ValueError("expected the parameters of an MLPRegressor (layers.<l>.weight / layers.<l>.bias only)")
    return count


class Forward(NamedTuple):
    """One forward pass: ``inputs[l]`` ``[B, in_l]`` is the input of layer ``l`` (``inputs[0]`` = x),
    ``masks[l]`` ``[B, out_l]`` the ReLU mask after hidden layer ``l`` (0/1, the inputs' dtype),
    ``output`` ``[B, 1]`` the prediction (no ReLU)."""

    inputs: list
    masks: list
    output: torch.Tensor

    @property
    def hidden(self) -> list:
        """Post-ReLU activations of the hidden layers (``inputs[1:]``)."""
        return self.inputs[1:]


class MLP:
    """An MLP's weights ``W_l`` ``[out_l, in_l]`` and biases ``b_l`` ``[out_l]`` as plain tensors.

    Build from a model (:meth:`from_model`, which checks :func:`mlp_unsupported_reason`) or from a
    ``{name: tensor}`` dict (:meth:`from_params`, e.g. a parameter vector unflattened).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        if len(weights) != len(biases) or not weights:
            raise ValueError(f"an MLP needs one bias per weight, got {len(weights)} weights and {len(biases)} biases")
        self.weights, self.biases = weights, biases

    @classmethod
    def from_params(cls, params: dict[str, torch.Tensor]) -> "MLP":
        n = layer_count(params)
        return cls([params[f"layers.{l}.weight"] for l in range(n)], [params[f"layers.{l}.bias"] for l in range(n)])

    @classmethod
    def from_model(cls, model: nn.Module, dtype: torch.dtype = torch.float64) -> "MLP":
        reason = mlp_unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        return cls.from_params({name: p.detach().to(dtype) for name, p in model.named_parameters()})

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def forward(self, X: torch.Tensor, first: torch.Tensor | None = None) -> Forward:
        """Forward pass over ``X`` ``[B, d]``; ``first``: the first layer's output ``X W₀ᵀ + b₀``
        ``[B, out₀]`` when the caller computed it (sparse kernels), else a dense GEMM here."""
        with torch.no_grad():
            z = torch.addmm(self.biases[0], X, self.weights[0].t()) if first is None else first
            inputs, masks = [X], []
            for l in range(1, self.n_layers):
                mask = (z > 0).to(z.dtype)  # float: a bool mask costs a dtype promotion per product
                h = z * mask
                inputs.append(h)
                masks.append(mask)
                z = torch.addmm(self.biases[l], h, self.weights[l].t())
        return Forward(inputs, masks, z)

    def backward(self, fwd: Forward, out_grad: torch.Tensor, stop: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """``(l, g_l)`` for ``l = L−1, …, stop``: the gradient with respect to layer ``l``'s output
        ``[B, out_l]``, from the output gradient ``g_{L−1} = out_grad`` ``[B, 1]``."""
        g = out_grad
        with torch.no_grad():
            for l in range(self.n_layers - 1, stop - 1, -1):
                yield l, g
                if l > stop:  # back through layer l and the ReLU after layer l−1
                    g = (g @ self.weights[l]) * fwd.masks[l - 1]

    def tangent_factors(self, X: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Predictions ``[B]`` and, per layer, ``(a_l [B, in], δ_l [B, out])`` with ``δ_l = ∂f/∂(layer
        output)``, so that ``∂f/∂W_l = δ_l ⊗ a_l`` and ``∂f/∂b_l = δ_l`` per row."""
        fwd = self.forward(X)
        factors: list = [None] * self.n_layers
        for l, delta in self.backward(fwd, torch.ones_like(fwd.output)):
            factors[l] = (fwd.inputs[l], delta)
        return fwd.output[:, 0], factors
