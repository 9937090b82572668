// CUDA kernel of lipo_if::linear_csr (contract in csrc/cpu/linear_csr.cpp): y [B, out] = init +
// X[rows] · weight_t (+ dense_x · weight_t[dense_cols]) for a CSR matrix X. Each block reads its
// row's entries directly, one thread per output column (reads of weight_t coalesced across o), in
// stored order (deterministic); the dense columns' part is one GEMM after the kernel.
// Accumulation type: at::acc_type<scalar_t, /*is_cuda=*/true>.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "csr_checks.cuh"

namespace lipo_if {
namespace {

constexpr int kThreads = 256;

// grid (B, ceil(out / kThreads)): block (b, ob) computes y[b, o] = init[b, o] + Σ_t vals[t] · wt[cols[t], o]
// over the entries of CSR row rows[b] (in stored order; reads of wt coalesced across o).
template <typename scalar_t>
__global__ void linear_csr_kernel(
    const int64_t* __restrict__ ptr, const int64_t* __restrict__ cols, const scalar_t* __restrict__ vals,
    const int64_t* __restrict__ rows, const scalar_t* __restrict__ wt, const scalar_t* __restrict__ init,
    scalar_t* __restrict__ y, int64_t out) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t b = blockIdx.x;
  const int64_t o = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (o >= out) return;
  const int64_t r = rows[b];
  acc_t acc = init != nullptr ? static_cast<acc_t>(init[b * out + o]) : acc_t(0);
  for (int64_t t = ptr[r]; t < ptr[r + 1]; ++t) acc += static_cast<acc_t>(vals[t]) * static_cast<acc_t>(wt[cols[t] * out + o]);
  y[b * out + o] = static_cast<scalar_t>(acc);
}

at::Tensor linear_csr_cuda(
    const at::Tensor& ptr_in, const at::Tensor& cols_in, const at::Tensor& vals_in, const at::Tensor& rows_in,
    const at::Tensor& weight_t_in, const std::optional<at::Tensor>& init_in, const std::optional<at::Tensor>& dense_cols,
    const std::optional<at::Tensor>& dense_x) {
  check_linear_csr(ptr_in, cols_in, vals_in, rows_in, weight_t_in, init_in, dense_cols, dense_x);
  check_device("linear_csr", weight_t_in, true);
  const c10::cuda::CUDAGuard guard(weight_t_in.device());
  const at::Tensor ptr = ptr_in.contiguous(), cols = cols_in.contiguous(), vals = vals_in.contiguous();
  const at::Tensor rows = rows_in.contiguous(), wt = weight_t_in.contiguous();
  const at::Tensor init = init_in.has_value() ? init_in->contiguous() : at::Tensor();
  const int64_t B = rows.size(0), out = wt.size(1);
  check_csr_indices_cuda("linear_csr", ptr, cols, rows, wt.size(0));
  at::Tensor y = at::empty({B, out}, wt.options());
  if (B == 0 || out == 0) return y;
  TORCH_CHECK(B <= 2147483647, "lipo_if.linear_csr (CUDA kernel): B must be < 2^31, got ", B);
  const int64_t out_blocks = (out + kThreads - 1) / kThreads;
  TORCH_CHECK(out_blocks <= 65535, "lipo_if.linear_csr (CUDA kernel): out too large, got ", out);
  const dim3 blocks(static_cast<unsigned int>(B), static_cast<unsigned int>(out_blocks));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "lipo_if_linear_csr_cuda", [&] {
    linear_csr_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        ptr.data_ptr<int64_t>(), cols.data_ptr<int64_t>(), vals.data_ptr<scalar_t>(), rows.data_ptr<int64_t>(),
        wt.data_ptr<scalar_t>(), init.defined() ? init.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (dense_x.has_value() && dense_cols->numel() > 0) {  // the dense columns' part: one GEMM after the kernel
    y.addmm_(dense_x->contiguous(), wt.index_select(0, dense_cols->contiguous()));  // checked: check_dense_cols
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CUDA, m) {
  m.impl("linear_csr", &linear_csr_cuda);
}

}  // namespace lipo_if
