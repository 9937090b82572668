// CUDA kernel of lipo_if::linear_grad_dot.segment:
//   result[s, j] = Σ_{r = indptr[s]}^{indptr[s+1]-1} Σ_o out_grad[r, o] · (Σ_c W_j[o, c] · act[r, c] + b_j[o]).
//
// Two steps per block of rows (bounding the temporary to kTempElems elements; one block unless n·k·out
// is large): the projection P = act_block @ W_flat^T ([b, k·out], cuBLAS through at::mm), then
// segment_dot_kernel: one thread block per (segment, j) — grid (S, min(k, 65535)), j strided — whose
// kWarp × kRows threads walk the segment's rows in the row block (threadIdx.y) and `out`
// (threadIdx.x, coalesced), each keeping a partial Σ (P[r, j, o] + b_j[o]) · out_grad[r, o]; the
// partials are reduced through shared memory in a fixed tree and thread 0 adds the total to
// result[s, j]. Every result is written by one thread, no atomics; the launches for successive row
// blocks are ordered on the stream, so the reduction order is fixed: deterministic.
// Accumulation type: at::acc_type<scalar_t, /*is_cuda=*/true> (float for float, double for double).
// indptr's values are checked before (check_linear_grad_dot_segment: a device test and one host
// sync), so the kernel reads P and out_grad only inside [0, n).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int kWarp = 32;                         // threads along `out`
constexpr int kRows = 8;                          // threads along the rows of a segment
constexpr int kThreads = kWarp * kRows;
constexpr int64_t kTempElems = int64_t{1} << 26;  // [b, k·out] block of P, 256 MiB float32

template <typename scalar_t>
__global__ void segment_dot_kernel(
    const scalar_t* __restrict__ proj, const scalar_t* __restrict__ out_grad, const scalar_t* __restrict__ bias,
    const int64_t* __restrict__ indptr, scalar_t* __restrict__ result, int64_t start, int64_t end, int64_t out,
    int64_t k) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ acc_t red[kThreads];
  const int64_t s = blockIdx.x;
  const int64_t r0 = max(indptr[s], start), r1 = min(indptr[s + 1], end);
  if (r1 <= r0) return;  // the whole block leaves together: no thread waits at a barrier
  const int tid = threadIdx.y * kWarp + threadIdx.x;
  const int64_t width = k * out;
  for (int64_t j = blockIdx.y; j < k; j += gridDim.y) {
    const scalar_t* bj = bias != nullptr ? bias + j * out : nullptr;
    acc_t partial = 0;
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRows) {
      const scalar_t* pr = proj + (r - start) * width + j * out;
      const scalar_t* gr = out_grad + r * out;
      for (int64_t o = threadIdx.x; o < out; o += kWarp) {
        acc_t t = static_cast<acc_t>(pr[o]);
        if (bj != nullptr) t += static_cast<acc_t>(bj[o]);
        partial += t * static_cast<acc_t>(gr[o]);
      }
    }
    red[tid] = partial;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (tid < stride) red[tid] += red[tid + stride];
      __syncthreads();
    }
    if (tid == 0) result[s * k + j] = static_cast<scalar_t>(static_cast<acc_t>(result[s * k + j]) + red[0]);
    __syncthreads();  // red is reused for the next j
  }
}

at::Tensor linear_grad_dot_segment_cuda(
    const at::Tensor& act_in, const at::Tensor& out_grad_in, const at::Tensor& vec_weight_in,
    const std::optional<at::Tensor>& vec_bias_in, const at::Tensor& indptr_in) {
  const c10::cuda::CUDAGuard guard(act_in.device());
  const SegmentOperands o = segment_operands(act_in, out_grad_in, vec_weight_in, vec_bias_in, indptr_in, /*cuda=*/true);
  // (named references, not a structured binding: C++17 lambdas cannot capture those)
  const at::Tensor &act = o.act, &out_grad = o.out_grad, &vec_weight = o.vec_weight, &vec_bias = o.vec_bias, &indptr = o.indptr;
  const int64_t n = o.n, in = o.in, out = o.out, k = o.k, S = o.S;
  at::Tensor result = at::zeros({S, k}, act.options());
  if (n == 0 || k == 0 || out == 0 || S == 0) return result;
  TORCH_CHECK(
      S <= std::numeric_limits<int32_t>::max(), "lipo_if.linear_grad_dot.segment (CUDA kernel): S must be <= ",
      std::numeric_limits<int32_t>::max(), ", got ", S);

  const int64_t width = k * out;
  const int64_t block = std::max<int64_t>(1, kTempElems / width);
  const at::Tensor w_t = vec_weight.view({width, in}).t();
  const dim3 threads(kWarp, kRows);
  const dim3 grid(static_cast<unsigned int>(S), static_cast<unsigned int>(std::min<int64_t>(k, 65535)));
  // c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream aliases (see linear_grad_dot.cu).
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t start = 0; start < n; start += block) {
    const int64_t end = std::min(n, start + block);
    const at::Tensor proj = at::mm(act.narrow(0, start, end - start), w_t);  // [rows, k·out], contiguous
    AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "lipo_if_linear_grad_dot_segment_cuda", [&] {
      segment_dot_kernel<scalar_t><<<grid, threads, 0, stream>>>(
          proj.data_ptr<scalar_t>(), out_grad.data_ptr<scalar_t>(),
          vec_bias.defined() ? vec_bias.data_ptr<scalar_t>() : nullptr, indptr.data_ptr<int64_t>(),
          result.data_ptr<scalar_t>(), start, end, out, k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("linear_grad_dot.segment", &linear_grad_dot_segment_cuda);
}

}  // namespace lipo_if
