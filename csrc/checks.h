// Input checks of the lipo_if operators — the ONE place they are written (the Python wrappers in
// lipo_if/ops.py do not re-check). The CPU and CUDA kernels of an op call the same check_<op>.
//
// Policy: shapes, dtypes (float32 / float64, all floating inputs one dtype; index tensors int64)
// and devices (all inputs on one device) must match exactly; every message starts with
// "lipo_if.<op>: " and names the argument and the bad value, shape, dtype or device. Non-contiguous
// inputs are accepted and copied to a contiguous layout by the kernels (one copy, only when needed);
// tensors the op writes through (`out`, the in-place `h`) must be contiguous. Index *values* of a CSR
// matrix are checked where the kernels read them (CPU: sparse::gather_csr_rows; CUDA:
// check_csr_indices_cuda); dense_cols' values here, once, for both devices (check_dense_cols), and
// so are a segment pointer's (check_linear_grad_dot_segment).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace lipo_if {

inline void check_float_dtype(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "lipo_if.", op, ": ", name,
      " must be float32 or float64, got ", t.scalar_type());
}

// `t` has the dtype and device of `ref`.
inline void check_same(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(), "lipo_if.", op, ": ", name, " has dtype ", t.scalar_type(), " but ",
      ref_name, " has dtype ", ref.scalar_type(), "; all inputs must share one dtype");
  TORCH_CHECK(
      t.device() == ref.device(), "lipo_if.", op, ": ", name, " is on device ", t.device(), " but ", ref_name,
      " is on device ", ref.device(), "; all inputs must be on one device");
}

// `t` is 2-D [rows, cols] (-1: any size); `doc` names the dimensions, e.g. "[n, out]".
inline void check_matrix(
    const char* op, const at::Tensor& t, const char* name, const char* doc, int64_t rows, int64_t cols) {
  if (t.dim() == 2 && (rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols)) return;
  auto dim = [](int64_t d) { return d < 0 ? std::string("*") : std::to_string(d); };
  const std::string sizes = rows < 0 && cols < 0 ? std::string() : " = [" + dim(rows) + ", " + dim(cols) + "]";
  TORCH_CHECK(false, "lipo_if.", op, ": ", name, " must be 2-D ", doc, sizes, ", got shape ", t.sizes());
}

inline void check_scale(const char* op, double scale) {
  TORCH_CHECK(scale != 0.0 && !std::isnan(scale), "lipo_if.", op, ": scale must be non-zero, got ", scale);
}

inline void check_writable(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      t.is_contiguous(), "lipo_if.", op, ": ", name, " must be contiguous (the op writes through it), got strides ",
      t.strides());
}

// ---------------------------------------------------------------------------------------------
// linear_grad_dot (and its .segment overload): act [n, in], out_grad [n, out], vec_weight
// [k, out, in], vec_bias [k, out]?
inline void check_linear_grad_dot(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& vec_weight,
    const std::optional<at::Tensor>& vec_bias, const char* op = "linear_grad_dot") {
  check_matrix(op, act, "act", "[n, in]", -1, -1);
  check_float_dtype(op, act, "act");
  check_matrix(op, out_grad, "out_grad", "[n, out]", act.size(0), -1);
  check_same(op, out_grad, "out_grad", act, "act");
  TORCH_CHECK(
      vec_weight.dim() == 3 && vec_weight.size(1) == out_grad.size(1) && vec_weight.size(2) == act.size(1), "lipo_if.",
      op, ": vec_weight must be [k, out, in] = [k, ", out_grad.size(1), ", ", act.size(1), "], got shape ",
      vec_weight.sizes());
  check_same(op, vec_weight, "vec_weight", act, "act");
  if (vec_bias.has_value()) {
    check_matrix(op, *vec_bias, "vec_bias", "[k, out]", vec_weight.size(0), out_grad.size(1));
    check_same(op, *vec_bias, "vec_bias", act, "act");
  }
}

// The values of a segment pointer indptr [S + 1] (torch_scatter's segment_csr convention), read on
// the host: indptr[0] == 0, non-decreasing, indptr[S] == n. `indptr` is a CPU int64 tensor.
inline void check_segment_indptr_values(const char* op, const at::Tensor& indptr, int64_t n) {
  const at::Tensor ip = indptr.contiguous();
  const int64_t* p = ip.data_ptr<int64_t>();
  const int64_t S = ip.numel() - 1;
  TORCH_CHECK(p[0] == 0, "lipo_if.", op, ": indptr must start at 0, got indptr[0] = ", p[0]);
  for (int64_t s = 0; s < S; ++s) {
    TORCH_CHECK(
        p[s] <= p[s + 1], "lipo_if.", op, ": indptr must be non-decreasing, got indptr[", s, "] = ", p[s], " > indptr[",
        s + 1, "] = ", p[s + 1]);
  }
  TORCH_CHECK(
      p[S] == n, "lipo_if.", op, ": indptr must end at n = ", n, " (the rows of act), got indptr[", S, "] = ", p[S]);
}

// linear_grad_dot.segment: the linear_grad_dot inputs, and indptr [S + 1] int64 on act's device
// with indptr[0] == 0, non-decreasing, indptr[S] == n. CPU: the values are read once, here. CUDA:
// one fused device test (three reductions, one host sync of a bool); only when it fails is indptr
// copied to the host, to name the first bad entry (the same messages as on CPU).
inline void check_linear_grad_dot_segment(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& vec_weight,
    const std::optional<at::Tensor>& vec_bias, const at::Tensor& indptr) {
  const char* op = "linear_grad_dot.segment";
  check_linear_grad_dot(act, out_grad, vec_weight, vec_bias, op);
  TORCH_CHECK(
      indptr.dim() == 1 && indptr.size(0) >= 1, "lipo_if.", op,
      ": indptr must be 1-D [S + 1] with at least one element, got shape ", indptr.sizes());
  TORCH_CHECK(indptr.scalar_type() == at::kLong, "lipo_if.", op, ": indptr must be int64, got ", indptr.scalar_type());
  TORCH_CHECK(
      indptr.device() == act.device(), "lipo_if.", op, ": indptr is on device ", indptr.device(),
      " but act is on device ", act.device(), "; all inputs must be on one device");
  const int64_t n = act.size(0), S = indptr.size(0) - 1;
  if (indptr.device().is_cpu()) {
    check_segment_indptr_values(op, indptr, n);
    return;
  }
  std::vector<at::Tensor> ok = {indptr.select(0, 0).eq(0), indptr.select(0, S).eq(n)};
  if (S > 0) ok.push_back(indptr.slice(0, 1).ge(indptr.slice(0, 0, S)).all());
  if (at::stack(ok).all().item<bool>()) return;
  check_segment_indptr_values(op, indptr.cpu(), n);  // throws, naming the first bad entry
  TORCH_CHECK(false, "lipo_if.", op, ": indptr failed its device check but not the host one (changed meanwhile?)");
}

// lissa_step / lissa_step_update: h, v, hvp of one shape, dtype and device; scale != 0.
inline void check_lissa_step(const char* op, const at::Tensor& h, const at::Tensor& v, const at::Tensor& hvp, double scale) {
  check_float_dtype(op, h, "h");
  TORCH_CHECK(v.sizes() == h.sizes(), "lipo_if.", op, ": v must have the shape of h ", h.sizes(), ", got ", v.sizes());
  TORCH_CHECK(hvp.sizes() == h.sizes(), "lipo_if.", op, ": hvp must have the shape of h ", h.sizes(), ", got ", hvp.sizes());
  check_same(op, v, "v", h, "h");
  check_same(op, hvp, "hvp", h, "h");
  check_scale(op, scale);
}

// linear_strided: x [n, in], weight_t [in, out], bias [out]?
inline void check_linear_strided(const at::Tensor& x, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias) {
  const char* op = "linear_strided";
  check_matrix(op, x, "x", "[n, in]", -1, -1);
  check_float_dtype(op, x, "x");
  check_matrix(op, weight_t, "weight_t", "[in, out]", x.size(1), -1);
  check_same(op, weight_t, "weight_t", x, "x");
  if (bias.has_value()) {
    TORCH_CHECK(
        bias->dim() == 1 && bias->size(0) == weight_t.size(1), "lipo_if.", op, ": bias must be [out] = [",
        weight_t.size(1), "], got shape ", bias->sizes());
    check_same(op, *bias, "bias", x, "x");
  }
}

// linear_weight_grad_strided: x [n, in], grad_out [n, out]; out [in, out] contiguous (.out overload).
inline void check_linear_weight_grad_strided(
    const at::Tensor& x, const at::Tensor& grad_out, const at::Tensor* out = nullptr) {
  const char* op = "linear_weight_grad_strided";
  check_matrix(op, x, "x", "[n, in]", -1, -1);
  check_float_dtype(op, x, "x");
  check_matrix(op, grad_out, "grad_out", "[n, out]", x.size(0), -1);
  check_same(op, grad_out, "grad_out", x, "x");
  if (out != nullptr) {
    check_matrix(op, *out, "out", "[in, out]", x.size(1), grad_out.size(1));
    check_same(op, *out, "out", x, "x");
    check_writable(op, *out, "out");
  }
}

// A CSR matrix as three tensors (lipo_if.ops.CsrMatrix): ptr [n_rows + 1] int64, cols [nnz] int64,
// vals [nnz] of ref's dtype; rows [B] int64, the rows an op reads; all on ref's device.
inline void check_csr_rows(
    const char* op, const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& rows,
    const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1, "lipo_if.", op, ": ptr must be 1-D [n_rows + 1], got shape ", ptr.sizes());
  TORCH_CHECK(cols.dim() == 1, "lipo_if.", op, ": cols must be 1-D [nnz], got shape ", cols.sizes());
  TORCH_CHECK(
      vals.dim() == 1 && vals.size(0) == cols.size(0), "lipo_if.", op, ": vals must be 1-D [nnz] = [", cols.size(0),
      "] like cols, got shape ", vals.sizes());
  TORCH_CHECK(rows.dim() == 1, "lipo_if.", op, ": rows must be 1-D [B], got shape ", rows.sizes());
  const std::pair<const at::Tensor*, const char*> index[] = {{&ptr, "ptr"}, {&cols, "cols"}, {&rows, "rows"}};
  for (const auto& [t, name] : index) {
    TORCH_CHECK(t->scalar_type() == at::kLong, "lipo_if.", op, ": ", name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK(
        t->device() == ref.device(), "lipo_if.", op, ": ", name, " is on device ", t->device(), " but ", ref_name,
        " is on device ", ref.device(), "; all inputs must be on one device");
  }
  check_same(op, vals, "vals", ref, ref_name);
}

// dense_cols [nd]: the input columns kept out of the CSR matrix (lipo_if.ops.split_csr) — 1-D int64 on
// ref's device, distinct, every entry in [0, in). The one check of dense_cols, for both CSR ops and
// both devices (CUDA: a few reductions and one host sync).
inline void check_dense_cols(const char* op, const at::Tensor& dense_cols, const at::Tensor& ref, int64_t in) {
  TORCH_CHECK(
      dense_cols.dim() == 1 && dense_cols.scalar_type() == at::kLong && dense_cols.device() == ref.device(), "lipo_if.",
      op, ": dense_cols must be a 1-D int64 tensor on ", ref.device(), ", got ", dense_cols.scalar_type(), " of shape ",
      dense_cols.sizes(), " on ", dense_cols.device());
  const int64_t nd = dense_cols.numel();
  if (nd == 0) return;
  if (dense_cols.device().is_cpu()) {
    const at::Tensor dc = dense_cols.contiguous();
    const int64_t* p = dc.data_ptr<int64_t>();
    std::vector<uint8_t> seen(static_cast<size_t>(std::max<int64_t>(in, 0)), 0);
    for (int64_t k = 0; k < nd; ++k) {
      TORCH_CHECK(p[k] >= 0 && p[k] < in, "lipo_if.", op, ": dense_cols[", k, "] = ", p[k], " is out of range [0, ", in, ")");
      TORCH_CHECK(!seen[static_cast<size_t>(p[k])], "lipo_if.", op, ": dense_cols repeats column ", p[k], " (at [", k, "])");
      seen[static_cast<size_t>(p[k])] = 1;
    }
    return;
  }
  const at::Tensor sorted = std::get<0>(dense_cols.sort());
  std::vector<at::Tensor> ok = {sorted.select(0, 0).ge(0), sorted.select(0, nd - 1).lt(in)};
  if (nd > 1) ok.push_back(sorted.slice(0, 1).gt(sorted.slice(0, 0, nd - 1)).all());
  TORCH_CHECK(
      at::stack(ok).all().item<bool>(), "lipo_if.", op, ": dense_cols must be distinct columns in [0, ", in,
      "), got min ", sorted.select(0, 0).item<int64_t>(), ", max ", sorted.select(0, nd - 1).item<int64_t>());
}

// The dense columns' values of the minibatch: dense_x [B, nd] (linear_csr, lissa_step_update.csr) or
// their gradient rows dense_grad [nd, out] (lissa_step_update.csr); each goes with dense_cols.
inline void check_dense_part(
    const char* op, const std::optional<at::Tensor>& dense_cols, const std::optional<at::Tensor>& dense_x,
    const std::optional<at::Tensor>& dense_grad, int64_t B, int64_t in, int64_t out, const at::Tensor& ref,
    const char* ref_name, const char* values_name) {
  TORCH_CHECK(
      !(dense_x.has_value() && dense_grad.has_value()), "lipo_if.", op,
      ": give dense_grad or dense_x (dense_grad is formed from dense_x), not both");
  const bool values = dense_x.has_value() || dense_grad.has_value();
  TORCH_CHECK(
      dense_cols.has_value() == values, "lipo_if.", op, ": dense_cols and its values (", values_name,
      ") go together, got dense_cols ", dense_cols.has_value() ? "given" : "None", " and ", values_name, " ",
      values ? "given" : "None");
  if (!values) return;
  check_dense_cols(op, *dense_cols, ref, in);
  const int64_t nd = dense_cols->size(0);
  if (dense_x.has_value()) {
    check_matrix(op, *dense_x, "dense_x", "[B, nd]", B, nd);
    check_same(op, *dense_x, "dense_x", ref, ref_name);
  } else {
    check_matrix(op, *dense_grad, "dense_grad", "[nd, out]", nd, out);
    check_same(op, *dense_grad, "dense_grad", ref, ref_name);
  }
}

// linear_csr: X[rows] (CSR) times weight_t [in, out], + init [B, out]?, + dense_x · weight_t[dense_cols].
inline void check_linear_csr(
    const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& rows,
    const at::Tensor& weight_t, const std::optional<at::Tensor>& init, const std::optional<at::Tensor>& dense_cols,
    const std::optional<at::Tensor>& dense_x) {
  const char* op = "linear_csr";
  check_matrix(op, weight_t, "weight_t", "[in, out]", -1, -1);
  check_float_dtype(op, weight_t, "weight_t");
  check_csr_rows(op, ptr, cols, vals, rows, weight_t, "weight_t");
  if (init.has_value()) {
    check_matrix(op, *init, "init", "[B, out]", rows.size(0), weight_t.size(1));
    check_same(op, *init, "init", weight_t, "weight_t");
  }
  check_dense_part(op, dense_cols, dense_x, std::nullopt, rows.size(0), weight_t.size(0), weight_t.size(1), weight_t, "weight_t", "dense_x");
}

// lissa_step_update.csr: h (in place, contiguous) and v [in, out]; grad_out [B, out]; scale != 0;
// dense_cols with dense_grad [nd, out] or dense_x [B, nd].
inline void check_lissa_step_update_csr(
    const at::Tensor& h, const at::Tensor& v, const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals,
    const at::Tensor& rows, const at::Tensor& grad_out, double scale, const std::optional<at::Tensor>& dense_cols,
    const std::optional<at::Tensor>& dense_grad, const std::optional<at::Tensor>& dense_x) {
  const char* op = "lissa_step_update.csr";
  check_matrix(op, h, "h", "[in, out]", -1, -1);
  check_float_dtype(op, h, "h");
  check_writable(op, h, "h");
  TORCH_CHECK(v.sizes() == h.sizes(), "lipo_if.", op, ": v must have the shape of h ", h.sizes(), ", got ", v.sizes());
  check_same(op, v, "v", h, "h");
  check_csr_rows(op, ptr, cols, vals, rows, h, "h");
  check_matrix(op, grad_out, "grad_out", "[B, out]", rows.size(0), h.size(1));
  check_same(op, grad_out, "grad_out", h, "h");
  check_scale(op, scale);
  check_dense_part(op, dense_cols, dense_x, dense_grad, rows.size(0), h.size(0), h.size(1), h, "h", "dense_grad or dense_x");
}

// split_csr: x [n, in] float32 / float64.
inline void check_split_csr(const at::Tensor& x) {
  check_matrix("split_csr", x, "x", "[n, in]", -1, -1);
  check_float_dtype("split_csr", x, "x");
}

// The device a kernel was registered for (the dispatcher routes by the inputs' device; this only
// guards direct calls with inputs on several devices, which check_same reports first).
inline void check_device(const char* op, const at::Tensor& t, bool cuda) {
  TORCH_CHECK(
      t.is_cuda() == cuda, "lipo_if.", op, " (", cuda ? "CUDA" : "CPU", " kernel): inputs must be on ",
      cuda ? "a CUDA device" : "CPU", ", got ", t.device());
}

// linear_grad_dot.segment's operands for either device's kernel: checked (the op's checks and the
// kernel's device), in the contiguous layout the kernels read (copied only where needed), with their
// sizes. vec_bias is undefined when None.
struct SegmentOperands {
  at::Tensor act, out_grad, vec_weight, vec_bias, indptr;
  int64_t n, in, out, k, S;
};

inline SegmentOperands segment_operands(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& vec_weight,
    const std::optional<at::Tensor>& vec_bias, const at::Tensor& indptr, bool cuda) {
  check_linear_grad_dot_segment(act, out_grad, vec_weight, vec_bias, indptr);
  check_device("linear_grad_dot.segment", act, cuda);
  return SegmentOperands{
      act.contiguous(), out_grad.contiguous(), vec_weight.contiguous(),
      vec_bias.has_value() ? vec_bias->contiguous() : at::Tensor(), indptr.contiguous(),
      act.size(0), act.size(1), out_grad.size(1), vec_weight.size(0), indptr.size(0) - 1};
}

}  // namespace lipo_if
