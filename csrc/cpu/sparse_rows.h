// Shared CPU machinery of the sparse-aware kernels (sparse_linear, sparse_linear_weight_grad,
// linear_grad_dot): compressed views of the non-zero entries of a dense row-major matrix and a
// register-blocked "gather + axpy" micro-kernel.
//
// Fingerprint inputs have ≈3 % of their bits set, so a row of the first layer's input has a few
// hundred non-zeros out of 2,248 columns. Every product with such a row is done over its
// non-zeros only: y[o0:o0+B] = Σ_t vals[t] · Wt[cols[t], o0:o0+B], with Wt = Wᵀ stored [in, out]
// so that each term reads a contiguous row segment. B is chosen so the accumulators fit in
// vector registers (4 AVX-512 registers per accumulator set, two sets for latency hiding).
#pragma once

#include <ATen/Parallel.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

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
};
#endif

// Registers per accumulator set; output columns per register block = kVecs · L
// (32 doubles / 64 floats with AVX-512).
constexpr int64_t kVecs = 4;
template <typename T>
constexpr int64_t kBlock = kVecs * Simd<T>::L;

// Rows with a fraction of non-zeros above this use a dense BLAS path instead (measured on the
// 2-core AVX-512 dev box: the gather kernel wins clearly below ≈15 %; see benchmarks/RESULTS.md).
constexpr double kSparseMaxDensity = 0.15;

// Number of non-zero entries of a contiguous [n, in] matrix.
template <typename T>
int64_t count_nonzero(const T* a, int64_t n, int64_t in) {
  if (n == 0 || in == 0) return 0;
  return at::parallel_reduce(
      0, n, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in)), int64_t{0},
      [&](int64_t r0, int64_t r1, int64_t acc) {
        for (int64_t e = r0 * in; e < r1 * in; ++e) acc += (a[e] != T(0));
        return acc;
      },
      std::plus<int64_t>());
}

// Compressed sparse rows of a dense [n, in] matrix: row i's non-zeros are
// cols/vals[ptr[i] .. ptr[i+1]), in increasing column order. Built in two parallel passes.
template <typename T>
struct Csr {
  std::vector<int64_t> ptr;
  std::vector<int64_t> cols;
  std::vector<T> vals;
};

// Counts the non-zeros of every row into csr.ptr (prefix-summed) and returns their total; then
// fill_csr writes cols/vals. Split so that callers can look at the density (the total) first and
// take a dense path without paying for the fill.
template <typename T>
int64_t count_csr(const T* a, int64_t n, int64_t in, Csr<T>& csr) {
  csr.ptr.assign(static_cast<size_t>(n + 1), 0);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = a + i * in;
      int64_t c = 0;
      for (int64_t k = 0; k < in; ++k) c += (row[k] != T(0));
      csr.ptr[static_cast<size_t>(i + 1)] = c;
    }
  });
  for (int64_t i = 0; i < n; ++i) csr.ptr[static_cast<size_t>(i + 1)] += csr.ptr[static_cast<size_t>(i)];
  return csr.ptr[static_cast<size_t>(n)];
}

template <typename T>
void fill_csr(const T* a, int64_t n, int64_t in, Csr<T>& csr) {
  const int64_t nnz = csr.ptr[static_cast<size_t>(n)];
  csr.cols.resize(static_cast<size_t>(nnz));
  csr.vals.resize(static_cast<size_t>(nnz));
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, in));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = a + i * in;
      const int64_t begin = csr.ptr[static_cast<size_t>(i)], end = csr.ptr[static_cast<size_t>(i + 1)];
      if (begin == end) continue;
      int64_t* cols = csr.cols.data() + begin;
      T* vals = csr.vals.data() + begin;
      const int64_t count = end - begin;
      int64_t t = 0;
      for (int64_t k = 0; k < in && t < count; ++k) {
        // Branch-free compaction: always write, advance only on a non-zero (a zero's slot is
        // overwritten by the next non-zero); t < count keeps every write inside this row.
        const T v = row[k];
        cols[t] = k;
        vals[t] = v;
        t += (v != T(0));
      }
    }
  });
}

template <typename T>
Csr<T> build_csr(const T* a, int64_t n, int64_t in) {
  Csr<T> csr;
  count_csr(a, n, in, csr);
  fill_csr(a, n, in, csr);
  return csr;
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
    const T* __restrict__ init, T* __restrict__ y) {
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
