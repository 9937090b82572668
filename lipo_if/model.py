"""The MLP regressor and its training objective.

The model is deliberately plain — Linear layers with ReLU between them, no dropout and no
batch-norm — because influence functions need a deterministic loss whose gradient and Hessian
are well defined at the trained parameters θ̂.

Training objective (the one the influence code differentiates twice)::

    R(θ) = (1/n) Σᵢ (f(xᵢ; θ) − yᵢ)² + (λ/2) ‖θ‖²

with ``λ = weight_decay``. The L2 term is written into the loss rather than left to the
optimizer, so it is part of the Hessian H = ∇²R(θ̂).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import nn


@dataclass
class ModelConfig:
    """Shape of the MLP: ``in_dim → hidden[0] → … → hidden[-1] → 1``."""

    in_dim: int
    hidden: tuple[int, ...] = (512, 128)

    def __post_init__(self) -> None:
        if self.in_dim <= 0:
            raise ValueError(f"in_dim must be positive, got {self.in_dim}")
        self.hidden = tuple(int(h) for h in self.hidden)
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class MLPRegressor(nn.Module):
    """Fully connected regressor with ReLU activations.

    ``forward(x)``: x ``[n, in_dim]`` → predictions ``[n]`` (logD units).

    ``layers`` is an ``nn.ModuleList`` of ``nn.Linear``; ReLU follows every layer but the last.
    The influence and kernel code rely on this structure (per-layer activations and output
    gradients), see :mod:`lipo_if.influence.mlp`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_dim, *config.hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = torch.relu(h)
        return h.squeeze(-1)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(config: ModelConfig, seed: int | None = None, init_bias: float | None = None) -> MLPRegressor:
    """Create an MLP with a seeded initialization.

    ``init_bias`` sets the output bias (e.g. the training-label mean) so training starts at the
    mean predictor instead of 0 — fewer wasted epochs on a target centred at ≈2.2.
    """
    return seeded_init(lambda: MLPRegressor(config), seed, init_bias, lambda model: model.layers[-1])


def seeded_init(make: Callable[[], nn.Module], seed: int | None, init_bias: float | None,
                output_layer: Callable[[nn.Module], nn.Linear]) -> nn.Module:
    """``make()`` under torch's global generator seeded with ``seed`` (its state restored after; None
    = unseeded), with ``output_layer(model)``'s bias set to ``init_bias`` when given."""
    if seed is not None:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    model = make()
    if seed is not None:
        torch.random.set_rng_state(gen_state)
    if init_bias is not None:
        with torch.no_grad():
            output_layer(model).bias.fill_(float(init_bias))
    return model


def l2_penalty(params: Sequence[torch.Tensor] | nn.Module, weight_decay: float) -> torch.Tensor:
    """(λ/2) ‖θ‖² over all parameters (weights and biases alike)."""
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    total = sum((p * p).sum() for p in params)
    return 0.5 * weight_decay * total


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Training objective R(θ) on a batch: mean squared error + (λ/2)‖θ‖² (a 0-dim tensor).

    ``weight`` ``[B]`` (optional): each row's weight in the mean, ``(1/B) Σ wᵢ (f(xᵢ) − yᵢ)²`` — a
    row of weight 1 counts as in the plain mean, one of weight 0 not at all (the mean is over the
    batch, not over Σw, so down-weighting some rows does not scale up the others)."""
    pred = model(x)
    squared = (pred - y) ** 2
    return (torch.mean(squared) if weight is None else torch.mean(weight * squared)) + l2_penalty(model, weight_decay)
