"""The column split policy of the sparse-aware kernels — its constants, defined once.

Every kernel that splits a layer input (the per-call split of ``linear_strided``,
``linear_weight_grad_strided`` and ``linear_grad_dot`` on CPU, ``split_csr`` on CPU and CUDA) and
the pure-PyTorch twin ``lipo_if.ops_reference.split_csr`` use these values: the C++ sources
receive them as compile definitions (:func:`compile_definitions`, passed by ``setup.py``,
:func:`lipo_if.ops.load_jit` and ``tools/cuda_check.py``; ``csrc/split_policy.h`` refuses to compile
without them), and the built extension reports the values it was compiled with
(``lipo_if._C.SPLIT_POLICY``), which :mod:`lipo_if.ops` compares with these at import (a stale
build is reported, not silently used).

This module imports nothing, so ``setup.py`` can load it by path before the package is built.
"""
from __future__ import annotations

#: Input columns non-zero in more than this fraction of the rows are "dense columns": their part of
#: a product is one BLAS GEMM (standardized descriptors, the most frequent fingerprint bits).
DENSE_COLUMN_DENSITY = 0.3
#: Fewer rows than this: no dense columns (the GEMM does not pay off).
MIN_ROWS_FOR_SPLIT = 32
#: When the columns left after the split are denser than this overall, every column is dense
#: (the gather kernels win clearly below ≈15 % on the 2-core AVX2 dev box; benchmarks/RESULTS.md).
SPARSE_MAX_DENSITY = 0.15


def as_dict() -> dict[str, float | int]:
    """The three constants by name (the keys of ``lipo_if._C.SPLIT_POLICY``)."""
    return {"DENSE_COLUMN_DENSITY": DENSE_COLUMN_DENSITY, "MIN_ROWS_FOR_SPLIT": MIN_ROWS_FOR_SPLIT,
            "SPARSE_MAX_DENSITY": SPARSE_MAX_DENSITY}


def compile_definitions() -> list[tuple[str, str]]:
    """``(macro, value)`` pairs for the C++/CUDA compilers (``-DLIPO_IF_<NAME>=<value>``); ``repr``
    of a float round-trips, so the kernels get the very same double."""
    return [(f"LIPO_IF_{name}", repr(value)) for name, value in as_dict().items()]
