// CPU kernels of lipo_if::lissa_step_update — the LiSSA update in place, returning its sums of
// squares (float64 [2] = (||h_new - h||², ||h_new||²)); see csrc/lipo_if.cpp for why it is not an
// op ending in `_`:
//
//   lissa_step_update(h!, v, hvp, damping, scale):  h <- v + (1 - damping)·h - hvp / scale
//   lissa_step_update.csr(h! [in, out], v, ptr, cols, vals, rows, grad_out, damping, scale,
//                         dense_cols?, dense_grad?, dense_x?):
//     the same with hvp = G = X[rows]ᵀ grad_out (+ dense_grad added to the rows dense_cols), the
//     first layer's weight block fused with that block's Hessian-vector product (never formed).
//
// The default overload is the csr one's row update (update_row below) applied to hvp as one dense
// row over all of h — the arithmetic the LiSSA solver's update of the other parameter blocks had
// when it went through the CSR op with an empty matrix, in one pass on one thread (it is ≈5 % of p).
//
// Why: in a LiSSA step on the package's MLP the first weight block is ≈95 % of the parameters.
// Computed separately, its HVP block G is written to memory (9 MB in float64), read back by
// lissa_step, which writes a fresh h, whose norm is one more pass. Here G never exists as a
// whole: row c of G (the input column c of the minibatch: a few of its rows, or a dense column)
// is built in an L1-resident buffer from the rows of grad_out that column c selects, and used at
// once — one pass that reads h and v and writes h. Rows of G that the batch does not touch are
// zero, so those rows of h only decay towards v.
//
// The gradient term is applied as (-1/scale)·G (a multiplication instead of lissa_step's division:
// equal to rounding).
//
// dense_x (the minibatch's dense columns, [B, nd]) instead of dense_grad: dense_grad = dense_xᵀ grad_out
// is formed here, beside the update of the other rows (sparse::run_side_by_side).
//
// Determinism: rows of h are cut into fixed chunks of kRowsPerChunk; each chunk's sums go to their
// own slots (its rows without a dense_grad row first, then those with one), added in chunk order;
// within a column the minibatch's entries are summed in row order. The result does not depend on
// the thread count (with dense_x, up to the BLAS product's own rounding).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "sparse_rows.h"

namespace lipo_if {
namespace {

constexpr int64_t kRowsPerChunk = 8;  // rows of h per partial sum

// Sums of the lanes of a vector, in double.
template <typename T>
double lane_sum(typename sparse::Simd<T>::V x) {
  constexpr int64_t L = sparse::Simd<T>::L;
  T lanes[L];
  sparse::Simd<T>::store(lanes, x);
  double total = 0.0;
  for (int64_t l = 0; l < L; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

// Row c of the update: h[0:out) <- v + keep·h - (dense_row + Σ_t vals[t]·q[rows[t], :]) / scale, with
// coef[t] = -vals[t]/scale precomputed, dense_row unscaled or nullptr, count = 0 for a column the
// minibatch does not touch; adds Σ(h_new - h)² and Σh_new². The gradient row is summed in
// registers (never stored); entries are added in row order. Explicit SIMD with two accumulator
// sets: the compiler's own vectorization of this in-place update with two reductions spilled to
// the stack (6× slower).
template <typename T>
void update_row(
    T* __restrict__ h, const T* __restrict__ v, const int64_t* rows, const T* coef, int64_t count,
    const T* __restrict__ dense_row, T neg_inv_scale, const T* __restrict__ q, int64_t out, T keep, double& step_sq,
    double& h_sq) {
  using S = sparse::Simd<T>;
  constexpr int64_t L = S::L;
  const typename S::V k = S::set1(keep), nis = S::set1(neg_inv_scale);
  typename S::V s0 = S::zero(), s1 = S::zero(), n0 = S::zero(), n1 = S::zero();
  int64_t o = 0;
  for (; o + 2 * L <= out; o += 2 * L) {
    const typename S::V h0 = S::load(h + o), h1 = S::load(h + o + L);
    typename S::V x0 = S::fmadd(k, h0, S::load(v + o)), x1 = S::fmadd(k, h1, S::load(v + o + L));
    if (dense_row != nullptr) {
      x0 = S::fmadd(nis, S::load(dense_row + o), x0);
      x1 = S::fmadd(nis, S::load(dense_row + o + L), x1);
    }
    for (int64_t t = 0; t < count; ++t) {
      const typename S::V a = S::set1(coef[t]);
      const T* r = q + rows[t] * out + o;
      x0 = S::fmadd(a, S::load(r), x0);
      x1 = S::fmadd(a, S::load(r + L), x1);
    }
    S::store(h + o, x0);
    S::store(h + o + L, x1);
    const typename S::V d0 = S::sub(x0, h0), d1 = S::sub(x1, h1);
    s0 = S::fmadd(d0, d0, s0);
    s1 = S::fmadd(d1, d1, s1);
    n0 = S::fmadd(x0, x0, n0);
    n1 = S::fmadd(x1, x1, n1);
  }
  for (; o < out; ++o) {
    T x = v[o] + keep * h[o];
    if (dense_row != nullptr) x += neg_inv_scale * dense_row[o];
    for (int64_t t = 0; t < count; ++t) x += coef[t] * q[rows[t] * out + o];
    const double d = static_cast<double>(x) - static_cast<double>(h[o]);
    h[o] = x;
    step_sq += d * d;
    h_sq += static_cast<double>(x) * static_cast<double>(x);
  }
  step_sq += lane_sum<T>(S::add(s0, s1));
  h_sq += lane_sum<T>(S::add(n0, n1));
}

// lissa_step_update (default overload): h (contiguous, any shape) <- v + keep·h - hvp / scale.
at::Tensor lissa_step_update_cpu(at::Tensor& h, const at::Tensor& v_in, const at::Tensor& hvp_in, double damping, double scale) {
  check_lissa_step("lissa_step_update", h, v_in, hvp_in, scale);
  check_writable("lissa_step_update", h, "h");
  check_device("lissa_step_update", h, false);
  const at::Tensor v = v_in.contiguous(), hvp = hvp_in.contiguous();
  at::Tensor sums = at::empty({2}, h.options().dtype(at::kDouble));
  double* result = sums.data_ptr<double>();
  result[0] = result[1] = 0.0;
  if (h.numel() == 0) return sums;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_update_cpu", [&] {
    const auto keep = static_cast<scalar_t>(1.0 - damping);
    const auto neg_inv_scale = static_cast<scalar_t>(-1.0 / scale);
    double step_sq = 0.0, h_sq = 0.0;
    update_row<scalar_t>(
        h.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), nullptr, nullptr, 0, hvp.data_ptr<scalar_t>(), neg_inv_scale,
        nullptr, h.numel(), keep, step_sq, h_sq);
    result[0] += step_sq;
    result[1] += h_sq;
  });
  return sums;
}

at::Tensor lissa_step_update_csr_cpu(
    at::Tensor& h, const at::Tensor& v_in, const at::Tensor& ptr_in, const at::Tensor& cols_in,
    const at::Tensor& vals_in, const at::Tensor& rows_in, const at::Tensor& grad_out_in, double damping, double scale,
    const std::optional<at::Tensor>& dense_cols_in, const std::optional<at::Tensor>& dense_grad_in,
    const std::optional<at::Tensor>& dense_x) {
  check_lissa_step_update_csr(
      h, v_in, ptr_in, cols_in, vals_in, rows_in, grad_out_in, scale, dense_cols_in, dense_grad_in, dense_x);
  check_device("lissa_step_update.csr", h, false);
  const at::Tensor v = v_in.contiguous(), ptr = ptr_in.contiguous(), cols = cols_in.contiguous();
  const at::Tensor vals = vals_in.contiguous(), rows = rows_in.contiguous(), q = grad_out_in.contiguous();
  const at::Tensor dense_cols = dense_cols_in.has_value() ? dense_cols_in->contiguous() : at::Tensor();
  at::Tensor dense_grad = dense_grad_in.has_value() ? dense_grad_in->contiguous() : at::Tensor();
  const int64_t in = h.size(0), out = h.size(1), B = rows.size(0);
  at::Tensor sums = at::empty({2}, h.options().dtype(at::kDouble));
  double* result = sums.data_ptr<double>();
  result[0] = result[1] = 0.0;
  if (in == 0 || out == 0) return sums;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "lipo_if_lissa_step_update_csr_cpu", [&] {
    const sparse::Csr<scalar_t> batch = sparse::gather_csr_rows<scalar_t>(
        ptr.data_ptr<int64_t>(), cols.data_ptr<int64_t>(), vals.data_ptr<scalar_t>(), ptr.size(0) - 1, cols.size(0),
        rows.data_ptr<int64_t>(), B, in);
    sparse::ColumnGroups<scalar_t> groups;
    sparse::group_by_column(batch, 0, B, in, groups);
    std::vector<int64_t> group_of(static_cast<size_t>(in), -1), dense_slot(static_cast<size_t>(in), -1);
    for (size_t a = 0; a < groups.active.size(); ++a) group_of[static_cast<size_t>(groups.active[a])] = static_cast<int64_t>(a);
    if (dense_cols.defined()) {
      const int64_t* dc = dense_cols.data_ptr<int64_t>();
      for (int64_t k = 0; k < dense_cols.size(0); ++k) dense_slot[static_cast<size_t>(dc[k])] = k;  // distinct, in range: check_dense_cols
    }
    scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const auto keep = static_cast<scalar_t>(1.0 - damping);
    const auto neg_inv_scale = static_cast<scalar_t>(-1.0 / scale);
    std::vector<scalar_t> coef(groups.vals.size());
    for (size_t t = 0; t < coef.size(); ++t) coef[t] = groups.vals[t] * neg_inv_scale;
    const int64_t n_chunks = (in + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<double> partial(static_cast<size_t>(2 * n_chunks), 0.0);
    // Rows of one kind (dense: with a dense_grad row, or not) of chunks [c0, c1), sums added to the
    // chunks' slots: the other rows first, then the dense ones — the same order on every path.
    auto update_rows = [&](bool dense_rows, const scalar_t* dg, int64_t c0, int64_t c1) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        double step_sq = 0.0, h_sq = 0.0;
        for (int64_t c = chunk * kRowsPerChunk; c < std::min(in, (chunk + 1) * kRowsPerChunk); ++c) {
          const int64_t slot = dense_slot[static_cast<size_t>(c)];
          if ((slot >= 0) != dense_rows) continue;
          const int64_t group = group_of[static_cast<size_t>(c)];
          const int64_t begin = group >= 0 ? groups.start[static_cast<size_t>(group)] : 0;
          const int64_t count = group >= 0 ? groups.start[static_cast<size_t>(group + 1)] - begin : 0;
          update_row<scalar_t>(
              hp + c * out, vp + c * out, groups.rows.data() + begin, coef.data() + begin, count,
              slot >= 0 ? dg + slot * out : nullptr, neg_inv_scale, qp, out, keep, step_sq, h_sq);
        }
        partial[static_cast<size_t>(2 * chunk)] += step_sq;
        partial[static_cast<size_t>(2 * chunk + 1)] += h_sq;
      }
    };
    // The rows without a dense_grad row need nothing else: they stream while dense_grad = dense_xᵀ
    // grad_out is formed (side by side on a 2-thread pool), then the dense rows follow.
    at::Tensor formed;  // dense_xᵀ grad_out, written by the GEMM side only
    sparse::run_side_by_side(
        [&] { at::parallel_for(0, n_chunks, 16, [&](int64_t c0, int64_t c1) { update_rows(false, nullptr, c0, c1); }); },
        [&] {
          if (dense_x.has_value()) formed = at::mm(dense_x->t(), q);
        });
    if (dense_x.has_value()) dense_grad = formed;
    if (dense_cols.defined() && dense_cols.numel() > 0) {
      const scalar_t* dg = dense_grad.contiguous().data_ptr<scalar_t>();
      at::parallel_for(0, n_chunks, 16, [&](int64_t c0, int64_t c1) { update_rows(true, dg, c0, c1); });
    }
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {  // fixed order -> deterministic
      result[0] += partial[static_cast<size_t>(2 * chunk)];
      result[1] += partial[static_cast<size_t>(2 * chunk + 1)];
    }
  });
  return sums;
}

}  // namespace

TORCH_LIBRARY_IMPL(lipo_if, CPU, m) {
  m.impl("lissa_step_update", &lissa_step_update_cpu);
  m.impl("lissa_step_update.csr", &lissa_step_update_csr_cpu);
}

}  // namespace lipo_if
