// The per-level attention-scores kernel table: defined by attention_scores_kernels.cpp (once per SIMD level), driven
// by attention_scores.cpp, which hands each kernel plain pointers.
#pragma once

#include <cstdint>

#include "tokenset/attention_scores.h"
#include "tokenset/cpu_runtime.h"

namespace tokenset {
namespace cpu {

// Query rows per tile and keys per chunk: a worker holds one [64 x 256] score tile, never a row of N keys.
constexpr int64_t kScoresRowTile = 64;
constexpr int64_t kScoresKeyChunk = 256;

// Floats of one worker's scratch (the head dimension packed to a multiple of 16).
inline int64_t attention_scores_scratch_floats(int64_t dim) {
  const int64_t dp = (dim + 15) / 16 * 16, rt = kScoresRowTile, kc = kScoresKeyChunk;
  return 2 * rt * dp + kc * dp + kc * rt + kc * 16 + 8 * rt + 64;
}

// One (batch, query head) pair as the kernels see it: pointers at row 0 of the sequence, row strides in elements.
struct ScoresHeadView {
  DType dtype = DType::Float32;
  int64_t dim = 0;
  const void* q = nullptr;
  int64_t q_stride = 0;
  const void* k = nullptr;
  int64_t k_stride = 0;
  int64_t query_length = 0;
  int64_t key_length = 0;
  bool causal = false;
  float scale = 1.0f;
};

struct AttentionScoresKernel {
  // lse2[0..count): the log-sum-exp, in log2 units of scale * log2(e) * q . k, of query rows rows[0..count) (rows
  // null: row0 .. row0 + count - 1), count <= 64, over every key each sees; +inf for a row that sees no key or only
  // -inf scores (its probabilities are 0), NaN for a row with a NaN or +inf score.
  // keep: null, or [>= reach][64] floats receiving the tile's scores S^T (log2 units) of every key it sees, for
  // cached_column_sums.
  void (*row_lse)(const ScoresHeadView& head, const int64_t* rows, int64_t row0, int64_t count, float* lse2,
                  float* keep, float* scratch);
  // Probabilities of query rows rows[0..count) (any count; lse2 per row) for keys [key0, key0 + n), n <= 256:
  // dst[r * dst_stride + j - key0] = P (or += P when accumulate).
  void (*chunk_rows)(const ScoresHeadView& head, const int64_t* rows, int64_t count, const float* lse2, int64_t key0,
                     int64_t n, float* dst, int64_t dst_stride, bool accumulate, float* scratch);
  // Sums over every query row i (lse2[i]) of P[i, j] for keys [key0, key0 + n), n <= 256, rows in ascending order:
  // dst[j - key0] = sum (or += sum when accumulate).
  void (*chunk_column_sums)(const ScoresHeadView& head, const float* lse2, int64_t key0, int64_t n, float* dst,
                            bool accumulate, float* scratch);
  // The column mean's one-pass form: the probabilities of rows row0 .. row0 + count - 1 (count <= 64, lse2 per row)
  // from the scores row_lse kept in `cache`, added to col (one vector of W floats per key, keys 0 .. key_length).
  // Summed over the tiles in row order and reduced per key in lane order, it gives chunk_column_sums' bits.
  void (*cached_column_sums)(const ScoresHeadView& head, int64_t row0, int64_t count, const float* lse2, float* cache,
                             float* col, float* scratch);
  // dst[j] = (or +=) the lanes of col's vector j summed in lane order, j < n (col as cached_column_sums fills it,
  // zeroed by zero_columns).
  void (*reduce_columns)(const float* col, int64_t n, float* dst, bool accumulate);
  void (*zero_columns)(float* col, int64_t n);
};

// The one-pass column mean keeps a tile's scores of every key: used up to this many keys (4 MiB per worker).
constexpr int64_t kScoresCachedKeys = 16384;

TOKENSET_DECLARE_SIMD_KERNELS(AttentionScoresKernel, attention_scores_kernel)

}  // namespace cpu
}  // namespace tokenset
