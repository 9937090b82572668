// CPU kernel of lipo_if::linear_csr — the first layer's forward over rows of a CSR matrix:
//
//   linear_csr(ptr, cols, vals, rows [B], weight_t [in, out], init [B, out]?, dense_cols [nd]?, dense_x [B, nd]?)
//     -> y [B, out] = init + X[rows] · weight_t (+ dense_x · weight_t[dense_cols])
//
// X (ptr [n_rows + 1], cols [nnz], vals [nnz]; lipo_if.ops.CsrMatrix) is a training set's input
// compressed once per solve (lipo_if.ops.split_csr), so that a LiSSA step neither scans nor
// compresses its minibatch. Same forward kernels as linear_strided (linear_forward.h); the dense
// columns' GEMM runs beside the sparse part on a 2-thread CPU pool (sparse::run_side_by_side).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../checks.h"
#include "linear_forward.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

using linear::kDirectMaxRows;
using linear::scatter_forward;
using linear::sparse_forward;

at::Tensor linear_csr_cpu(
    const at::Tensor& ptr_in, const at::Tensor& cols_in, const at::Tensor& vals_in, const at::Tensor& rows_in,
    const at::Tensor& weight_t_in, const std::optional<at::Tensor>& init, const std::optional<at::Tensor>& dense_cols,
    const std::optional<at::Tensor>& dense_x) {
  check_linear_csr(ptr_in, cols_in, vals_in, rows_in, weight_t_in, init, dense_cols, dense_x);
  check_device("linear_csr", weight_t_in, false);
  const at::Tensor ptr = ptr_in.contiguous(), cols = cols_in.contiguous(), vals = vals_in.contiguous();
  const at::Tensor rows = rows_in.contiguous(), wt = weight_t_in.contiguous();
  const int64_t B = rows.size(0), in = wt.size(0), out = wt.size(1);
  at::Tensor y = init.has_value() ? init->contiguous().clone() : at::zeros({B, out}, wt.options());
  if (B == 0 || out == 0) return y;
  const bool with_dense = dense_x.has_value() && dense_cols->numel() > 0;
  at::Tensor dense_part;  // dense_x · weight_t[dense_cols], formed beside the sparse part
  auto sparse_part = [&] {
    AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "lipo_if_linear_csr_cpu", [&] {
      const sparse::Csr<scalar_t> batch = sparse::gather_csr_rows<scalar_t>(
          ptr.data_ptr<int64_t>(), cols.data_ptr<int64_t>(), vals.data_ptr<scalar_t>(), ptr.size(0) - 1, cols.size(0),
          rows.data_ptr<int64_t>(), B, in);
      if (B <= kDirectMaxRows) {
        scatter_forward<scalar_t>(batch, wt.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, in, out);
      } else {
        sparse_forward<scalar_t>(batch, wt.data_ptr<scalar_t>(), nullptr, true, y.data_ptr<scalar_t>(), B, in, out);
      }
    });
  };
  auto gemm = [&] {
    if (with_dense) dense_part = at::mm(dense_x->contiguous(), sparse::rows_of(wt, *dense_cols));
  };
  sparse::run_side_by_side(sparse_part, gemm);
  if (with_dense) y.add_(dense_part);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("linear_csr", &linear_csr_cpu);
}

}  // namespace lipo_if
