// CPU kernels of lipo_if::sparse_linear and lipo_if::sparse_linear_weight_grad — a Linear layer
// whose *input* is mostly zeros (fingerprint bits), forward and weight gradient:
//
//   sparse_linear(x [n, in], weight [out, in], bias [out]?)  -> y [n, out]  = x Wᵀ + b
//   sparse_linear_weight_grad(x [n, in], grad_out [n, out])  -> [in, out]   = xᵀ grad_out
//
// (the second returns the weight gradient *transposed*, i.e. in the [in, out] layout the first
// one reads its weight in; see lipo_if/ops.py).
//
// Algorithm. The columns of x are split (sparse::compress) into dense columns — non-zero in
// more than 30 % of the rows, e.g. the ≈200 standardized descriptors after the fingerprint bits —
// whose part of the product is one BLAS GEMM, and the sparse rest, whose non-zeros are compressed
// (CSR / CSC) and multiplied at cost nnz·out instead of n·in·out. Inputs that are dense overall
// (ReLU activations; the remaining columns above 15 % non-zero) go to BLAS entirely.
// The sparse part depends on the number of rows:
//  * few rows (n ≤ kDirectMaxRows, e.g. a LiSSA minibatch): forward by scatter — each selected
//    row of Wᵀ [in, out] is read once, contiguously, and added into the rows of y that use it (y
//    stays in cache); weight gradient by a direct gather — output row c = Σ over column c's
//    non-zeros of v·grad_out[i, :], written once, contiguously. Neither touches the parts of Wᵀ
//    that the batch does not select, so the cost follows nnz, not in·out.
//  * many rows: cache-blocked over output columns — a task owns one block of kBlock output columns
//    and a chunk of rows (forward) or of input columns (gradient); it packs the [in, kBlock] column
//    block of Wᵀ (or the [n, kBlock] block of grad_out) into a contiguous panel that stays in L2
//    while all its rows are done (packing also avoids the cache-set conflicts of 4 KiB-strided rows).
//
// Every output element is written exactly once per part, in a fixed summation order
// (deterministic, independent of the thread count). Non-contiguous inputs are copied (documented
// policy); a weight that is the transposed view of a contiguous [in, out] tensor is used without a copy.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

constexpr int64_t kChunkCols = 512;  // gradient (many rows): input columns per task
// Up to this many rows the scatter forward / direct gradient are used (y or grad_out, n·out
// elements, stay in the 1 MiB L2 while the selected rows of Wᵀ stream past).
constexpr int64_t kDirectMaxRows = 256;

// Many rows. y[i, :] = init + Σ_t vals[t] · wt[cols[t], :] for the CSR rows of x, where init is
// the bias (accumulate = false) or y's current value (accumulate = true: the dense-column GEMM
// wrote it). Tasks: (output block, chunk of rows); a thread's consecutive tasks share the output
// block, so it packs each [in, kBlock] panel of wt once.
template <typename T>
void sparse_forward(
    const sparse::Csr<T>& csr, const T* wt, const T* bias, bool accumulate, T* y, int64_t n, int64_t in, int64_t out) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t n_blocks = (out + B - 1) / B;
  const int64_t n_chunks = (n + sparse::kChunkRows - 1) / sparse::kChunkRows;
  at::parallel_for(0, n_blocks * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(static_cast<size_t>(in * B));
    T bias_block[B], tmp[B], init_block[B];
    int64_t packed = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t block = task / n_chunks, chunk = task % n_chunks;
      const int64_t o0 = block * B, width = std::min(B, out - o0);
      if (block != packed) {
        sparse::pack_panel(wt, in, out, o0, width, panel.data());
        if (bias != nullptr) sparse::pack_panel(bias, 1, out, o0, width, bias_block);
        packed = block;
      }
      const int64_t r0 = chunk * sparse::kChunkRows, r1 = std::min(n, r0 + sparse::kChunkRows);
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t begin = csr.ptr[static_cast<size_t>(i)], end = csr.ptr[static_cast<size_t>(i + 1)];
        T* row = y + i * out + o0;
        T* dst = width == B ? row : tmp;
        const T* init = bias != nullptr ? bias_block : nullptr;
        if (accumulate) {
          if (width == B) {
            init = row;
          } else {
            sparse::pack_panel(row, 1, out, 0, width, init_block);
            init = init_block;
          }
        }
        sparse::gather_axpy_block<T>(
            csr.cols.data() + begin, csr.vals.data() + begin, end - begin, panel.data(), B, init, dst);
        if (width != B) std::copy(tmp, tmp + width, row);
      }
    }
  });
}

// Few rows. y[i, :] += Σ_c x[i, c] · wt[c, :] over the CSR of x's sparse columns, y already holding
// the bias / dense-column part. Tasks own blocks of rows (sparse::scatter_rows_per_task): the
// block's entries are grouped by column and each selected row of wt is added into the rows of y
// that use it. (Measured: ahead of the packed gather up to a few hundred rows, behind it beyond.)
template <typename T>
void scatter_forward(const sparse::Csr<T>& csr, const T* wt, T* y, int64_t n, int64_t in, int64_t out) {
  const int64_t threads = static_cast<int64_t>(at::get_num_threads());
  if (n <= kDirectMaxRows && threads > 1) {
    // One block of rows, split over output columns: every selected row of wt is read once in all
    // (a part per thread) instead of once per thread.
    sparse::ColumnGroups<T> groups;
    sparse::group_by_column(csr, 0, n, in, groups);
    constexpr int64_t B = sparse::kBlock<T>;
    const int64_t cols = std::max<int64_t>(B, ((out + threads - 1) / threads + B - 1) / B * B);
    at::parallel_for(0, (out + cols - 1) / cols, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task)
        sparse::scatter_add(groups, wt, out, task * cols, std::min(out, (task + 1) * cols), y);
    });
    return;
  }
  const int64_t rows = sparse::scatter_rows_per_task(n);
  at::parallel_for(0, (n + rows - 1) / rows, 1, [&](int64_t t0, int64_t t1) {
    sparse::ColumnGroups<T> groups;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t r0 = task * rows, r1 = std::min(n, r0 + rows);
      sparse::group_by_column(csr, r0, r1, in, groups);
      sparse::scatter_add(groups, wt, out, 0, out, y + r0 * out);
    }
  });
}

// Many rows. result[c, :] = Σ_{(i, v) in column c of x} v · g[i, :] for the columns not in
// `skip`. Tasks: (output block, chunk of input columns), packing the [n, kBlock] panel of g once
// per output block and thread.
template <typename T>
void sparse_weight_grad(
    const sparse::Csr<T>& csc, const uint8_t* skip, const T* g, T* result, int64_t n, int64_t in, int64_t out) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t n_blocks = (out + B - 1) / B;
  const int64_t n_chunks = (in + kChunkCols - 1) / kChunkCols;
  at::parallel_for(0, n_blocks * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(static_cast<size_t>(n * B));
    T tmp[B];
    int64_t packed = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t block = task / n_chunks, chunk = task % n_chunks;
      const int64_t o0 = block * B, width = std::min(B, out - o0);
      if (block != packed) {
        sparse::pack_panel(g, n, out, o0, width, panel.data());
        packed = block;
      }
      const int64_t c0 = chunk * kChunkCols, c1 = std::min(in, c0 + kChunkCols);
      for (int64_t c = c0; c < c1; ++c) {
        if (skip != nullptr && skip[c]) continue;
        const int64_t begin = csc.ptr[static_cast<size_t>(c)], end = csc.ptr[static_cast<size_t>(c + 1)];
        T* dst = width == B ? result + c * out + o0 : tmp;
        sparse::gather_axpy_block<T>(csc.cols.data() + begin, csc.vals.data() + begin, end - begin, panel.data(), B, nullptr, dst);
        if (width != B) std::copy(tmp, tmp + width, result + c * out + o0);
      }
    }
  });
}

// Few rows. Same result, one output row c at a time (written once, contiguously), gathering the
// rows of g that column c selects; g (n·out elements) stays in cache.
template <typename T>
void direct_weight_grad(
    const sparse::Csr<T>& csc, const uint8_t* skip, const T* g, T* result, int64_t in, int64_t out) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t full = out / B * B;
  at::parallel_for(0, in, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      if (skip != nullptr && skip[c]) continue;
      const int64_t begin = csc.ptr[static_cast<size_t>(c)], end = csc.ptr[static_cast<size_t>(c + 1)];
      const int64_t* rows = csc.cols.data() + begin;
      const T* vals = csc.vals.data() + begin;
      T* dst = result + c * out;
      for (int64_t o0 = 0; o0 < full; o0 += B)
        sparse::gather_axpy_block<T>(rows, vals, end - begin, g + o0, out, nullptr, dst + o0);
      for (int64_t o = full; o < out; ++o) {
        T acc = 0;
        for (int64_t t = 0; t < end - begin; ++t) acc += vals[t] * g[rows[t] * out + o];
        dst[o] = acc;
      }
    }
  });
}

// y = bias (broadcast over rows) or 0: the starting value of the few-rows scatter.
void fill_bias(at::Tensor& y, const at::Tensor& bias) {
  if (bias.defined()) {
    y.copy_(bias.unsqueeze(0).expand_as(y));
  } else {
    y.zero_();
  }
}

at::Tensor sparse_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias_in) {
  check_sparse_linear_inputs(x_in, weight, bias_in);
  TORCH_CHECK(x_in.device().is_cpu(), "lipo_if.sparse_linear (CPU kernel): inputs must be on CPU");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t n = x.size(0), in = x.size(1), out = weight.size(0);
  at::Tensor y = at::empty({n, out}, x.options());
  if (n == 0 || out == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_sparse_linear_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    auto dense_gemm = [&](const at::Tensor& xs, const at::Tensor& wts) {  // y = bias + xs · wts
      if (bias.defined()) {
        at::addmm_out(y, bias, xs, wts);
      } else {
        at::mm_out(y, xs, wts);
      }
    };
    const double sampled = sparse::sampled_density(xp, n, in);
    if (sampled > sparse::kClearlyDense) {
      dense_gemm(x, weight.t());
      return;
    }
    sparse::ColumnSplit split;
    sparse::Csr<scalar_t> csr;
    if (!sparse::compress(xp, n, in, sampled, split, csr)) {
      dense_gemm(x, weight.t());
      return;
    }
    const at::Tensor wt = weight.t().contiguous();  // [in, out]; no copy for a transposed view
    if (!split.empty()) dense_gemm(sparse::take_indices(x, 1, split.dense_cols), sparse::take_indices(wt, 0, split.dense_cols));
    if (n <= kDirectMaxRows) {
      if (split.empty()) fill_bias(y, bias);
      scatter_forward<scalar_t>(csr, wt.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, in, out);
    } else {
      sparse_forward<scalar_t>(
          csr, wt.data_ptr<scalar_t>(), split.empty() && bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
          !split.empty(), y.data_ptr<scalar_t>(), n, in, out);
    }
  });
  return y;
}

void sparse_linear_weight_grad_into_cpu(const at::Tensor& x_in, const at::Tensor& grad_out_in, at::Tensor& result) {
  check_sparse_linear_weight_grad_inputs(x_in, grad_out_in);
  check_weight_grad_out(x_in, grad_out_in, result);
  TORCH_CHECK(x_in.device().is_cpu(), "lipo_if.sparse_linear_weight_grad (CPU kernel): inputs must be on CPU");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_out_in.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = g.size(1);
  if (in == 0 || out == 0) return;
  if (n == 0) {
    result.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_sparse_linear_weight_grad_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const double sampled = sparse::sampled_density(xp, n, in);
    if (sampled > sparse::kClearlyDense) {
      at::mm_out(result, x.t(), g);
      return;
    }
    sparse::ColumnSplit split;
    sparse::Csr<scalar_t> csr;
    if (!sparse::compress(xp, n, in, sampled, split, csr)) {
      at::mm_out(result, x.t(), g);
      return;
    }
    if (!split.empty()) {  // rows `dense_cols` of the result by one GEMM
      const at::Tensor xd_t = sparse::take_indices(x, 1, split.dense_cols).t();
      if (sparse::is_range(split.dense_cols)) {  // whole rows of result: a contiguous block
        at::Tensor rows = result.narrow(0, split.dense_cols.front(), static_cast<int64_t>(split.dense_cols.size()));
        at::mm_out(rows, xd_t, g);
      } else {
        result.index_copy_(0, sparse::index_tensor(split.dense_cols, x.options()), at::mm(xd_t, g));
      }
    }
    const sparse::Csr<scalar_t> csc = sparse::csr_to_csc(csr, n, in);
    if (n <= kDirectMaxRows) {
      direct_weight_grad<scalar_t>(csc, split.skip(), g.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(), in, out);
    } else {
      sparse_weight_grad<scalar_t>(csc, split.skip(), g.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(), n, in, out);
    }
  });
}

at::Tensor sparse_linear_weight_grad_cpu(const at::Tensor& x, const at::Tensor& grad_out) {
  check_sparse_linear_weight_grad_inputs(x, grad_out);
  at::Tensor result = at::empty({x.size(1), grad_out.size(1)}, x.options());
  sparse_linear_weight_grad_into_cpu(x, grad_out, result);
  return result;
}

// csr_linear: y [B, out] = init + X[rows] · weight_t for a CSR matrix X — the sparse part of the
// first layer's forward on training rows compressed once per solve (lipo_if.ops.CsrMatrix), so
// that a LiSSA step neither scans nor compresses its minibatch. Same kernels as sparse_linear.
at::Tensor csr_linear_cpu(
    const at::Tensor& ptr_in, const at::Tensor& cols_in, const at::Tensor& vals_in, const at::Tensor& rows_in,
    const at::Tensor& weight_t_in, const std::optional<at::Tensor>& init, const std::optional<at::Tensor>& dense_x,
    const std::optional<at::Tensor>& dense_cols) {
  check_csr_linear_inputs(ptr_in, cols_in, vals_in, rows_in, weight_t_in, init, dense_x, dense_cols);
  TORCH_CHECK(weight_t_in.device().is_cpu(), "lipo_if.csr_linear (CPU kernel): inputs must be on CPU");
  const at::Tensor ptr = ptr_in.contiguous(), cols = cols_in.contiguous(), vals = vals_in.contiguous();
  const at::Tensor rows = rows_in.contiguous(), wt = weight_t_in.contiguous();
  const int64_t B = rows.size(0), in = wt.size(0), out = wt.size(1);
  at::Tensor y = init.has_value() ? init->contiguous().clone() : at::zeros({B, out}, wt.options());
  if (B == 0 || out == 0) return y;
  const bool with_dense = dense_x.has_value() && dense_cols->numel() > 0;
  at::Tensor dense_part;  // dense_x · weight_t[dense_cols], formed beside the sparse part
  auto sparse_part = [&] {
    AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "lipo_if_csr_linear_cpu", [&] {
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
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_weight_grad", &sparse_linear_weight_grad_cpu);
  m.impl("sparse_linear_weight_grad_into", &sparse_linear_weight_grad_into_cpu);
  m.impl("csr_linear", &csr_linear_cpu);
}

}  // namespace lipo_if
