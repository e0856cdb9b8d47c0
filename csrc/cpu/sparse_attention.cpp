// Sparse attention on the CPU, the driver (compiled once): the forward and the backward's query pass run one work item
// per (batch, query head, query block) list, handed to the threads in chunks; the backward's key pass runs one item
// per (batch, key head, group of 64 keys), from the lists turned around (which query blocks of which heads list each
// key group: the transposed lists, O(list entries) memory). Every gradient row is written by exactly one item, so
// no atomics and the same result at any thread count. Memory: per worker one kernel scratch
// (sparse_attention_scratch_floats: tiles of 64 rows and 64 keys), plus for the backward one float per query row
// (dO . O) and the transposed lists; never N x M, never a gathered K / V.
#include <algorithm>
#include <vector>

#include "parallel.h"
#include "sparse_attention_kernels.h"
#include "tokenset/sparse_attention.h"

namespace tokenset {
namespace cpu {
namespace {

AttentionHeadView head_view(const SparseAttentionParams& p, int64_t b, int64_t h) {
  AttentionHeadView v;
  v.dtype = p.q.values.dtype;
  v.dim = p.dim();
  const int64_t g = h / (p.heads() / p.kv_heads());
  v.q = p.q.address(b, h);
  v.q_stride = p.q.row_stride();
  v.k = p.k.address(b, g);
  v.k_stride = p.k.row_stride();
  v.v = p.v.address(b, g);
  v.v_stride = p.v.row_stride();
  v.out = const_cast<char*>(p.out.address(b, h));
  v.out_stride = p.out.row_stride();
  v.lse = p.lse ? p.lse + p.lse_origin(b, h) : nullptr;
  v.query_length = p.query_length(b);
  v.key_length = p.key_length(b);
  v.row_map = p.row_map;
  v.scale = p.scale;
  v.causal = p.causal;
  v.block_size = p.block_size;
  v.key_block_size = p.key_block_size;
  return v;
}

// list_base[b]: the first list of batch b (batch + 1 entries).
std::vector<int64_t> list_bases(const SparseAttentionParams& p) {
  std::vector<int64_t> base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) base[b + 1] = base[b] + p.heads() * p.query_blocks(b);
  return base;
}

// fn(list, batch, head, query_block, worker) over every list, chunks handed out in order.
template <typename Fn>
void for_each_list(const SparseAttentionParams& p, const std::vector<int64_t>& base, int workers, Fn&& fn) {
  const int64_t lists = base.back();
  parallel_for(lists, grain_for(lists, workers, 16), workers, [&](int64_t begin, int64_t end, int worker) {
    int64_t b = std::upper_bound(base.begin(), base.end(), begin) - base.begin() - 1;
    for (int64_t list = begin; list < end; ++list) {
      while (list >= base[b + 1]) ++b;
      const int64_t qblocks = p.query_blocks(b), within = list - base[b];
      fn(list, b, within / qblocks, within % qblocks, worker);
    }
  });
}

// The lists turned around for the key pass: bucket (b, key head, 64-key group) holds, in list order, one entry per
// list that names a key of the group (its query head within the group, query block, and which of the 64 keys).
struct KeyGroups {
  std::vector<int64_t> bucket_base;  // batch + 1: first bucket of batch b
  std::vector<int64_t> starts;       // buckets + 1: first entry of each bucket
  std::vector<KeyGroupEntry> entries;
};

KeyGroups transpose_lists(const SparseAttentionParams& p, const std::vector<int64_t>& list_base) {
  KeyGroups out;
  const int64_t group = p.heads() / p.kv_heads();
  out.bucket_base.assign(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b)
    out.bucket_base[b + 1] = out.bucket_base[b] + p.kv_heads() * ((p.key_length(b) + kAttentionKeyChunk - 1) /
                                                                   kAttentionKeyChunk);
  const int64_t buckets = out.bucket_base.back();
  std::vector<int64_t> last_list(static_cast<size_t>(buckets), -1);
  std::vector<int64_t> counts(static_cast<size_t>(buckets) + 1, 0);
  // visit(bucket, list, head in group, query block, bits) for every (list, key group) piece, in list order.
  auto walk = [&](auto&& visit) {
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t qblocks = p.query_blocks(b), keys = p.key_length(b), queries = p.query_length(b);
      const int64_t groups = (keys + kAttentionKeyChunk - 1) / kAttentionKeyChunk;
      for (int64_t h = 0; h < p.heads(); ++h)
        for (int64_t qb = 0; qb < qblocks; ++qb) {
          const int64_t list = list_base[b] + h * qblocks + qb;
          const int64_t last_row = std::min((qb + 1) * p.block_size, queries) - 1;
          const int64_t horizon = p.causal ? last_row + keys - queries + 1 : keys;
          const int64_t bucket0 = out.bucket_base[b] + (h / group) * groups;
          for (int64_t e = p.key_offsets[list]; e < p.key_offsets[list + 1]; ++e) {
            const int64_t start = p.key_index[e] * p.key_block_size;
            if (start >= horizon) break;
            const int64_t end = std::min({start + p.key_block_size, keys, horizon});
            for (int64_t j = start; j < end;) {
              const int64_t g = j / kAttentionKeyChunk, stop = std::min(end, (g + 1) * kAttentionKeyChunk);
              const int64_t lo = j - g * kAttentionKeyChunk, width = stop - j;
              const uint64_t bits = (width == 64 ? ~uint64_t(0) : ((uint64_t(1) << width) - 1)) << lo;
              visit(bucket0 + g, list, h % group, qb, bits);
              j = stop;
            }
          }
        }
    }
  };
  walk([&](int64_t bucket, int64_t list, int64_t, int64_t, uint64_t) {
    if (last_list[bucket] != list) ++counts[bucket + 1], last_list[bucket] = list;
  });
  for (int64_t i = 0; i < buckets; ++i) counts[i + 1] += counts[i];
  out.starts = counts;
  out.entries.resize(static_cast<size_t>(counts[buckets]));
  std::fill(last_list.begin(), last_list.end(), -1);
  std::vector<int64_t> fill(counts.begin(), counts.end() - 1);
  walk([&](int64_t bucket, int64_t list, int64_t head, int64_t qb, uint64_t bits) {
    if (last_list[bucket] == list) {
      out.entries[fill[bucket] - 1].keys |= bits;
      return;
    }
    last_list[bucket] = list;
    out.entries[fill[bucket]++] = KeyGroupEntry{head, qb, bits};
  });
  return out;
}

}  // namespace

void sparse_attention(const SparseAttentionParams& p, const Launch&) {
  validate(p);
  const std::vector<int64_t> base = list_bases(p);
  const int64_t lists = base.back();
  if (lists == 0) return;
  const SparseAttentionKernel& kernel = TOKENSET_SIMD_KERNEL(sparse_attention_kernel);
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), lists));
  const int64_t per_worker = sparse_attention_scratch_floats(p.dim());
  AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);
  for_each_list(p, base, workers, [&](int64_t list, int64_t b, int64_t h, int64_t qb, int worker) {
    const int64_t begin = p.key_offsets[list];
    kernel.forward_block(head_view(p, b, h), qb, p.key_index + begin, p.key_offsets[list + 1] - begin,
                         scratch.data() + worker * per_worker);
  });
}

void sparse_attention_backward(const SparseAttentionBackwardParams& bp, const Launch&) {
  validate(bp);
  const SparseAttentionParams& p = bp.forward;
  const std::vector<int64_t> base = list_bases(p);
  const int64_t lists = base.back();
  const SparseAttentionKernel& kernel = TOKENSET_SIMD_KERNEL(sparse_attention_kernel);
  const int64_t heads = p.heads(), group = heads / p.kv_heads();
  // delta rows: batch b, head h at delta_base[b] + h * N_b (logical rows).
  std::vector<int64_t> delta_base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) delta_base[b + 1] = delta_base[b] + heads * p.query_length(b);
  AlignedBuffer<float> delta(static_cast<size_t>(delta_base.back()));
  const int64_t per_worker = sparse_attention_scratch_floats(p.dim());
  const int threads = num_threads();
  auto view = [&](int64_t b, int64_t h) {
    AttentionHeadView v = head_view(p, b, h);
    v.grad_out = bp.grad_out.address(b, h);
    v.grad_out_stride = bp.grad_out.row_stride();
    v.grad_q = const_cast<char*>(bp.grad_q.address(b, h));
    v.grad_q_stride = bp.grad_q.row_stride();
    v.delta = delta.data() + delta_base[b] + h * p.query_length(b);
    return v;
  };
  if (lists > 0) {
    const int workers = static_cast<int>(std::min<int64_t>(threads, lists));
    AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);
    for_each_list(p, base, workers, [&](int64_t list, int64_t b, int64_t h, int64_t qb, int worker) {
      const int64_t begin = p.key_offsets[list];
      kernel.backward_query_block(view(b, h), qb, p.key_index + begin, p.key_offsets[list + 1] - begin,
                                  scratch.data() + worker * per_worker);
    });
  }
  const KeyGroups groups = transpose_lists(p, base);
  const std::vector<int64_t>& bucket_base = groups.bucket_base;
  const int64_t buckets = bucket_base.back();
  if (buckets == 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(threads, buckets));
  AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);
  std::vector<AttentionHeadView> views(static_cast<size_t>(workers * group));
  const int64_t size = static_cast<int64_t>(dtype_size(p.k.values.dtype));
  parallel_for(buckets, grain_for(buckets, workers, 16), workers, [&](int64_t begin, int64_t end, int worker) {
    int64_t b = std::upper_bound(bucket_base.begin(), bucket_base.end(), begin) - bucket_base.begin() - 1;
    AttentionHeadView* mine = views.data() + worker * group;
    for (int64_t bucket = begin; bucket < end; ++bucket) {
      while (bucket >= bucket_base[b + 1]) ++b;
      const int64_t per_head = (p.key_length(b) + kAttentionKeyChunk - 1) / kAttentionKeyChunk;
      const int64_t kv = (bucket - bucket_base[b]) / per_head, g = (bucket - bucket_base[b]) % per_head;
      for (int64_t i = 0; i < group; ++i) mine[i] = view(b, kv * group + i);
      char* grad_k = static_cast<char*>(bp.grad_k.values.data) + bp.grad_k.origin(b, kv) * size;
      char* grad_v = static_cast<char*>(bp.grad_v.values.data) + bp.grad_v.origin(b, kv) * size;
      const int64_t first = groups.starts[bucket];
      kernel.backward_key_group(mine, g * kAttentionKeyChunk, groups.entries.data() + first,
                                groups.starts[bucket + 1] - first, grad_k, bp.grad_k.row_stride(), grad_v,
                                bp.grad_v.row_stride(), scratch.data() + worker * per_worker);
    }
  });
}

}  // namespace cpu
}  // namespace tokenset
