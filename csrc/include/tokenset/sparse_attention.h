// Sparse attention over index lists: every (batch, query head, query block) attends only to the keys its CSR list
// names, with an online softmax (no gathered copy of K / V, no score matrix), forward and backward.
//
//   out[b, h, i] = sum_j softmax_j(scale * q[b, h, i] . k[b, g(h), j]) v[b, g(h), j]   over the listed keys j
//
// g(h) = h / (heads / kv_heads) (grouped-query attention). Query block qb of batch b is rows
// [qb * block_size, min((qb + 1) * block_size, N_b)); list number
//   list(b, h, qb) = sum_{b' < b} heads * ceil(N_b' / block_size) + h * ceil(N_b / block_size) + qb
// is key_index[key_offsets[list] : key_offsets[list + 1]], key block numbers in strictly increasing order; key block kb
// is keys [kb * key_block_size, min((kb + 1) * key_block_size, M_b)) (key_block_size 1: single key columns,
// "stripes"). causal: query i sees key j only when j <= i + M_b - N_b (bottom-right aligned, as flash-attention; the
// usual j <= i when N_b == M_b). A row that sees no key gets zeros and lse = -inf (SDPA's fully masked row).
// The numpy reference is tokenset/reference/sparse_attention.py.
//
// Layouts: q, out, grad_out, grad_q are [B, H, N, d] (4-D) or [total, H, d] with cu_seqlens_q (3-D, "varlen");
// k, v, grad_k, grad_v are [B, Hkv, M, d] or [total_k, Hkv, d] with cu_seqlens_k. Elements contiguous along d.
// lse is float32 [B, H, N] (4-D) or [H, total] (3-D), natural log of sum_j exp(scale * q . k_j).
//
// row_map (internal, routing attention): a logical position -> physical row table shared by queries and keys (self
// attention over one grid): query blocks, key blocks and causal order use logical positions 0 .. row_map_length-1,
// rows are read and written at row_map[i]; -1 = no token (never a query, never a key). Entries other than -1 are
// distinct and below N = M.
#pragma once

#include <cmath>
#include <vector>

#include "tokenset/common.h"

namespace tokenset {

// One [B, heads, N, d] or [total, heads, d] array and, for the second, its per-batch row offsets (host, checked).
struct AttentionTokens {
  ArrayView values;
  const int64_t* cu_seqlens = nullptr;  // host: batch + 1 entries (3-D only)
  int64_t cu_seqlens_count = 0;          // entries in cu_seqlens (checked against batch + 1 before any is read)

  bool varlen() const { return values.ndim == 3; }
  int64_t heads() const { return values.shape[1]; }
  int64_t dim() const { return values.shape[values.ndim - 1]; }
  int64_t row_stride() const { return values.strides[varlen() ? 0 : 2]; }
  int64_t head_stride() const { return values.strides[1]; }
  int64_t length(int64_t b) const { return varlen() ? cu_seqlens[b + 1] - cu_seqlens[b] : values.shape[2]; }
  // Element offset of (batch b, head h, row 0).
  int64_t origin(int64_t b, int64_t h) const {
    return varlen() ? cu_seqlens[b] * values.strides[0] + h * values.strides[1]
                    : b * values.strides[0] + h * values.strides[1];
  }
  // Address of (batch b, head h, row 0).
  const char* address(int64_t b, int64_t h) const {
    return static_cast<const char*>(values.data) + origin(b, h) * static_cast<int64_t>(dtype_size(values.dtype));
  }
};

struct SparseAttentionParams {
  AttentionTokens q, k, v;
  AttentionTokens out;       // written (forward)
  float* lse = nullptr;      // written by the forward when not null; read by the backward
  int64_t batch = 0;
  const int64_t* key_offsets = nullptr;  // host: lists + 1 entries, non-decreasing, within key_index
  int64_t key_offsets_count = 0;
  const int64_t* key_index = nullptr;    // host
  int64_t key_index_count = 0;
  int64_t block_size = 64;
  int64_t key_block_size = 64;
  bool causal = false;
  float scale = 0.0f;
  const int64_t* row_map = nullptr;  // host, row_map_length entries, or null
  int64_t row_map_length = 0;
  // CUDA: device copies of key_offsets, key_index, row_map, cu_seqlens (made by Python from the same host arrays).
  const int64_t* device_key_offsets = nullptr;
  const int64_t* device_key_index = nullptr;
  const int64_t* device_row_map = nullptr;
  const int64_t* device_cu_seqlens_q = nullptr;
  const int64_t* device_cu_seqlens_k = nullptr;

  int64_t heads() const { return q.heads(); }
  int64_t kv_heads() const { return k.heads(); }
  int64_t dim() const { return q.dim(); }
  // Logical lengths (the row map's when there is one).
  int64_t query_length(int64_t b) const { return row_map ? row_map_length : q.length(b); }
  int64_t key_length(int64_t b) const { return row_map ? row_map_length : k.length(b); }
  int64_t query_blocks(int64_t b) const { return (query_length(b) + block_size - 1) / block_size; }
  int64_t key_blocks(int64_t b) const { return (key_length(b) + key_block_size - 1) / key_block_size; }
  // lse element of (b, h, physical row 0) and the distance between rows.
  int64_t lse_origin(int64_t b, int64_t h) const {
    return q.varlen() ? h * q.values.shape[0] + q.cu_seqlens[b] : (b * heads() + h) * q.values.shape[2];
  }
};

struct SparseAttentionBackwardParams {
  SparseAttentionParams forward;  // q, k, v, out and lse (all read)
  AttentionTokens grad_out;       // read
  AttentionTokens grad_q, grad_k, grad_v;  // written
};

// The number of lists the layout needs.
inline int64_t sparse_attention_lists(const SparseAttentionParams& p) {
  int64_t lists = 0;
  for (int64_t b = 0; b < p.batch; ++b) lists += p.heads() * p.query_blocks(b);
  return lists;
}

namespace detail {

inline void check_attention_tokens(const AttentionTokens& t, const char* name, int64_t batch, int64_t total_rows) {
  const ArrayView& v = t.values;
  TOKENSET_CHECK(is_float_dtype(v.dtype), TypeError, name, ": dtype ", dtype_name(v.dtype),
                 " is not supported; attention takes float32, float16 or bfloat16");
  TOKENSET_CHECK(v.ndim == 3 || v.ndim == 4, ValueError, name, " must be [batch, heads, length, dim] or [total, heads, "
                 "dim] with cu_seqlens, got ", v.ndim, "-D");
  for (int a = 0; a < v.ndim; ++a) TOKENSET_CHECK(v.shape[a] >= 0, ValueError, name, ": negative extent");
  TOKENSET_CHECK(v.numel() == 0 || v.shape[v.ndim - 1] == 1 || v.strides[v.ndim - 1] == 1, ValueError, name,
                 " must be contiguous along the head dimension; try .contiguous() / np.ascontiguousarray");
  TOKENSET_CHECK(v.numel() == 0 || v.data != nullptr, ValueError, name, ": null data pointer");
  if (v.ndim == 4) {
    TOKENSET_CHECK(v.shape[0] == batch, ValueError, name, " has batch ", v.shape[0], ", expected ", batch);
    TOKENSET_CHECK(t.cu_seqlens == nullptr, ValueError, name, ": cu_seqlens only go with the 3-D [total, heads, dim] "
                   "form");
    return;
  }
  TOKENSET_CHECK(t.cu_seqlens != nullptr, ValueError, name, " is 3-D [total, heads, dim]: cu_seqlens are needed");
  TOKENSET_CHECK(t.cu_seqlens_count == batch + 1, ValueError, name, ": cu_seqlens has ", t.cu_seqlens_count,
                 " entries, expected batch + 1 = ", batch + 1);
  TOKENSET_CHECK(t.cu_seqlens[0] >= 0, ValueError, name, ": cu_seqlens[0] is negative");
  for (int64_t b = 0; b < batch; ++b)
    TOKENSET_CHECK(t.cu_seqlens[b + 1] >= t.cu_seqlens[b], ValueError, name, ": cu_seqlens must be non-decreasing, "
                   "but cu_seqlens[", b + 1, "]=", t.cu_seqlens[b + 1], " < cu_seqlens[", b, "]=", t.cu_seqlens[b]);
  TOKENSET_CHECK(t.cu_seqlens[batch] <= total_rows, ValueError, name, ": cu_seqlens[-1]=", t.cu_seqlens[batch],
                 " exceeds its ", total_rows, " rows");
}

// `other` must have the layout of `like` (same shape; both varlen with the same cu_seqlens, or both 4-D).
inline void check_same_layout(const AttentionTokens& other, const AttentionTokens& like, const char* name,
                              const char* like_name, int64_t batch, bool same_dtype = true) {
  check_attention_tokens(other, name, batch, other.values.ndim == 3 ? other.values.shape[0] : 0);
  TOKENSET_CHECK(other.values.ndim == like.values.ndim, ValueError, name, " must have the layout of ", like_name);
  for (int a = 0; a < like.values.ndim; ++a)
    TOKENSET_CHECK(other.values.shape[a] == like.values.shape[a], ValueError, name, " must have the shape of ",
                   like_name, " (axis ", a, ": ", other.values.shape[a], " vs ", like.values.shape[a], ")");
  if (like.varlen())
    for (int64_t b = 0; b <= batch && other.cu_seqlens_count == batch + 1; ++b)
      TOKENSET_CHECK(other.cu_seqlens[b] == like.cu_seqlens[b], ValueError, name, " must use the cu_seqlens of ",
                     like_name);
  if (same_dtype)
    TOKENSET_CHECK(other.values.dtype == like.values.dtype, TypeError, name, " must have the dtype of ", like_name,
                   " (", dtype_name(like.values.dtype), "), got ", dtype_name(other.values.dtype));
  TOKENSET_CHECK(other.values.device.type == like.values.device.type &&
                     other.values.device.index == like.values.device.index,
                 ValueError, name, " is on another device than ", like_name);
}

// q and k of one attention call: one layout (4-D or varlen), checked rows, one dtype, one device, one head dimension
// (1..1024), query heads a positive multiple of the key heads. `k_name` names the key side in the messages.
inline void check_query_key(const AttentionTokens& q, const AttentionTokens& k, int64_t batch, const char* k_name) {
  TOKENSET_CHECK(q.values.ndim == k.values.ndim, ValueError, "q and k must both be 4-D [batch, heads, length, dim] "
                 "or both 3-D [total, heads, dim] with cu_seqlens");
  check_attention_tokens(q, "q", batch, q.values.ndim == 3 ? q.values.shape[0] : 0);
  check_attention_tokens(k, "k", batch, k.values.ndim == 3 ? k.values.shape[0] : 0);
  TOKENSET_CHECK(q.values.dtype == k.values.dtype, TypeError, "q and k must have one dtype, got ",
                 dtype_name(q.values.dtype), " and ", dtype_name(k.values.dtype));
  TOKENSET_CHECK(q.values.device.type == k.values.device.type && q.values.device.index == k.values.device.index,
                 ValueError, "q and k are on different devices");
  TOKENSET_CHECK(q.dim() == k.dim(), ValueError, "q has head dimension ", q.dim(), " and k ", k.dim(),
                 "; they must match");
  TOKENSET_CHECK(q.dim() >= 1 && q.dim() <= 1024, ValueError, "head dimension must be in 1..1024, got ", q.dim());
  TOKENSET_CHECK(k.heads() >= 1 && q.heads() >= 1 && q.heads() % k.heads() == 0, ValueError, "q has ", q.heads(),
                 " heads and ", k_name, " ", k.heads(), ": the query heads must be a positive multiple of the key "
                 "heads (grouped-query attention)");
}

}  // namespace detail

// Checks everything a kernel follows (shapes, devices, cu_seqlens, every list and its entries, the row map) from the
// host copies, before any kernel reads memory.
inline void validate(const SparseAttentionParams& p) {
  TOKENSET_CHECK(p.batch >= 0, ValueError, "sparse_attention: negative batch");
  detail::check_query_key(p.q, p.k, p.batch, "k / v");
  detail::check_same_layout(p.v, p.k, "v", "k", p.batch);
  detail::check_same_layout(p.out, p.q, "out", "q", p.batch);
  TOKENSET_CHECK(p.block_size >= 1 && p.block_size <= (int64_t(1) << 20), ValueError,
                 "block_size must be in 1..2^20, got ", p.block_size);
  TOKENSET_CHECK(p.key_block_size >= 1 && p.key_block_size <= (int64_t(1) << 20), ValueError,
                 "key_block_size must be in 1..2^20, got ", p.key_block_size);
  TOKENSET_CHECK(std::isfinite(p.scale), ValueError, "scale must be finite, got ", p.scale);
  if (p.row_map) {
    TOKENSET_CHECK(!p.q.varlen(), ValueError, "a row map goes with the 4-D layout only");
    const int64_t n = p.q.values.shape[2];
    TOKENSET_CHECK(p.k.values.shape[2] == n, ValueError, "a row map needs as many keys as queries");
    TOKENSET_CHECK(p.row_map_length >= 0, ValueError, "row map: negative length");
    std::vector<char> seen(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < p.row_map_length; ++i) {
      const int64_t r = p.row_map[i];
      if (r == -1) continue;
      TOKENSET_CHECK(r >= 0 && r < n, ValueError, "row map entry ", i, " = ", r, " is outside 0..", n - 1);
      TOKENSET_CHECK(!seen[r], ValueError, "row map: row ", r, " appears twice");
      seen[r] = 1;
    }
  }
  const int64_t lists = sparse_attention_lists(p);
  TOKENSET_CHECK(p.key_offsets != nullptr && p.key_offsets_count == lists + 1, ValueError, "key_offsets must have ",
                 lists + 1, " entries (batch x heads x ceil(N / block_size) lists + 1), got ", p.key_offsets_count);
  TOKENSET_CHECK(p.key_offsets[0] >= 0, ValueError, "key_offsets[0] is negative (", p.key_offsets[0], ")");
  TOKENSET_CHECK(p.key_offsets[lists] <= p.key_index_count, ValueError, "key_offsets[-1]=", p.key_offsets[lists],
                 " exceeds the ", p.key_index_count, " entries of key_index");
  TOKENSET_CHECK(p.key_index_count == 0 || p.key_index != nullptr, ValueError, "key_index: null data pointer");
  int64_t list = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t blocks = p.key_blocks(b), qblocks = p.query_blocks(b);
    for (int64_t h = 0; h < p.heads(); ++h)
      for (int64_t qb = 0; qb < qblocks; ++qb, ++list) {
        const int64_t begin = p.key_offsets[list], end = p.key_offsets[list + 1];
        TOKENSET_CHECK(end >= begin, ValueError, "key_offsets must be non-decreasing, but key_offsets[", list + 1,
                       "]=", end, " < key_offsets[", list, "]=", begin);
        int64_t previous = -1;
        for (int64_t e = begin; e < end; ++e) {
          const int64_t kb = p.key_index[e];
          TOKENSET_CHECK(kb >= 0 && kb < blocks, ValueError, "list ", list, " (batch ", b, ", head ", h,
                         ", query block ", qb, "): key block ", kb, " is out of range; the keys have ", blocks,
                         " blocks of key_block_size ", p.key_block_size);
          TOKENSET_CHECK(kb > previous, ValueError, "list ", list, " (batch ", b, ", head ", h, ", query block ", qb,
                         "): key blocks must be strictly increasing (sorted, no duplicates), but ", kb, " follows ",
                         previous, "; sort each list (np.unique does both)");
          previous = kb;
        }
      }
  }
}

inline void validate(const SparseAttentionBackwardParams& p) {
  validate(p.forward);
  const SparseAttentionParams& f = p.forward;
  TOKENSET_CHECK(f.lse != nullptr, ValueError, "the backward needs the forward's log-sum-exp");
  detail::check_same_layout(p.grad_out, f.q, "grad_out", "q", f.batch, false);
  TOKENSET_CHECK(p.grad_out.values.dtype == f.q.values.dtype, TypeError, "grad_out must have the dtype of q");
  detail::check_same_layout(p.grad_q, f.q, "grad_q", "q", f.batch);
  detail::check_same_layout(p.grad_k, f.k, "grad_k", "k", f.batch);
  detail::check_same_layout(p.grad_v, f.k, "grad_v", "k", f.batch);
}

// GPU workspace: the lists' per-batch bases (int64, batch + 1) and, for the backward, float32 grad_k / grad_v
// accumulators of k's size (one float per element of k).
inline int64_t workspace_bytes(const SparseAttentionParams& p) {
  WorkspaceCarver carve;
  carve.take<int64_t>(p.batch + 1);
  return carve.used();
}
inline int64_t workspace_bytes(const SparseAttentionBackwardParams& p) {
  WorkspaceCarver carve;
  carve.take<int64_t>(p.forward.batch + 1);
  carve.take<float>(p.forward.k.values.numel());
  carve.take<float>(p.forward.k.values.numel());
  return carve.used();
}

namespace cpu {
void sparse_attention(const SparseAttentionParams& params, const Launch& launch = Launch());
void sparse_attention_backward(const SparseAttentionBackwardParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
void sparse_attention(const SparseAttentionParams& params, const Launch& launch);
void sparse_attention_backward(const SparseAttentionBackwardParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
