// Input validation shared by the CPU and CUDA kernels of lipo_if.
//
// Policy (documented in lipo_if/ops.py too): shapes, dtypes and devices must match exactly and
// raise a clear error otherwise; non-contiguous inputs are accepted and copied to a contiguous
// layout by the kernels (one copy, only when needed).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

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

}  // namespace lipo_if
