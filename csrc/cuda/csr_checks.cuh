// Index checks of the CSR ops on CUDA: the values of ptr / cols / rows live on the device, so they
// are checked with a few reductions and one host sync per call (the CPU kernels check each index
// as they read it). An out-of-range index would otherwise be an out-of-bounds device read.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/stack.h>

#include <vector>

namespace lipo_if {

inline void check_csr_indices_cuda(
    const char* op, const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& rows, int64_t in) {
  const int64_t n_rows = ptr.size(0) - 1, nnz = cols.size(0);
  // [rows min ≥ 0, rows max < n_rows, ptr[0] ≥ 0, ptr non-decreasing, ptr[-1] ≤ nnz, cols in [0, in)]
  std::vector<at::Tensor> conditions;
  if (rows.numel() > 0) {
    conditions.push_back(rows.min().ge(0));
    conditions.push_back(rows.max().lt(n_rows));
  }
  conditions.push_back(ptr.select(0, 0).ge(0));
  if (n_rows > 0) conditions.push_back(ptr.slice(0, 1).ge(ptr.slice(0, 0, n_rows)).all());
  conditions.push_back(ptr.select(0, n_rows).le(nnz));
  if (nnz > 0) {
    conditions.push_back(cols.min().ge(0));
    conditions.push_back(cols.max().lt(in));
  }
  const at::Tensor ok = at::stack(conditions).all();
  TORCH_CHECK(
      ok.item<bool>(), "lipo_if.", op, ": CSR indices out of range (rows must be in [0, ", n_rows,
      "), ptr non-decreasing within [0, ", nnz, "], cols in [0, ", in, "))");
}

}  // namespace lipo_if
