"""Shared workload of the kernel benchmarks: the real model shape and fingerprint-like inputs.

Model: MLP 2248 → 512 → 128 → 1 (2048 Morgan bits ≈3 % set, then 200 dense standardized
descriptors), as trained by lipo_if. ``python benchmarks/_ops_workload.py IMPL N`` prints the
peak-RSS growth (MiB) of one scoring pass, for the memory comparison of bench_ops.py.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch

from lipo_if import ops, ops_reference
from lipo_if.influence.mlp import MLP

N_BITS, N_DESC, HIDDEN = 2048, 200, (512, 128)
FP_DENSITY = 0.03


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.nn.Linear]:
    """The Linear layers of a randomly initialized 2248 → 512 → 128 → 1 MLP."""
    torch.manual_seed(seed)
    widths = [N_BITS + N_DESC, *HIDDEN, 1]
    return [torch.nn.Linear(a, b).to(dtype) for a, b in zip(widths[:-1], widths[1:])]


def make_data(n: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``X [n, 2248]`` (binary bits ≈3 % set, then N(0,1) descriptors clipped to ±6), ``y [n]``."""
    gen = torch.Generator().manual_seed(seed)
    bits = (torch.rand(n, N_BITS, generator=gen) < FP_DENSITY).to(dtype)
    desc = torch.randn(n, N_DESC, generator=gen, dtype=dtype).clamp_(-6, 6)
    return torch.cat([bits, desc], 1), 2.0 + torch.randn(n, generator=gen, dtype=dtype)


def make_vec(layers: list[torch.nn.Linear], seed: int = 2) -> list[torch.Tensor]:
    """One random parameter-shaped vector s (weight, bias per layer), like an inverse-HVP."""
    gen = torch.Generator().manual_seed(seed)
    return [1e-2 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for l in layers for p in (l.weight, l.bias)]


def mlp_grad_dot(
    layers: Sequence[torch.nn.Linear], vec: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor,
    kernel: Callable[..., torch.Tensor] | None = None, chunk_size: int = 2048,
) -> torch.Tensor:
    """``vec · ∇θ (f(xᵢ) − yᵢ)²`` for all rows: per chunk of ``chunk_size`` rows one forward, a
    manual backward, and one ``linear_grad_dot`` per layer (``kernel``: ``lipo_if.ops.linear_grad_dot``
    by default; the benchmarks swap in ``lipo_if.ops_reference.linear_grad_dot``). Chunking bounds the ``[chunk, width]`` temporaries, as the scoring of
    ``lipo-if influence`` does (:func:`lipo_if.influence.scores.grad_dot_fast`, 2,048 rows by default).

    With ``kernel`` = ``ops.linear_grad_dot`` the first layer (sparse fingerprint input) is one
    ``ops.linear_strided`` pass that yields its forward and its score term together
    (``ops.first_layer_with_vectors``); with another ``kernel`` the whole pass is dense pure
    PyTorch (the benchmarks' "best dense formulation").

    Benchmark code (moved here from ``lipo_if.ops``): the package's own scoring is
    :func:`lipo_if.influence.scores.grad_dot_fast`, of which this is the workload's twin.

    ``layers``: Linear layers of an MLP with ReLU between them and 1 output; ``vec``: one tensor
    per parameter in ``weight, bias`` order per layer; ``X`` ``[n, d]``, ``y`` ``[n]`` → ``[n]``.
    """
    if len(vec) != 2 * len(layers):
        raise ValueError(f"vec needs weight and bias per layer ({2 * len(layers)} tensors), got {len(vec)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    kernel = ops.linear_grad_dot if kernel is None else kernel
    fused = None
    if kernel is ops.linear_grad_dot:
        fused = ops.first_layer_with_vectors(layers[0].weight, layers[0].bias, vec[0].unsqueeze(0), vec[1].unsqueeze(0))
    parts = [_mlp_grad_dot_chunk(layers, vec, X[i:i + chunk_size], y[i:i + chunk_size], kernel, fused)
             for i in range(0, X.shape[0], chunk_size)]
    return torch.cat(parts) if parts else X.new_zeros(0)



def _mlp_grad_dot_chunk(
    layers: Sequence[torch.nn.Linear], vec: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor,
    kernel: Callable[..., torch.Tensor], fused: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """One chunk: the package's MLP engine (forward, backward) and ``kernel`` per layer."""
    mlp = MLP([l.weight.detach() for l in layers], [l.bias.detach() for l in layers])
    with torch.no_grad():
        first, first_proj = None, None
        if fused is not None:
            width = layers[0].out_features
            both = ops.linear_strided(X, *fused)  # [n, 2·out]: forward | x Vᵀ + c
            first, first_proj = both[:, :width], both[:, width:]
        fwd = mlp.forward(X, first=first)
        total = X.new_zeros(X.shape[0])
        for i, out_grad in mlp.backward(fwd, 2.0 * (fwd.output - y.unsqueeze(1))):  # ∂(f − y)²/∂f first
            if i == 0 and first_proj is not None:
                total += (out_grad * first_proj).sum(1)
            else:
                total += kernel(fwd.inputs[i], out_grad, vec[2 * i].unsqueeze(0), vec[2 * i + 1].unsqueeze(0))[:, 0]
    return total


def scoring_impls() -> dict:
    """name → callable(layers, vec, X, y) → [n] scores (s · ∇θ ℓ(zᵢ))."""
    return {
        "ext": lambda L, v, X, y: mlp_grad_dot(L, v, X, y),
        "dense": lambda L, v, X, y: mlp_grad_dot(L, v, X, y, kernel=ops_reference.linear_grad_dot),
        "vmap": lambda L, v, X, y: ops_reference.mlp_grad_dot_vmap(L, v, X, y, chunk_size=128),
    }


def _vm_hwm_kib() -> int:
    """Peak resident set size of this process (VmHWM, KiB), Linux."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def peak_rss_growth_mib(impl: str, n: int) -> float:
    """Peak RSS growth (MiB) of one scoring pass, after data and a warm-up are in memory.

    The high-water mark is reset (``/proc/self/clear_refs`` ← 5) after the setup so that the
    temporaries of building the data set do not hide the scoring pass's own peak.
    """
    layers, fn = make_model(), scoring_impls()[impl]
    vec = make_vec(layers)
    X, y = make_data(n)
    fn(layers, vec, X[:8], y[:8])  # load kernels / allocator pools into the baseline
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _vm_hwm_kib()
    fn(layers, vec, X, y)
    return (_vm_hwm_kib() - before) / 1024.0


if __name__ == "__main__":
    print(f"{peak_rss_growth_mib(sys.argv[1], int(sys.argv[2])):.1f}")
