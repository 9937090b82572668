// Shared CPU machinery of the sparse-aware kernels (linear_strided, linear_weight_grad_strided,
// linear_grad_dot): the one-pass compression of a dense row-major matrix into a column split
// (mostly-non-zero columns, handled by BLAS) and the CSR of its other columns; a register-blocked
// "gather + axpy" micro-kernel (many rows) and a column-grouped scatter (few rows).
//
// Fingerprint inputs have ≈3 % of their bits set, so a row of the first layer's input has ≈60
// non-zero fingerprint columns out of 2,048 (plus ≈200 dense descriptor columns). Every product
// with the fingerprint part is done over its non-zeros only: y[o0:o0+B] = Σ_t vals[t] ·
// Wt[cols[t], o0:o0+B], with Wt = Wᵀ stored [in, out] so that each term reads a contiguous row
// segment. B is chosen so the accumulators fit in vector registers (4 registers per accumulator
// set, two sets for latency hiding; AVX-512 or AVX2+FMA, whichever the build targets).
#pragma once

#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <vector>

#include "../split_policy.h"

namespace lipo_if {
namespace sparse {

// Explicit SIMD for the micro-kernel (compilers do not keep the accumulators of a gathered axpy
// in registers on their own): AVX-512 or AVX2+FMA intrinsics when the build targets them
// (setup.py builds with -march=native), else plain scalar code.
template <typename T>
struct Simd;
#if defined(__AVX512F__)
template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int64_t L = 8;
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double a) { return _mm512_set1_pd(a); }
  static V zero() { return _mm512_setzero_pd(); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static bool any_nonzero(const double* p) { return _mm512_cmp_pd_mask(load(p), zero(), _CMP_NEQ_UQ) != 0; }
};
template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int64_t L = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V zero() { return _mm512_setzero_ps(); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static bool any_nonzero(const float* p) { return _mm512_cmp_ps_mask(load(p), zero(), _CMP_NEQ_UQ) != 0; }
};
#elif defined(__AVX2__) && defined(__FMA__)
template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int64_t L = 4;
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double a) { return _mm256_set1_pd(a); }
  static V zero() { return _mm256_setzero_pd(); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static bool any_nonzero(const double* p) { return _mm256_movemask_pd(_mm256_cmp_pd(load(p), zero(), _CMP_NEQ_UQ)) != 0; }
};
template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int64_t L = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V zero() { return _mm256_setzero_ps(); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static bool any_nonzero(const float* p) { return _mm256_movemask_ps(_mm256_cmp_ps(load(p), zero(), _CMP_NEQ_UQ)) != 0; }
};
#else
template <typename T>
struct Simd {
  using V = T;
  static constexpr int64_t L = 1;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V set1(T a) { return a; }
  static V zero() { return T(0); }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static bool any_nonzero(const T* p) { return *p != T(0); }
};
#endif

// Registers per accumulator set; output columns per register block = kVecs · L
// (32 doubles / 64 floats with AVX-512).
constexpr int64_t kVecs = 4;
template <typename T>
constexpr int64_t kBlock = kVecs * Simd<T>::L;

// Compressed sparse rows of a dense [n, in] matrix: row i's non-zeros are
// cols/vals[ptr[i] .. ptr[i+1]), in increasing column order (built by compress(), below).
template <typename T>
struct Csr {
  std::vector<int64_t> ptr;
  std::vector<int64_t> cols;
  std::vector<T> vals;
};

// The rows `rows[0 .. B)` of a CSR matrix given by raw arrays (ptr [n_rows + 1], cols / vals [nnz]),
// copied into a Csr of B rows (row b = row rows[b]; repeats allowed). Every index read is checked
// (row in range, ptr ordered and within nnz, column in [0, in)): the arrays come from Python.
template <typename T>
Csr<T> gather_csr_rows(
    const int64_t* ptr, const int64_t* cols, const T* vals, int64_t n_rows, int64_t nnz, const int64_t* rows, int64_t B,
    int64_t in) {
  Csr<T> out;
  out.ptr.assign(static_cast<size_t>(B + 1), 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = rows[b];
    TORCH_CHECK(r >= 0 && r < n_rows, "lipo_if: rows[", b, "] = ", r, " is out of range for a CSR matrix of ", n_rows, " rows");
    const int64_t begin = ptr[r], end = ptr[r + 1];
    TORCH_CHECK(
        begin >= 0 && begin <= end && end <= nnz, "lipo_if: malformed CSR ptr at row ", r, " (", begin, ", ", end,
        ") with nnz = ", nnz);
    out.ptr[static_cast<size_t>(b + 1)] = out.ptr[static_cast<size_t>(b)] + (end - begin);
  }
  out.cols.resize(static_cast<size_t>(out.ptr.back()));
  out.vals.resize(out.cols.size());
  for (int64_t b = 0; b < B; ++b) {
    const int64_t begin = ptr[rows[b]], len = ptr[rows[b] + 1] - begin;
    const size_t dst = static_cast<size_t>(out.ptr[static_cast<size_t>(b)]);
    for (int64_t t = 0; t < len; ++t) {
      const int64_t c = cols[begin + t];
      TORCH_CHECK(c >= 0 && c < in, "lipo_if: CSR column index ", c, " (row ", rows[b], ") is out of range [0, ", in, ")");
      out.cols[dst + static_cast<size_t>(t)] = c;
      out.vals[dst + static_cast<size_t>(t)] = vals[begin + t];
    }
  }
  return out;
}

// Compressed sparse columns of the same matrix (column c's entries: rows/vals[ptr[c] .. ptr[c+1])
// in increasing row order), by a counting sort of the CSR entries — deterministic.
template <typename T>
Csr<T> csr_to_csc(const Csr<T>& csr, int64_t n, int64_t in) {
  Csr<T> csc;  // ptr over columns, cols = row indices
  csc.ptr.assign(static_cast<size_t>(in + 1), 0);
  for (int64_t c : csr.cols) ++csc.ptr[static_cast<size_t>(c + 1)];
  for (int64_t c = 0; c < in; ++c) csc.ptr[static_cast<size_t>(c + 1)] += csc.ptr[static_cast<size_t>(c)];
  csc.cols.resize(csr.cols.size());
  csc.vals.resize(csr.vals.size());
  std::vector<int64_t> fill(csc.ptr.begin(), csc.ptr.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = csr.ptr[static_cast<size_t>(i)]; t < csr.ptr[static_cast<size_t>(i + 1)]; ++t) {
      const int64_t slot = fill[static_cast<size_t>(csr.cols[static_cast<size_t>(t)])]++;
      csc.cols[static_cast<size_t>(slot)] = i;
      csc.vals[static_cast<size_t>(slot)] = csr.vals[static_cast<size_t>(t)];
    }
  }
  return csc;
}

// y[0:B) = init[0:B) (or 0) + Σ_t vals[t] · w[idx[t] · ld + 0:B) for the full block width B =
// kBlock<T>. Two accumulator sets (even / odd t) keep two independent FMA chains per register.
template <typename T>
inline void gather_axpy_block(
    const int64_t* __restrict__ idx, const T* __restrict__ vals, int64_t nnz, const T* __restrict__ w, int64_t ld,
    const T* init, T* y) {  // init may be y itself (accumulate): it is read before y is written
  using S = Simd<T>;
  constexpr int64_t L = S::L;
  typename S::V acc0[kVecs], acc1[kVecs];
  for (int64_t k = 0; k < kVecs; ++k) {
    acc0[k] = init != nullptr ? S::load(init + k * L) : S::zero();
    acc1[k] = S::zero();
  }
  int64_t t = 0;
  for (; t + 2 <= nnz; t += 2) {
    const typename S::V a0 = S::set1(vals[t]), a1 = S::set1(vals[t + 1]);
    const T* w0 = w + idx[t] * ld;
    const T* w1 = w + idx[t + 1] * ld;
    for (int64_t k = 0; k < kVecs; ++k) {
      acc0[k] = S::fmadd(a0, S::load(w0 + k * L), acc0[k]);
      acc1[k] = S::fmadd(a1, S::load(w1 + k * L), acc1[k]);
    }
  }
  if (t < nnz) {
    const typename S::V a0 = S::set1(vals[t]);
    const T* w0 = w + idx[t] * ld;
    for (int64_t k = 0; k < kVecs; ++k) acc0[k] = S::fmadd(a0, S::load(w0 + k * L), acc0[k]);
  }
  for (int64_t k = 0; k < kVecs; ++k) S::store(y + k * L, S::add(acc0[k], acc1[k]));
}

// Fraction of non-zeros in up to kSampleRows evenly spaced rows: a cheap early test that lets
// clearly dense inputs (ReLU activations, ≈50 %) go to BLAS without a counting pass.
constexpr int64_t kSampleRows = 64;
template <typename T>
double sampled_density(const T* a, int64_t n, int64_t in) {
  if (n == 0 || in == 0) return 0.0;
  const int64_t rows = std::min(n, kSampleRows);
  int64_t nnz = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = a + (r * n / rows) * in;
    for (int64_t k = 0; k < in; ++k) nnz += (row[k] != T(0));
  }
  return static_cast<double>(nnz) / static_cast<double>(rows * in);
}

// Inputs whose sampled density exceeds this go straight to the dense path.
constexpr double kClearlyDense = 0.4;


struct ColumnSplit {
  std::vector<int64_t> dense_cols;  // increasing column indices handled by BLAS
  std::vector<uint8_t> is_dense;    // [in], 1 for the columns in dense_cols
  int64_t nnz = 0;                  // non-zeros of the whole matrix
  int64_t nnz_dense = 0;            // non-zeros in the dense columns
  bool empty() const { return dense_cols.empty(); }
  const uint8_t* skip() const { return dense_cols.empty() ? nullptr : is_dense.data(); }
  // Density of the columns left to the sparse kernels.
  double sparse_density(int64_t n, int64_t in) const {
    const int64_t cells = n * (in - static_cast<int64_t>(dense_cols.size()));
    return cells == 0 ? 0.0 : static_cast<double>(nnz - nnz_dense) / static_cast<double>(cells);
  }
};

// One pass over a contiguous [n, in] matrix that yields both the column split and the CSR of its
// sparse columns (what split_columns + count_csr + fill_csr give, reading the matrix once instead
// of three times: at a LiSSA minibatch these passes cost as much as the products). Rows are taken
// in fixed chunks of kCompressRows (independent of the thread count, so the result is too); each
// chunk collects all its non-zeros, skipping groups of Simd<T>::L zeros with one vector compare.
// Returns false — csr left empty — when the columns left after the split are denser than
// kSparseMaxDensity (the caller then takes its dense path).
constexpr int64_t kCompressRows = 64;

template <typename T>
bool compress(const T* a, int64_t n, int64_t in, double sampled, ColumnSplit& split, Csr<T>& csr) {
  split = ColumnSplit();
  split.is_dense.assign(static_cast<size_t>(in), 0);
  csr.ptr.assign(static_cast<size_t>(n + 1), 0);
  csr.cols.clear();
  csr.vals.clear();
  if (n == 0 || in == 0) return true;
  TORCH_CHECK(in <= INT32_MAX, "lipo_if: sparse kernels need fewer than 2^31 input columns, got ", in);
  struct Chunk {
    std::vector<int32_t> cols;
    std::vector<T> vals;
    std::vector<int64_t> row_end;  // per row of the chunk: end of its entries in cols / vals
  };
  const int64_t n_chunks = (n + kCompressRows - 1) / kCompressRows;
  std::vector<Chunk> chunks(static_cast<size_t>(n_chunks));
  std::vector<std::vector<int64_t>> col_counts(static_cast<size_t>(at::get_num_threads()));
  constexpr int64_t L = Simd<T>::L;
  // Room for the expected non-zeros of a chunk (`sampled` = the caller's sampled_density), so
  // that the vectors do not grow by repeated reallocation.
  const double expected = std::min(1.0, 1.25 * sampled + 0.01) * static_cast<double>(in);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<int64_t>& counts = col_counts[static_cast<size_t>(at::get_thread_num())];
    if (counts.empty()) counts.assign(static_cast<size_t>(in), 0);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      Chunk& out = chunks[static_cast<size_t>(chunk)];
      const int64_t r0 = chunk * kCompressRows, r1 = std::min(n, r0 + kCompressRows);
      const size_t reserve = static_cast<size_t>(expected * static_cast<double>(r1 - r0));
      out.cols.reserve(reserve);
      out.vals.reserve(reserve);
      out.row_end.reserve(static_cast<size_t>(r1 - r0));
      for (int64_t i = r0; i < r1; ++i) {
        const T* row = a + i * in;
        auto keep = [&](int64_t k) {
          if (row[k] != T(0)) {
            out.cols.push_back(static_cast<int32_t>(k));
            out.vals.push_back(row[k]);
            ++counts[static_cast<size_t>(k)];
          }
        };
        int64_t k = 0;
        for (; k + L <= in; k += L) {
          if (!Simd<T>::any_nonzero(row + k)) continue;
          for (int64_t j = 0; j < L; ++j) keep(k + j);
        }
        for (; k < in; ++k) keep(k);
        out.row_end.push_back(static_cast<int64_t>(out.cols.size()));
      }
    }
  });
  const double limit = kDenseColumnDensity * static_cast<double>(n);
  for (int64_t k = 0; k < in; ++k) {
    int64_t count = 0;
    for (const auto& counts : col_counts)
      if (!counts.empty()) count += counts[static_cast<size_t>(k)];
    split.nnz += count;
    if (n >= kMinRowsForSplit && static_cast<double>(count) > limit) {
      split.is_dense[static_cast<size_t>(k)] = 1;
      split.dense_cols.push_back(k);
      split.nnz_dense += count;
    }
  }
  if (split.sparse_density(n, in) > kSparseMaxDensity) return false;
  const uint8_t* dense = split.is_dense.data();
  // Kept entries per row, then the prefix sums, then the copy (both parallel over chunks).
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const Chunk& ch = chunks[static_cast<size_t>(chunk)];
      int64_t t = 0;
      for (size_t r = 0; r < ch.row_end.size(); ++r) {
        int64_t kept = 0;
        for (; t < ch.row_end[r]; ++t) kept += dense[ch.cols[static_cast<size_t>(t)]] == 0;
        csr.ptr[static_cast<size_t>(chunk * kCompressRows + static_cast<int64_t>(r) + 1)] = kept;
      }
    }
  });
  for (int64_t i = 0; i < n; ++i) csr.ptr[static_cast<size_t>(i + 1)] += csr.ptr[static_cast<size_t>(i)];
  csr.cols.resize(static_cast<size_t>(csr.ptr[static_cast<size_t>(n)]));
  csr.vals.resize(csr.cols.size());
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const Chunk& ch = chunks[static_cast<size_t>(chunk)];
      int64_t slot = csr.ptr[static_cast<size_t>(chunk * kCompressRows)];
      for (size_t t = 0; t < ch.cols.size(); ++t) {
        if (dense[ch.cols[t]]) continue;
        csr.cols[static_cast<size_t>(slot)] = ch.cols[t];
        csr.vals[static_cast<size_t>(slot)] = ch.vals[t];
        ++slot;
      }
    }
  });
  return true;
}

// True when the non-empty `cols` are one increasing contiguous range (the descriptor block).
inline bool is_range(const std::vector<int64_t>& cols) {
  if (cols.empty()) return false;
  for (size_t i = 1; i < cols.size(); ++i)
    if (cols[i] != cols[i - 1] + 1) return false;
  return true;
}

// `cols` as an int64 tensor (for index_select / index_copy_).
inline at::Tensor index_tensor(const std::vector<int64_t>& cols, const at::TensorOptions& like) {
  at::Tensor index = at::empty({static_cast<int64_t>(cols.size())}, like.dtype(at::kLong));
  std::copy(cols.begin(), cols.end(), index.data_ptr<int64_t>());
  return index;
}

// The slices t[cols] along `dim` (cols non-empty, in range): a narrow view when they are one
// increasing contiguous range, else an index_select copy.
inline at::Tensor take_indices(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& cols) {
  if (is_range(cols)) return t.narrow(dim, cols.front(), static_cast<int64_t>(cols.size()));
  return at::index_select(t, dim, index_tensor(cols, t.options()));
}

// The rows `index` (1-D int64 on CPU, entries in range, any order) of a matrix: take_indices.
inline at::Tensor rows_of(const at::Tensor& m, const at::Tensor& index) {
  const at::Tensor idx = index.contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  return take_indices(m, 0, std::vector<int64_t>(p, p + idx.numel()));
}

// Runs `streaming` (a memory-bound kernel) and `gemm` (a BLAS product) side by side, one per
// thread, when the pool has exactly two threads; otherwise one after the other, each with every
// thread. Why: on the 2-core dev box the streaming kernels of the LiSSA step (linear_csr, the
// fused update) are as fast on one core as on two — memory bandwidth bounds them — while the small
// dense-column GEMMs next to them are compute-bound: side by side, the GEMM is mostly hidden.
// Inside the parallel region nested at::parallel_for calls run inline and MKL runs sequentially.
// (Cutting the GEMM into chunks that either side takes when free was slower at every chunk size
// tried, 8–64 rows: the small GEMMs lose more than the balance wins.)
inline void run_side_by_side(const std::function<void()>& streaming, const std::function<void()>& gemm) {
  if (at::get_num_threads() == 2 && !at::in_parallel_region()) {
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) (task == 0 ? streaming : gemm)();
    });
  } else {
    streaming();
    gemm();
  }
}

// Software prefetch of a contiguous row (into L2): rows selected by a sparse input are a page
// apart, which the hardware stream prefetchers do not follow across.
template <typename T>
inline void prefetch_row(const T* row, int64_t len) {
  const char* p = reinterpret_cast<const char*>(row);
  const char* end = reinterpret_cast<const char*>(row + len);
  for (; p < end; p += 64) __builtin_prefetch(p, 0, 2);
}

// Rows per task of the scatter kernels: enough tasks for every thread, and few enough rows that
// a task's [rows, out] block of the output stays in L2 while the selected rows of the weight stream
// past (256 rows · 512 doubles = 1 MiB).
inline int64_t scatter_rows_per_task(int64_t n) {
  const int64_t threads = static_cast<int64_t>(at::get_num_threads());
  return std::max<int64_t>(8, std::min<int64_t>(256, (n + threads - 1) / threads));
}

// The entries of CSR rows [r0, r1) regrouped by column (counting sort; within a column, rows in
// increasing order): the active columns, the start of each one's entries in rows/vals.
template <typename T>
struct ColumnGroups {
  std::vector<int64_t> active;  // columns with at least one entry, increasing
  std::vector<int64_t> start;   // [active.size() + 1] offsets into rows / vals
  std::vector<int64_t> rows;    // row index relative to r0
  std::vector<T> vals;
  std::vector<int64_t> count;   // [in] scratch
};

template <typename T>
void group_by_column(const Csr<T>& csr, int64_t r0, int64_t r1, int64_t in, ColumnGroups<T>& groups) {
  const int64_t begin = csr.ptr[static_cast<size_t>(r0)], end = csr.ptr[static_cast<size_t>(r1)];
  groups.count.assign(static_cast<size_t>(in), 0);
  for (int64_t t = begin; t < end; ++t) ++groups.count[static_cast<size_t>(csr.cols[static_cast<size_t>(t)])];
  groups.active.clear();
  groups.start.assign(1, 0);
  for (int64_t c = 0; c < in; ++c) {
    const int64_t k = groups.count[static_cast<size_t>(c)];
    if (k == 0) continue;
    groups.count[static_cast<size_t>(c)] = groups.start.back();  // now: next free slot of column c
    groups.active.push_back(c);
    groups.start.push_back(groups.start.back() + k);
  }
  groups.rows.resize(static_cast<size_t>(end - begin));
  groups.vals.resize(static_cast<size_t>(end - begin));
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t t = csr.ptr[static_cast<size_t>(i)]; t < csr.ptr[static_cast<size_t>(i + 1)]; ++t) {
      const int64_t slot = groups.count[static_cast<size_t>(csr.cols[static_cast<size_t>(t)])]++;
      groups.rows[static_cast<size_t>(slot)] = i - r0;
      groups.vals[static_cast<size_t>(slot)] = csr.vals[static_cast<size_t>(t)];
    }
  }
}

// y[i, o0:o1) += Σ_{(i, v) in column c} v · wt[c, o0:o1) for the grouped rows (y = the first row
// of the group's block, row stride out). Each selected row segment of wt is read once, start to
// end (sequential reads within a page), and the one kAhead columns later is prefetched meanwhile;
// columns are visited in increasing order (a fixed summation order per element).
template <typename T>
void scatter_add(const ColumnGroups<T>& groups, const T* wt, int64_t out, int64_t o0, int64_t o1, T* y) {
  constexpr int64_t kAhead = 2;
  const int64_t count = static_cast<int64_t>(groups.active.size()), width = o1 - o0;
  for (int64_t a = 0; a < count; ++a) {
    if (a + kAhead < count) prefetch_row(wt + groups.active[static_cast<size_t>(a + kAhead)] * out + o0, width);
    const T* __restrict__ w = wt + groups.active[static_cast<size_t>(a)] * out + o0;
    for (int64_t t = groups.start[static_cast<size_t>(a)]; t < groups.start[static_cast<size_t>(a + 1)]; ++t) {
      const T v = groups.vals[static_cast<size_t>(t)];
      T* __restrict__ dst = y + groups.rows[static_cast<size_t>(t)] * out + o0;
      for (int64_t o = 0; o < width; ++o) dst[o] += v * w[o];
    }
  }
}

// Copies the column block m[:, o0 : o0 + width) of a row-major [rows, ld] matrix into a contiguous
// panel [rows, kBlock] (columns past `width` zero-filled). Gathering from the panel instead of from
// m itself matters: rows of m are often 4 KiB apart (out = 512 doubles), so the segments a sparse
// row selects would all map to the same few cache sets and evict each other.
template <typename T>
void pack_panel(const T* m, int64_t rows, int64_t ld, int64_t o0, int64_t width, T* panel) {
  constexpr int64_t B = kBlock<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = m + r * ld + o0;
    T* dst = panel + r * B;
    int64_t o = 0;
    for (; o < width; ++o) dst[o] = src[o];
    for (; o < B; ++o) dst[o] = T(0);
  }
}

// Parallel task grid over (output column block, chunk of kChunkRows rows), so that there is work
// for every thread even when out is small, while each task packs its panel once for many rows.
constexpr int64_t kChunkRows = 1024;

}  // namespace sparse
}  // namespace lipo_if
