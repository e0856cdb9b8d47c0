// Greedy maximum coverage (MMTok): for every set, k columns of its coverage matrix C [rows, cols] picked one at a
// time, each the column with the largest gain
//     gain(j) = sum over rows r of max(0, C[r, j] - best[r]),   best[r] = max over picked columns c of C[r, c] (0 at first)
// Semantics (both devices; reference: tokenset/reference/coverage.py):
//   - a gain is summed in float32 over rows in row order (rows whose best already reaches their maximum add exactly
//     0 and are skipped: the fused update reads only rows that can still gain), so it is bit-identical on every SIMD
//     level, on the GPU and in the reference;
//   - NaN entries cover nothing (their term is 0, they never raise best);
//   - picked columns are never picked again; ties go to the lowest column; min(k, cols) picks, then -1.
#pragma once

#include "tokenset/common.h"

namespace tokenset {

struct CoverageParams {
  ArrayView matrix;                  // [B, R, N] float32, the last axis contiguous; set i uses [:rows_i, :cols_i]
  const int64_t* rows = nullptr;     // [B] valid rows per set (device memory on CUDA)
  const int64_t* host_rows = nullptr;
  const int64_t* cols = nullptr;     // [B] valid columns per set
  const int64_t* host_cols = nullptr;
  const int64_t* k = nullptr;        // [B] picks per set
  const int64_t* host_k = nullptr;
  int64_t max_k = 0;
  int64_t* indices = nullptr;        // [B, max_k]
  float* gains = nullptr;            // [B, max_k] or null: each pick's gain
};

inline void validate(const CoverageParams& p) {
  const ArrayView& m = p.matrix;
  TOKENSET_CHECK(m.ndim == 3 && m.dtype == DType::Float32, ValueError,
                 "coverage matrix must be 3-D float32 [B, rows, cols], got ", m.ndim, "-D ", dtype_name(m.dtype));
  TOKENSET_CHECK(m.shape[1] == 0 || m.shape[2] <= 1 || m.strides[2] == 1, ValueError,
                 "coverage matrix rows must be contiguous; try np.ascontiguousarray / .contiguous()");
  TOKENSET_CHECK(m.numel() == 0 || m.data, ValueError, "coverage matrix: null data pointer");
  TOKENSET_CHECK(p.max_k >= 0, ValueError, "max_k must be >= 0, got ", p.max_k);
  const int64_t b = m.shape[0];
  if (b == 0) return;
  TOKENSET_CHECK(p.host_rows && p.host_cols && p.host_k && p.rows && p.cols && p.k, ValueError,
                 "coverage: rows, cols and k arrays missing");
  TOKENSET_CHECK(p.max_k == 0 || p.indices, ValueError, "coverage: indices output missing");
  for (int64_t i = 0; i < b; ++i) {
    TOKENSET_CHECK(p.host_rows[i] >= 0 && p.host_rows[i] <= m.shape[1], ValueError, "rows[", i, "]=",
                   p.host_rows[i], " must be in 0..", m.shape[1]);
    TOKENSET_CHECK(p.host_cols[i] >= 0 && p.host_cols[i] <= m.shape[2], ValueError, "cols[", i, "]=",
                   p.host_cols[i], " must be in 0..", m.shape[2]);
    TOKENSET_CHECK(p.host_k[i] >= 1 && p.host_k[i] <= p.max_k, ValueError, "k[", i, "] must be in 1..", p.max_k,
                   ", got ", p.host_k[i]);
  }
}

// GPU: per row of the padded batch its best coverage so far and its maximum (B * R floats each), per column a
// picked flag (B * N bytes): smaller than the matrix.
inline int64_t workspace_bytes(const CoverageParams& p) {
  WorkspaceCarver carve;
  const int64_t rows = p.matrix.shape[0] * p.matrix.shape[1];
  carve.take<float>(rows);
  carve.take<float>(rows);
  carve.take<uint8_t>(p.matrix.shape[0] * p.matrix.shape[2]);
  return carve.used();
}

namespace cpu {
void coverage(const CoverageParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// One block per set: threads over columns sum their gains over rows in row order (the CPU's order), a block argmax
// per pick, then threads over rows raise best.
void coverage(const CoverageParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
