// The forward kernels shared by linear_strided (csrc/cpu/linear_strided.cpp) and linear_csr
// (csrc/cpu/linear_csr.cpp): y [n, out] (+)= X · wt for the CSR of a layer input X and the
// transposed weight wt [in, out] (contiguous rows over `out`), by scatter (few rows) or by the
// cache-blocked gather (many rows). See linear_strided.cpp for the algorithm.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "sparse_rows.h"

namespace lipo_if {
namespace linear {

// Up to this many rows the scatter forward / direct gradient are used (y or grad_out, n·out
// elements, stay in the 1 MiB L2 while the selected rows of Wᵀ stream past).
constexpr int64_t kDirectMaxRows = 256;

// Many rows. y[i, :] = init + Σ_t vals[t] · wt[cols[t], :] for the CSR rows of x, where init is
// the bias (accumulate = false) or y's current value (accumulate = true: the dense-column GEMM
// wrote it). Tasks: (output block, chunk of rows); a thread's consecutive tasks share the output
// block, so it packs each [in, kBlock] panel of wt once.
template <typename T>
void sparse_forward(
    const sparse::Csr<T>& csr, const T* wt, const T* bias, bool accumulate, T* y, int64_t n, int64_t in, int64_t out) {
  constexpr int64_t B = sparse::kBlock<T>;
  const int64_t n_blocks = (out + B - 1) / B;
  const int64_t n_chunks = (n + sparse::kChunkRows - 1) / sparse::kChunkRows;
  at::parallel_for(0, n_blocks * n_chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> panel(static_cast<size_t>(in * B));
    T bias_block[B], tmp[B], init_block[B];
    int64_t packed = -1;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t block = task / n_chunks, chunk = task % n_chunks;
      const int64_t o0 = block * B, width = std::min(B, out - o0);
      if (block != packed) {
        sparse::pack_panel(wt, in, out, o0, width, panel.data());
        if (bias != nullptr) sparse::pack_panel(bias, 1, out, o0, width, bias_block);
        packed = block;
      }
      const int64_t r0 = chunk * sparse::kChunkRows, r1 = std::min(n, r0 + sparse::kChunkRows);
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t begin = csr.ptr[static_cast<size_t>(i)], end = csr.ptr[static_cast<size_t>(i + 1)];
        T* row = y + i * out + o0;
        T* dst = width == B ? row : tmp;
        const T* init = bias != nullptr ? bias_block : nullptr;
        if (accumulate) {
          if (width == B) {
            init = row;
          } else {
            sparse::pack_panel(row, 1, out, 0, width, init_block);
            init = init_block;
          }
        }
        sparse::gather_axpy_block<T>(
            csr.cols.data() + begin, csr.vals.data() + begin, end - begin, panel.data(), B, init, dst);
        if (width != B) std::copy(tmp, tmp + width, row);
      }
    }
  });
}

// Few rows. y[i, :] += Σ_c x[i, c] · wt[c, :] over the CSR of x's sparse columns, y already holding
// the bias / dense-column part. Tasks own blocks of rows (sparse::scatter_rows_per_task): the
// block's entries are grouped by column and each selected row of wt is added into the rows of y
// that use it. (Measured: ahead of the packed gather up to a few hundred rows, behind it beyond.)
template <typename T>
void scatter_forward(const sparse::Csr<T>& csr, const T* wt, T* y, int64_t n, int64_t in, int64_t out) {
  const int64_t threads = static_cast<int64_t>(at::get_num_threads());
  if (n <= kDirectMaxRows && threads > 1) {
    // One block of rows, split over output columns: every selected row of wt is read once in all
    // (a part per thread) instead of once per thread.
    sparse::ColumnGroups<T> groups;
    sparse::group_by_column(csr, 0, n, in, groups);
    constexpr int64_t B = sparse::kBlock<T>;
    const int64_t cols = std::max<int64_t>(B, ((out + threads - 1) / threads + B - 1) / B * B);
    at::parallel_for(0, (out + cols - 1) / cols, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t task = t0; task < t1; ++task)
        sparse::scatter_add(groups, wt, out, task * cols, std::min(out, (task + 1) * cols), y);
    });
    return;
  }
  const int64_t rows = sparse::scatter_rows_per_task(n);
  at::parallel_for(0, (n + rows - 1) / rows, 1, [&](int64_t t0, int64_t t1) {
    sparse::ColumnGroups<T> groups;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t r0 = task * rows, r1 = std::min(n, r0 + rows);
      sparse::group_by_column(csr, r0, r1, in, groups);
      sparse::scatter_add(groups, wt, out, 0, out, y + r0 * out);
    }
  });
}

}  // namespace linear
}  // namespace lipo_if
