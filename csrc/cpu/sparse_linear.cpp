// CPU kernels of lipo_if::sparse_linear and lipo_if::sparse_linear_weight_grad — a Linear layer
// whose *input* is mostly zeros (fingerprint bits), forward and weight gradient:
//
//   sparse_linear(x [n, in], weight [out, in], bias [out]?)  -> y [n, out]  = x Wᵀ + b
//   sparse_linear_weight_grad(x [n, in], grad_out [n, out])  -> [in, out]   = xᵀ grad_out
//
// (the second returns the weight gradient *transposed*, i.e. in the [in, out] layout the first
// one reads its weight in; see lipo_if/ops.py).
//
// Algorithm (input density ≤ sparse::kSparseMaxDensity): the non-zeros of x are compressed once
// (CSR for the forward, CSC for the gradient) and every output row segment of kBlock columns is
// accumulated in registers from the contiguous rows of Wᵀ (forward) or grad_out (gradient) that
// the non-zeros select — cost nnz·out instead of n·in·out. Work is cache-blocked over output
// columns: a task owns one block of kBlock output columns and a chunk of rows (forward) or of
// input columns (gradient); it first packs the [in, kBlock] column block of Wᵀ (or the
// [n, kBlock] block of grad_out) into a contiguous panel that stays in L2 while all its rows
// are done (packing also avoids the cache-set conflicts of 4 KiB-strided rows).
// Denser inputs (e.g. ReLU activations) go to the BLAS GEMM, which is faster there.
//
// Every output element is written exactly once, in a fixed summation order (deterministic,
// independent of the thread count). Non-contiguous inputs are copied (documented policy); a
// weight that is the transposed view of a contiguous [in, out] tensor is used without a copy.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

constexpr int64_t kChunkCols = 512;  // gradient: input columns per task

// y[i, :] = bias + Σ_t vals[t] · wt[cols[t], :] for the CSR rows of x. Tasks: (output block,
// chunk of rows); a thread's consecutive tasks share the output block, so it packs each
// [in, kBlock] panel of wt once.
template <typename T>
void sparse_forward(const sparse::Csr<T>& csr, const T* wt, const T* bias, T* y, int64_t n, int64_t in, int64_t out) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t n_blocks = (out + B - 1) / B;
  const int64_t n_chunks = (n + sparse::kChunkRows - 1) / sparse::kChunkRows;
  at::parallel_for(0, n_blocks * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(static_cast<size_t>(in * B));
    T bias_block[B], tmp[B];
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
        T* dst = width == B ? y + i * out + o0 : tmp;
        sparse::gather_axpy_block<T>(
            csr.cols.data() + begin, csr.vals.data() + begin, end - begin, panel.data(), B,
            bias != nullptr ? bias_block : nullptr, dst);
        if (width != B) std::copy(tmp, tmp + width, y + i * out + o0);
      }
    }
  });
}

// result[c, :] = Σ_{(i, v) in column c of x} v · g[i, :]. Tasks: (output block, chunk of input
// columns), packing the [n, kBlock] panel of g once per output block and thread.
template <typename T>
void sparse_weight_grad(const sparse::Csr<T>& csc, const T* g, T* result, int64_t n, int64_t in, int64_t out) {
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
        const int64_t begin = csc.ptr[static_cast<size_t>(c)], end = csc.ptr[static_cast<size_t>(c + 1)];
        T* dst = width == B ? result + c * out + o0 : tmp;
        sparse::gather_axpy_block<T>(csc.cols.data() + begin, csc.vals.data() + begin, end - begin, panel.data(), B, nullptr, dst);
        if (width != B) std::copy(tmp, tmp + width, result + c * out + o0);
      }
    }
  });
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
    sparse::Csr<scalar_t> csr;
    const int64_t nnz = sparse::count_csr(xp, n, in, csr);
    const double density = in == 0 ? 0.0 : static_cast<double>(nnz) / static_cast<double>(n * in);
    if (density > sparse::kSparseMaxDensity) {
      if (bias.defined()) {
        at::addmm_out(y, bias, x, weight.t());
      } else {
        at::mm_out(y, x, weight.t());
      }
      return;
    }
    const at::Tensor wt = weight.t().contiguous();  // [in, out]; no copy for a transposed view
    sparse::fill_csr(xp, n, in, csr);
    sparse_forward<scalar_t>(
        csr, wt.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), n, in,
        out);
  });
  return y;
}

at::Tensor sparse_linear_weight_grad_cpu(const at::Tensor& x_in, const at::Tensor& grad_out_in) {
  check_sparse_linear_weight_grad_inputs(x_in, grad_out_in);
  TORCH_CHECK(x_in.device().is_cpu(), "lipo_if.sparse_linear_weight_grad (CPU kernel): inputs must be on CPU");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_out_in.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = g.size(1);
  if (n == 0) return at::zeros({in, out}, x.options());
  at::Tensor result = at::empty({in, out}, x.options());
  if (in == 0 || out == 0) return result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_sparse_linear_weight_grad_cpu", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    sparse::Csr<scalar_t> csr;
    const int64_t nnz = sparse::count_csr(xp, n, in, csr);
    const double density = static_cast<double>(nnz) / static_cast<double>(n * in);
    if (density > sparse::kSparseMaxDensity) {
      at::mm_out(result, x.t(), g);
      return;
    }
    sparse::fill_csr(xp, n, in, csr);
    const sparse::Csr<scalar_t> csc = sparse::csr_to_csc(csr, n, in);
    sparse_weight_grad<scalar_t>(csc, g.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(), n, in, out);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_weight_grad", &sparse_linear_weight_grad_cpu);
}

}  // namespace lipo_if
