// CUDA kernels of lipo_if::lissa_step_update (see csrc/cpu/lissa_step_update.cpp for the contract):
//   default: h <- v + (1 - damping)·h - hvp / scale (update_kernel on hvp, passes 2 and 3 below);
//   .csr:    the same with hvp = G = X[rows]ᵀ grad_out (+ dense_grad at rows dense_cols);
//   both return float64 [2] = (||h_new - h||², ||h_new||²).
//
// Pass 1 (csr_scatter_kernel): G starts at zero (plus dense_grad by index_add_); block (b, ob)
// adds vals[t]·grad_out[b, o] for the entries of CSR row rows[b] with atomicAdd (one thread per
// output column: coalesced). Pass 2 (update_kernel): grid-stride in-place update, each block
// reducing both sums of squares into its own double partials; pass 3 adds the partials in a fixed
// order. Unlike the CPU kernel this one forms G (a [in, out] temporary: GPU memory is not the
// bottleneck there), and the atomics make G's summation order — and so its last bits — vary from
// run to run; everything else is deterministic.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "csr_checks.cuh"

namespace lipo_if {
namespace {

constexpr int kThreads = 256;  // power of two (tree reduction below)
constexpr int kMaxBlocks = 1024;

template <typename scalar_t>
__global__ void csr_scatter_kernel(
    const int64_t* __restrict__ ptr, const int64_t* __restrict__ cols, const scalar_t* __restrict__ vals,
    const int64_t* __restrict__ rows, const scalar_t* __restrict__ q, scalar_t* __restrict__ g, int64_t out) {
  const int64_t b = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (o >= out) return;
  const int64_t r = rows[b];
  const scalar_t qv = q[b * out + o];
  for (int64_t t = ptr[r]; t < ptr[r + 1]; ++t) atomicAdd(g + cols[t] * out + o, vals[t] * qv);
}

// Tree-reduces two arrays of kThreads doubles in shared memory; totals end in [0].
__device__ __forceinline__ void block_reduce2(double* a, double* b) {
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      a[threadIdx.x] += a[threadIdx.x + s];
      b[threadIdx.x] += b[threadIdx.x + s];
    }
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void update_kernel(
    scalar_t* __restrict__ h, const scalar_t* __restrict__ v, const scalar_t* __restrict__ g,
    double* __restrict__ partial, int64_t numel, scalar_t keep, scalar_t scale) {
  __shared__ double s_step[kThreads];
  __shared__ double s_norm[kThreads];
  double step_sq = 0.0, h_sq = 0.0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += stride) {
    const scalar_t hn = v[i] + keep * h[i] - g[i] / scale;
    const double d = static_cast<double>(hn) - static_cast<double>(h[i]);
    h[i] = hn;
    step_sq += d * d;
    h_sq += static_cast<double>(hn) * static_cast<double>(hn);
  }
  s_step[threadIdx.x] = step_sq;
  s_norm[threadIdx.x] = h_sq;
  block_reduce2(s_step, s_norm);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = s_step[0];
    partial[2 * blockIdx.x + 1] = s_norm[0];
  }
}

__global__ void finalize_kernel(const double* __restrict__ partial, int n_partial, double* __restrict__ sums) {
  __shared__ double s_step[kThreads];
  __shared__ double s_norm[kThreads];
  double a = 0.0, b = 0.0;
  for (int k = threadIdx.x; k < n_partial; k += kThreads) {
    a += partial[2 * k];
    b += partial[2 * k + 1];
  }
  s_step[threadIdx.x] = a;
  s_norm[threadIdx.x] = b;
  block_reduce2(s_step, s_norm);
  if (threadIdx.x == 0) {
    sums[0] = s_step[0];
    sums[1] = s_norm[0];
  }
}

// Passes 2 and 3: h <- v + keep·h - g / scale over numel elements, sums of squares into `sums`.
void update_and_sum(at::Tensor& h, const at::Tensor& v, const at::Tensor& g, double damping, double scale, at::Tensor& sums) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = h.numel();
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (numel + kThreads - 1) / kThreads)));
  at::Tensor partial = at::empty({2 * blocks}, h.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_update_cuda", [&] {
    update_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), partial.data_ptr<double>(), numel,
        static_cast<scalar_t>(1.0 - damping), static_cast<scalar_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<double>(), blocks, sums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor lissa_step_update_cuda(at::Tensor& h, const at::Tensor& v_in, const at::Tensor& hvp_in, double damping, double scale) {
  check_lissa_step("lissa_step_update", h, v_in, hvp_in, scale);
  check_writable("lissa_step_update", h, "h");
  check_device("lissa_step_update", h, true);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor v = v_in.contiguous(), hvp = hvp_in.contiguous();
  at::Tensor sums = at::zeros({2}, h.options().dtype(at::kDouble));
  if (h.numel() == 0) return sums;
  update_and_sum(h, v, hvp, damping, scale, sums);
  return sums;
}

at::Tensor lissa_step_update_csr_cuda(
    at::Tensor& h, const at::Tensor& v_in, const at::Tensor& ptr_in, const at::Tensor& cols_in,
    const at::Tensor& vals_in, const at::Tensor& rows_in, const at::Tensor& grad_out_in, double damping, double scale,
    const std::optional<at::Tensor>& dense_cols_in, const std::optional<at::Tensor>& dense_grad_in,
    const std::optional<at::Tensor>& dense_x) {
  check_lissa_step_update_csr(
      h, v_in, ptr_in, cols_in, vals_in, rows_in, grad_out_in, scale, dense_cols_in, dense_grad_in, dense_x);
  check_device("lissa_step_update.csr", h, true);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor v = v_in.contiguous(), ptr = ptr_in.contiguous(), cols = cols_in.contiguous();
  const at::Tensor vals = vals_in.contiguous(), rows = rows_in.contiguous(), q = grad_out_in.contiguous();
  const int64_t in = h.size(0), out = h.size(1), B = rows.size(0);
  check_csr_indices_cuda("lissa_step_update.csr", ptr, cols, rows, in);
  at::Tensor sums = at::zeros({2}, h.options().dtype(at::kDouble));
  if (in == 0 || out == 0) return sums;
  at::Tensor g = at::zeros({in, out}, h.options());
  if (dense_cols_in.has_value() && dense_cols_in->numel() > 0) {
    const at::Tensor dense_cols = dense_cols_in->contiguous();  // distinct, in range: check_dense_cols
    g.index_add_(0, dense_cols, dense_x.has_value() ? at::mm(dense_x->t(), q) : dense_grad_in->contiguous());
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_update_csr_cuda", [&] {
    if (B > 0) {
      TORCH_CHECK(B <= 2147483647, "lipo_if.lissa_step_update.csr (CUDA kernel): B must be < 2^31, got ", B);
      const int64_t out_blocks = (out + kThreads - 1) / kThreads;
      TORCH_CHECK(out_blocks <= 65535, "lipo_if.lissa_step_update.csr (CUDA kernel): out too large, got ", out);
      const dim3 grid(static_cast<unsigned int>(B), static_cast<unsigned int>(out_blocks));
      csr_scatter_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          ptr.data_ptr<int64_t>(), cols.data_ptr<int64_t>(), vals.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
          q.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  update_and_sum(h, v, g, damping, scale, sums);
  return sums;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("lissa_step_update", &lissa_step_update_cuda);
  m.impl("lissa_step_update.csr", &lissa_step_update_csr_cuda);
}

}  // namespace lipo_if
