// CUDA kernels of lipo_if::linear_strided (y = x weight_t + b) and lipo_if::linear_weight_grad_strided
// (xᵀ grad_out, [in, out], also as .out) over the non-zero entries of a dense strided x only.
//
// Both kernels compact a tile of kThreads entries of x (a row segment for the forward, a column
// segment for the gradient) into shared memory: each warp finds its non-zeros with __ballot_sync,
// the warps' counts are prefix-summed in shared memory, and every non-zero lands at its rank, so
// the compacted list keeps index order (deterministic summation, no atomics). Then each thread
// owns one output column o and sums val · M[idx, o] over the list — the reads of M (Wᵀ [in, out]
// or grad_out [n, out]) are coalesced across the threads of a block. Every output element is
// written exactly once. Indices are int64; the current stream is used.
// Accumulation type: at::acc_type<scalar_t, /*is_cuda=*/true> (float for float, double for double).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int kThreads = 256;  // multiple of 32
constexpr int kWarps = kThreads / 32;

// Order-preserving compaction of one tile: `value` is this thread's entry (valid when `in_range`).
// Writes the non-zeros' tile positions and values to s_idx / s_val and returns their count
// (same for all threads). Must be called by all threads of the block.
template <typename scalar_t>
__device__ __forceinline__ int compact_tile(
    bool in_range, scalar_t value, int64_t position, int64_t* s_idx, scalar_t* s_val, int* s_warp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool nz = in_range && value != scalar_t(0);
  const unsigned ballot = __ballot_sync(0xffffffffu, nz);
  if (lane == 0) s_warp[warp] = __popc(ballot);
  __syncthreads();
  int offset = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    offset += (w < warp) ? s_warp[w] : 0;
    total += s_warp[w];
  }
  if (nz) {
    const int rank = offset + __popc(ballot & ((1u << lane) - 1u));
    s_idx[rank] = position;
    s_val[rank] = value;
  }
  __syncthreads();
  return total;
}

// grid (n, ceil(out / kThreads)): block (i, ob) computes y[i, ob·kThreads + tid].
template <typename scalar_t>
__global__ void linear_strided_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ wt, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ y, int64_t in, int64_t out) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ int64_t s_idx[kThreads];
  __shared__ scalar_t s_val[kThreads];
  __shared__ int s_warp[kWarps];
  const int64_t i = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const scalar_t* xr = x + i * in;
  acc_t acc = (bias != nullptr && o < out) ? static_cast<acc_t>(bias[o]) : acc_t(0);
  for (int64_t c0 = 0; c0 < in; c0 += kThreads) {
    const int64_t c = c0 + threadIdx.x;
    const bool in_range = c < in;
    const int count = compact_tile<scalar_t>(in_range, in_range ? xr[c] : scalar_t(0), c, s_idx, s_val, s_warp);
    if (o < out) {
      for (int t = 0; t < count; ++t) acc += static_cast<acc_t>(s_val[t]) * static_cast<acc_t>(wt[s_idx[t] * out + o]);
    }
    __syncthreads();  // the tile is overwritten by the next iteration
  }
  if (o < out) y[i * out + o] = static_cast<scalar_t>(acc);
}

// grid (in, ceil(out / kThreads)): block (c, ob) computes result[c, ob·kThreads + tid] = Σ_i x[i, c] g[i, o].
template <typename scalar_t>
__global__ void weight_grad_strided_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ g, scalar_t* __restrict__ result, int64_t n,
    int64_t in, int64_t out) {
  using acc_t = at::acc_type<scalar_t, true>;
  __shared__ int64_t s_idx[kThreads];
  __shared__ scalar_t s_val[kThreads];
  __shared__ int s_warp[kWarps];
  const int64_t c = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  acc_t acc = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kThreads) {
    const int64_t i = i0 + threadIdx.x;
    const bool in_range = i < n;
    const int count = compact_tile<scalar_t>(in_range, in_range ? x[i * in + c] : scalar_t(0), i, s_idx, s_val, s_warp);
    if (o < out) {
      for (int t = 0; t < count; ++t) acc += static_cast<acc_t>(s_val[t]) * static_cast<acc_t>(g[s_idx[t] * out + o]);
    }
    __syncthreads();
  }
  if (o < out) result[c * out + o] = static_cast<scalar_t>(acc);
}

at::Tensor linear_strided_cuda(const at::Tensor& x_in, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias_in) {
  check_linear_strided(x_in, weight_t, bias_in);
  check_device("linear_strided", x_in, true);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor wt = weight_t.contiguous();  // [in, out]; no copy when contiguous
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int64_t n = x.size(0), in = x.size(1), out = wt.size(1);
  at::Tensor y = at::empty({n, out}, x.options());
  if (n == 0 || out == 0) return y;
  TORCH_CHECK(n <= 2147483647, "lipo_if.linear_strided (CUDA kernel): n must be < 2^31, got ", n);
  const int64_t out_blocks = (out + kThreads - 1) / kThreads;
  TORCH_CHECK(out_blocks <= 65535, "lipo_if.linear_strided (CUDA kernel): out too large, got ", out);
  const dim3 blocks(static_cast<unsigned int>(n), static_cast<unsigned int>(out_blocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_linear_strided_cuda", [&] {
    linear_strided_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), in, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

// Writes xᵀ grad_out into `result` (checked: [in, out], contiguous).
void weight_grad_into(const at::Tensor& x_in, const at::Tensor& grad_out_in, at::Tensor& result) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_out_in.contiguous();
  const int64_t n = x.size(0), in = x.size(1), out = g.size(1);
  if (in == 0 || out == 0) return;
  if (n == 0) {
    result.zero_();
    return;
  }
  TORCH_CHECK(in <= 2147483647, "lipo_if.linear_weight_grad_strided (CUDA kernel): in must be < 2^31, got ", in);
  const int64_t out_blocks = (out + kThreads - 1) / kThreads;
  TORCH_CHECK(out_blocks <= 65535, "lipo_if.linear_weight_grad_strided (CUDA kernel): out too large, got ", out);
  const dim3 blocks(static_cast<unsigned int>(in), static_cast<unsigned int>(out_blocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lipo_if_linear_weight_grad_strided_cuda", [&] {
    weight_grad_strided_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), result.data_ptr<scalar_t>(), n, in, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor linear_weight_grad_strided_cuda(const at::Tensor& x, const at::Tensor& grad_out) {
  check_linear_weight_grad_strided(x, grad_out);
  check_device("linear_weight_grad_strided", x, true);
  at::Tensor result = at::empty({x.size(1), grad_out.size(1)}, x.options());
  weight_grad_into(x, grad_out, result);
  return result;
}

at::Tensor& linear_weight_grad_strided_out_cuda(const at::Tensor& x, const at::Tensor& grad_out, at::Tensor& out) {
  check_linear_weight_grad_strided(x, grad_out, &out);
  check_device("linear_weight_grad_strided.out", x, true);
  weight_grad_into(x, grad_out, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("linear_strided", &linear_strided_cuda);
  m.impl("linear_weight_grad_strided", &linear_weight_grad_strided_cuda);
  m.impl("linear_weight_grad_strided.out", &linear_weight_grad_strided_out_cuda);
}

}  // namespace lipo_if
