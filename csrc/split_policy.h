// The column split of a layer input shared by every sparse-aware kernel (CPU per call, csr_split
// once per training set, on CPU and CUDA) and by its pure-PyTorch twin (lipo_if/ops_reference.py).
#pragma once

#include <cstdint>

namespace lipo_if {
namespace sparse {

// Inputs whose columns left after the split have a fraction of non-zeros above this use a dense
// BLAS path instead (measured on the 2-core AVX2 dev box: the gather kernel wins clearly below
// ≈15 %; see benchmarks/RESULTS.md).
constexpr double kSparseMaxDensity = 0.15;

// Columns non-zero in more than this fraction of the rows are "dense columns": their part of
// the product goes to a BLAS GEMM and only the remaining columns to the sparse kernels. The
// featurized molecules are ≈2,048 fingerprint columns (≈3 % set) followed by ≈200 standardized
// descriptor columns (all set): without the split the descriptors are ≈75 % of the non-zeros
// a gather kernel would walk. Splitting needs enough rows for the GEMM to pay off.
constexpr double kDenseColumnDensity = 0.3;
constexpr int64_t kMinRowsForSplit = 32;

}  // namespace sparse
}  // namespace lipo_if
