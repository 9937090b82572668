"""Interleaved timing of linear_grad_dot on a dense layer (512 → 128, ReLU act, n = 4000).

Alternates ext / pure-PyTorch calls in one process so that load from other processes on a shared
machine hits both alike; prints the median of each and the median of per-pair ratios.
Run: ``PYTHONPATH=. python benchmarks/interleaved_dense_check.py``.
"""
from __future__ import annotations

import statistics
import time

import torch

from lipo_if import ops, ops_reference


def main(rounds: int = 60) -> None:
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(0)
        act = torch.relu(torch.randn(4000, 512, generator=gen, dtype=dtype))
        g, w, b = torch.randn(4000, 128, dtype=dtype), torch.randn(1, 128, 512, dtype=dtype), torch.randn(1, 128, dtype=dtype)
        times: dict[str, list[float]] = {"ext": [], "pytorch": []}
        for _ in range(rounds):
            for name, fn in (("ext", ops.linear_grad_dot), ("pytorch", ops_reference.linear_grad_dot)):
                start = time.perf_counter()
                fn(act, g, w, b)
                times[name].append(time.perf_counter() - start)
        ratios = [p / e for e, p in zip(times["ext"], times["pytorch"])]
        print(f"{dtype}: ext {statistics.median(times['ext']) * 1e3:.2f} ms, pytorch "
              f"{statistics.median(times['pytorch']) * 1e3:.2f} ms, median pytorch/ext ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
