// Operator registry of the lipo_if extension: the ONE place the schemas live.
//
// Kernels are registered per backend in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA) with
// TORCH_LIBRARY_IMPL, so the ops are reachable as torch.ops.lipo_if.* once this library is
// loaded. Fake (meta) kernels are registered from Python (lipo_if/ops.py, register_fake).
//
// The module-init function below only exists so that `import lipo_if._C` works (setuptools
// builds a Python extension module); the module itself is empty — loading it is what registers
// the operators.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(lipo_if, m) {
  // act [n, in], out_grad [n, out], vec_weight [k, out, in], vec_bias [k, out] or None -> [n, k]:
  // dot products of every sample's Linear-layer gradient with k parameter-shaped vectors.
  m.def(
      "linear_grad_dot(Tensor act, Tensor out_grad, Tensor vec_weight, Tensor? vec_bias) -> Tensor");
  // h, v, hvp: same shape -> (h_new = v + (1 - damping) h - hvp / scale, ||h_new - h||_2 as 0-dim).
  m.def(
      "lissa_step(Tensor h, Tensor v, Tensor hvp, float damping, float scale) -> (Tensor, Tensor)");
  // x [n, in], weight [out, in], bias [out] or None -> [n, out] = x weightᵀ + bias, computed over the
  // non-zero entries of x only (sparse fingerprint inputs of the first layer).
  m.def("sparse_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // x [n, in], grad_out [n, out] -> [in, out] = xᵀ grad_out: the *transposed* weight gradient of a
  // Linear layer with input x, over the non-zero entries of x only.
  m.def("sparse_linear_weight_grad(Tensor x, Tensor grad_out) -> Tensor");
  // The same written into a caller's contiguous [in, out] buffer (e.g. a block of a flat parameter
  // vector), saving an allocation and a copy per call in the LiSSA loop.
  m.def("sparse_linear_weight_grad_into(Tensor x, Tensor grad_out, Tensor(a!) out) -> ()");
  // Rows `rows` [B] of a CSR matrix X (ptr [n_rows + 1], cols [nnz] int64, vals [nnz]) times
  // weight_t [in, out], plus init [B, out] when given -> [B, out]: the first layer's forward over
  // training rows compressed once (lipo_if.ops.CsrMatrix), cost nnz(X[rows])·out.
  // With dense_x [B, nd] and dense_cols [nd]: plus dense_x · weight_t[dense_cols] (the dense columns'
  // part, a GEMM; on a 2-thread CPU pool it runs beside the sparse part).
  m.def(
      "csr_linear(Tensor ptr, Tensor cols, Tensor vals, Tensor rows, Tensor weight_t, Tensor? init, "
      "Tensor? dense_x=None, Tensor? dense_cols=None) -> Tensor");
  // x [n, in] -> (dense_cols [nd], ptr [n + 1], cols [nnz], vals [nnz]): the columns non-zero in more
  // than 30 % of the rows, and the CSR of the others (lipo_if.ops.csr_split; policy in
  // csrc/split_policy.h).
  m.def("csr_split(Tensor x) -> (Tensor, Tensor, Tensor, Tensor)");
  // LiSSA update of a first-layer block without forming its HVP block: with
  // G = X[rows]ᵀ grad_out + (dense_grad scattered to the rows dense_cols), in place
  //   h <- v + (1 - damping) h - G / scale   (h, v [in, out]; grad_out [B, out]; dense_grad [nd, out]),
  // returning float64 [2] = (||h_new - h||², ||h_new||²). dense_x [B, nd] instead of dense_grad:
  // dense_grad = dense_xᵀ grad_out is formed by the op (beside the other rows' update on a 2-thread CPU pool).
  m.def(
      "csr_lissa_update_(Tensor(a!) h, Tensor v, Tensor ptr, Tensor cols, Tensor vals, Tensor rows, Tensor grad_out, "
      "Tensor? dense_cols, Tensor? dense_grad, float damping, float scale, Tensor? dense_x=None) -> Tensor");
}

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define LIPO_IF_CONCAT_(a, b) a##b
#define LIPO_IF_CONCAT(a, b) LIPO_IF_CONCAT_(a, b)
#define LIPO_IF_STR_(a) #a
#define LIPO_IF_STR(a) LIPO_IF_STR_(a)

static PyModuleDef lipo_if_module = {
    PyModuleDef_HEAD_INIT,
    LIPO_IF_STR(TORCH_EXTENSION_NAME),
    "Compiled kernels of lipo_if; importing registers torch.ops.lipo_if.*.",
    -1,
    nullptr,
};

PyMODINIT_FUNC LIPO_IF_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  return PyModule_Create(&lipo_if_module);
}
