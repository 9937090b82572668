// CPU kernels of lipo_if::linear_strided and lipo_if::linear_weight_grad_strided — a Linear layer
// whose *input* x is a dense strided tensor that is mostly zeros (fingerprint bits), forward and
// weight gradient, both in the transposed weight layout [in, out]:
//
//   linear_strided(x [n, in], weight_t [in, out], bias [out]?)    -> y [n, out]  = x weight_t + b
//   linear_weight_grad_strided(x [n, in], grad_out [n, out])       -> [in, out]   = xᵀ grad_out
//   linear_weight_grad_strided.out(x, grad_out, *, out [in, out]!) -> out
//
// (the weight gradient is returned in the [in, out] layout the forward reads its weight in; the
// nn.Linear weight is weight_t.T, so callers pass W.t() views of a contiguous [in, out] block).
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
// policy); a contiguous weight_t (e.g. a block of a flat parameter vector) is read without a copy.
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
#include "linear_forward.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

using linear::kDirectMaxRows;
using linear::scatter_forward;
using linear::sparse_forward;

constexpr int64_t kChunkCols = 512;  // gradient (many rows): input columns per task

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

at::Tensor linear_strided_cpu(const at::Tensor& x_in, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias_in) {
  check_linear_strided(x_in, weight_t, bias_in);
  check_device("linear_strided", x_in, false);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t n = x.size(0), in = x.size(1), out = weight_t.size(1);
  at::Tensor y = at::empty({n, out}, x.options());
  if (n == 0 || out == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_linear_strided_cpu", [&] {
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
      dense_gemm(x, weight_t);
      return;
    }
    sparse::ColumnSplit split;
    sparse::Csr<scalar_t> csr;
    if (!sparse::compress(xp, n, in, sampled, split, csr)) {
      dense_gemm(x, weight_t);
      return;
    }
    const at::Tensor wt = weight_t.contiguous();  // no copy for the W.t() view of a contiguous [in, out] block
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

// Writes xᵀ grad_out into `result` (checked: [in, out], contiguous).
void weight_grad_into(const at::Tensor& x_in, const at::Tensor& grad_out_in, at::Tensor& result) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_out_in.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = g.size(1);
  if (in == 0 || out == 0) return;
  if (n == 0) {
    result.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_linear_weight_grad_strided_cpu", [&] {
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

at::Tensor linear_weight_grad_strided_cpu(const at::Tensor& x, const at::Tensor& grad_out) {
  check_linear_weight_grad_strided(x, grad_out);
  check_device("linear_weight_grad_strided", x, false);
  at::Tensor result = at::empty({x.size(1), grad_out.size(1)}, x.options());
  weight_grad_into(x, grad_out, result);
  return result;
}

// The .out overload: writes into the caller's contiguous [in, out] `out` (e.g. a block of a flat
// parameter vector) and returns it.
at::Tensor& linear_weight_grad_strided_out_cpu(const at::Tensor& x, const at::Tensor& grad_out, at::Tensor& out) {
  check_linear_weight_grad_strided(x, grad_out, &out);
  check_device("linear_weight_grad_strided.out", x, false);
  weight_grad_into(x, grad_out, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("linear_strided", &linear_strided_cpu);
  m.impl("linear_weight_grad_strided", &linear_weight_grad_strided_cpu);
  m.impl("linear_weight_grad_strided.out", &linear_weight_grad_strided_out_cpu);
}

}  // namespace lipo_if
