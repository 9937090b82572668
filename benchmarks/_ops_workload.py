"""Shared workload of the kernel benchmarks: the real model shape and fingerprint-like inputs.

Model: MLP 2248 → 512 → 128 → 1 (2048 Morgan bits ≈3 % set, then 200 dense standardized
descriptors), as trained by lipo_if. ``python benchmarks/_ops_workload.py IMPL N`` prints the
peak-RSS growth (MiB) of one scoring pass, for the memory comparison of bench_ops.py.
"""
from __future__ import annotations

import sys

import torch

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


def scoring_impls() -> dict:
    """name → callable(layers, vec, X, y) → [n] scores (s · ∇θ ℓ(zᵢ))."""
    from lipo_if import ops, ops_reference

    return {
        "ext": lambda L, v, X, y: ops.mlp_grad_dot(L, v, X, y),
        "dense": lambda L, v, X, y: ops.mlp_grad_dot(L, v, X, y, kernel=ops_reference.linear_grad_dot),
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
