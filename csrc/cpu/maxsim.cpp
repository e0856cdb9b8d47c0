// MaxSim on the CPU: score(q, D) = sum_i max_j <q_i, d_j>.
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512). Each build defines a kernel
// table in its own namespace; the scalar build also holds the dispatch (level choice, threads, top-k).
//
// Register tiling: a query's tokens are packed once, transposed, as float32 panels P[k][lane] of QB = QV * W tokens
// (zero-padded). A tile of R document tokens is scored against a panel with R * QV vector accumulators: for every
// k, broadcast d_j[k] and FMA it with the panel's vectors. Accumulator row r then holds <q_lane, d_{j0+r}> for the
// panel's QB query tokens, so the max over document tokens is an elementwise vector max: no horizontal reduction,
// no similarity matrix in memory, and document rows are read in place (float32) or converted R rows at a time
// (float16 / bfloat16). Common embedding widths (64 ... 1024) get their own copy of the full tile with dim a constant.
//
// Everything here is either in the level namespace or `static`: inline functions shared between translation units
// compiled with different -m flags would let the linker pick an AVX-512 copy for the scalar path.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "tokenset/cpu_runtime.h"
#include "tokenset/maxsim.h"
#include "maxsim_kernel.h"
#include "simd.h"

namespace tokenset {
namespace cpu {

namespace TOKENSET_SIMD_NS {

// ---- tile shape per level -------------------------------------------------------------------------------------------
#if defined(TOKENSET_SIMD_AVX512)
constexpr int QV = 2;   // 32 query tokens per panel
constexpr int R = 12;   // 24 accumulators + 2 panel vectors + 1 broadcast of 32 registers
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int QV = 2;   // 16 query tokens per panel
constexpr int R = 6;    // 12 accumulators + 2 panel vectors + 1 broadcast of 16 registers
#else
constexpr int QV = 8;
constexpr int R = 4;
#endif
constexpr int QB = QV * W;

// ---- packing ---------------------------------------------------------------------------------------------------------
static void pack_query(const SetBatch& queries, int64_t set, float* packed) {
  const int64_t length = queries.length(set), dim = queries.dim;
  const int64_t panels = (length + QB - 1) / QB;
  std::memset(packed, 0, sizeof(float) * panels * dim * QB);
  for (int64_t t = 0; t < length; ++t) {
    const int64_t row = (queries.begin(set) + t) * queries.row_stride;
    float* panel = packed + (t / QB) * dim * QB + (t % QB);
    for (int64_t k = 0; k < dim; ++k) panel[k * QB] = element_to_float(queries.values, row + k, queries.dtype);
  }
}

// ---- register tile ---------------------------------------------------------------------------------------------------
// Scores ROWS document rows (rows[r * stride + k]) against one panel and folds them into the running maxima.
// `prefetch` points at the source row that follows this tile (`prefetch_stride` bytes between rows,
// `element_bytes` per element): for float16/bfloat16 `rows` is conversion scratch, so it cannot tell where memory goes.
template <int ROWS, bool kArgmax, int kDim = 0>
static inline void tile(const float* panel, const float* rows, int64_t runtime_stride, int64_t runtime_dim,
                        int32_t first_row, const char* prefetch, int64_t prefetch_stride, int element_bytes,
                        V::type* running_max, V::itype* running_arg, V::mask* nan_seen) {
  // kDim > 0: rows are packed (stride == dim == kDim), so every row's address is one base plus a constant.
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
  const int64_t stride = kDim > 0 ? kDim : runtime_stride;
  V::type acc[ROWS][QV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < QV; ++v) acc[r][v] = V::zero();
  // A single-query scan streams documents from memory once: fetch the next tile's rows (the following rows of the
  // batch, usually contiguous) one cache line per row per 16 k-steps while this tile computes. Into L2, not L1: at
  // dim 384 the query panel alone fills L1, and lines fetched into L1 a tile early evict it (measured +8% at dim 384).
  for (int64_t k0 = 0; k0 < dim; k0 += 16) {
    for (int r = 0; r < ROWS; ++r) __builtin_prefetch(prefetch + r * prefetch_stride + k0 * element_bytes, 0, 2);
    const int64_t k1 = k0 + 16 < dim ? k0 + 16 : dim;
#pragma GCC unroll 4
    for (int64_t k = k0; k < k1; ++k) {
      V::type p[QV];
      for (int v = 0; v < QV; ++v) p[v] = V::load(panel + k * QB + v * W);
      for (int r = 0; r < ROWS; ++r) {
        const V::type b = V::set1(rows[r * stride + k]);
        for (int v = 0; v < QV; ++v) acc[r][v] = V::fmadd(b, p[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int v = 0; v < QV; ++v) {
      nan_seen[v] = V::unordered(acc[r][v], nan_seen[v]);
      if (kArgmax) {
        // Strictly greater: the earlier (lower-index) row keeps a tie.
        const V::mask better = V::greater(acc[r][v], running_max[v]);
        running_max[v] = V::select(better, running_max[v], acc[r][v]);
        running_arg[v] = V::iselect(better, running_arg[v], V::iset1(first_row + r));
      } else {
        running_max[v] = V::max(acc[r][v], running_max[v]);
      }
    }
  }
}

template <int ROWS, bool kArgmax>
static inline void tile_any(int rows_left, const float* panel, const float* rows, int64_t stride, int64_t dim,
                            int32_t first_row, const char* prefetch, int64_t prefetch_stride, int element_bytes,
                            V::type* running_max, V::itype* running_arg, V::mask* nan_seen) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      tile<ROWS, kArgmax>(panel, rows, stride, dim, first_row, prefetch, prefetch_stride, element_bytes, running_max,
                          running_arg, nan_seen);
    else
      tile_any<ROWS - 1, kArgmax>(rows_left, panel, rows, stride, dim, first_row, prefetch, prefetch_stride,
                                  element_bytes, running_max, running_arg, nan_seen);
  }
}

template <bool kArgmax, int kDim = 0>
static void score_impl(const float* packed, int64_t query_length, const SetBatch& docs, int64_t doc, float* scratch,
                       float* score, int32_t* argmax) {
  const int64_t length = docs.length(doc), dim = docs.dim;
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    if (kArgmax)
      for (int64_t i = 0; i < query_length; ++i) argmax[i] = -1;
    return;
  }
  const int64_t first = docs.begin(doc) * docs.row_stride;
  const int64_t panels = (query_length + QB - 1) / QB;
  const int element_bytes = dtype_size(docs.dtype);
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const float* panel = packed + c * dim * QB;
    V::type running_max[QV];
    V::itype running_arg[QV];
    V::mask nan_seen[QV];
    for (int v = 0; v < QV; ++v) {
      running_max[v] = V::set1(-std::numeric_limits<float>::infinity());
      running_arg[v] = V::iset1(0);  // all similarities -inf: the first token, as numpy's argmax
      nan_seen[v] = V::no_mask();
    }
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      const float* rows;
      int64_t stride;
      if (docs.dtype == DType::Float32) {
        rows = static_cast<const float*>(docs.values) + first + j0 * docs.row_stride;
        stride = docs.row_stride;
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(docs.values) + first + j0 * docs.row_stride;
        for (int r = 0; r < rows_left; ++r) convert_row(src + r * docs.row_stride, scratch + r * dim, dim, docs.dtype);
        rows = scratch;
        stride = dim;
      }
      const char* prefetch = static_cast<const char*>(docs.values) + (first + (j0 + R) * docs.row_stride) * element_bytes;
      if (rows_left == R)
        tile<R, kArgmax, kDim>(panel, rows, stride, dim, static_cast<int32_t>(j0), prefetch,
                               docs.row_stride * element_bytes, element_bytes, running_max, running_arg, nan_seen);
      else
        tile_any<R - 1, kArgmax>(rows_left, panel, rows, stride, dim, static_cast<int32_t>(j0), prefetch,
                                 docs.row_stride * element_bytes, element_bytes, running_max, running_arg, nan_seen);
    }
    float maxima[QB];
    int32_t args[QB];
    bool nans[QB];
    for (int v = 0; v < QV; ++v) {
      V::store(maxima + v * W, running_max[v]);
      V::istore(args + v * W, running_arg[v]);
      V::store_mask(nans + v * W, nan_seen[v]);
    }
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) {
      total += nans[lane] ? std::numeric_limits<float>::quiet_NaN() : maxima[lane];
      if (kArgmax) argmax[c * QB + lane] = args[lane];
    }
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const SetBatch& docs, int64_t doc, float* scratch,
                  float* out, int32_t* argmax) {
  if (argmax) return score_impl<true>(packed, query_length, docs, doc, scratch, out, argmax);
#if !defined(TOKENSET_SIMD_SCALAR)
  // The embedding widths of common late-interaction models, as compile-time constants: a full tile's 12 row addresses
  // become one base register plus constant offsets, which frees the registers the compiler otherwise spills an
  // accumulator for (+5-9% single-core). Float16/bfloat16 rows are converted into packed scratch, so only float32
  // rows need stride == dim.
  if (docs.dtype != DType::Float32 || docs.row_stride == docs.dim) {
    switch (docs.dim) {
      case 64: return score_impl<false, 64>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 96: return score_impl<false, 96>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 128: return score_impl<false, 128>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 256: return score_impl<false, 256>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 384: return score_impl<false, 384>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 512: return score_impl<false, 512>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 768: return score_impl<false, 768>(packed, query_length, docs, doc, scratch, out, nullptr);
      case 1024: return score_impl<false, 1024>(packed, query_length, docs, doc, scratch, out, nullptr);
      default: break;
    }
  }
#endif
  score_impl<false>(packed, query_length, docs, doc, scratch, out, nullptr);
}

extern const MaxsimKernel maxsim_kernel = {QB, R, &pack_query, &score};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset

// =====================================================================================================================
// Dispatch (compiled once, in the scalar build): level choice, query packing, threads, fused top-k.
// =====================================================================================================================
#if defined(TOKENSET_SIMD_SCALAR)
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace tokenset {
namespace cpu {
namespace {

// AMX tiles take bfloat16 pairs along k in 32-element rows: both sides bfloat16, dim a multiple of 32. The argmax
// (explanations, autograd) stays on the vector kernels.
[[maybe_unused]] bool amx_applies(const MaxsimParams& p) {
  return p.queries.dtype == DType::BFloat16 && p.documents.dtype == DType::BFloat16 && p.queries.dim % 32 == 0 &&
         p.argmax == nullptr;
}

const MaxsimKernel& active_kernel(const MaxsimParams& p) {
  (void)p;
#if defined(TOKENSET_X86_LEVELS)
  switch (active_simd_level()) {
    case SimdLevel::AMX:
#if defined(TOKENSET_HAS_AMX)
      if (amx_applies(p)) return amx::maxsim_kernel;
#endif
      return avx512::maxsim_kernel;
    case SimdLevel::AVX512: return avx512::maxsim_kernel;
    case SimdLevel::AVX2: return avx2::maxsim_kernel;
    case SimdLevel::Scalar: break;
  }
#endif
  return scalar::maxsim_kernel;
}

struct AlignedFloats {
  explicit AlignedFloats(size_t count) : data(static_cast<float*>(std::aligned_alloc(64, ((count * 4 + 63) / 64) * 64 + 64))) {
    if (!data) throw std::bad_alloc();
  }
  ~AlignedFloats() { std::free(data); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data;
};

void check_params(const MaxsimParams& p) {
  check_same_dim(p);
  for (int64_t q = 0; q < p.queries.count; ++q)
    if (p.queries.length(q) == 0)
      throw ValueError("query " + std::to_string(q) + " has no tokens: an empty query has no MaxSim score");
  if (p.candidates) {
    for (int64_t i = 0; i < p.queries.count * p.num_candidates; ++i)
      if (p.candidates[i] < -1 || p.candidates[i] >= p.documents.count)
        throw ValueError("candidates[" + std::to_string(i / p.num_candidates) + ", " +
                         std::to_string(i % p.num_candidates) + "] = " + std::to_string(p.candidates[i]) +
                         " is not a document index in [0, " + std::to_string(p.documents.count) + ") or -1");
  }
}

// Packed queries: every query set's panels, side by side.
struct PackedQueries {
  PackedQueries(const MaxsimParams& p, const MaxsimKernel& kernel) : offsets(p.queries.count + 1, 0) {
    const int64_t qb = kernel.query_block, dim = p.queries.dim;
    for (int64_t q = 0; q < p.queries.count; ++q)
      offsets[q + 1] = offsets[q] + (p.queries.length(q) + qb - 1) / qb * qb * dim;
    storage.reset(new AlignedFloats(static_cast<size_t>(offsets.back())));
    struct Ctx {
      const MaxsimParams* p;
      const MaxsimKernel* kernel;
      PackedQueries* self;
    } ctx{&p, &kernel, this};
    parallel_for(p.queries.count, 16, num_threads(), [](void* c, int64_t begin, int64_t end, int) {
      auto* x = static_cast<Ctx*>(c);
      for (int64_t q = begin; q < end; ++q) x->kernel->pack_query(x->p->queries, q, x->self->at(q));
    }, &ctx);
  }
  float* at(int64_t q) { return storage->data + offsets[q]; }
  std::vector<int64_t> offsets;
  std::unique_ptr<AlignedFloats> storage;
};

struct ScoreCtx {
  const MaxsimParams* p;
  const MaxsimKernel* kernel;
  PackedQueries* packed;
  float* scratch;
  int64_t scratch_per_worker;
};

void score_items(void* c, int64_t begin, int64_t end, int worker) {
  auto* x = static_cast<ScoreCtx*>(c);
  const MaxsimParams& p = *x->p;
  float* scratch = x->scratch + worker * x->scratch_per_worker;
  const int64_t nq = p.queries.count, columns = p.columns();
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
    if (argmax)
      for (int64_t i = p.queries.length(q); i < p.queries.max_length; ++i) argmax[i] = -1;
    if (doc < 0) {
      p.scores[out] = -std::numeric_limits<float>::infinity();
      if (argmax)
        for (int64_t i = 0; i < p.queries.length(q); ++i) argmax[i] = -1;
      continue;
    }
    x->kernel->score(x->packed->at(q), p.queries.length(q), p.documents, doc, scratch, p.scores + out, argmax);
  }
}

int64_t grain_for(int64_t items, int threads) {
  return std::max<int64_t>(1, items / (static_cast<int64_t>(threads) * 32));
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

struct TopkCtx {
  const MaxsimParams* p;
  const MaxsimKernel* kernel;
  PackedQueries* packed;
  float* scratch;
  int64_t scratch_per_worker;
  int64_t k;
  Entry* heaps;     // [workers][nq][k]; heap top = the worst kept entry
  int64_t* sizes;   // [workers][nq]
};

void topk_items(void* c, int64_t begin, int64_t end, int worker) {
  auto* x = static_cast<TopkCtx*>(c);
  const MaxsimParams& p = *x->p;
  const int64_t nq = p.queries.count, k = x->k;
  float* scratch = x->scratch + worker * x->scratch_per_worker;
  Entry* heaps = x->heaps + worker * nq * k;
  int64_t* sizes = x->sizes + worker * nq;
  for (int64_t doc = begin; doc < end; ++doc) {
    for (int64_t q = 0; q < nq; ++q) {
      Entry e{0.0f, doc};
      x->kernel->score(x->packed->at(q), p.queries.length(q), p.documents, doc, scratch, &e.score, nullptr);
      Entry* heap = heaps + q * k;
      int64_t& size = sizes[q];
      if (size < k) {
        heap[size++] = e;
        std::push_heap(heap, heap + size, ranks_before);
      } else if (ranks_before(e, heap[0])) {
        std::pop_heap(heap, heap + size, ranks_before);
        heap[size - 1] = e;
        std::push_heap(heap, heap + size, ranks_before);
      }
    }
  }
}

}  // namespace

void maxsim(const MaxsimParams& p) {
  check_params(p);
  const int64_t items = p.queries.count * p.columns();
  if (items == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  PackedQueries packed(p, kernel);
  const int threads = num_threads();
  const int64_t scratch_per_worker = static_cast<int64_t>(kernel.doc_block) * p.documents.dim;
  AlignedFloats scratch(static_cast<size_t>(scratch_per_worker) * threads);
  ScoreCtx ctx{&p, &kernel, &packed, scratch.data, scratch_per_worker};
  parallel_for(items, grain_for(items, threads), threads, score_items, &ctx);
}

void maxsim_topk(const MaxsimParams& p, int64_t k, float* top_scores, int64_t* top_indices) {
  if (k < 1) throw ValueError("k must be >= 1, got " + std::to_string(k));
  if (p.candidates) throw ValueError("maxsim_topk scores all documents; candidates are not supported");
  check_params(p);
  const int64_t nq = p.queries.count, nd = p.documents.count;
  if (nq == 0) return;
  const int64_t kept = std::min(k, nd);
  for (int64_t i = 0; i < nq * k; ++i) {
    top_scores[i] = -std::numeric_limits<float>::infinity();
    top_indices[i] = -1;
  }
  if (kept == 0) return;
  const MaxsimKernel& kernel = active_kernel(p);
  PackedQueries packed(p, kernel);
  const int threads = num_threads();
  const int64_t scratch_per_worker = static_cast<int64_t>(kernel.doc_block) * p.documents.dim;
  AlignedFloats scratch(static_cast<size_t>(scratch_per_worker) * threads);
  std::vector<Entry> heaps(static_cast<size_t>(threads) * nq * kept);
  std::vector<int64_t> sizes(static_cast<size_t>(threads) * nq, 0);
  TopkCtx ctx{&p, &kernel, &packed, scratch.data, scratch_per_worker, kept, heaps.data(), sizes.data()};
  parallel_for(nd, grain_for(nd, threads), threads, topk_items, &ctx);
  // Merge the workers' heaps per query.
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
      top_scores[q * k + i] = merged[i].score;
      top_indices[q * k + i] = merged[i].index;
    }
  }
}

}  // namespace cpu
}  // namespace tokenset
#endif  // TOKENSET_SIMD_SCALAR
