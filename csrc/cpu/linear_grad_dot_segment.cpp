// CPU kernel of lipo_if::linear_grad_dot.segment.
//
//   result[s, j] = Σ_{r = indptr[s]}^{indptr[s+1]-1}  out_grad[r]^T W_j act[r]  +  out_grad[r] . b_j
//
// i.e. the dot product of segment s's summed Linear-layer gradient Σ_r (out_grad[r] ⊗ act[r],
// out_grad[r]) — a molecule's gradient when the layer is applied to each of its bonds or atoms —
// with the j-th parameter-shaped vector (W_j, b_j), without forming any per-row or per-segment
// [out, in] gradient.
//
// Algorithm (the dense path of linear_grad_dot, reduced per segment): fixed blocks of rows
// [m·b, (m+1)·b), b = kTempElems / (k·out) (≥ kMinBlockRows), dealt out to threads by one
// at::parallel_for (one parallel region per call: a busy core costs one barrier, not one per
// block). A task runs, per block, P = act_block @ W_flat^T (one GEMM for all k, [b, k·out]; ATen's
// BLAS, single-threaded inside the region; P stays in L2), then for each segment meeting the block
// and each j, Σ_r Σ_o (P[r, j, o] + b_j[o]) · out_grad[r, o] over the segment's rows in the block,
// in kLanes accumulators. A segment is owned by the block it starts in, which writes result[s, j];
// the part of a segment that began in an earlier block goes to that block's carry slot (one per
// block), added to result after the region, in block order. So no two tasks write one element, and
// every sum — and every GEMM, whose rows are grouped by the fixed blocks — is the same for any thread
// count: results are bitwise identical with 1 or many threads (given a BLAS whose GEMM does not
// depend on its own thread count, as MKL's here; tested). Empty segments give 0.
//
// Accumulation: float32 inputs accumulate in float32 (as the GEMM and linear_grad_dot do), float64
// in float64. Layout: non-contiguous inputs are copied to contiguous ones (documented policy, see
// checks.h). The input checks, indptr's values included, are check_linear_grad_dot_segment's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int64_t kTempElems = int64_t{1} << 17;  // [b, k·out] block of P, 512 KiB float32: in L2
constexpr int64_t kMinBlockRows = 16;             // GEMMs of at least this many rows (unless n is smaller)
constexpr int kLanes = 16;

// Σ_r Σ_o (p[r·p_stride + o] + bias[o]) · g[r·out + o] over `rows` rows, in kLanes accumulators
// (vectorizable without -ffast-math); bias may be nullptr.
template <typename T, bool kBias>
inline T segment_dot(const T* p, int64_t p_stride, const T* g, const T* bias, int64_t rows, int64_t out) {
  T acc[kLanes] = {};
  T tail = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* pr = p + r * p_stride;
    const T* gr = g + r * out;
    int64_t o = 0;
    for (; o + kLanes <= out; o += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += (kBias ? pr[o + l] + bias[o + l] : pr[o + l]) * gr[o + l];
    }
    for (; o < out; ++o) tail += (kBias ? pr[o] + bias[o] : pr[o]) * gr[o];
  }
  for (int l = 0; l < kLanes; ++l) tail += acc[l];
  return tail;
}

template <typename T>
void segment_kernel(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& w_flat, const T* bias, const int64_t* ip,
    int64_t S, T* result, int64_t k, int64_t out) {
  const int64_t n = act.size(0);
  const int64_t width = k * out;
  const int64_t block = std::max(kMinBlockRows, kTempElems / width);
  const int64_t n_blocks = (n + block - 1) / block;
  const at::Tensor w_t = w_flat.t();
  const T* g_all = out_grad.data_ptr<T>();
  // Σ over rows [r0, r1) of segment s's j-th dot, from the block's projection p (rows from start).
  auto part = [&](const T* p, int64_t start, int64_t r0, int64_t r1, int64_t j) {
    const T* ps = p + (r0 - start) * width + j * out;
    const T* gs = g_all + r0 * out;
    return bias != nullptr ? segment_dot<T, true>(ps, width, gs, bias + j * out, r1 - r0, out)
                           : segment_dot<T, false>(ps, width, gs, nullptr, r1 - r0, out);
  };
  // The rows of the segment that began in an earlier block and continues into block m ("carry").
  std::vector<int64_t> carry_segment(static_cast<size_t>(n_blocks), -1);
  std::vector<T> carry(static_cast<size_t>(n_blocks * k), T(0));
  at::parallel_for(0, n_blocks, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t start = m * block, end = std::min(n, start + block);
      const at::Tensor proj = at::mm(act.narrow(0, start, end - start), w_t);  // [rows, k·out], contiguous
      const T* p = proj.data_ptr<T>();
      // First segment meeting the block: the first with indptr[s + 1] > start.
      int64_t s = std::upper_bound(ip + 1, ip + S + 1, start) - (ip + 1);
      if (ip[s] < start) {
        const int64_t r1 = std::min(ip[s + 1], end);
        for (int64_t j = 0; j < k; ++j) carry[static_cast<size_t>(m * k + j)] = part(p, start, start, r1, j);
        carry_segment[static_cast<size_t>(m)] = s++;
      }
      for (; s < S && ip[s] < end; ++s) {  // the segments starting here: this block owns them
        const int64_t r0 = ip[s], r1 = std::min(ip[s + 1], end);
        if (r1 > r0) {
          for (int64_t j = 0; j < k; ++j) result[s * k + j] = part(p, start, r0, r1, j);
        }
      }
    }
  });
  for (int64_t m = 0; m < n_blocks; ++m) {  // in block order: the same sums for any thread count
    const int64_t s = carry_segment[static_cast<size_t>(m)];
    if (s < 0) continue;
    for (int64_t j = 0; j < k; ++j) result[s * k + j] += carry[static_cast<size_t>(m * k + j)];
  }
}

at::Tensor linear_grad_dot_segment_cpu(
    const at::Tensor& act_in, const at::Tensor& out_grad_in, const at::Tensor& vec_weight_in,
    const std::optional<at::Tensor>& vec_bias_in, const at::Tensor& indptr_in) {
  const SegmentOperands o = segment_operands(act_in, out_grad_in, vec_weight_in, vec_bias_in, indptr_in, /*cuda=*/false);
  // (named references, not a structured binding: C++17 lambdas cannot capture those)
  const at::Tensor &act = o.act, &out_grad = o.out_grad, &vec_weight = o.vec_weight, &vec_bias = o.vec_bias, &indptr = o.indptr;
  const int64_t n = o.n, in = o.in, out = o.out, k = o.k, S = o.S;
  at::Tensor result = at::zeros({S, k}, act.options());
  if (n == 0 || k == 0 || out == 0 || S == 0) return result;

  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "lipo_if_linear_grad_dot_segment_cpu", [&] {
    segment_kernel<scalar_t>(
        act, out_grad, vec_weight.view({k * out, in}), vec_bias.defined() ? vec_bias.data_ptr<scalar_t>() : nullptr,
        indptr.data_ptr<int64_t>(), S, result.data_ptr<scalar_t>(), k, out);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("linear_grad_dot.segment", &linear_grad_dot_segment_cpu);
}

}  // namespace lipo_if
