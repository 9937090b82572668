// Operator registry of the lipo_if extension: the ONE place the schemas live, and the one place
// the naming and layout convention is written down.
//
// Convention
// ----------
// * Names are operation_form (as torch_scatter's segment_sum_csr): the operation, then the form of
//   its sparse-aware input — `_strided`: a dense strided tensor whose zeros are skipped (per call,
//   on CPU: column split + compression); `_csr`: rows `rows` of a CSR matrix compressed once
//   (ptr, cols, vals; lipo_if.ops.CsrMatrix, built by split_csr). Ops whose inputs are plain dense
//   tensors (linear_grad_dot, lissa_step, lissa_step_update) carry no form suffix; a form that
//   changes the arguments of the same operation is an overload (lissa_step_update.csr), one that is
//   a different computation is its own op (linear_strided / linear_csr); linear_grad_dot.segment is
//   the same dot summed over row segments (indptr, torch_scatter's segment_csr convention). split_csr
//   is the conversion strided -> (dense columns, CSR), named by its output form like ATen's to_sparse_csr.
// * One weight layout for the first-layer ops: the transposed weight `weight_t` [in, out] (the
//   nn.Linear weight is weight_t.T), the layout the kernels read without a copy — rows contiguous
//   over `out` — and the layout of the weight gradients they return. (linear_grad_dot keeps its
//   public [k, out, in] vectors.)
// * ATen's out= and in-place rules: an op ending in `_` mutates its first argument and returns it;
//   a `.out` overload takes a keyword-only `Tensor(a!) out`, writes the result there and returns it
//   (PyTorch does not functionalize custom ops with an aliased output, so torch.compile / opcheck's
//   aot test take the functional overload; nothing in the package compiles these ops).
//   lissa_step_update mutates h and returns *other* tensors (its float64 sums of squares), so its name
//   has no trailing `_` — the style of ATen's native_batch_norm (mutates running_mean / running_var,
//   returns the normalized output and the saved statistics). Why not an in-place `lissa_step_(h, ...)
//   -> h` with a keyword output for the sums: the sums are a new [2] tensor per call that the caller
//   always wants (the LiSSA convergence test), and a mutable second output would make every call
//   site allocate and pass a buffer for it; the returned tensor is what the kernels produce anyway.
// * One LiSSA update family: lissa_step (public, functional: returns h_new and ‖h_new − h‖₂),
//   lissa_step_update (in place, hvp given) and lissa_step_update.csr (in place, the first layer's
//   weight block with its HVP block X[rows]ᵀ grad_out fused in, never formed).
// * Input checks: csrc/checks.h, once, for every op and both devices; messages name the argument
//   and the bad value ("lipo_if.<op>: <arg> must be ..., got ...").
// * Constants of the column split: lipo_if/split_policy.py, compiled in (csrc/split_policy.h) and
//   reported back as lipo_if._C.SPLIT_POLICY.
//
// Kernels are registered per backend in csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>.cu (CUDA) with
// TORCH_LIBRARY_IMPL; fake (meta) kernels and the pure-PyTorch twins (lipo_if/ops_reference.py, the
// same names) are reached from Python (lipo_if/ops.py). `import lipo_if` loads this library.
#include <Python.h>
#include <torch/library.h>

#include "split_policy.h"

TORCH_LIBRARY(lipo_if, m) {
  // act [n, in], out_grad [n, out], vec_weight [k, out, in], vec_bias [k, out] or None -> [n, k]:
  // dot products of every sample's Linear-layer gradient with k parameter-shaped vectors.
  m.def("linear_grad_dot(Tensor act, Tensor out_grad, Tensor vec_weight, Tensor? vec_bias) -> Tensor");
  // The same summed over row segments, indptr [S + 1] int64 (segment_csr's: 0, non-decreasing, n) -> [S, k]:
  // dot products of each segment's (molecule's) summed gradient with the k vectors, nothing formed.
  m.def(
      "linear_grad_dot.segment(Tensor act, Tensor out_grad, Tensor vec_weight, Tensor? vec_bias, Tensor indptr) "
      "-> Tensor");
  // h, v, hvp: same shape -> (h_new = v + (1 - damping) h - hvp / scale, ||h_new - h||_2 as 0-dim).
  m.def("lissa_step(Tensor h, Tensor v, Tensor hvp, float damping, float scale) -> (Tensor, Tensor)");
  // In place: h <- v + (1 - damping) h - hvp / scale (h contiguous; v, hvp of h's shape), returning
  // float64 [2] = (||h_new - h||², ||h_new||²).
  m.def("lissa_step_update(Tensor(a!) h, Tensor v, Tensor hvp, float damping, float scale) -> Tensor");
  // The same for a first-layer block h, v [in, out] with hvp = G = X[rows]ᵀ grad_out (+ dense_grad
  // scattered to the rows dense_cols), G never formed: X given as CSR (ptr [n_rows + 1], cols [nnz]
  // int64, vals [nnz]), rows [B] int64, grad_out [B, out]; dense_cols [nd] distinct int64 with
  // dense_grad [nd, out], or with dense_x [B, nd] (then dense_grad = dense_xᵀ grad_out is formed
  // by the op, beside the other rows' update on a 2-thread CPU pool).
  m.def(
      "lissa_step_update.csr(Tensor(a!) h, Tensor v, Tensor ptr, Tensor cols, Tensor vals, Tensor rows, "
      "Tensor grad_out, float damping, float scale, Tensor? dense_cols=None, Tensor? dense_grad=None, "
      "Tensor? dense_x=None) -> Tensor");
  // x [n, in], weight_t [in, out], bias [out] or None -> [n, out] = x weight_t + bias, over the
  // non-zero entries of x only (sparse fingerprint inputs of the first layer).
  m.def("linear_strided(Tensor x, Tensor weight_t, Tensor? bias=None) -> Tensor");
  // x [n, in], grad_out [n, out] -> [in, out] = xᵀ grad_out (the weight gradient in the weight_t
  // layout) over the non-zero entries of x; .out writes it into a contiguous [in, out] buffer.
  m.def("linear_weight_grad_strided(Tensor x, Tensor grad_out) -> Tensor");
  m.def("linear_weight_grad_strided.out(Tensor x, Tensor grad_out, *, Tensor(a!) out) -> Tensor(a!)");
  // Rows `rows` [B] of a CSR matrix X times weight_t [in, out], plus init [B, out] when given, plus
  // dense_x [B, nd] · weight_t[dense_cols] when given -> [B, out] (cost nnz(X[rows])·out + the GEMM).
  m.def(
      "linear_csr(Tensor ptr, Tensor cols, Tensor vals, Tensor rows, Tensor weight_t, Tensor? init=None, "
      "Tensor? dense_cols=None, Tensor? dense_x=None) -> Tensor");
  // x [n, in] -> (dense_cols [nd], ptr [n + 1], cols [nnz], vals [nnz]): the columns non-zero in
  // more than DENSE_COLUMN_DENSITY of the rows, and the CSR of the others (lipo_if/split_policy.py).
  m.def("split_csr(Tensor x) -> (Tensor, Tensor, Tensor, Tensor)");
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
    "Compiled kernels of lipo_if; importing registers torch.ops.lipo_if.*. SPLIT_POLICY: the column "
    "split constants the kernels were compiled with (lipo_if/split_policy.py).",
    -1,
    nullptr,
};

PyMODINIT_FUNC LIPO_IF_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  PyObject* module = PyModule_Create(&lipo_if_module);
  if (module == nullptr) return nullptr;
  PyObject* policy = Py_BuildValue(
      "{s:d,s:L,s:d}", "DENSE_COLUMN_DENSITY", lipo_if::sparse::kDenseColumnDensity, "MIN_ROWS_FOR_SPLIT",
      static_cast<long long>(lipo_if::sparse::kMinRowsForSplit), "SPARSE_MAX_DENSITY", lipo_if::sparse::kSparseMaxDensity);
  if (policy == nullptr || PyModule_AddObject(module, "SPLIT_POLICY", policy) < 0) {
    Py_XDECREF(policy);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
