// Input validation shared by the CPU and CUDA kernels of lipo_if.
//
// Policy (documented in lipo_if/ops.py too): shapes, dtypes and devices must match exactly and
// raise a clear error otherwise; non-contiguous inputs are accepted and copied to a contiguous
// layout by the kernels (one copy, only when needed).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <utility>

namespace lipo_if {

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
      "lipo_if: ", name, " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(), "lipo_if: ", name, " has dtype ", t.scalar_type(), " but ",
      ref_name, " has dtype ", ref.scalar_type(), "; all inputs must share one dtype");
  TORCH_CHECK(
      t.device() == ref.device(), "lipo_if: ", name, " is on device ", t.device(), " but ", ref_name,
      " is on device ", ref.device(), "; all inputs must be on one device");
}

// Checks the linear_grad_dot contract: act [n, in], out_grad [n, out], vec_weight [k, out, in],
// vec_bias [k, out] (optional).
inline void check_linear_grad_dot_inputs(
    const at::Tensor& act, const at::Tensor& out_grad, const at::Tensor& vec_weight,
    const std::optional<at::Tensor>& vec_bias) {
  TORCH_CHECK(act.dim() == 2, "lipo_if.linear_grad_dot: act must be 2-D [n, in], got shape ", act.sizes());
  TORCH_CHECK(
      out_grad.dim() == 2, "lipo_if.linear_grad_dot: out_grad must be 2-D [n, out], got shape ", out_grad.sizes());
  TORCH_CHECK(
      vec_weight.dim() == 3, "lipo_if.linear_grad_dot: vec_weight must be 3-D [k, out, in], got shape ",
      vec_weight.sizes());
  check_float_dtype(act, "linear_grad_dot: act");
  check_same(out_grad, act, "linear_grad_dot: out_grad", "act");
  check_same(vec_weight, act, "linear_grad_dot: vec_weight", "act");
  TORCH_CHECK(
      out_grad.size(0) == act.size(0), "lipo_if.linear_grad_dot: out_grad must have n = ", act.size(0),
      " rows like act, got shape ", out_grad.sizes());
  TORCH_CHECK(
      vec_weight.size(1) == out_grad.size(1) && vec_weight.size(2) == act.size(1),
      "lipo_if.linear_grad_dot: vec_weight must be [k, out, in] = [k, ", out_grad.size(1), ", ", act.size(1),
      "], got shape ", vec_weight.sizes());
  if (vec_bias.has_value()) {
    const at::Tensor& b = *vec_bias;
    check_same(b, act, "linear_grad_dot: vec_bias", "act");
    TORCH_CHECK(
        b.dim() == 2 && b.size(0) == vec_weight.size(0) && b.size(1) == out_grad.size(1),
        "lipo_if.linear_grad_dot: vec_bias must be [k, out] = [", vec_weight.size(0), ", ", out_grad.size(1),
        "], got shape ", b.sizes());
  }
}

// Checks the lissa_step contract: h, v, hvp of one shape, dtype and device; scale != 0.
inline void check_lissa_step_inputs(
    const at::Tensor& h, const at::Tensor& v, const at::Tensor& hvp, double scale) {
  check_float_dtype(h, "lissa_step: h");
  check_same(v, h, "lissa_step: v", "h");
  check_same(hvp, h, "lissa_step: hvp", "h");
  TORCH_CHECK(
      v.sizes() == h.sizes() && hvp.sizes() == h.sizes(), "lipo_if.lissa_step: h, v and hvp must have one shape, got ",
      h.sizes(), ", ", v.sizes(), ", ", hvp.sizes());
  TORCH_CHECK(scale != 0.0, "lipo_if.lissa_step: scale must be non-zero");
}

// Checks the sparse_linear contract: x [n, in], weight [out, in], bias [out] (optional).
inline void check_sparse_linear_inputs(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, "lipo_if.sparse_linear: x must be 2-D [n, in], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, "lipo_if.sparse_linear: weight must be 2-D [out, in], got shape ", weight.sizes());
  check_float_dtype(x, "sparse_linear: x");
  check_same(weight, x, "sparse_linear: weight", "x");
  TORCH_CHECK(
      weight.size(1) == x.size(1), "lipo_if.sparse_linear: weight must be [out, in] with in = ", x.size(1),
      " (columns of x), got shape ", weight.sizes());
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_same(b, x, "sparse_linear: bias", "x");
    TORCH_CHECK(
        b.dim() == 1 && b.size(0) == weight.size(0), "lipo_if.sparse_linear: bias must be [out] = [", weight.size(0),
        "], got shape ", b.sizes());
  }
}

// Checks the sparse_linear_weight_grad contract: x [n, in], grad_out [n, out].
inline void check_sparse_linear_weight_grad_inputs(const at::Tensor& x, const at::Tensor& grad_out) {
  TORCH_CHECK(x.dim() == 2, "lipo_if.sparse_linear_weight_grad: x must be 2-D [n, in], got shape ", x.sizes());
  TORCH_CHECK(
      grad_out.dim() == 2, "lipo_if.sparse_linear_weight_grad: grad_out must be 2-D [n, out], got shape ",
      grad_out.sizes());
  check_float_dtype(x, "sparse_linear_weight_grad: x");
  check_same(grad_out, x, "sparse_linear_weight_grad: grad_out", "x");
  TORCH_CHECK(
      grad_out.size(0) == x.size(0), "lipo_if.sparse_linear_weight_grad: grad_out must have n = ", x.size(0),
      " rows like x, got shape ", grad_out.sizes());
}

// The `out` of sparse_linear_weight_grad_into: [in, out], the inputs' dtype and device, contiguous
// (the kernels write through its data pointer; a view of a larger buffer is fine).
inline void check_weight_grad_out(const at::Tensor& x, const at::Tensor& grad_out, const at::Tensor& out) {
  TORCH_CHECK(
      out.dim() == 2 && out.size(0) == x.size(1) && out.size(1) == grad_out.size(1),
      "lipo_if.sparse_linear_weight_grad_into: out must be [in, out] = [", x.size(1), ", ", grad_out.size(1),
      "], got shape ", out.sizes());
  check_same(out, x, "sparse_linear_weight_grad_into: out", "x");
  TORCH_CHECK(out.is_contiguous(), "lipo_if.sparse_linear_weight_grad_into: out must be contiguous");
}

// A CSR matrix given as three tensors (lipo_if.ops.CsrMatrix): ptr [n_rows + 1] int64 (row i's
// entries are cols / vals[ptr[i] .. ptr[i+1])), cols [nnz] int64 column indices, vals [nnz] of
// `dtype_ref`'s dtype; and `rows` [B] int64, the rows an op reads. All on `dtype_ref`'s device.
// Index *values* are checked by the kernels where they read them.
inline void check_csr_rows_inputs(
    const char* op, const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& rows,
    const at::Tensor& dtype_ref, const char* ref_name) {
  TORCH_CHECK(ptr.dim() == 1 && ptr.size(0) >= 1, "lipo_if.", op, ": ptr must be 1-D [n_rows + 1], got shape ", ptr.sizes());
  TORCH_CHECK(cols.dim() == 1, "lipo_if.", op, ": cols must be 1-D [nnz], got shape ", cols.sizes());
  TORCH_CHECK(
      vals.dim() == 1 && vals.size(0) == cols.size(0), "lipo_if.", op, ": vals must be 1-D [nnz] = [", cols.size(0),
      "] like cols, got shape ", vals.sizes());
  TORCH_CHECK(rows.dim() == 1, "lipo_if.", op, ": rows must be 1-D [B], got shape ", rows.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{ptr, "ptr"}, {cols, "cols"}, {rows, "rows"}}) {
    TORCH_CHECK(t.scalar_type() == at::kLong, "lipo_if.", op, ": ", name, " must be int64, got ", t.scalar_type());
    TORCH_CHECK(
        t.device() == dtype_ref.device(), "lipo_if.", op, ": ", name, " is on device ", t.device(), " but ", ref_name,
        " is on device ", dtype_ref.device(), "; all inputs must be on one device");
  }
  check_float_dtype(dtype_ref, ref_name);
  check_same(vals, dtype_ref, "vals", ref_name);
}

// csr_linear: weight_t [in, out] (the transposed Linear weight), init [B, out] or None.
// dense_x [B, nd] (values of the dense columns of the minibatch rows) with dense_cols [nd] int64
// (distinct, in [0, in)) on ref's device: both or neither.
inline void check_dense_x(
    const char* op, const std::optional<at::Tensor>& dense_x, const std::optional<at::Tensor>& dense_cols,
    int64_t B, const at::Tensor& ref, const char* ref_name) {
  if (!dense_x.has_value()) return;
  TORCH_CHECK(dense_cols.has_value(), "lipo_if.", op, ": dense_x needs dense_cols (the columns it holds)");
  check_same(*dense_x, ref, (std::string(op) + ": dense_x").c_str(), ref_name);
  TORCH_CHECK(
      dense_x->dim() == 2 && dense_x->size(0) == B && dense_x->size(1) == dense_cols->size(0),
      "lipo_if.", op, ": dense_x must be [B, nd] = [", B, ", ", dense_cols->size(0), "], got shape ", dense_x->sizes());
}

// dense_cols as used by the kernels: a 1-D int64 tensor on ref's device, every entry in [0, in).
inline void check_dense_cols(const char* op, const at::Tensor& dense_cols, const at::Tensor& ref, int64_t in) {
  TORCH_CHECK(
      dense_cols.dim() == 1 && dense_cols.scalar_type() == at::kLong && dense_cols.device() == ref.device(),
      "lipo_if.", op, ": dense_cols must be a 1-D int64 tensor on the inputs' device, got ", dense_cols.scalar_type(),
      " of shape ", dense_cols.sizes(), " on ", dense_cols.device());
  if (dense_cols.numel() > 0 && dense_cols.device().is_cpu()) {
    const at::Tensor dc = dense_cols.contiguous();
    const int64_t* p = dc.data_ptr<int64_t>();
    for (int64_t k = 0; k < dc.numel(); ++k)
      TORCH_CHECK(p[k] >= 0 && p[k] < in, "lipo_if.", op, ": dense_cols[", k, "] = ", p[k], " is out of range [0, ", in, ")");
  }
}

inline void check_csr_linear_inputs(
    const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& rows,
    const at::Tensor& weight_t, const std::optional<at::Tensor>& init, const std::optional<at::Tensor>& dense_x,
    const std::optional<at::Tensor>& dense_cols) {
  TORCH_CHECK(weight_t.dim() == 2, "lipo_if.csr_linear: weight_t must be 2-D [in, out], got shape ", weight_t.sizes());
  check_csr_rows_inputs("csr_linear", ptr, cols, vals, rows, weight_t, "weight_t");
  if (init.has_value()) {
    check_same(*init, weight_t, "csr_linear: init", "weight_t");
    TORCH_CHECK(
        init->dim() == 2 && init->size(0) == rows.size(0) && init->size(1) == weight_t.size(1),
        "lipo_if.csr_linear: init must be [B, out] = [", rows.size(0), ", ", weight_t.size(1), "], got shape ",
        init->sizes());
  }
  TORCH_CHECK(
      dense_x.has_value() == dense_cols.has_value(), "lipo_if.csr_linear: dense_x and dense_cols go together (both or neither)");
  if (dense_cols.has_value()) check_dense_cols("csr_linear", *dense_cols, weight_t, weight_t.size(0));
  check_dense_x("csr_linear", dense_x, dense_cols, rows.size(0), weight_t, "weight_t");
}

// csr_lissa_update_: h (updated in place, contiguous) and v [in, out]; grad_out [B, out];
// dense_cols [nd] int64 and dense_grad [nd, out], both or neither; scale != 0.
inline void check_csr_lissa_update_inputs(
    const at::Tensor& h, const at::Tensor& v, const at::Tensor& ptr, const at::Tensor& cols, const at::Tensor& vals,
    const at::Tensor& rows, const at::Tensor& grad_out, const std::optional<at::Tensor>& dense_cols,
    const std::optional<at::Tensor>& dense_grad, double scale, const std::optional<at::Tensor>& dense_x) {
  const char* op = "csr_lissa_update_";
  TORCH_CHECK(h.dim() == 2, "lipo_if.csr_lissa_update_: h must be 2-D [in, out], got shape ", h.sizes());
  TORCH_CHECK(h.is_contiguous(), "lipo_if.csr_lissa_update_: h must be contiguous (it is updated in place)");
  check_csr_rows_inputs(op, ptr, cols, vals, rows, h, "h");
  check_same(v, h, "csr_lissa_update_: v", "h");
  check_same(grad_out, h, "csr_lissa_update_: grad_out", "h");
  TORCH_CHECK(v.sizes() == h.sizes(), "lipo_if.csr_lissa_update_: v must have the shape of h ", h.sizes(), ", got ", v.sizes());
  TORCH_CHECK(
      grad_out.dim() == 2 && grad_out.size(0) == rows.size(0) && grad_out.size(1) == h.size(1),
      "lipo_if.csr_lissa_update_: grad_out must be [B, out] = [", rows.size(0), ", ", h.size(1), "], got shape ",
      grad_out.sizes());
  TORCH_CHECK(
      !(dense_grad.has_value() && dense_x.has_value()),
      "lipo_if.csr_lissa_update_: give dense_grad or dense_x (it is computed from dense_x), not both");
  TORCH_CHECK(
      dense_cols.has_value() == (dense_grad.has_value() || dense_x.has_value()),
      "lipo_if.csr_lissa_update_: dense_cols goes with dense_grad or dense_x (both or neither)");
  if (dense_cols.has_value()) check_dense_cols(op, *dense_cols, h, h.size(0));
  check_dense_x(op, dense_x, dense_cols, rows.size(0), h, "h");
  if (dense_grad.has_value()) {
    check_same(*dense_grad, h, "csr_lissa_update_: dense_grad", "h");
    TORCH_CHECK(
        dense_grad->dim() == 2 && dense_grad->size(0) == dense_cols->size(0) && dense_grad->size(1) == h.size(1),
        "lipo_if.csr_lissa_update_: dense_grad must be [nd, out] = [", dense_cols->size(0), ", ", h.size(1),
        "], got shape ", dense_grad->sizes());
  }
  TORCH_CHECK(scale != 0.0, "lipo_if.csr_lissa_update_: scale must be non-zero");
}

}  // namespace lipo_if
