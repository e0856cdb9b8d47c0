// MaxSim of int8 queries against int8 documents, each token with a float32 scale (tokenset.quantize):
//
//   m_i = max_j float(<q_i, d_j>) * s_j        (the int8 dot product exact in int32)
//   score = sum_i t_i * m_i                     (t_i the query token's scale, summed in query-token order)
//
// Compiled once per SIMD level (scalar | avx2 | avx512) and once more with AVX-512 VNNI (level avx512vnni, its own
// object in CMakeLists.txt). Integer dot products are exact and the float steps are one multiply and one max per
// (query token, document token) in a fixed order, so every level gives the same bits.
//
// The register tile is MaxSim's float tile (maxsim_kernels.cpp) with k taken a "step word" at a time: query tokens are
// packed once as panels P[g][lane] of 32-bit words, document rows are converted R at a time into words, and each
// (row, step) word is broadcast and multiplied into QV vectors of query lanes:
//  * avx512vnni: a word is 4 bytes; vpdpbusd multiplies unsigned by signed bytes, so document bytes go in as
//    d + 128 (unsigned) and the query's -128 * sum_k q_k is the accumulators' starting value;
//  * avx512, avx2: a word is 2 int16 (vpmaddwd), exact for any int8;
//  * scalar: a word is one int32.
// Scales must be finite (the driver checks), so no similarity is NaN and no NaN tracking is needed.
#include <cstdint>
#include <cstring>
#include <limits>

#include "maxsim_kernels.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// ---- integer vector traits: one step word per int32 lane --------------------------------------------------------------
#if defined(TOKENSET_SIMD_VNNI)
constexpr int kStep = 4;  // int8 elements per word
struct I {
  using type = __m512i;
  static type load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static type set1(int32_t x) { return _mm512_set1_epi32(x); }
  // acc += sum of 4 (unsigned document byte x signed query byte) products per lane.
  static type dot(type acc, type document_word, type query_words) {
    // The instruction itself: with the intrinsic, GCC 12 spills 20 of the 24 accumulators to the stack in every
    // unrolled block of the tile loop; "+v" keeps each accumulator in its register.
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(document_word), "v"(query_words));
    return acc;
  }
  static V::type to_float(type x) { return _mm512_cvtepi32_ps(x); }
};
#elif defined(TOKENSET_SIMD_AVX512)
constexpr int kStep = 2;
struct I {
  using type = __m512i;
  static type load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static type set1(int32_t x) { return _mm512_set1_epi32(x); }
  static type dot(type acc, type document_word, type query_words) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(document_word, query_words));
  }
  static V::type to_float(type x) { return _mm512_cvtepi32_ps(x); }
};
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kStep = 2;
struct I {
  using type = __m256i;
  static type load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static type set1(int32_t x) { return _mm256_set1_epi32(x); }
  static type dot(type acc, type document_word, type query_words) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(document_word, query_words));
  }
  static V::type to_float(type x) { return _mm256_cvtepi32_ps(x); }
};
#else
constexpr int kStep = 1;
struct I {
  using type = int32_t;
  static type load(const int32_t* p) { return *p; }
  static type set1(int32_t x) { return x; }
  // Wrapping (unsigned) arithmetic, as the vector levels: the exact dot product always fits in int32.
  static type dot(type acc, type document_word, type query_words) {
    return static_cast<int32_t>(static_cast<uint32_t>(acc) +
                                static_cast<uint32_t>(document_word) * static_cast<uint32_t>(query_words));
  }
  static V::type to_float(type x) { return static_cast<float>(x); }
};
#endif

// ---- tile shape per level ---------------------------------------------------------------------------------------------
#if defined(TOKENSET_SIMD_AVX512)
// 32 query tokens per panel, 4 rows: 8 accumulators. Measured on Zen 4 at dim 128 (ns per document token, one core):
// R = 12 spills the accumulators to the stack in every unrolled block (26 ns), R = 8 20.7, R = 6 19.9, R = 4 19.5;
// 8 independent vpdpbusd chains already cover the instruction's latency.
constexpr int QV = 2;
constexpr int R = 4;
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int QV = 2;
constexpr int R = 6;
#else
constexpr int QV = 8;
constexpr int R = 4;
#endif
constexpr int QB = QV * W;

static int64_t steps_of(int64_t dim) { return (dim + kStep - 1) / kStep; }

// A panel: steps x QB query words, then QB int32 starting values (the VNNI correction), then QB float32 query scales.
static int64_t panel_words(int64_t dim) { return (steps_of(dim) + 2) * QB; }

static int64_t packed_floats(int64_t length, int64_t dim) { return (length + QB - 1) / QB * panel_words(dim); }

// The step word of elements [g * kStep, (g + 1) * kStep) of an int8 row, zero past dim.
static int32_t query_word(const int8_t* row, int64_t dim, int64_t g) {
  int8_t e[4] = {0, 0, 0, 0};
  for (int t = 0; t < kStep && g * kStep + t < dim; ++t) e[t] = row[g * kStep + t];
  if constexpr (kStep == 4) {
    int32_t word;
    std::memcpy(&word, e, 4);
    return word;
  } else if constexpr (kStep == 2) {
    return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(static_cast<int16_t>(e[0]))) |
                                static_cast<uint32_t>(static_cast<uint16_t>(static_cast<int16_t>(e[1]))) << 16);
  } else {
    return e[0];
  }
}

static void pack_query(const SetBatch& queries, int64_t set, float* packed_floats_out) {
  int32_t* packed = reinterpret_cast<int32_t*>(packed_floats_out);
  const int64_t length = queries.length(set), dim = queries.dim(), steps = steps_of(dim);
  const int64_t panels = (length + QB - 1) / QB, words = panel_words(dim);
  const int8_t* first = static_cast<const int8_t*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  const float* scales = queries.set_scales(set);
  std::memset(packed, 0, sizeof(int32_t) * panels * words);
  for (int64_t t = 0; t < length; ++t) {
    int32_t* panel = packed + (t / QB) * words;
    const int lane = static_cast<int>(t % QB);
    const int8_t* row = first + t * stride;
    for (int64_t g = 0; g < steps; ++g) panel[g * QB + lane] = query_word(row, dim, g);
    int32_t start = 0;
    if constexpr (kStep == 4) {  // document bytes enter as d + 128: subtract 128 * sum_k q_k up front
      for (int64_t k = 0; k < dim; ++k) start -= 128 * row[k];
    }
    panel[steps * QB + lane] = start;
    std::memcpy(panel + (steps + 1) * QB + lane, scales + t, sizeof(float));
  }
}

// One document row as step words (steps of them; the padding words' elements are zero, or 0 + 128 for VNNI, which
// multiply the query's zero padding).
template <int kDim = 0>
static inline void document_words(const int8_t* src, int64_t runtime_dim, int32_t* dst) {
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
#if defined(TOKENSET_SIMD_VNNI)
  uint8_t* out = reinterpret_cast<uint8_t*>(dst);
  const int64_t padded = steps_of(dim) * 4;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t k0 = 0; k0 < dim; k0 += 64) {
    const int64_t have = dim - k0 < 64 ? dim - k0 : 64, room = padded - k0 < 64 ? padded - k0 : 64;
    const __mmask64 load = have == 64 ? ~__mmask64(0) : (__mmask64(1) << have) - 1;
    const __mmask64 store = room == 64 ? ~__mmask64(0) : (__mmask64(1) << room) - 1;
    _mm512_mask_storeu_epi8(out + k0, store, _mm512_xor_si512(_mm512_maskz_loadu_epi8(load, src + k0), bias));
  }
#elif defined(TOKENSET_SIMD_AVX512)
  int16_t* out = reinterpret_cast<int16_t*>(dst);
  const int64_t padded = steps_of(dim) * 2;
  for (int64_t k0 = 0; k0 < dim; k0 += 32) {
    const int64_t have = dim - k0 < 32 ? dim - k0 : 32, room = padded - k0 < 32 ? padded - k0 : 32;
    const __mmask32 load = have == 32 ? ~__mmask32(0) : (__mmask32(1) << have) - 1;
    const __mmask32 store = room == 32 ? ~__mmask32(0) : (__mmask32(1) << room) - 1;
    _mm512_mask_storeu_epi16(out + k0, store, _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(load, src + k0)));
  }
#elif defined(TOKENSET_SIMD_AVX2)
  int16_t* out = reinterpret_cast<int16_t*>(dst);
  int64_t k = 0;
  for (; k + 16 <= dim; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < dim; ++k) out[k] = src[k];
  if (dim % 2) out[dim] = 0;
#else
  for (int64_t k = 0; k < dim; ++k) dst[k] = src[k];
#endif
}

// Scores ROWS converted document rows (words[r * steps + g]) against one panel and folds float(dot) * scale into the
// running maxima (strictly greater: the lower row keeps a tie).
template <int ROWS, bool kArgmax, int kSteps = 0>
static inline void tile(const int32_t* panel, int64_t runtime_steps, const int32_t* words, const float* row_scales,
                        int32_t first_row, const char* prefetch, int64_t prefetch_stride, V::type* running_max,
                        V::itype* running_arg) {
  // kSteps > 0: the row words' offsets r * steps are constants off one base register (as the float kernel's kDim).
  const int64_t steps = kSteps > 0 ? kSteps : runtime_steps;
  I::type acc[ROWS][QV];
  const int32_t* start = panel + steps * QB;
  for (int v = 0; v < QV; ++v) {
    const I::type s = I::load(start + v * W);
    for (int r = 0; r < ROWS; ++r) acc[r][v] = s;
  }
  for (int64_t g0 = 0; g0 < steps; g0 += 16) {
    // The next tile's rows, one line per row per 16 words (as the float kernel: into L2, the panel owns L1).
    for (int r = 0; r < ROWS; ++r) __builtin_prefetch(prefetch + r * prefetch_stride + g0 * kStep, 0, 2);
    const int64_t g1 = g0 + 16 < steps ? g0 + 16 : steps;
#pragma GCC unroll 4
    for (int64_t g = g0; g < g1; ++g) {
      I::type p[QV];
      for (int v = 0; v < QV; ++v) p[v] = I::load(panel + g * QB + v * W);
      for (int r = 0; r < ROWS; ++r) {
        const I::type b = I::set1(words[r * steps + g]);
        for (int v = 0; v < QV; ++v) acc[r][v] = I::dot(acc[r][v], b, p[v]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    const V::type scale = V::set1(row_scales[r]);
    for (int v = 0; v < QV; ++v) {
      const V::type sim = V::mul(I::to_float(acc[r][v]), scale);
      if (kArgmax) {
        const V::mask better = V::greater(sim, running_max[v]);
        running_max[v] = V::select(better, running_max[v], sim);
        running_arg[v] = V::iselect(better, running_arg[v], V::iset1(first_row + r));
      } else {
        running_max[v] = V::max(sim, running_max[v]);
      }
    }
  }
}

template <int ROWS, bool kArgmax>
static inline void tile_any(int rows_left, const int32_t* panel, int64_t steps, const int32_t* words,
                            const float* row_scales, int32_t first_row, const char* prefetch, int64_t prefetch_stride,
                            V::type* running_max, V::itype* running_arg) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      tile<ROWS, kArgmax>(panel, steps, words, row_scales, first_row, prefetch, prefetch_stride, running_max,
                          running_arg);
    else
      tile_any<ROWS - 1, kArgmax>(rows_left, panel, steps, words, row_scales, first_row, prefetch, prefetch_stride,
                                  running_max, running_arg);
  }
}

template <bool kArgmax, int kDim = 0>
static void score_impl(const float* packed_floats_in, int64_t query_length, const SetBatch& docs, int64_t doc,
                       float* scratch, float* score, int32_t* argmax) {
  constexpr int kSteps = kDim > 0 ? (kDim + kStep - 1) / kStep : 0;
  const int64_t length = docs.length(doc), dim = kDim > 0 ? kDim : docs.dim(), steps = steps_of(dim);
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    if (kArgmax)
      for (int64_t i = 0; i < query_length; ++i) argmax[i] = -1;
    return;
  }
  const int32_t* packed = reinterpret_cast<const int32_t*>(packed_floats_in);
  int32_t* words = reinterpret_cast<int32_t*>(scratch);  // R rows of `steps` words: at most R * dim floats
  const int8_t* first = static_cast<const int8_t*>(docs.set_data(doc));
  const int64_t row_stride = docs.set_stride(doc);
  const float* scales = docs.set_scales(doc);
  const int64_t panels = (query_length + QB - 1) / QB, per_panel = panel_words(dim);
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const int32_t* panel = packed + c * per_panel;
    V::type running_max[QV];
    V::itype running_arg[QV];
    for (int v = 0; v < QV; ++v) {
      running_max[v] = V::set1(-std::numeric_limits<float>::infinity());
      running_arg[v] = V::iset1(0);
    }
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      const int8_t* src = first + j0 * row_stride;
      for (int r = 0; r < rows_left; ++r) document_words<kDim>(src + r * row_stride, dim, words + r * steps);
      const char* prefetch = reinterpret_cast<const char*>(first + (j0 + R) * row_stride);  // a hint only
      if (rows_left == R)
        tile<R, kArgmax, kSteps>(panel, steps, words, scales + j0, static_cast<int32_t>(j0), prefetch, row_stride,
                                 running_max, running_arg);
      else
        tile_any<R - 1, kArgmax>(rows_left, panel, steps, words, scales + j0, static_cast<int32_t>(j0), prefetch,
                                 row_stride, running_max, running_arg);
    }
    float maxima[QB], query_scales[QB];
    int32_t args[QB];
    for (int v = 0; v < QV; ++v) {
      V::store(maxima + v * W, running_max[v]);
      V::istore(args + v * W, running_arg[v]);
    }
    std::memcpy(query_scales, panel + (steps + 1) * QB, sizeof(query_scales));
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) {
      total += query_scales[lane] * maxima[lane];
      if (kArgmax) argmax[c * QB + lane] = args[lane];
    }
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const SetBatch& docs, int64_t doc, float* scratch,
                  float* out, int32_t* argmax) {
  if (argmax) return score_impl<true>(packed, query_length, docs, doc, scratch, out, argmax);
  // Common embedding widths as constants (the float kernel's list); the scalar level has no tile worth it.
  if constexpr (W > 1)
    return TOKENSET_DIM_SWITCH(docs.dim(), kDim, [&] {
      score_impl<false, kDim>(packed, query_length, docs, doc, scratch, out, nullptr);
    });
  score_impl<false>(packed, query_length, docs, doc, scratch, out, nullptr);
}

extern const MaxsimKernel maxsim_int8_kernel = {QB, R, &pack_query, &score, &packed_floats};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
