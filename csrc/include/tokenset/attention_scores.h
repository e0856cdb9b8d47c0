// Attention rows without the attention matrix: the softmax attention of chosen query rows over all keys, or the
// column mean over all query rows, from q and k (never the N x M matrix), per head or summed / averaged over heads.
//
//   P[b, h, i, j] = softmax_j(scale * q[b, h, i] . k[b, g(h), j])   over the keys j row i sees
//   rows:        out[b, h, r, j] = P[b, h, rows[b, r], j]
//   column mean: out[b, h, j]    = (1 / N_b) sum_i P[b, h, i, j]            (over all N_b query rows, as attn.mean(-2))
//   reduce:      none -> per head; sum / mean -> over the H query heads (out has one head)
//
// g(h) = h / (heads / kv_heads) (grouped-query attention). causal: row i sees key j only when j <= i + M_b - N_b
// (bottom-right aligned; j <= i when N_b == M_b). A row that sees no key, or whose visible scores are all -inf, is all
// zeros; a visible NaN or +inf score makes the row NaN over its visible keys. Hidden keys and keys past M_b are 0.
// The numpy reference is tokenset/reference/attention_scores.py.
//
// Layouts: q [B, H, N, d] or [total, H, d] with cu_seqlens (3-D, "varlen"); k [B, Hkv, M, d] or [total_k, Hkv, d].
// Elements contiguous along d. 4-D inputs may be right-padded: query_lengths / key_lengths (host, B entries) give the
// valid prefix of each sequence (null: all rows). out is float32, C-contiguous: rows [B, H', R, width], column mean
// [B, H', width] with H' = H (reduce none) or 1, width >= the longest key length; every element is written.
#pragma once

#include <algorithm>
#include <cmath>

#include "tokenset/common.h"
#include "tokenset/sparse_attention.h"  // AttentionTokens and the layout checks shared with sparse attention

namespace tokenset {

enum class ScoresReduce : int { None = 0, Sum = 1, Mean = 2 };

struct AttentionScoresParams {
  AttentionTokens q, k;
  ArrayView out;                         // float32, written
  int64_t batch = 0;
  const int64_t* query_lengths = nullptr;  // host, batch entries (4-D only) or null
  const int64_t* key_lengths = nullptr;    // host, batch entries (4-D only) or null
  int64_t query_lengths_count = 0, key_lengths_count = 0;
  const int64_t* rows = nullptr;         // host [batch, rows_per_batch] row numbers within each sequence; null: column mean
  int64_t rows_count = 0;
  int64_t rows_per_batch = 0;
  ScoresReduce reduce = ScoresReduce::None;
  bool causal = false;
  float scale = 0.0f;
  // CUDA: device copies of the host arrays above (made by Python from the same host arrays).
  const int64_t* device_rows = nullptr;
  const int64_t* device_cu_seqlens_q = nullptr;
  const int64_t* device_cu_seqlens_k = nullptr;
  const int64_t* device_query_lengths = nullptr;
  const int64_t* device_key_lengths = nullptr;

  bool column_mean() const { return rows == nullptr; }
  int64_t heads() const { return q.heads(); }
  int64_t kv_heads() const { return k.heads(); }
  int64_t out_heads() const { return reduce == ScoresReduce::None ? heads() : 1; }
  int64_t dim() const { return q.dim(); }
  int64_t query_length(int64_t b) const { return query_lengths ? query_lengths[b] : q.length(b); }
  int64_t key_length(int64_t b) const { return key_lengths ? key_lengths[b] : k.length(b); }
  // Query rows per (batch, head) the output holds: R, or 1 (the column mean).
  int64_t out_rows() const { return column_mean() ? 1 : rows_per_batch; }
  int64_t width() const { return out.shape[out.ndim - 1]; }
};

namespace detail {

inline void check_lengths(const int64_t* lengths, int64_t count, const char* name, int64_t batch, int64_t extent) {
  if (lengths == nullptr) return;
  TOKENSET_CHECK(count == batch, ValueError, name, " has ", count, " entries, expected one per sequence (", batch,
                 ")");
  for (int64_t b = 0; b < batch; ++b)
    TOKENSET_CHECK(lengths[b] >= 0 && lengths[b] <= extent, ValueError, name, "[", b, "]=", lengths[b],
                   " is outside 0..", extent, " (the padded length)");
}

}  // namespace detail

// Checks everything a kernel follows (shapes, devices, lengths, every row number, the output) before any is read.
inline void validate(const AttentionScoresParams& p) {
  TOKENSET_CHECK(p.batch >= 0, ValueError, "attention_scores: negative batch");
  detail::check_query_key(p.q, p.k, p.batch, "k");
  TOKENSET_CHECK(std::isfinite(p.scale), ValueError, "scale must be finite, got ", p.scale);
  const int reduce = static_cast<int>(p.reduce);
  TOKENSET_CHECK(reduce >= 0 && reduce <= 2, ValueError, "reduce must be none, sum or mean");
  if (p.q.varlen()) {
    TOKENSET_CHECK(p.query_lengths == nullptr && p.key_lengths == nullptr, ValueError, "lengths go with 4-D padded q "
                   "and k; 3-D inputs give them by cu_seqlens");
  } else {
    detail::check_lengths(p.query_lengths, p.query_lengths_count, "query lengths", p.batch, p.q.values.shape[2]);
    detail::check_lengths(p.key_lengths, p.key_lengths_count, "key lengths", p.batch, p.k.values.shape[2]);
  }
  int64_t longest = 0;
  for (int64_t b = 0; b < p.batch; ++b) longest = std::max(longest, p.key_length(b));
  const ArrayView& o = p.out;
  TOKENSET_CHECK(o.dtype == DType::Float32, TypeError, "out must be float32");
  TOKENSET_CHECK(o.device.type == p.q.values.device.type && o.device.index == p.q.values.device.index, ValueError,
                 "out is on another device than q");
  const int want_ndim = p.column_mean() ? 3 : 4;
  TOKENSET_CHECK(o.ndim == want_ndim, ValueError, "out must be ", want_ndim, "-D, got ", o.ndim, "-D");
  TOKENSET_CHECK(o.shape[0] == p.batch && o.shape[1] == p.out_heads() &&
                     (p.column_mean() || o.shape[2] == p.rows_per_batch) && o.shape[o.ndim - 1] >= longest,
                 ValueError, "out has the wrong shape for ", p.batch, " sequences, ", p.out_heads(), " heads, ",
                 p.out_rows(), " rows and ", longest, " keys");
  int64_t expect = 1;
  for (int a = o.ndim - 1; a >= 0 && o.numel() > 0; --a) {
    TOKENSET_CHECK(o.shape[a] <= 1 || o.strides[a] == expect, ValueError, "out must be C-contiguous");
    expect *= o.shape[a];
  }
  TOKENSET_CHECK(o.numel() == 0 || o.data != nullptr, ValueError, "out: null data pointer");
  if (p.column_mean()) return;
  // Compared by division: batch * rows_per_batch may overflow int64 for a hostile rows_per_batch.
  TOKENSET_CHECK(p.rows_per_batch >= 0 && p.rows_count >= 0 &&
                     (p.batch == 0 ? p.rows_count == 0
                                   : p.rows_count % p.batch == 0 && p.rows_count / p.batch == p.rows_per_batch),
                 ValueError, "rows must hold ", p.batch, " x ", p.rows_per_batch, " row numbers, got ", p.rows_count);
  TOKENSET_CHECK(p.rows_count == 0 || p.rows != nullptr, ValueError, "rows: null data pointer");
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t r = 0; r < p.rows_per_batch; ++r) {
      const int64_t row = p.rows[b * p.rows_per_batch + r];
      TOKENSET_CHECK(row >= 0 && row < p.query_length(b), ValueError, "row ", row, " is out of range for sequence ",
                     b, ", which has ", p.query_length(b), " query rows");
    }
}

// GPU workspace: one float32 log-sum-exp per (batch, head, row) the output needs (R rows, or every query row for the
// column mean).
inline int64_t workspace_bytes(const AttentionScoresParams& p) {
  int64_t rows = 0;
  if (p.column_mean()) {
    for (int64_t b = 0; b < p.batch; ++b) rows += p.query_length(b);
  } else {
    rows = p.batch * p.rows_per_batch;
  }
  WorkspaceCarver carve;
  carve.take<float>(rows * p.heads());
  carve.take<int64_t>(p.batch + 1);
  return carve.used();
}

namespace cpu {
void attention_scores(const AttentionScoresParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
void attention_scores(const AttentionScoresParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
