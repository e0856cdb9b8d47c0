// MaxSim on the CPU, the driver (compiled once): kernel choice, query packing, threads over (query, document) pairs,
// fused top-k. The per-level register-tile kernels are in maxsim_kernels.cpp and maxsim_amx.cpp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "maxsim_kernels.h"
#include "parallel.h"
#include "topk.h"
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
  if (p.residual.active()) {
#if defined(TOKENSET_HAS_VNNI)
    if (static_cast<int>(active_simd_level()) >= static_cast<int>(SimdLevel::AVX512VNNI))
      return avx512vnni::maxsim_residual_kernel;
#endif
#if defined(TOKENSET_HAS_AVXVNNI)
    if (active_simd_level() == SimdLevel::AVXVNNI)
      return cpu_has_avx_vnni() ? avxvnni::maxsim_residual_kernel : avxvnni_evex::maxsim_residual_kernel;
#endif
    return TOKENSET_SIMD_KERNEL(maxsim_residual_kernel);
  }
  if (p.queries.dtype() == DType::Int8) {
#if defined(TOKENSET_HAS_VNNI)
    if (static_cast<int>(active_simd_level()) >= static_cast<int>(SimdLevel::AVX512VNNI))
      return avx512vnni::maxsim_int8_kernel;
#endif
#if defined(TOKENSET_HAS_AVXVNNI)
    if (active_simd_level() == SimdLevel::AVXVNNI)
      return cpu_has_avx_vnni() ? avxvnni::maxsim_int8_kernel : avxvnni_evex::maxsim_int8_kernel;
#endif
    return TOKENSET_SIMD_KERNEL(maxsim_int8_kernel);
  }
#if defined(TOKENSET_HAS_AMX)
  if (active_simd_level() == SimdLevel::AMX && amx_applies(p)) return amx::maxsim_kernel;
#endif
#if defined(TOKENSET_HAS_AVX512BF16)
  // vdpbf16ps: both sides bfloat16 (the Python layer converts queries to the documents' dtype); argmax stays on the
  // vector kernels, as with AMX.
  if (static_cast<int>(active_simd_level()) >= static_cast<int>(SimdLevel::AVX512BF16) &&
      p.documents.dtype() == DType::BFloat16 && p.queries.dtype() == DType::BFloat16 && p.argmax == nullptr)
    return avx512bf16::maxsim_bf16_kernel;
#endif
  (void)p;
  return TOKENSET_SIMD_KERNEL(maxsim_kernel);
}

// Queries are packed (float32 panels of query_block tokens) a group at a time: a group's panels take at most
// kPackBudget bytes, or one query's alone when it needs more. Memory is then bounded by the budget, not by the number
// of queries times the panel padding (a 1-token query still takes a whole panel).
constexpr int64_t kPackBudget = int64_t(64) << 20;

int64_t packed_floats(const MaxsimParams& p, const MaxsimKernel& kernel, int64_t q) {
  if (kernel.packed_floats) return kernel.packed_floats(p, p.queries.length(q));
  const int64_t qb = kernel.query_block;
  return (p.queries.length(q) + qb - 1) / qb * qb * p.queries.dim();
}

// The end of the group that starts at q0: queries while their packed panels fit the budget and, for top-k,
// `per_query_bytes` more each (the running heaps) fit it too.
int64_t query_group_end(const MaxsimParams& p, const MaxsimKernel& kernel, int64_t q0, int64_t per_query_bytes = 0) {
  int64_t bytes = 0, q = q0;
  while (q < p.queries.count) {
    const int64_t more = packed_floats(p, kernel, q) * 4 + per_query_bytes;
    if (q > q0 && bytes + more > (kernel.pack_budget > 0 ? kernel.pack_budget : kPackBudget)) break;
    bytes += more;
    ++q;
  }
  return q;
}

// Packed queries [q0, q1): every query set's panels, side by side.
// The centroids the call's documents use, ascending (kernels with a per-query table fill only these entries: a rerank
// of a few candidates computes a few hundred, not the whole codebook). One pass over the scored tokens' ids, which
// validate() has checked.
std::vector<int32_t> used_centroids(const MaxsimParams& p) {
  const ResidualDocuments& r = p.residual;
  std::vector<uint8_t> used(static_cast<size_t>(r.num_centroids), 0);
  for_each_scored_document(p, [&](int64_t d) {
    // The bounds in locals: the byte stores below may alias the offsets, which were re-read on every token.
    const int64_t begin = p.documents.host_offsets[d], end = p.documents.host_offsets[d + 1];
    for (int64_t t = begin; t < end; ++t) {
      const int32_t id = r.host_centroid_ids[t];
      if (id >= 0 && id < r.num_centroids) used[static_cast<size_t>(id)] = 1;
    }
  });
  std::vector<int32_t> list;
  for (int64_t c = 0; c < r.num_centroids; ++c)
    if (used[static_cast<size_t>(c)]) list.push_back(static_cast<int32_t>(c));
  return list;
}

constexpr int64_t kTableBlock = 256;  // centroids per table-filling work item

class PackedQueries {
 public:
  PackedQueries(const MaxsimParams& p, const MaxsimKernel& kernel, int64_t q0, int64_t q1,
                const std::vector<int32_t>& table_entries)
      : q0_(q0), offsets_(q1 - q0 + 1, 0) {
    for (int64_t q = q0; q < q1; ++q) offsets_[q - q0 + 1] = offsets_[q - q0] + packed_floats(p, kernel, q);
    storage_.resize(static_cast<size_t>(offsets_.back()));
    parallel_for_ranges(q1 - q0, 16, [&](int64_t begin, int64_t end) {
      for (int64_t q = q0 + begin; q < q0 + end; ++q) kernel.pack_query(p, q, at(q));
    });
    if (kernel.fill_table == nullptr || table_entries.empty()) return;
    const int64_t count = static_cast<int64_t>(table_entries.size());
    const int64_t blocks = (count + kTableBlock - 1) / kTableBlock;
    parallel_for_ranges((q1 - q0) * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t q = q0 + item / blocks, first = item % blocks * kTableBlock;
        kernel.fill_table(p, q, at(q), table_entries.data() + first,
                          count - first < kTableBlock ? count - first : kTableBlock);
      }
    });
  }
  const float* at(int64_t q) const { return storage_.data() + offsets_[q - q0_]; }
  float* at(int64_t q) { return storage_.data() + offsets_[q - q0_]; }

 private:
  int64_t q0_;
  std::vector<int64_t> offsets_;
  AlignedBuffer<float> storage_;
};

// Per-worker document scratch (float16 / bfloat16 rows converted a tile at a time; residual codes expanded), in rows
// of the token dimension (the queries': residual codes hold fewer bytes per token).
struct WorkerScratch {
  WorkerScratch(const MaxsimParams& p, const MaxsimKernel& kernel, int workers)
      : per_worker(static_cast<int64_t>(kernel.doc_block) * p.queries.dim()),
        buffer(static_cast<size_t>(per_worker * workers)) {}
  float* of(int worker) { return buffer.data() + worker * per_worker; }
  int64_t per_worker;
  AlignedBuffer<float> buffer;
};

void score_pairs(const MaxsimParams& p) {
  const int64_t nq = p.queries.count, columns = p.columns();
  if (nq * columns == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  const int threads = num_threads();
  WorkerScratch scratch(p, kernel, threads);
  const std::vector<int32_t> table_entries = kernel.fill_table ? used_centroids(p) : std::vector<int32_t>();
  for (int64_t q0 = 0, q1; q0 < nq; q0 = q1) {
    q1 = query_group_end(p, kernel, q0);
    const PackedQueries packed(p, kernel, q0, q1, table_entries);
    const int64_t group = q1 - q0, items = group * columns;
    parallel_for(items, grain_for(items, threads), threads, [&](int64_t begin, int64_t end, int worker) {
      float* rows = scratch.of(worker);
      for (int64_t item = begin; item < end; ++item) {
        int64_t q, col, doc;
        if (p.candidates) {  // query-major: one query's candidates share its packed panels
          q = q0 + item / columns;
          col = item % columns;
          doc = p.candidates[q * columns + col];
        } else {  // document-major: a document stays in cache while every query of the group scores it
          doc = item / group;
          q = q0 + item % group;
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
        kernel.score(packed.at(q), p.queries.length(q), p, doc, rows, p.scores + out, argmax);
      }
    });
  }
}

// Every worker keeps a heap of the best k per query over the documents it scored; the heaps are merged at the end.
// Queries go in groups whose packed panels and heaps (threads x group x min(k, nd) entries) fit kPackBudget (or one
// query), so scratch does not grow with the number of queries.
void score_topk(const MaxsimParams& p) {
  const int64_t nq = p.queries.count, nd = p.documents.count, k = p.k;
  const int64_t kept = start_topk(p.top_scores, p.top_indices, nq, k, nd);
  if (nq == 0 || kept == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  const int threads = num_threads();
  WorkerScratch scratch(p, kernel, threads);
  const int64_t heap_bytes = static_cast<int64_t>(threads) * kept * static_cast<int64_t>(sizeof(TopkEntry) + 8);
  WorkerHeaps heaps;
  const std::vector<int32_t> table_entries = kernel.fill_table ? used_centroids(p) : std::vector<int32_t>();
  for (int64_t q0 = 0, q1; q0 < nq; q0 = q1) {
    q1 = query_group_end(p, kernel, q0, heap_bytes);
    const int64_t group = q1 - q0;
    const PackedQueries packed(p, kernel, q0, q1, table_entries);
    heaps.reset(threads, group, kept);
    parallel_for(nd, grain_for(nd, threads), threads, [&](int64_t begin, int64_t end, int worker) {
      float* rows = scratch.of(worker);
      for (int64_t doc = begin; doc < end; ++doc) {
        for (int64_t g = 0; g < group; ++g) {
          TopkEntry e{0.0f, doc};
          kernel.score(packed.at(q0 + g), p.queries.length(q0 + g), p, doc, rows, &e.score, nullptr);
          offer(heaps.heap(worker, g), heaps.size(worker, g), kept, e);
        }
      }
    });
    for (int64_t g = 0; g < group; ++g) heaps.merge(threads, g, p.top_scores + (q0 + g) * k, p.top_indices + (q0 + g) * k);
  }
}

// The int8 kernels assume finite scales (no similarity can then be NaN). Only the sets the call scores are checked
// (in pairs mode, the candidates): a scale per token scored, a small fraction of the scan.
void check_set_scales(const SetBatch& batch, int64_t i, const char* name) {
  const float* scales = batch.set_scales(i);
  const int64_t length = batch.length(i);
  uint32_t bad = 0;  // one vectorised pass; the failing token is looked for after
  for (int64_t t = 0; t < length; ++t) bad |= not_finite_nonnegative(scales[t]);
  if (bad == 0) return;
  for (int64_t t = 0; t < length; ++t)
    TOKENSET_CHECK(std::isfinite(scales[t]) && scales[t] >= 0.0f, ValueError, name, " set ", i, ", token ", t,
                   ": scale ", scales[t], " is not a finite number >= 0 (scales come from tokenset.quantize)");
}

// Queries scored against residual codes are quantised per token: NaN or infinity has no int8 code.
void check_finite_queries(const MaxsimParams& p) {
  for (int64_t q = 0; q < p.queries.count; ++q) {
    const float* first = static_cast<const float*>(p.queries.set_data(q));
    const int64_t stride = p.queries.set_stride(q);
    for (int64_t t = 0; t < p.queries.length(q); ++t)
      for (int64_t k = 0; k < p.queries.dim(); ++k)
        TOKENSET_CHECK(std::isfinite(first[t * stride + k]), ValueError, "query ", q, ", token ", t,
                       " holds NaN or infinity: queries scored against residual codes are quantised to int8 and "
                       "must be finite");
  }
}

void check_scales(const MaxsimParams& p) {
  if (p.residual.active()) return check_finite_queries(p);  // the codes' norms and ids: validate (maxsim.h)
  if (p.queries.dtype() == DType::Int8)
    for (int64_t q = 0; q < p.queries.count; ++q) check_set_scales(p.queries, q, "queries");
  if (p.documents.dtype() != DType::Int8) return;
  if (p.candidates) {
    for (int64_t i = 0; i < p.queries.count * p.num_candidates; ++i)
      if (p.host_candidates[i] >= 0) check_set_scales(p.documents, p.host_candidates[i], "documents");
    return;
  }
  for (int64_t d = 0; d < p.documents.count; ++d) check_set_scales(p.documents, d, "documents");
}

}  // namespace

void maxsim(const MaxsimParams& p, const Launch&) {
  validate(p);
  check_scales(p);
  if (p.topk())
    score_topk(p);
  else
    score_pairs(p);
}

}  // namespace cpu
}  // namespace tokenset
