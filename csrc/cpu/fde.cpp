// MUVERA Fixed Dimensional Encodings on the CPU (semantics in tokenset/fde.h).
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512); each build defines a kernel
// table, and the scalar build also holds the driver (threads over sets, partitions, fill, Count-Sketch).
//
// Per set, one pass computes the sign patterns of every token in every repetition: the dot products of a tile of
// tokens with all reps * simhash_bits hyperplanes at once (a GEMM-shaped register tile: broadcast x[k], FMA with a
// row of the packed hyperplane matrix), read back as compare masks. Identity encoders then sum tokens per partition
// (SIMD adds) and write each output block once. Projected encoders transpose blocks of 64 tokens and project a whole
// block per repetition with the sparse AMS structure (encode_projected), then add the projected rows to their
// partitions.
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
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (width x width register tiles).
  void (*transpose)(const float* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst, int64_t dst_stride);
  // The AMS projection of all tokens of a set at once, in transposed form: yt[j * npad + t] = sum over k in
  // starts[j] .. starts[j+1] of weight[k] * xt[order[k] * npad + t] (order: the input coordinates sent to column j,
  // weight: theirs, in the same order). Each input
  // coordinate costs one broadcast-FMA per `width` tokens, instead of one per token with a dense matrix.
  void (*project_tokens)(const float* xt, int64_t npad, const int32_t* order, const int32_t* starts,
                         const float* weight, int64_t pd, float* yt);
  // codes[t * reps + r] = bits of dots[t * cpad + r * bits .. + bits) > 0, column r * bits + m giving bit m (the
  // driver stores each repetition's hyperplanes in reverse, so bit m is hyperplane bits - 1 - m: the first hyperplane
  // ends up most significant). NaN is not > 0. words: scratch of cpad / 64 + 1 words.
  void (*sign_patterns)(const float* dots, int64_t count, int64_t cpad, int64_t reps, int bits, uint64_t* words,
                        uint32_t* codes);
  // dst[k] = src[k] / divisor for k < n (IEEE division, as the reference).
  void (*divide_row)(float* dst, const float* src, int64_t n, float divisor);
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

#if defined(TOKENSET_SIMD_AVX512)
// 16 x 16 tile: 32-bit then 64-bit interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
static inline void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4g + m], lane L: column 4L + m of rows 4g .. 4g + 3.
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x44), v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x44);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xEE);
    _mm512_storeu_ps(dst + (0 + m) * ds, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_storeu_ps(dst + (4 + m) * ds, _mm512_shuffle_f32x4(v0, w0, 0xDD));
    _mm512_storeu_ps(dst + (8 + m) * ds, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_storeu_ps(dst + (12 + m) * ds, _mm512_shuffle_f32x4(v1, w1, 0xDD));
  }
}
#elif defined(TOKENSET_SIMD_AVX2)
// 8 x 8 tile: 32-bit then 64-bit interleaves within 128-bit lanes, then one 128-bit lane permute.
static inline void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g) {
    const __m256d a = _mm256_castps_pd(t[4 * g]), b = _mm256_castps_pd(t[4 * g + 1]);
    const __m256d c = _mm256_castps_pd(t[4 * g + 2]), d = _mm256_castps_pd(t[4 * g + 3]);
    r[4 * g + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    _mm256_storeu_ps(dst + m * ds, _mm256_permute2f128_ps(r[m], r[4 + m], 0x20));
    _mm256_storeu_ps(dst + (4 + m) * ds, _mm256_permute2f128_ps(r[m], r[4 + m], 0x31));
  }
}
#else
static inline void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds) { (void)ss, (void)ds; *dst = *src; }
#endif

static void transpose(const float* src, int64_t rows, int64_t cols, int64_t ss, float* dst, int64_t ds) {
  for (int64_t r0 = 0; r0 < rows; r0 += W) {
    for (int64_t c0 = 0; c0 < cols; c0 += W) {
      if (r0 + W <= rows && c0 + W <= cols) {
        transpose_tile(src + r0 * ss + c0, ss, dst + c0 * ds + r0, ds);
      } else {
        for (int64_t r = r0; r < rows && r < r0 + W; ++r)
          for (int64_t c = c0; c < cols && c < c0 + W; ++c) dst[c * ds + r] = src[r * ss + c];
      }
    }
  }
}

// Columns j and j + 1 together, VS vectors of tokens each: 2 * VS independent FMA chains while their input
// coordinates stream past (a column has dim / pd of them on average).
template <int VS, bool kPair>
static inline void project_columns(const float* xt, int64_t npad, const int32_t* order, const int32_t* starts,
                                   const float* weight, float* out) {
  V::type a[VS], b[VS];
  for (int v = 0; v < VS; ++v) a[v] = b[v] = V::zero();
  const int32_t a0 = starts[0], a1 = starts[1];
  const int32_t b0 = kPair ? starts[1] : 0, b1 = kPair ? starts[2] : 0;
  const int32_t common = kPair ? (a1 - a0 < b1 - b0 ? a1 - a0 : b1 - b0) : 0;
  for (int32_t k = 0; k < common; ++k) {
    const int32_t i = order[a0 + k], l = order[b0 + k];
    const V::type wi = V::set1(weight[a0 + k]), wl = V::set1(weight[b0 + k]);
    for (int v = 0; v < VS; ++v) {
      a[v] = V::fmadd(wi, V::load(xt + i * npad + v * W), a[v]);
      b[v] = V::fmadd(wl, V::load(xt + l * npad + v * W), b[v]);
    }
  }
  for (int32_t k = a0 + common; k < a1; ++k) {
    const V::type w = V::set1(weight[k]);
    for (int v = 0; v < VS; ++v) a[v] = V::fmadd(w, V::load(xt + order[k] * npad + v * W), a[v]);
  }
  for (int32_t k = b0 + common; k < b1; ++k) {
    const V::type w = V::set1(weight[k]);
    for (int v = 0; v < VS; ++v) b[v] = V::fmadd(w, V::load(xt + order[k] * npad + v * W), b[v]);
  }
  for (int v = 0; v < VS; ++v) V::store(out + v * W, a[v]);
  if (kPair)
    for (int v = 0; v < VS; ++v) V::store(out + npad + v * W, b[v]);
}

// npad tokens (a multiple of W, at most kProjectTokens) per call.
static void project_tokens(const float* xt, int64_t npad, const int32_t* order, const int32_t* starts,
                           const float* weight, int64_t pd, float* yt) {
  constexpr int kVectors = 64 / W < 8 ? 64 / W : 8;
  for (int64_t t0 = 0; t0 < npad; t0 += kVectors * W) {
    const int64_t vs = (npad - t0) / W < kVectors ? (npad - t0) / W : kVectors;
    for (int64_t j = 0; j < pd; j += 2) {
      const bool pair = j + 1 < pd;
      const float* x = xt + t0;
      float* out = yt + j * npad + t0;
#define TOKENSET_PROJECT_CASE(N)                                                          \
  case N:                                                                                 \
    if (pair)                                                                             \
      project_columns<(N < kVectors ? N : kVectors), true>(x, npad, order, starts + j, weight, out);  \
    else                                                                                  \
      project_columns<(N < kVectors ? N : kVectors), false>(x, npad, order, starts + j, weight, out); \
    break;
      switch (vs) {
        TOKENSET_PROJECT_CASE(1)
        TOKENSET_PROJECT_CASE(2)
        TOKENSET_PROJECT_CASE(3)
        TOKENSET_PROJECT_CASE(4)
        TOKENSET_PROJECT_CASE(5)
        TOKENSET_PROJECT_CASE(6)
        TOKENSET_PROJECT_CASE(7)
        default:
          if (pair)
            project_columns<kVectors, true>(x, npad, order, starts + j, weight, out);
          else
            project_columns<kVectors, false>(x, npad, order, starts + j, weight, out);
      }
#undef TOKENSET_PROJECT_CASE
    }
  }
}

static void sign_patterns(const float* dots, int64_t count, int64_t cpad, int64_t reps, int bits, uint64_t* words,
                          uint32_t* codes) {
  const int64_t vectors = cpad / W;
  const uint32_t low = bits >= 32 ? 0xffffffffu : ((1u << bits) - 1u);
  for (int64_t t = 0; t < count; ++t) {
    const float* d = dots + t * cpad;
    for (int64_t w = 0; w * 64 < cpad; ++w) words[w] = 0;
    for (int64_t v = 0; v < vectors; ++v) {
      const uint64_t m = V::mask_bits(V::greater(V::load(d + v * W), V::zero()));
      const int64_t bit = v * W;
      words[bit / 64] |= m << (bit % 64);  // W divides 64: a vector's bits never straddle two words
    }
    for (int64_t r = 0; r < reps; ++r) {
      const int64_t start = r * bits, word = start / 64, offset = start % 64;
      uint64_t value = words[word] >> offset;
      if (offset + bits > 64) value |= words[word + 1] << (64 - offset);
      codes[t * reps + r] = static_cast<uint32_t>(value) & low;
    }
  }
}

static void divide_row(float* dst, const float* src, int64_t n, float divisor) {
  const V::type d = V::set1(divisor);
  int64_t k = 0;
  for (; k + W <= n; k += W) V::store(dst + k, V::div(V::load(src + k), d));
  for (; k < n; ++k) dst[k] = src[k] / divisor;
}

extern const FdeKernel fde_kernel = {W,          &convert_rows,   &simhash_dots,  &add_row,
                                     &transpose, &project_tokens, &sign_patterns, &divide_row};

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
// Raw tokens are summed per partition in scratch of 2^bits * dim floats when it is at most this large; above it
// (many partitions) tokens go straight to the output row.
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
  std::vector<uint64_t> words;  // one token's sign bits, all columns [cpad / 64 + 1]
  std::vector<int32_t> counts;  // tokens per partition [2^bits] ([reps, 2^bits] for projected encoders)
  std::vector<float> sums;      // raw partition sums of the current repetition [2^bits, dim]
  std::vector<float> xt;        // projected encoders: a block of tokens transposed [dim, kProjectTokens]
  std::vector<float> yt;        // ... its projection, transposed [proj_dim, kProjectTokens]
  std::vector<float> y;         // ... and in rows [kProjectTokens, proj_dim]
  std::vector<float> row;       // the FDE before the Count-Sketch [fde_dim]
};

struct Ctx {
  const FdeParams* p;
  const FdeKernel* kernel;
  std::vector<float> hyperplanes;  // [dim, cpad], columns past reps * bits zero
  int64_t cpad = 0;
  bool via_sums = false;  // encode_rep_via_sums (else encode_rep_direct)
  // The AMS projection grouped by output column, per repetition: proj_order[r * dim + ..], proj_starts[r][pd + 1].
  std::vector<int32_t> proj_order, proj_starts;
  std::vector<float> proj_weight_ordered;  // proj_weight[r][proj_order[r][k]] at [r * dim + k]
  std::vector<Scratch> scratch;  // one per worker
};

// The token nearest to empty partition `part` of repetition `rep`: least Hamming distance between its sign pattern
// and the partition's Gray code, lowest index on ties. 1 is the least distance possible for an empty partition.
int64_t nearest_token(const uint32_t* codes, int64_t n, int64_t reps, int64_t rep, int64_t part) {
  const uint32_t target = gray_code(static_cast<uint32_t>(part));
  int64_t best = 0;
  int best_distance = 33;
  for (int64_t t = 0; t < n && best_distance > 1; ++t) {
    const int distance = __builtin_popcount(codes[t * reps + rep] ^ target);
    if (distance < best_distance) {
      best_distance = distance;
      best = t;
    }
  }
  return best;
}

// Identity projection, one repetition, when 2^bits * dim floats of partition sums fit in scratch: tokens are summed
// per partition (SIMD adds), then every block of the output is written exactly once (divided, filled or zeroed).
void encode_rep_via_sums(Ctx& c, Scratch& s, int64_t r, const float* x, int64_t stride, int64_t n, float* rep_row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim, reps = p.reps, parts = p.num_partitions(), pd = dim;
  const uint32_t* codes = s.codes.data();
  int32_t* counts = s.counts.data();
  float* sums = s.sums.data();
  std::fill(counts, counts + parts, 0);
  for (int64_t t = 0; t < n; ++t) {
    const uint32_t part = partition_of(codes[t * reps + r]);
    float* sum = sums + part * dim;
    if (counts[part]++ == 0)
      std::memcpy(sum, x + t * stride, sizeof(float) * dim);
    else
      kernel.add_row(sum, x + t * stride, dim);
  }
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    const float* source;  // the block's value before any division
    if (count > 0) {
      source = sums + part * dim;
    } else if (p.fill_empty && p.simhash_bits > 0 && n > 0) {
      source = x + nearest_token(codes, n, reps, r, part) * stride;
    } else {
      std::memset(block, 0, sizeof(float) * pd);
      continue;
    }
    if (count > 1 && p.average)
      kernel.divide_row(block, source, pd, static_cast<float>(count));
    else
      std::memcpy(block, source, sizeof(float) * pd);
  }
}

// Identity projection, one repetition, when partition sums would not fit in scratch (many partitions): each token
// (a row of `y`, `y_stride` floats apart) is added to its zeroed output block, then non-empty blocks are divided and
// empty ones filled with the nearest token.
void encode_rep_direct(Ctx& c, Scratch& s, int64_t r, const float* y, int64_t y_stride, int64_t n, float* rep_row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t reps = p.reps, parts = p.num_partitions(), pd = p.proj_dim;
  const uint32_t* codes = s.codes.data();
  int32_t* counts = s.counts.data();
  std::fill(counts, counts + parts, 0);
  std::fill(rep_row, rep_row + parts * pd, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const uint32_t part = partition_of(codes[t * reps + r]);
    kernel.add_row(rep_row + part * pd, y + t * y_stride, pd);
    ++counts[part];
  }
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    if (count > 1 && p.average)
      kernel.divide_row(block, block, pd, static_cast<float>(count));
    else if (count == 0 && p.fill_empty && p.simhash_bits > 0 && n > 0)
      std::memcpy(block, y + nearest_token(codes, n, reps, r, part) * y_stride, sizeof(float) * pd);
  }
}

// Constant for every level: the transposed token block of a projected encoder is dim x 64 floats (32 KiB at dim 128,
// so it stays in L1 while every repetition projects it).
constexpr int64_t kProjectTokens = 64;

// The AMS projection of token x by repetition r into y [proj_dim] (used to fill empty partitions).
void project_token(const Ctx& c, int64_t r, const float* x, float* y) {
  const FdeParams& p = *c.p;
  const int64_t dim = p.sets.dim, pd = p.proj_dim;
  const int32_t* order = c.proj_order.data() + r * dim;
  const int32_t* starts = c.proj_starts.data() + r * (pd + 1);
  for (int64_t j = 0; j < pd; ++j) {
    float v = 0.0f;
    for (int32_t k = starts[j]; k < starts[j + 1]; ++k) v += p.proj_weight[r * dim + order[k]] * x[order[k]];
    y[j] = v;
  }
}

// Projected encoders. Tokens go in blocks of 64: a block is transposed once; every repetition projects the whole
// block with the sparse AMS structure (project_tokens), transposes the result back and adds each token's row to its
// partition in the zeroed output row. Then blocks are divided and empty ones filled.
void encode_projected(Ctx& c, Scratch& s, const float* x, int64_t stride, int64_t n, float* row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim, reps = p.reps, parts = p.num_partitions(), pd = p.proj_dim;
  const uint32_t* codes = s.codes.data();
  int32_t* counts = s.counts.data();  // [reps, parts]
  std::fill(counts, counts + reps * parts, 0);
  std::fill(row, row + p.fde_dim(), 0.0f);
  float* xt = s.xt.data();
  for (int64_t t0 = 0; t0 < n; t0 += kProjectTokens) {
    const int64_t nb = std::min(kProjectTokens, n - t0);
    if (nb < kProjectTokens) std::fill(xt, xt + dim * kProjectTokens, 0.0f);
    kernel.transpose(x + t0 * stride, nb, dim, stride, xt, kProjectTokens);
    for (int64_t r = 0; r < reps; ++r) {
      kernel.project_tokens(xt, kProjectTokens, c.proj_order.data() + r * dim, c.proj_starts.data() + r * (pd + 1),
                            c.proj_weight_ordered.data() + r * dim, pd, s.yt.data());
      kernel.transpose(s.yt.data(), pd, nb, kProjectTokens, s.y.data(), pd);
      float* rep_row = row + r * parts * pd;
      int32_t* rep_counts = counts + r * parts;
      for (int64_t t = 0; t < nb; ++t) {
        const uint32_t part = partition_of(codes[(t0 + t) * reps + r]);
        kernel.add_row(rep_row + part * pd, s.y.data() + t * pd, pd);
        ++rep_counts[part];
      }
    }
  }
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t part = 0; part < parts; ++part) {
      float* block = row + (r * parts + part) * pd;
      const int32_t count = counts[r * parts + part];
      if (count > 1 && p.average)
        kernel.divide_row(block, block, pd, static_cast<float>(count));
      else if (count == 0 && p.fill_empty && p.simhash_bits > 0 && n > 0)
        project_token(c, r, x + nearest_token(codes, n, reps, r, part) * stride, block);
    }
  }
}

// Encodes one set into its output row; `s` was sized by fde_encode for the longest set (nothing here allocates).
void encode_set(Ctx& c, int64_t set, Scratch& s) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim, n = p.sets.length(set), first = p.sets.begin(set);
  const int64_t reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
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
      kernel.sign_patterns(s.dots.data(), count, c.cpad, reps, static_cast<int>(bits), s.words.data(),
                           codes + t0 * reps);
    }
  }
  if (p.partitions) {
    int32_t* out = p.partitions + (first - p.sets.offsets[0]) * reps;
    for (int64_t i = 0; i < n * reps; ++i) out[i] = static_cast<int32_t>(partition_of(codes[i]));
  }
  if (!p.encode) return;

  float* row = p.final_dim > 0 ? s.row.data() : p.out + set * p.output_dim();
  if (p.proj_index != nullptr) {
    encode_projected(c, s, x, stride, n, row);
  } else {
    for (int64_t r = 0; r < reps; ++r) {
      if (c.via_sums)
        encode_rep_via_sums(c, s, r, x, stride, n, row + r * parts * pd);
      else
        encode_rep_direct(c, s, r, x, stride, n, row + r * parts * pd);
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
  check_fde_queries(p, p.sets.offsets);
  if (p.sets.count == 0) return;

  Ctx c;
  c.p = &p;
  c.kernel = &active_kernel();
  const int64_t dim = p.sets.dim, columns = p.reps * p.simhash_bits, width = c.kernel->width;
  c.cpad = (columns + width - 1) / width * width;
  // Each repetition's hyperplanes in reverse order: column r * bits + m holds hyperplane bits - 1 - m, so that the
  // compare-mask bit m is pattern bit m (the first hyperplane is the most significant bit).
  const int64_t bits = p.simhash_bits;
  c.hyperplanes.assign(static_cast<size_t>(dim * c.cpad), 0.0f);
  for (int64_t k = 0; k < dim; ++k)
    for (int64_t r = 0; r < p.reps; ++r)
      for (int64_t m = 0; m < bits; ++m)
        c.hyperplanes[static_cast<size_t>(k * c.cpad + r * bits + m)] = p.simhash[k * columns + r * bits + bits - 1 - m];
  c.via_sums = p.proj_index == nullptr && p.num_partitions() * dim <= kMaxPartitionSums;
  if (p.proj_index != nullptr) {  // group input coordinates by output column (counting sort, ascending within)
    const int64_t pd = p.proj_dim;
    c.proj_order.resize(static_cast<size_t>(p.reps * dim));
    c.proj_starts.assign(static_cast<size_t>(p.reps * (pd + 1)), 0);
    for (int64_t r = 0; r < p.reps; ++r) {
      int32_t* starts = c.proj_starts.data() + r * (pd + 1);
      const int32_t* index = p.proj_index + r * dim;
      for (int64_t i = 0; i < dim; ++i) ++starts[index[i] + 1];
      for (int64_t j = 0; j < pd; ++j) starts[j + 1] += starts[j];
      std::vector<int32_t> next(starts, starts + pd);
      for (int64_t i = 0; i < dim; ++i) c.proj_order[static_cast<size_t>(r * dim + next[index[i]]++)] = static_cast<int32_t>(i);
    }
    c.proj_weight_ordered.resize(c.proj_order.size());
    for (int64_t r = 0; r < p.reps; ++r)
      for (int64_t k = 0; k < dim; ++k)
        c.proj_weight_ordered[static_cast<size_t>(r * dim + k)] = p.proj_weight[r * dim + c.proj_order[static_cast<size_t>(r * dim + k)]];
  }

  // All scratch is allocated here: workers must not throw (std::bad_alloc included).
  const int threads = num_threads();
  const int64_t longest = p.sets.max_length;
  c.scratch.resize(static_cast<size_t>(threads));
  for (Scratch& s : c.scratch) {
    if (p.sets.dtype != DType::Float32) s.tokens.resize(static_cast<size_t>(longest * dim));
    s.codes.resize(static_cast<size_t>(longest * p.reps));
    s.words.resize(static_cast<size_t>(c.cpad / 64 + 1));
    s.dots.resize(static_cast<size_t>(kDotTokens * std::max<int64_t>(c.cpad, 1)));
    if (!p.encode) continue;
    s.counts.resize(static_cast<size_t>(p.num_partitions()));
    if (c.via_sums) s.sums.resize(static_cast<size_t>(p.num_partitions() * dim));
    if (p.proj_index != nullptr) {
      s.counts.resize(static_cast<size_t>(p.reps * p.num_partitions()));
      s.xt.resize(static_cast<size_t>(dim * kProjectTokens));
      s.yt.resize(static_cast<size_t>(p.proj_dim * kProjectTokens));
      s.y.resize(static_cast<size_t>(kProjectTokens * p.proj_dim));
    }
    if (p.final_dim > 0) s.row.resize(static_cast<size_t>(p.fde_dim()));
  }
  const int64_t grain = std::max<int64_t>(1, p.sets.count / (static_cast<int64_t>(threads) * 16));
  parallel_for(p.sets.count, grain, threads, encode_range, &c);
}

}  // namespace cpu
}  // namespace tokenset
#endif  // TOKENSET_SIMD_SCALAR
