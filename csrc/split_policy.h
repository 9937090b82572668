// The column split shared by every sparse-aware kernel (CPU per call, split_csr once per training
// set, on CPU and CUDA) and by its pure-PyTorch twin (lipo_if/ops_reference.py).
//
// The constants are defined once, in lipo_if/split_policy.py; the build passes them as compile
// definitions (setup.py, lipo_if.ops.load_jit, tools/cuda_check.py) and the extension reports the
// compiled values as lipo_if._C.SPLIT_POLICY (checked against the Python module at import).
#pragma once

#include <cstdint>

#if !defined(LIPO_IF_DENSE_COLUMN_DENSITY) || !defined(LIPO_IF_MIN_ROWS_FOR_SPLIT) || \
    !defined(LIPO_IF_SPARSE_MAX_DENSITY)
#error "lipo_if: build through setup.py / lipo_if.ops.load_jit, which pass the split policy of lipo_if/split_policy.py as -DLIPO_IF_*"
#endif

namespace lipo_if {
namespace sparse {

// Inputs whose columns left after the split have a fraction of non-zeros above this use a dense
// BLAS path instead.
constexpr double kSparseMaxDensity = LIPO_IF_SPARSE_MAX_DENSITY;

// Columns non-zero in more than this fraction of the rows are "dense columns": their part of
// the product goes to a BLAS GEMM and only the remaining columns to the sparse kernels. The
// featurized molecules are ≈2,048 fingerprint columns (≈3 % set) followed by ≈200 standardized
// descriptor columns (all set): without the split the descriptors are ≈75 % of the non-zeros
// a gather kernel would walk. Splitting needs enough rows for the GEMM to pay off.
constexpr double kDenseColumnDensity = LIPO_IF_DENSE_COLUMN_DENSITY;
constexpr int64_t kMinRowsForSplit = LIPO_IF_MIN_ROWS_FOR_SPLIT;

}  // namespace sparse
}  // namespace lipo_if
