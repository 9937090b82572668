"""Shared by the benchmark scripts: one call timed by the wall clock."""
from __future__ import annotations

import time
from typing import Any, Callable


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds it took)`` by ``time.perf_counter``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
