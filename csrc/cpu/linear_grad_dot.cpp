// CPU kernel of lipo_if::linear_grad_dot.
//
//   result[i, j] = out_grad[i]^T  W_j  act[i]  +  out_grad[i] . b_j
//
// i.e. the dot product of sample i's Linear-layer gradient (out_grad[i] ⊗ act[i], out_grad[i])
// with the j-th parameter-shaped vector (W_j, b_j), without forming any [out, in] gradient.
//
// Two algorithms, combined per call from the density of `act` (fraction of non-zero entries): the
// columns of act are split (sparse::compress) into dense columns (non-zero in > 30 % of the
// rows, e.g. the descriptor block of a featurized molecule), done by the dense algorithm, and the
// rest, done by the sparse one and added (input dense overall → dense algorithm only):
//
//  * sparse (remaining density <= sparse::kSparseMaxDensity): compress the non-zeros of act (CSR), then per
//    sample accumulate y = b_j + Σ_c act[i, c] · Wt_j[c, :] (Wt_j = W_j^T, rows contiguous over
//    `out`) one register block of output columns at a time, and dot it with out_grad[i]. Cost
//    nnz·out per (i, j) instead of in·out. Fingerprint inputs (≈3 % bits set) are the case this
//    is for. Shares the micro-kernel of linear_strided (sparse_rows.h).
//  * dense: blocks of samples, T = act_block @ W_flat^T (one GEMM for all k, [b, k·out]) then a
//    fused row-wise dot with out_grad (bias folded in). This is the "GEMM + row sum" formulation
//    at the BLAS floor; the block bounds the temporary to kDenseTempElems elements.
//
// Accumulation: float32 inputs accumulate in float32 (as a float32 GEMM does), in kLanes
// independent lanes for dot products; float64 in float64.
// Layout: non-contiguous inputs are copied to contiguous ones (documented policy, see checks.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "../checks.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

constexpr int64_t kDenseTempElems = int64_t{1} << 21;  // [b, k·out] temporary, ≈8 MiB float32
constexpr int kLanes = 16;

// Σ_o a[o]·b[o] in kLanes independent accumulators (vectorizable without -ffast-math).
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc[kLanes] = {};
  int64_t o = 0;
  for (; o + kLanes <= n; o += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[o + l] * b[o + l];
  T total = 0;
  for (; o < n; ++o) total += a[o] * b[o];
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// Σ_o (a[o] + b[o])·c[o]: the projection plus bias dotted with out_grad in one pass.
template <typename T>
inline T dot_sum(const T* a, const T* b, const T* c, int64_t n) {
  T acc[kLanes] = {};
  int64_t o = 0;
  for (; o + kLanes <= n; o += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += (a[o + l] + b[o + l]) * c[o + l];
  T total = 0;
  for (; o < n; ++o) total += (a[o] + b[o]) * c[o];
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// Sparse path: act [n, in] as CSR, out_grad [n, out], wt [k, in, out] (= W^T per j), bias [k, out]
// or nullptr, result [n, k]. For each j, tasks over (register block of output columns, chunk of
// rows): pack the [in, kBlock] column block of Wt_j into a contiguous panel, then per row
// y_blk = b_j[blk] + Σ_t vals[t]·panel[cols[t]] (sparse::gather_axpy_block, in registers) and
// partial[blk, i] = y_blk · out_grad[i, blk]. The partials are added in block order afterwards
// (deterministic, independent of the thread count) — onto result's current value if `accumulate`.
template <typename T>
void sparse_kernel(
    const sparse::Csr<T>& csr, const T* out_grad, const T* wt, const T* bias, bool accumulate, T* result, int64_t n,
    int64_t in, int64_t out, int64_t k) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t n_blocks = (out + B - 1) / B;
  const int64_t n_chunks = (n + sparse::kChunkRows - 1) / sparse::kChunkRows;
  std::vector<T> partial(static_cast<size_t>(n_blocks * n));
  for (int64_t j = 0; j < k; ++j) {
    const T* wj = wt + j * in * out;
    const T* bj = bias != nullptr ? bias + j * out : nullptr;
    at::parallel_for(0, n_blocks * n_chunks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> panel(static_cast<size_t>(in * B));
      T bias_block[B], y[B];
      int64_t packed = -1;
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t block = task / n_chunks, chunk = task % n_chunks;
        const int64_t o0 = block * B, width = std::min(B, out - o0);
        if (block != packed) {
          sparse::pack_panel(wj, in, out, o0, width, panel.data());
          if (bj != nullptr) sparse::pack_panel(bj, 1, out, o0, width, bias_block);
          packed = block;
        }
        const int64_t r0 = chunk * sparse::kChunkRows, r1 = std::min(n, r0 + sparse::kChunkRows);
        for (int64_t i = r0; i < r1; ++i) {
          const int64_t begin = csr.ptr[static_cast<size_t>(i)], end = csr.ptr[static_cast<size_t>(i + 1)];
          sparse::gather_axpy_block<T>(
              csr.cols.data() + begin, csr.vals.data() + begin, end - begin, panel.data(), B,
              bj != nullptr ? bias_block : nullptr, y);
          partial[static_cast<size_t>(block * n + i)] = dot(y, out_grad + i * out + o0, width);
        }
      }
    });
    at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T total = accumulate ? result[i * k + j] : T(0);
        for (int64_t block = 0; block < n_blocks; ++block) total += partial[static_cast<size_t>(block * n + i)];
        result[i * k + j] = total;
      }
    });
  }
}

// Dense path: T = act_block @ w_flat^T with w_flat = vec_weight viewed [k·out, in], then a fused
// row-wise dot with out_grad (+ bias). act, out_grad, w_flat contiguous; result [n, k].
template <typename T>
void dense_kernel(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& w_flat, const T* bias, T* result,
    int64_t k, int64_t out) {
  const int64_t n = act.size(0);
  const int64_t block = std::max<int64_t>(1, kDenseTempElems / std::max<int64_t>(1, k * out));
  const at::Tensor w_t = w_flat.t();
  const T* g_all = out_grad.data_ptr<T>();
  for (int64_t start = 0; start < n; start += block) {
    const int64_t rows = std::min(block, n - start);
    const at::Tensor proj = at::mm(act.narrow(0, start, rows), w_t);  // [rows, k·out], contiguous
    const T* p = proj.data_ptr<T>();
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* g = g_all + (start + r) * out;
        for (int64_t j = 0; j < k; ++j) {
          result[(start + r) * k + j] =
              bias != nullptr ? dot_sum(p + (r * k + j) * out, bias + j * out, g, out) : dot(p + (r * k + j) * out, g, out);
        }
      }
    });
  }
}

at::Tensor linear_grad_dot_cpu(
    const at::Tensor& act_in, const at::Tensor& out_grad_in, const at::Tensor& vec_weight_in,
    const std::optional<at::Tensor>& vec_bias_in) {
  check_linear_grad_dot(act_in, out_grad_in, vec_weight_in, vec_bias_in);
  check_device("linear_grad_dot", act_in, false);
  const at::Tensor act = act_in.contiguous();
  const at::Tensor out_grad = out_grad_in.contiguous();
  const at::Tensor vec_weight = vec_weight_in.contiguous();
  const at::Tensor vec_bias = vec_bias_in.has_value() ? vec_bias_in->contiguous() : at::Tensor();
  const int64_t n = act.size(0), in = act.size(1), out = out_grad.size(1), k = vec_weight.size(0);
  at::Tensor result = at::empty({n, k}, act.options());
  if (n == 0 || k == 0) return result;

  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "lipo_if_linear_grad_dot_cpu", [&] {
    const scalar_t* bias = vec_bias.defined() ? vec_bias.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ap = act.data_ptr<scalar_t>();
    scalar_t* res = result.data_ptr<scalar_t>();
    const at::Tensor w_flat = vec_weight.view({k * out, in});
    const double sampled = sparse::sampled_density(ap, n, in);
    if (sampled > sparse::kClearlyDense) {
      dense_kernel<scalar_t>(act, out_grad, w_flat, bias, res, k, out);
      return;
    }
    sparse::ColumnSplit split;
    sparse::Csr<scalar_t> csr;
    if (!sparse::compress(ap, n, in, sampled, split, csr)) {
      dense_kernel<scalar_t>(act, out_grad, w_flat, bias, res, k, out);
      return;
    }
    if (!split.empty()) {  // dense columns (and the bias) by GEMM + row dot; the sparse part is added
      dense_kernel<scalar_t>(
          sparse::take_indices(act, 1, split.dense_cols), out_grad, sparse::take_indices(w_flat, 1, split.dense_cols),
          bias, res, k, out);
    }
    // One transposed copy of the k vectors (k·in·out) so the gather reads contiguous rows.
    const at::Tensor wt = vec_weight.transpose(1, 2).contiguous();
    sparse_kernel<scalar_t>(
        csr, out_grad.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), split.empty() ? bias : nullptr, !split.empty(),
        res, n, in, out, k);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("linear_grad_dot", &linear_grad_dot_cpu);
}

}  // namespace lipo_if
