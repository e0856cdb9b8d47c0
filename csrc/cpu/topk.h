// Running top-k on the CPU, shared by every op that ranks (MaxSim top-k, inner-product top-k): per-worker heaps of
// the best k so far, merged at the end. Ranking: higher score first, NaN ranks as -inf, ties to the lower index.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace tokenset {
namespace cpu {

struct TopkEntry {
  float score;
  int64_t index;
};

inline float rank_key(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }

inline bool ranks_before(const TopkEntry& a, const TopkEntry& b) {
  const float ka = rank_key(a.score), kb = rank_key(b.score);
  return ka > kb || (ka == kb && a.index < b.index);
}

// Folds the candidate (value, index) into the running best (*best_value, *best_index) by ranks_before: larger value,
// then lower index; index -1 is no candidate on either side.
inline void keep_best(float value, int64_t index, float* best_value, int64_t* best_index) {
  if (index < 0) return;
  if (*best_index < 0 || ranks_before({value, index}, {*best_value, *best_index})) {
    *best_value = value;
    *best_index = index;
  }
}

// Fills every row of [rows, k] outputs with (-inf, -1), the padding of rows that get fewer than k entries, and
// returns how many entries a row can get (min(k, candidates)).
inline int64_t start_topk(float* scores, int64_t* indices, int64_t rows, int64_t k, int64_t candidates) {
  std::fill(scores, scores + rows * k, -std::numeric_limits<float>::infinity());
  std::fill(indices, indices + rows * k, int64_t(-1));
  return std::min(k, candidates);
}

// Offers e to a heap of at most `kept` entries whose top is the worst kept.
inline void offer(TopkEntry* heap, int64_t& size, int64_t kept, const TopkEntry& e) {
  if (size < kept) {
    heap[size++] = e;
    std::push_heap(heap, heap + size, ranks_before);
  } else if (ranks_before(e, heap[0])) {
    std::pop_heap(heap, heap + size, ranks_before);
    heap[size - 1] = e;
    std::push_heap(heap, heap + size, ranks_before);
  }
}

// Per-worker heaps for a group of queries: [workers][group][kept] entries and [workers][group] sizes.
struct WorkerHeaps {
  int64_t group = 0, kept = 0;
  std::vector<TopkEntry> entries;
  std::vector<int64_t> sizes;
  std::vector<TopkEntry> merged;

  void reset(int workers, int64_t group_size, int64_t kept_per_query) {
    group = group_size;
    kept = kept_per_query;
    entries.resize(static_cast<size_t>(workers * group * kept));
    sizes.assign(static_cast<size_t>(workers * group), 0);
  }
  TopkEntry* heap(int worker, int64_t g) { return entries.data() + (static_cast<int64_t>(worker) * group + g) * kept; }
  int64_t& size(int worker, int64_t g) { return sizes[static_cast<size_t>(worker * group + g)]; }

  // Merges every worker's heap of query g into out_scores / out_indices [k] (the rest is left as it was).
  void merge(int workers, int64_t g, float* out_scores, int64_t* out_indices) {
    merged.clear();
    for (int w = 0; w < workers; ++w) merged.insert(merged.end(), heap(w, g), heap(w, g) + size(w, g));
    const int64_t take = std::min<int64_t>(kept, static_cast<int64_t>(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + take, merged.end(), ranks_before);
    for (int64_t i = 0; i < take; ++i) {
      out_scores[i] = merged[i].score;
      out_indices[i] = merged[i].index;
    }
  }
};

}  // namespace cpu
}  // namespace tokenset
