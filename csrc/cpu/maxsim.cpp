// MaxSim on the CPU, the driver (compiled once): kernel choice, query packing, threads over (query, document) pairs,
// fused top-k. The per-level register-tile kernels are in maxsim_kernels.cpp and maxsim_amx.cpp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "maxsim_kernels.h"
#include "parallel.h"
#include "tokenset/maxsim.h"

namespace tokenset {
namespace cpu {
namespace {

// AMX tiles take bfloat16 pairs along k in 32-element rows: both sides bfloat16, dim a multiple of 32. The argmax
// (explanations, autograd) stays on the vector kernels.
[[maybe_unused]] bool amx_applies(const MaxsimParams& p) {
  return p.documents.dtype() == DType::BFloat16 && p.queries.dim() % 32 == 0 && p.argmax == nullptr;
}

const MaxsimKernel& active_kernel(const MaxsimParams& p) {
#if defined(TOKENSET_HAS_AMX)
  if (active_simd_level() == SimdLevel::AMX && amx_applies(p)) return amx::maxsim_kernel;
#endif
  (void)p;
  return TOKENSET_SIMD_KERNEL(maxsim_kernel);
}

// Packed queries: every query set's panels, side by side.
class PackedQueries {
 public:
  PackedQueries(const MaxsimParams& p, const MaxsimKernel& kernel) : offsets_(p.queries.count + 1, 0) {
    const int64_t qb = kernel.query_block, dim = p.queries.dim();
    for (int64_t q = 0; q < p.queries.count; ++q)
      offsets_[q + 1] = offsets_[q] + (p.queries.length(q) + qb - 1) / qb * qb * dim;
    storage_.resize(static_cast<size_t>(offsets_.back()));
    parallel_for(p.queries.count, 16, [&](int64_t begin, int64_t end, int) {
      for (int64_t q = begin; q < end; ++q) kernel.pack_query(p.queries, q, at(q));
    });
  }
  const float* at(int64_t q) const { return storage_.data() + offsets_[q]; }
  float* at(int64_t q) { return storage_.data() + offsets_[q]; }

 private:
  std::vector<int64_t> offsets_;
  AlignedBuffer<float> storage_;
};

// Per-worker document scratch (float16 / bfloat16 rows converted a tile at a time).
struct WorkerScratch {
  WorkerScratch(const MaxsimParams& p, const MaxsimKernel& kernel, int workers)
      : per_worker(static_cast<int64_t>(kernel.doc_block) * p.documents.dim()),
        buffer(static_cast<size_t>(per_worker * workers)) {}
  float* of(int worker) { return buffer.data() + worker * per_worker; }
  int64_t per_worker;
  AlignedBuffer<float> buffer;
};

void score_pairs(const MaxsimParams& p) {
  const int64_t nq = p.queries.count, columns = p.columns(), items = nq * columns;
  if (items == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  const PackedQueries packed(p, kernel);
  const int threads = num_threads();
  WorkerScratch scratch(p, kernel, threads);
  parallel_for(items, grain_for(items, threads), [&](int64_t begin, int64_t end, int worker) {
    float* rows = scratch.of(worker);
    for (int64_t item = begin; item < end; ++item) {
      int64_t q, col, doc;
      if (p.candidates) {  // query-major: one query's candidates share its packed panels
        q = item / columns;
        col = item % columns;
        doc = p.candidates[item];
      } else {  // document-major: a document stays in cache while every query scores it
        doc = item / nq;
        q = item % nq;
        col = doc;
      }
      const int64_t out = q * columns + col;
      int32_t* argmax = p.argmax ? p.argmax + out * p.queries.max_length : nullptr;
      if (argmax) std::fill(argmax + p.queries.length(q), argmax + p.queries.max_length, -1);
      if (doc < 0) {
        p.scores[out] = -std::numeric_limits<float>::infinity();
        if (argmax) std::fill(argmax, argmax + p.queries.length(q), -1);
        continue;
      }
      kernel.score(packed.at(q), p.queries.length(q), p.documents, doc, rows, p.scores + out, argmax);
    }
  });
}

// Ranking used by top-k: higher score first, NaN ranks as -inf, ties to the lower index.
struct Entry {
  float score;
  int64_t index;
};
inline float rank_key(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }
inline bool ranks_before(const Entry& a, const Entry& b) {
  const float ka = rank_key(a.score), kb = rank_key(b.score);
  return ka > kb || (ka == kb && a.index < b.index);
}

// Every worker keeps a heap of the best k per query over the documents it scored; the heaps are merged at the end.
void score_topk(const MaxsimParams& p) {
  const int64_t nq = p.queries.count, nd = p.documents.count, k = p.k;
  std::fill(p.top_scores, p.top_scores + nq * k, -std::numeric_limits<float>::infinity());
  std::fill(p.top_indices, p.top_indices + nq * k, int64_t(-1));
  const int64_t kept = std::min(k, nd);
  if (nq == 0 || kept == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  const PackedQueries packed(p, kernel);
  const int threads = num_threads();
  WorkerScratch scratch(p, kernel, threads);
  std::vector<Entry> heaps(static_cast<size_t>(threads) * nq * kept);  // [workers][nq][kept]; top = worst kept
  std::vector<int64_t> sizes(static_cast<size_t>(threads) * nq, 0);
  parallel_for(nd, grain_for(nd, threads), [&](int64_t begin, int64_t end, int worker) {
    float* rows = scratch.of(worker);
    Entry* worker_heaps = heaps.data() + static_cast<int64_t>(worker) * nq * kept;
    int64_t* worker_sizes = sizes.data() + static_cast<int64_t>(worker) * nq;
    for (int64_t doc = begin; doc < end; ++doc) {
      for (int64_t q = 0; q < nq; ++q) {
        Entry e{0.0f, doc};
        kernel.score(packed.at(q), p.queries.length(q), p.documents, doc, rows, &e.score, nullptr);
        Entry* heap = worker_heaps + q * kept;
        int64_t& size = worker_sizes[q];
        if (size < kept) {
          heap[size++] = e;
          std::push_heap(heap, heap + size, ranks_before);
        } else if (ranks_before(e, heap[0])) {
          std::pop_heap(heap, heap + size, ranks_before);
          heap[size - 1] = e;
          std::push_heap(heap, heap + size, ranks_before);
        }
      }
    }
  });
  std::vector<Entry> merged;
  for (int64_t q = 0; q < nq; ++q) {
    merged.clear();
    for (int w = 0; w < threads; ++w) {
      const Entry* heap = heaps.data() + (static_cast<int64_t>(w) * nq + q) * kept;
      merged.insert(merged.end(), heap, heap + sizes[static_cast<size_t>(w) * nq + q]);
    }
    const int64_t take = std::min<int64_t>(kept, static_cast<int64_t>(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + take, merged.end(), ranks_before);
    for (int64_t i = 0; i < take; ++i) {
      p.top_scores[q * k + i] = merged[i].score;
      p.top_indices[q * k + i] = merged[i].index;
    }
  }
}

}  // namespace

void maxsim(const MaxsimParams& p, const Launch&) {
  validate(p);
  if (p.topk())
    score_topk(p);
  else
    score_pairs(p);
}

}  // namespace cpu
}  // namespace tokenset
