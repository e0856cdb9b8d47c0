// MUVERA Fixed Dimensional Encodings on the CPU (semantics in tokenset/fde.h).
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512); each build defines a kernel
// table, and the scalar build also holds the driver (threads over sets, partitions, fill, Count-Sketch).
//
// Per set, one pass computes the sign patterns of every token in every repetition: the dot products of a tile of
// tokens with all reps * simhash_bits hyperplanes at once (a GEMM-shaped register tile: broadcast x[k], FMA with a
// row of the packed hyperplane matrix). Then, repetition by repetition, tokens are added to their partition.
// The AMS projection is linear, so a projected encoder adds the raw tokens of each partition first (SIMD adds) and
// projects each non-empty partition once, instead of projecting every token: n * dim / W adds plus (non-empty
// partitions) * dim scattered adds, instead of n * dim scattered adds.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"
#include "tokenset/cpu_runtime.h"
#include "tokenset/fde.h"

namespace tokenset {
namespace cpu {

// The per-level kernel table.
struct FdeKernel {
  int width;  // floats per vector: hyperplane columns are padded to a multiple of it
  // dst[t * dim + k] = float(set row `first + t`, element k) for t < count.
  void (*convert_rows)(const SetBatch& sets, int64_t first, int64_t count, float* dst);
  // dots[t * cpad + c] = <x_t, g[:, c]> for t < count; x rows `stride` floats apart, g packed [dim][cpad].
  void (*simhash_dots)(const float* x, int64_t stride, int64_t count, int64_t dim, const float* g, int64_t cpad,
                       float* dots);
  // acc[k] += x[k] for k < dim.
  void (*add_row)(float* acc, const float* x, int64_t dim);
  // y[j] += sum_i x[i] * dense[i * pdpad + j] for j < pd, with pd <= 4 * width and pdpad = pd rounded up to width:
  // the AMS projection as a dense row-by-row product (one broadcast-FMA per input coordinate and vector), which
  // beats scattered scalar adds (each waits for the previous store to the same column) for small pd.
  void (*project_dense)(const float* x, const float* dense, int64_t dim, int64_t pd, int64_t pdpad, float* y);
};

namespace scalar {
extern const FdeKernel fde_kernel;
}
#if defined(TOKENSET_X86_LEVELS)
namespace avx2 {
extern const FdeKernel fde_kernel;
}
namespace avx512 {
extern const FdeKernel fde_kernel;
}
#endif

namespace TOKENSET_SIMD_NS {

// Register tile of the hyperplane dots: TT tokens x CV vectors of columns.
#if defined(TOKENSET_SIMD_AVX512)
constexpr int kTileTokens = 4, kTileVectors = 4;  // 16 accumulators + 4 hyperplane vectors + 1 broadcast
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kTileTokens = 4, kTileVectors = 2;  // 8 accumulators + 2 hyperplane vectors + 1 broadcast
#else
constexpr int kTileTokens = 4, kTileVectors = 4;
#endif

static void convert_rows(const SetBatch& sets, int64_t first, int64_t count, float* dst) {
  const int64_t dim = sets.dim;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t row = (first + t) * sets.row_stride;
    if (sets.dtype == DType::Float32)
      std::memcpy(dst + t * dim, static_cast<const float*>(sets.values) + row, sizeof(float) * dim);
    else
      convert_row(static_cast<const uint16_t*>(sets.values) + row, dst + t * dim, dim, sets.dtype);
  }
}

template <int TT, int CV>
static inline void dots_tile(const float* x, int64_t stride, int64_t dim, const float* g, int64_t cpad, float* dots) {
  V::type acc[TT][CV];
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < CV; ++v) acc[t][v] = V::zero();
#pragma GCC unroll 4
  for (int64_t k = 0; k < dim; ++k) {
    V::type h[CV];
    for (int v = 0; v < CV; ++v) h[v] = V::load(g + k * cpad + v * W);
    for (int t = 0; t < TT; ++t) {
      const V::type b = V::set1(x[t * stride + k]);
      for (int v = 0; v < CV; ++v) acc[t][v] = V::fmadd(b, h[v], acc[t][v]);
    }
  }
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < CV; ++v) V::store(dots + t * cpad + v * W, acc[t][v]);
}

template <int TT, int CV>
static inline void dots_tile_any(int tokens, int vectors, const float* x, int64_t stride, int64_t dim, const float* g,
                                 int64_t cpad, float* dots) {
  if constexpr (TT >= 1 && CV >= 1) {
    if (tokens < TT) {
      dots_tile_any<TT - 1, CV>(tokens, vectors, x, stride, dim, g, cpad, dots);
    } else if (vectors < CV) {
      dots_tile_any<TT, CV - 1>(tokens, vectors, x, stride, dim, g, cpad, dots);
    } else {
      dots_tile<TT, CV>(x, stride, dim, g, cpad, dots);
    }
  }
}

static void simhash_dots(const float* x, int64_t stride, int64_t count, int64_t dim, const float* g, int64_t cpad,
                         float* dots) {
  const int64_t vectors = cpad / W;
  for (int64_t t0 = 0; t0 < count; t0 += kTileTokens) {
    const int tokens = static_cast<int>(count - t0 < kTileTokens ? count - t0 : kTileTokens);
    for (int64_t v0 = 0; v0 < vectors; v0 += kTileVectors) {
      const int vs = static_cast<int>(vectors - v0 < kTileVectors ? vectors - v0 : kTileVectors);
      dots_tile_any<kTileTokens, kTileVectors>(tokens, vs, x + t0 * stride, stride, dim, g + v0 * W, cpad,
                                               dots + t0 * cpad + v0 * W);
    }
  }
}

static void add_row(float* acc, const float* x, int64_t dim) {
  int64_t k = 0;
  for (; k + W <= dim; k += W) V::store(acc + k, V::add(V::load(acc + k), V::load(x + k)));
  for (; k < dim; ++k) acc[k] += x[k];
}

// PV vectors of output columns, CH independent FMA chains (input coordinates i = c mod CH) to hide FMA latency.
template <int PV, int CH>
static void project_dense_impl(const float* x, const float* dense, int64_t dim, int64_t pd, int64_t pdpad, float* y) {
  V::type acc[CH][PV];
  for (int c = 0; c < CH; ++c)
    for (int v = 0; v < PV; ++v) acc[c][v] = V::zero();
  int64_t i = 0;
  for (; i + CH <= dim; i += CH)
    for (int c = 0; c < CH; ++c) {
      const V::type b = V::set1(x[i + c]);
      for (int v = 0; v < PV; ++v) acc[c][v] = V::fmadd(b, V::load(dense + (i + c) * pdpad + v * W), acc[c][v]);
    }
  for (; i < dim; ++i) {
    const V::type b = V::set1(x[i]);
    for (int v = 0; v < PV; ++v) acc[0][v] = V::fmadd(b, V::load(dense + i * pdpad + v * W), acc[0][v]);
  }
  float sum[PV * W];
  for (int v = 0; v < PV; ++v) {
    V::type total = acc[0][v];
    for (int c = 1; c < CH; ++c) total = V::add(total, acc[c][v]);
    V::store(sum + v * W, total);
  }
  for (int64_t j = 0; j < pd; ++j) y[j] += sum[j];
}

static void project_dense(const float* x, const float* dense, int64_t dim, int64_t pd, int64_t pdpad, float* y) {
  switch ((pd + W - 1) / W) {
    case 1: project_dense_impl<1, 8>(x, dense, dim, pd, pdpad, y); break;
    case 2: project_dense_impl<2, 4>(x, dense, dim, pd, pdpad, y); break;
    case 3: project_dense_impl<3, 2>(x, dense, dim, pd, pdpad, y); break;
    default: project_dense_impl<4, 2>(x, dense, dim, pd, pdpad, y); break;
  }
}

extern const FdeKernel fde_kernel = {W, &convert_rows, &simhash_dots, &add_row, &project_dense};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset

// =====================================================================================================================
// Driver (compiled once, in the scalar build).
// =====================================================================================================================
#if defined(TOKENSET_SIMD_SCALAR)
#include <algorithm>
#include <vector>

namespace tokenset {
namespace cpu {
namespace {

const FdeKernel& active_kernel() {
#if defined(TOKENSET_X86_LEVELS)
  switch (active_simd_level()) {
    case SimdLevel::AVX512: return avx512::fde_kernel;
    case SimdLevel::AVX2: return avx2::fde_kernel;
    case SimdLevel::Scalar: break;
  }
#endif
  return scalar::fde_kernel;
}

// Tokens whose hyperplane dots are computed together (bounds the dots scratch at kDotTokens * cpad floats).
constexpr int64_t kDotTokens = 64;
// A projected encoder sums raw tokens per partition in scratch of 2^bits * dim floats when it is at most this large;
// above it (many partitions) it projects each token instead.
constexpr int64_t kMaxPartitionSums = int64_t(1) << 20;

inline uint32_t partition_of(uint32_t pattern) {  // the p whose Gray code p ^ (p >> 1) is `pattern`
  uint32_t p = pattern;
  for (int shift = 1; shift < 32; shift <<= 1) p ^= p >> shift;
  return p;
}

inline uint32_t gray_code(uint32_t p) { return p ^ (p >> 1); }

struct Scratch {
  std::vector<float> tokens;    // the set as float32 (float16 / bfloat16 input only) [n, dim]
  std::vector<float> dots;      // [kDotTokens, cpad]
  std::vector<uint32_t> codes;  // sign patterns [n, reps]
  std::vector<int32_t> counts;  // tokens per partition of the current repetition [2^bits]
  std::vector<float> sums;      // raw partition sums of the current repetition [2^bits, dim] (projected encoders)
  std::vector<float> row;       // the FDE before the Count-Sketch [fde_dim]
};

struct Ctx {
  const FdeParams* p;
  const FdeKernel* kernel;
  std::vector<float> hyperplanes;  // [dim, cpad], columns past reps * bits zero
  int64_t cpad = 0;
  bool sum_then_project = false;
  std::vector<float> dense;  // [reps, dim, pdpad]: the projection as dense rows, when proj_dim <= 4 * width
  int64_t pdpad = 0;
  std::vector<Scratch> scratch;  // one per worker
};

// Adds x projected by repetition `rep` into `block` [proj_dim].
inline void add_projected(const Ctx& c, int64_t rep, const float* x, float* block) {
  const FdeParams& p = *c.p;
  const int64_t dim = p.sets.dim;
  if (!c.dense.empty()) {
    c.kernel->project_dense(x, c.dense.data() + rep * dim * c.pdpad, dim, p.proj_dim, c.pdpad, block);
    return;
  }
  const int32_t* index = p.proj_index + rep * dim;
  const float* weight = p.proj_weight + rep * dim;
  for (int64_t i = 0; i < dim; ++i) block[index[i]] += weight[i] * x[i];
}

// Encodes one set into its output row; `s` was sized by fde_encode for the longest set (nothing here allocates).
void encode_set(Ctx& c, int64_t set, Scratch& s) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim, n = p.sets.length(set), first = p.sets.begin(set);
  const int64_t reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
  const bool identity = p.proj_index == nullptr;
  // The set's tokens as float32 rows: in place for float32 input, converted once otherwise.
  const float* x;
  int64_t stride;
  if (p.sets.dtype == DType::Float32) {
    x = static_cast<const float*>(p.sets.values) + first * p.sets.row_stride;
    stride = p.sets.row_stride;
  } else {
    kernel.convert_rows(p.sets, first, n, s.tokens.data());
    x = s.tokens.data();
    stride = dim;
  }

  // Sign patterns of every token in every repetition.
  uint32_t* codes = s.codes.data();
  if (bits == 0) {
    std::fill(codes, codes + n * reps, 0u);
  } else {
    for (int64_t t0 = 0; t0 < n; t0 += kDotTokens) {
      const int64_t count = std::min(kDotTokens, n - t0);
      kernel.simhash_dots(x + t0 * stride, stride, count, dim, c.hyperplanes.data(), c.cpad, s.dots.data());
      for (int64_t t = 0; t < count; ++t) {
        const float* d = s.dots.data() + t * c.cpad;
        for (int64_t r = 0; r < reps; ++r) {
          uint32_t pattern = 0;
          for (int64_t j = 0; j < bits; ++j) pattern = (pattern << 1) | (d[r * bits + j] > 0.0f ? 1u : 0u);
          codes[(t0 + t) * reps + r] = pattern;
        }
      }
    }
  }
  if (p.partitions) {
    int32_t* out = p.partitions + (first - p.sets.offsets[0]) * reps;
    for (int64_t i = 0; i < n * reps; ++i) out[i] = static_cast<int32_t>(partition_of(codes[i]));
  }
  if (!p.encode) return;

  float* row = p.final_dim > 0 ? s.row.data() : p.out + set * p.output_dim();
  std::fill(row, row + p.fde_dim(), 0.0f);

  int32_t* counts = s.counts.data();
  for (int64_t r = 0; r < reps; ++r) {
    float* rep_row = row + r * parts * pd;
    std::fill(counts, counts + parts, 0);
    for (int64_t t = 0; t < n; ++t) {
      const uint32_t part = partition_of(codes[t * reps + r]);
      const float* token = x + t * stride;
      if (identity) {
        kernel.add_row(rep_row + part * pd, token, dim);
      } else if (c.sum_then_project) {
        float* sum = s.sums.data() + part * dim;
        if (counts[part] == 0)
          std::memcpy(sum, token, sizeof(float) * dim);
        else
          kernel.add_row(sum, token, dim);
      } else {
        add_projected(c, r, token, rep_row + part * pd);
      }
      ++counts[part];
    }
    for (int64_t part = 0; part < parts; ++part) {
      float* block = rep_row + part * pd;
      const int32_t count = counts[part];
      if (count > 0) {
        if (c.sum_then_project) add_projected(c, r, s.sums.data() + part * dim, block);
        if (p.average)
          for (int64_t k = 0; k < pd; ++k) block[k] /= static_cast<float>(count);
      } else if (p.fill_empty && bits > 0 && n > 0) {
        // Nearest token by Hamming distance of sign patterns; 1 is the least possible for an empty partition.
        const uint32_t target = gray_code(static_cast<uint32_t>(part));
        int64_t best = 0;
        int best_distance = 33;
        for (int64_t t = 0; t < n && best_distance > 1; ++t) {
          const int distance = __builtin_popcount(codes[t * reps + r] ^ target);
          if (distance < best_distance) {
            best_distance = distance;
            best = t;
          }
        }
        if (identity)
          std::memcpy(block, x + best * stride, sizeof(float) * dim);
        else
          add_projected(c, r, x + best * stride, block);
      }
    }
  }

  if (p.final_dim > 0) {
    float* out = p.out + set * p.final_dim;
    std::fill(out, out + p.final_dim, 0.0f);
    const int64_t fde_dim = p.fde_dim();
    for (int64_t i = 0; i < fde_dim; ++i) out[p.final_index[i]] += p.final_sign[i] * row[i];
  }
}

void encode_range(void* ctx, int64_t begin, int64_t end, int worker) {
  Ctx& c = *static_cast<Ctx*>(ctx);
  for (int64_t set = begin; set < end; ++set) encode_set(c, set, c.scratch[static_cast<size_t>(worker)]);
}

}  // namespace

void fde_encode(const FdeParams& p) {
  check_fde_params(p, p.proj_index, p.final_index, nullptr, nullptr);
  if (p.sets.count > 0 && (p.encode ? p.out == nullptr : p.partitions == nullptr))
    throw ValueError("FDE output pointer is null");
  if (!p.average)
    for (int64_t q = 0; q < p.sets.count; ++q)
      if (p.sets.length(q) == 0)
        throw ValueError("query " + std::to_string(q) + " has no tokens: an empty query has no FDE; drop it");
  if (p.sets.count == 0) return;

  Ctx c;
  c.p = &p;
  c.kernel = &active_kernel();
  const int64_t dim = p.sets.dim, columns = p.reps * p.simhash_bits, width = c.kernel->width;
  c.cpad = (columns + width - 1) / width * width;
  c.hyperplanes.assign(static_cast<size_t>(dim * c.cpad), 0.0f);
  for (int64_t k = 0; k < dim; ++k)
    std::memcpy(c.hyperplanes.data() + k * c.cpad, p.simhash + k * columns, sizeof(float) * columns);
  c.sum_then_project = p.proj_index != nullptr && p.num_partitions() * dim <= kMaxPartitionSums;
  if (p.proj_index != nullptr && p.proj_dim <= 4 * width) {
    c.pdpad = (p.proj_dim + width - 1) / width * width;
    c.dense.assign(static_cast<size_t>(p.reps * dim * c.pdpad), 0.0f);
    for (int64_t r = 0; r < p.reps; ++r)
      for (int64_t i = 0; i < dim; ++i)
        c.dense[static_cast<size_t>((r * dim + i) * c.pdpad + p.proj_index[r * dim + i])] = p.proj_weight[r * dim + i];
  }

  // All scratch is allocated here: workers must not throw (std::bad_alloc included).
  const int threads = num_threads();
  const int64_t longest = p.sets.max_length;
  c.scratch.resize(static_cast<size_t>(threads));
  for (Scratch& s : c.scratch) {
    if (p.sets.dtype != DType::Float32) s.tokens.resize(static_cast<size_t>(longest * dim));
    s.codes.resize(static_cast<size_t>(longest * p.reps));
    s.dots.resize(static_cast<size_t>(kDotTokens * std::max<int64_t>(c.cpad, 1)));
    if (!p.encode) continue;
    s.counts.resize(static_cast<size_t>(p.num_partitions()));
    if (c.sum_then_project) s.sums.resize(static_cast<size_t>(p.num_partitions() * dim));
    if (p.final_dim > 0) s.row.resize(static_cast<size_t>(p.fde_dim()));
  }
  const int64_t grain = std::max<int64_t>(1, p.sets.count / (static_cast<int64_t>(threads) * 16));
  parallel_for(p.sets.count, grain, threads, encode_range, &c);
}

}  // namespace cpu
}  // namespace tokenset
#endif  // TOKENSET_SIMD_SCALAR
