// CPU kernel of lipo_if::lissa_step — one fused, memory-bound pass:
//   h_new = v + (1 - damping) * h - hvp / scale,   step_norm = ||h_new - h||_2.
//
// Determinism: the vector is cut into fixed chunks of kChunk elements, each chunk's sum of
// squares goes to its own slot, and the slots are added in chunk order. The result therefore
// does not depend on the number of threads (stronger than required).
// Accuracy: squares are accumulated in kLanes independent scalar_t lanes inside a chunk (the
// compiler turns the lane loop into SIMD code), then every chunk's total in double.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"

namespace lipo_if {
namespace {

constexpr int64_t kChunk = 16384;  // elements per partial sum (fits in L1/L2 for 4 streams)
constexpr int kLanes = 16;         // independent accumulators -> one AVX-512 register of floats

// Updates elements [begin, end) and returns the sum of (h_new - h)^2 over them.
template <typename scalar_t>
double lissa_chunk(
    const scalar_t* h, const scalar_t* v, const scalar_t* hvp, scalar_t* out, int64_t begin, int64_t end,
    scalar_t keep, scalar_t scale) {
  scalar_t acc[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      // Same operation order as the reference formula, so results agree to the last ulp or so.
      const scalar_t hn = v[i + l] + keep * h[i + l] - hvp[i + l] / scale;
      out[i + l] = hn;
      const scalar_t d = hn - h[i + l];
      acc[l] += d * d;
    }
  }
  double total = 0.0;
  for (; i < end; ++i) {
    const scalar_t hn = v[i] + keep * h[i] - hvp[i] / scale;
    out[i] = hn;
    const double d = static_cast<double>(hn) - static_cast<double>(h[i]);
    total += d * d;
  }
  for (int l = 0; l < kLanes; ++l) total += static_cast<double>(acc[l]);
  return total;
}

std::tuple<at::Tensor, at::Tensor> lissa_step_cpu(
    const at::Tensor& h_in, const at::Tensor& v_in, const at::Tensor& hvp_in, double damping, double scale) {
  check_lissa_step("lissa_step", h_in, v_in, hvp_in, scale);
  check_device("lissa_step", h_in, false);
  const at::Tensor h = h_in.contiguous(), v = v_in.contiguous(), hvp = hvp_in.contiguous();
  at::Tensor h_new = at::empty_like(h, at::MemoryFormat::Contiguous);
  at::Tensor norm = at::empty({}, h.options());
  const int64_t numel = h.numel();
  const int64_t n_chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);

  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_cpu", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* gp = hvp.data_ptr<scalar_t>();
    scalar_t* op = h_new.data_ptr<scalar_t>();
    const auto keep = static_cast<scalar_t>(1.0 - damping);
    const auto sc = static_cast<scalar_t>(scale);
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t begin = c * kChunk;
        const int64_t end = std::min(numel, begin + kChunk);
        partial[static_cast<size_t>(c)] = lissa_chunk<scalar_t>(hp, vp, gp, op, begin, end, keep, sc);
      }
    });
    double total = 0.0;
    for (double p : partial) total += p;  // fixed order -> deterministic
    norm.fill_(std::sqrt(total));
  });
  return {h_new, norm};
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("lissa_step", &lissa_step_cpu);
}

}  // namespace lipo_if
