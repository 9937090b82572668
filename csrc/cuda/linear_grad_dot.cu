// CUDA kernel of lipo_if::linear_grad_dot:
//   result[i, j] = Σ_o out_grad[i, o] · (Σ_c W_j[o, c] · act[i, c] + b_j[o]).
//
// Tiling: one block of kTile × kTile threads owns kTile samples (threadIdx.y) and one vector j
// (blockIdx.y); threadIdx.x walks the `out` dimension in steps of kTile. For each out-tile the
// block streams `in` in kTile-wide tiles of act and W_j through shared memory (a small GEMM
// tile, T[i, o] = W_j act_i), then multiplies by out_grad[i, o] and keeps a per-thread partial.
// The partials of a sample are reduced through shared memory at the end, so every result is
// written exactly once, without atomics (deterministic). Indices are int64.
// Accumulation type: at::acc_type<scalar_t, /*is_cuda=*/true> (float for float, double for double).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int kTile = 16;

template <typename scalar_t>
__global__ void linear_grad_dot_kernel(
    const scalar_t* __restrict__ act, const scalar_t* __restrict__ out_grad, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ bias, scalar_t* __restrict__ result, int64_t n, int64_t in, int64_t out, int64_t k) {
  using acc_t = at::acc_type<scalar_t, true>;
  // +1 column of padding: w_tile is read column-wise (w_tile[tx][cc]) — avoids bank conflicts.
  __shared__ scalar_t a_tile[kTile][kTile + 1];  // [sample][c]
  __shared__ scalar_t w_tile[kTile][kTile + 1];  // [o][c]
  __shared__ acc_t red[kTile][kTile + 1];        // [sample][o-lane] partials

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kTile + ty;
  const int64_t j = blockIdx.y;
  const scalar_t* w_j = weight + j * out * in;

  acc_t partial = 0;
  for (int64_t o0 = 0; o0 < out; o0 += kTile) {
    const int64_t o = o0 + tx;
    acc_t t = 0;  // (W_j act_i)[o]
    for (int64_t c0 = 0; c0 < in; c0 += kTile) {
      const int64_t c = c0 + tx;
      a_tile[ty][tx] = (i < n && c < in) ? act[i * in + c] : scalar_t(0);
      w_tile[ty][tx] = (o0 + ty < out && c < in) ? w_j[(o0 + ty) * in + c] : scalar_t(0);
      __syncthreads();
#pragma unroll
      for (int cc = 0; cc < kTile; ++cc) t += static_cast<acc_t>(a_tile[ty][cc]) * static_cast<acc_t>(w_tile[tx][cc]);
      __syncthreads();
    }
    if (i < n && o < out) {
      if (bias != nullptr) t += static_cast<acc_t>(bias[j * out + o]);
      partial += t * static_cast<acc_t>(out_grad[i * out + o]);
    }
  }
  red[ty][tx] = partial;
  __syncthreads();
  if (tx == 0 && i < n) {
    acc_t total = 0;
#pragma unroll
    for (int l = 0; l < kTile; ++l) total += red[ty][l];
    result[i * k + j] = static_cast<scalar_t>(total);
  }
}

at::Tensor linear_grad_dot_cuda(
    const at::Tensor& act_in, const at::Tensor& out_grad_in, const at::Tensor& vec_weight_in,
    const std::optional<at::Tensor>& vec_bias_in) {
  check_linear_grad_dot(act_in, out_grad_in, vec_weight_in, vec_bias_in);
  check_device("linear_grad_dot", act_in, true);
  const c10::cuda::CUDAGuard guard(act_in.device());
  const at::Tensor act = act_in.contiguous();
  const at::Tensor out_grad = out_grad_in.contiguous();
  const at::Tensor vec_weight = vec_weight_in.contiguous();
  const at::Tensor vec_bias = vec_bias_in.has_value() ? vec_bias_in->contiguous() : at::Tensor();
  const int64_t n = act.size(0), in = act.size(1), out = out_grad.size(1), k = vec_weight.size(0);
  at::Tensor result = at::empty({n, k}, act.options());
  if (n == 0 || k == 0) return result;
  TORCH_CHECK(k <= 65535, "lipo_if.linear_grad_dot (CUDA kernel): k must be <= 65535, got ", k);

  const dim3 threads(kTile, kTile);
  const dim3 blocks(static_cast<unsigned int>((n + kTile - 1) / kTile), static_cast<unsigned int>(k));
  // c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream aliases; its header
  // avoids ATen/cuda/CUDAContext.h, which pulls in cuSPARSE/cuBLAS headers the kernels don't use.
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "lipo_if_linear_grad_dot_cuda", [&] {
    linear_grad_dot_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        act.data_ptr<scalar_t>(), out_grad.data_ptr<scalar_t>(), vec_weight.data_ptr<scalar_t>(),
        vec_bias.defined() ? vec_bias.data_ptr<scalar_t>() : nullptr, result.data_ptr<scalar_t>(), n, in, out, k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("linear_grad_dot", &linear_grad_dot_cuda);
}

}  // namespace lipo_if
