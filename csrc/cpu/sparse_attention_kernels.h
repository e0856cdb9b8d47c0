// The per-level sparse-attention kernel table: defined by sparse_attention_kernels.cpp (once per SIMD level), driven by
// sparse_attention.cpp, which hands each kernel plain pointers (no header-inline loops compiled per level).
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/sparse_attention.h"

namespace tokenset {
namespace cpu {

// Query rows per tile (a larger query block runs as several tiles against its list) and keys per chunk (the listed
// keys are gathered 64 at a time into packed float32 tiles: stripes and blocks run through the same code).
constexpr int64_t kAttentionRowTile = 64;
constexpr int64_t kAttentionKeyChunk = 64;

// The head dimension as packed: a multiple of 16 floats (every level's vector width), zero-padded.
inline int64_t attention_packed_dim(int64_t dim) { return (dim + 15) / 16 * 16; }

// Floats of one worker's scratch, enough for every kernel of the table.
inline int64_t sparse_attention_scratch_floats(int64_t dim) {
  const int64_t dp = attention_packed_dim(dim), rt = kAttentionRowTile, kc = kAttentionKeyChunk;
  const int64_t forward = 3 * rt * dp + dp * rt + kc * rt + 3 * rt + 2 * kc * dp;
  const int64_t query = 5 * rt * dp + 2 * kc * rt + 2 * rt + 2 * kc * dp + dp;
  const int64_t key = 4 * kc * dp + 4 * rt * dp + 2 * kc * rt + 2 * rt;
  const int64_t most = forward > query ? forward : query;
  return (most > key ? most : key) + dp + 64;  // + one reloaded row, + headroom for a vector tail
}

// One (batch, query head) pair as the kernels see it: every pointer at physical row 0, row strides in elements.
struct AttentionHeadView {
  DType dtype = DType::Float32;
  int64_t dim = 0;
  const void* q = nullptr;
  int64_t q_stride = 0;
  const void* k = nullptr;
  int64_t k_stride = 0;
  const void* v = nullptr;
  int64_t v_stride = 0;
  void* out = nullptr;        // written by the forward, read by the backward
  int64_t out_stride = 0;
  float* lse = nullptr;       // per physical row (written by the forward when not null)
  const void* grad_out = nullptr;
  int64_t grad_out_stride = 0;
  void* grad_q = nullptr;
  int64_t grad_q_stride = 0;
  float* delta = nullptr;     // backward: per logical row, sum(grad_out * out)
  int64_t query_length = 0;   // logical
  int64_t key_length = 0;     // logical
  const int64_t* row_map = nullptr;
  float scale = 1.0f;
  bool causal = false;
  int64_t block_size = 64;
  int64_t key_block_size = 64;
};

// What one query block's list contributes to one 64-key group in the backward's key pass.
struct KeyGroupEntry {
  int64_t head;         // within the group's query heads
  int64_t query_block;
  uint64_t keys;        // bit j: logical key group_start + j is listed
};

struct SparseAttentionKernel {
  // Query block qb of `head` against the listed key blocks keys[0..count): out rows and lse.
  void (*forward_block)(const AttentionHeadView& head, int64_t qb, const int64_t* keys, int64_t count, float* scratch);
  // The backward's query pass: delta of the block's rows and grad_q.
  void (*backward_query_block)(const AttentionHeadView& head, int64_t qb, const int64_t* keys, int64_t count,
                               float* scratch);
  // The backward's key pass for logical keys [key0, key0 + 64) of one key head: grad_k and grad_v of those keys from
  // every (query head, query block) listing them. heads: the key head's query heads (they share k and v).
  void (*backward_key_group)(const AttentionHeadView* heads, int64_t key0, const KeyGroupEntry* entries, int64_t count,
                             void* grad_k, int64_t grad_k_stride, void* grad_v, int64_t grad_v_stride, float* scratch);
};

TOKENSET_DECLARE_SIMD_KERNELS(SparseAttentionKernel, sparse_attention_kernel)

}  // namespace cpu
}  // namespace tokenset
