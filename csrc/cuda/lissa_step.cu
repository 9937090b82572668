// CUDA kernel of lipo_if::lissa_step:
//   h_new = v + (1 - damping) * h - hvp / scale,   step_norm = ||h_new - h||_2 (0-dim tensor).
//
// Pass 1 (lissa_update_kernel): grid-stride update; each block reduces its squared differences
// through shared memory into one double partial. Pass 2 (finalize_norm_kernel): one block adds
// the partials in a fixed order and writes sqrt. The grid size depends on numel only, so the
// result is deterministic (no atomics), and nothing synchronizes with the host.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int kThreads = 256;   // power of two (tree reduction below)
constexpr int kMaxBlocks = 1024;

// Tree-reduces smem[0 .. kThreads) in place; the total ends in smem[0].
__device__ __forceinline__ void block_reduce(double* smem) {
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void lissa_update_kernel(
    const scalar_t* __restrict__ h, const scalar_t* __restrict__ v, const scalar_t* __restrict__ hvp,
    scalar_t* __restrict__ h_new, double* __restrict__ partial, int64_t numel, scalar_t keep, scalar_t scale) {
  __shared__ double smem[kThreads];
  double acc = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += stride) {
    const scalar_t hn = v[i] + keep * h[i] - hvp[i] / scale;
    h_new[i] = hn;
    const double d = static_cast<double>(hn) - static_cast<double>(h[i]);
    acc += d * d;
  }
  smem[threadIdx.x] = acc;
  block_reduce(smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = smem[0];
}

template <typename scalar_t>
__global__ void finalize_norm_kernel(const double* __restrict__ partial, int n_partial, scalar_t* __restrict__ norm) {
  __shared__ double smem[kThreads];
  double acc = 0.0;
  for (int b = threadIdx.x; b < n_partial; b += kThreads) acc += partial[b];
  smem[threadIdx.x] = acc;
  block_reduce(smem);
  if (threadIdx.x == 0) *norm = static_cast<scalar_t>(sqrt(smem[0]));
}

std::tuple<at::Tensor, at::Tensor> lissa_step_cuda(
    const at::Tensor& h_in, const at::Tensor& v_in, const at::Tensor& hvp_in, double damping, double scale) {
  check_lissa_step("lissa_step", h_in, v_in, hvp_in, scale);
  check_device("lissa_step", h_in, true);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), v = v_in.contiguous(), hvp = hvp_in.contiguous();
  at::Tensor h_new = at::empty_like(h, at::MemoryFormat::Contiguous);
  at::Tensor norm = at::empty({}, h.options());
  const int64_t numel = h.numel();
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (numel + kThreads - 1) / kThreads)));
  at::Tensor partial = at::empty({blocks}, h.options().dtype(at::kDouble));
  // c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream aliases; its header
  // avoids ATen/cuda/CUDAContext.h, which pulls in cuSPARSE/cuBLAS headers the kernels don't use.
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_cuda", [&] {
    lissa_update_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), hvp.data_ptr<scalar_t>(), h_new.data_ptr<scalar_t>(),
        partial.data_ptr<double>(), numel, static_cast<scalar_t>(1.0 - damping), static_cast<scalar_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_norm_kernel<scalar_t><<<1, kThreads, 0, stream>>>(partial.data_ptr<double>(), blocks, norm.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {h_new, norm};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("lissa_step", &lissa_step_cuda);
}

}  // namespace lipo_if
