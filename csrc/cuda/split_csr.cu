// CUDA implementation of lipo_if::split_csr (contract in csrc/cpu/split_csr.cpp): the same policy
// (csrc/split_policy.h), with ATen's device primitives — a one-off per training set, so a few
// passes and host syncs (the decisions on the column counts) are fine here:
//   non-zero mask -> column counts -> dense columns -> nonzero() of the other columns (row-major,
//   so columns increase within a row) -> values by flat index, row pointers by bincount + cumsum.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "../split_policy.h"

namespace lipo_if {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> split_csr_cuda(const at::Tensor& x_in) {
  check_split_csr(x_in);
  check_device("split_csr", x_in, true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), in = x.size(1);
  const at::TensorOptions index = x.options().dtype(at::kLong);
  const at::Tensor nonzero = x.ne(0);                 // [n, in] bool
  const at::Tensor counts = nonzero.sum(0);           // [in] int64
  at::Tensor dense = n >= sparse::kMinRowsForSplit ? counts.gt(sparse::kDenseColumnDensity * static_cast<double>(n))
                                                     : at::zeros({in}, x.options().dtype(at::kBool));
  const int64_t sparse_columns = in - dense.sum().item<int64_t>();
  const int64_t sparse_cells = n * sparse_columns;
  if (sparse_cells > 0) {
    const int64_t sparse_nnz = counts.masked_select(dense.logical_not()).sum().item<int64_t>();
    if (static_cast<double>(sparse_nnz) / static_cast<double>(sparse_cells) > sparse::kSparseMaxDensity) {
      dense.fill_(true);  // too dense after the split: every column dense, no CSR entries
    }
  }
  const at::Tensor dense_cols = dense.nonzero().select(1, 0).contiguous();
  const at::Tensor entries = nonzero.logical_and(dense.logical_not().unsqueeze(0)).nonzero();  // [nnz, 2]
  const at::Tensor rows = entries.select(1, 0), cols = entries.select(1, 1).contiguous();
  const at::Tensor vals = x.reshape({-1}).index_select(0, rows.mul(in).add(cols));
  at::Tensor ptr = at::zeros({n + 1}, index);
  if (n > 0 && entries.size(0) > 0) ptr.slice(0, 1).copy_(at::cumsum(at::bincount(rows, {}, n), 0));
  return {dense_cols, ptr, cols, vals};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("split_csr", &split_csr_cuda);
}

}  // namespace lipo_if
