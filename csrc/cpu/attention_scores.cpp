// Attention scores on the CPU, the driver (compiled once). Two passes, each a flat list of work items handed to the
// threads in chunks:
//   1. the log-sum-exp of every needed query row, one item per (batch, head, tile of 64 rows): the R given rows, or
//      every query row for the column mean;
//   2. the output, one item per (batch, output head, chunk of 256 key columns): the chunk's probabilities recomputed
//      from the scores and the saved log-sum-exp, summed over the query heads in head order (reduce sum / mean) and,
//      for the column mean, over the query rows in row order.
// Every output element is written by exactly one item, in a fixed order: the same bits at any thread count. Memory:
// per worker one kernel scratch (attention_scores_scratch_floats: a 64 x 256 tile), plus one float per (batch,
// head, needed row); never N x M.
#include <algorithm>
#include <vector>

#include "attention_scores_kernels.h"
#include "parallel.h"
#include "tokenset/attention_scores.h"

namespace tokenset {
namespace cpu {
namespace {

ScoresHeadView head_view(const AttentionScoresParams& p, int64_t b, int64_t h) {
  ScoresHeadView v;
  v.dtype = p.q.values.dtype;
  v.dim = p.dim();
  v.q = p.q.address(b, h);
  v.q_stride = p.q.row_stride();
  v.k = p.k.address(b, h / (p.heads() / p.kv_heads()));
  v.k_stride = p.k.row_stride();
  v.query_length = p.query_length(b);
  v.key_length = p.key_length(b);
  v.causal = p.causal;
  v.scale = p.scale;
  return v;
}

// Query rows whose log-sum-exp sequence b needs, per head.
int64_t needed_rows(const AttentionScoresParams& p, int64_t b) {
  return p.column_mean() ? p.query_length(b) : p.rows_per_batch;
}

// fn(b, i, worker) for items i in [0, per_batch(b)) of every sequence b, chunks handed out in order.
template <typename PerBatch, typename Fn>
void for_each_item(const AttentionScoresParams& p, int workers, PerBatch&& per_batch, Fn&& fn) {
  std::vector<int64_t> base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) base[b + 1] = base[b] + per_batch(b);
  const int64_t items = base.back();
  if (items == 0) return;
  parallel_for(items, grain_for(items, workers, 8), workers, [&](int64_t begin, int64_t end, int worker) {
    int64_t b = std::upper_bound(base.begin(), base.end(), begin) - base.begin() - 1;
    for (int64_t item = begin; item < end; ++item) {
      while (item >= base[b + 1]) ++b;
      fn(b, item - base[b], worker);
    }
  });
}

// out[b, oh, j] *= 1 / divisor of its sequence, for every written key; zeros past each key length.
void finish_output(const AttentionScoresParams& p, int64_t b, float* dst, int64_t n, int64_t span) {
  double divisor = p.reduce == ScoresReduce::Mean ? static_cast<double>(p.heads()) : 1.0;
  if (p.column_mean()) divisor *= static_cast<double>(p.query_length(b));
  const int64_t width = p.width();
  for (int64_t r = 0; r < p.out_rows(); ++r) {
    if (divisor != 1.0) {
      const float inverse = divisor > 0.0 ? static_cast<float>(1.0 / divisor) : 0.0f;
      for (int64_t j = 0; j < n; ++j) dst[r * width + j] *= inverse;
    }
    std::fill(dst + r * width + n, dst + r * width + span, 0.0f);
  }
}

// The column mean in one pass over the scores when every key length fits the cache and there are enough (batch,
// head) items to share out: one item per (batch, head) runs its row tiles in order, keeping each tile's scores of
// all keys (64 x M floats) between its log-sum-exp and its probabilities. The same sums in the same order as the
// two-pass form, so the same bits; chosen by shape alone, never by the thread count.
bool column_mean_in_one_pass(const AttentionScoresParams& p) {
  if (!p.column_mean() || p.batch * p.heads() < 8) return false;
  for (int64_t b = 0; b < p.batch; ++b)
    if (p.key_length(b) > kScoresCachedKeys) return false;
  return true;
}

void column_mean_one_pass(const AttentionScoresParams& p, const AttentionScoresKernel& kernel, int workers) {
  const int64_t width = p.width(), heads = p.heads(), out_heads = p.out_heads();
  int64_t longest = 0;
  for (int64_t b = 0; b < p.batch; ++b) longest = std::max(longest, p.key_length(b));
  const int64_t keys = (longest + kScoresKeyChunk - 1) / kScoresKeyChunk * kScoresKeyChunk;
  const int64_t per_worker = attention_scores_scratch_floats(p.dim()) + keys * kScoresRowTile + keys * 16;
  AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);
  // Per-head sums before the head reduction: one float per (batch, head, key), reduced in head order below.
  std::vector<float> per_head(p.reduce == ScoresReduce::None ? 0 : static_cast<size_t>(p.batch * heads * width));
  for_each_item(p, workers, [&](int64_t) { return heads; }, [&](int64_t b, int64_t h, int worker) {
    float* work = scratch.data() + worker * per_worker;
    float* cache = work + attention_scores_scratch_floats(p.dim());
    float* col = cache + keys * kScoresRowTile;
    const ScoresHeadView view = head_view(p, b, h);
    const int64_t m = p.key_length(b);
    kernel.zero_columns(col, m);
    float lse[kScoresRowTile];
    for (int64_t r0 = 0; r0 < view.query_length; r0 += kScoresRowTile) {
      const int64_t count = std::min(kScoresRowTile, view.query_length - r0);
      kernel.row_lse(view, nullptr, r0, count, lse, cache, work);
      kernel.cached_column_sums(view, r0, count, lse, cache, col, work);
    }
    float* dst = p.reduce == ScoresReduce::None ? p.out.ptr<float>() + (b * out_heads + h) * width
                                                : per_head.data() + (b * heads + h) * width;
    kernel.reduce_columns(col, m, dst, false);
    if (p.reduce == ScoresReduce::None) finish_output(p, b, dst, m, width);
  });
  if (p.reduce == ScoresReduce::None) return;
  for (int64_t b = 0; b < p.batch; ++b) {
    float* dst = p.out.ptr<float>() + b * width;
    const int64_t m = p.key_length(b);
    std::copy(per_head.begin() + b * heads * width, per_head.begin() + b * heads * width + m, dst);
    for (int64_t h = 1; h < heads; ++h)
      for (int64_t j = 0; j < m; ++j) dst[j] += per_head[(b * heads + h) * width + j];
    finish_output(p, b, dst, m, width);
  }
}

}  // namespace

void attention_scores(const AttentionScoresParams& p, const Launch&) {
  validate(p);
  const int64_t width = p.width(), heads = p.heads(), out_heads = p.out_heads(), out_rows = p.out_rows();
  if (p.out.numel() == 0) return;
  const AttentionScoresKernel& kernel = TOKENSET_SIMD_KERNEL(attention_scores_kernel);
  if (column_mean_in_one_pass(p)) {
    column_mean_one_pass(p, kernel, std::max(1, num_threads()));
    return;
  }
  // lse of (b, h, row): lse_base[b] + h * needed_rows(b) + row.
  std::vector<int64_t> lse_base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b) lse_base[b + 1] = lse_base[b] + heads * needed_rows(p, b);
  std::vector<float> lse(static_cast<size_t>(lse_base.back()));
  const int workers = std::max(1, num_threads());
  const int64_t per_worker = attention_scores_scratch_floats(p.dim());
  AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);

  auto tiles = [&](int64_t b) { return (needed_rows(p, b) + kScoresRowTile - 1) / kScoresRowTile; };
  for_each_item(p, workers, [&](int64_t b) { return heads * tiles(b); }, [&](int64_t b, int64_t item, int worker) {
    const int64_t h = item / tiles(b), r0 = (item % tiles(b)) * kScoresRowTile;
    const int64_t count = std::min(kScoresRowTile, needed_rows(p, b) - r0);
    const int64_t* rows = p.column_mean() ? nullptr : p.rows + b * p.rows_per_batch + r0;
    kernel.row_lse(head_view(p, b, h), rows, r0, count, lse.data() + lse_base[b] + h * needed_rows(p, b) + r0,
                   nullptr, scratch.data() + worker * per_worker);
  });

  const int64_t chunks = (width + kScoresKeyChunk - 1) / kScoresKeyChunk;
  for_each_item(p, workers, [&](int64_t) { return out_heads * chunks; }, [&](int64_t b, int64_t item, int worker) {
    const int64_t oh = item / chunks, key0 = (item % chunks) * kScoresKeyChunk;
    const int64_t span = std::min(kScoresKeyChunk, width - key0);
    const int64_t n = std::max<int64_t>(0, std::min(span, p.key_length(b) - key0));
    float* dst = p.out.ptr<float>() + (b * out_heads + oh) * out_rows * width + key0;
    const int64_t h0 = p.reduce == ScoresReduce::None ? oh : 0, h1 = p.reduce == ScoresReduce::None ? oh + 1 : heads;
    if (n > 0) {
      for (int64_t h = h0; h < h1; ++h) {
        const float* l = lse.data() + lse_base[b] + h * needed_rows(p, b);
        float* work = scratch.data() + worker * per_worker;
        if (p.column_mean()) {
          kernel.chunk_column_sums(head_view(p, b, h), l, key0, n, dst, h > h0, work);
        } else {
          kernel.chunk_rows(head_view(p, b, h), p.rows + b * p.rows_per_batch, p.rows_per_batch, l, key0, n, dst,
                            width, h > h0, work);
        }
      }
    }
    finish_output(p, b, dst, n, span);
  });
}

}  // namespace cpu
}  // namespace tokenset
