// The int8 register tile shared by the int8 MaxSim kernels (maxsim_int8_kernels.cpp: int8 documents;
// maxsim_residual_kernels.cpp: residual codes expanded to int8 bucket weights) and, with bfloat16 pairs for words, by
// the AVX-512 BF16 kernel (maxsim_bf16_kernels.cpp), included once per SIMD level inside the level's namespace
// (TOKENSET_SIMD_NS). Integer dot products are exact; what a similarity is (the float steps
// after the dot product) is the Epilogue: sim = epilogue(row, query vector, float(dot)).
//
// Query tokens are packed once as panels P[g][lane] of 32-bit step words, document rows are converted R at a time
// into words, and each (row, step) word is broadcast and multiplied into QV vectors of query lanes:
//  * avx512vnni, avxvnni: a word is 4 bytes; vpdpbusd multiplies unsigned by signed bytes, so document bytes go in
//    as d + 128 (unsigned) and the query's -128 * sum_k q_k is the accumulators' starting value;
//  * avx512, avx2: a word is 2 int16 (vpmaddwd), exact for any int8;
//  * scalar: a word is one int32.
// A panel: steps x QB query words, then QB int32 starting values, then QB float32 factors (one per query token).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// ---- integer vector traits: one step word per int32 lane --------------------------------------------------------------
// What every tile of a vector width shares (loads, broadcasts, int32 -> float32); each level adds its dot product.
#if defined(TOKENSET_SIMD_AVX512)
struct IntVector {
  using type = __m512i;
  static type load(const int32_t* p) { return _mm512_loadu_si512(p); }
  static type set1(int32_t x) { return _mm512_set1_epi32(x); }
  static V::type to_float(type x) { return _mm512_cvtepi32_ps(x); }
};
#elif defined(TOKENSET_SIMD_AVX2)
struct IntVector {
  using type = __m256i;
  static type load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static type set1(int32_t x) { return _mm256_set1_epi32(x); }
  static V::type to_float(type x) { return _mm256_cvtepi32_ps(x); }
};
#endif

#if defined(TOKENSET_SIMD_BF16)
// bfloat16 MaxSim (maxsim_bf16_kernels.cpp): a word is 2 bfloat16, vdpbf16ps adds both products to a float32 lane, so
// the "integer" accumulators hold float32 bits.
constexpr int kStep = 2;
constexpr int kElementBytes = 2;  // of a document row's elements (the prefetch walks rows in bytes)
struct I : IntVector {
  static type dot(type acc, type document_word, type query_words) {
    asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(document_word), "v"(query_words));  // as VNNI's: no spills
    return acc;
  }
  static V::type to_float(type x) { return _mm512_castsi512_ps(x); }  // the bits are float32 already
};
#elif defined(TOKENSET_SIMD_VNNI) && defined(TOKENSET_SIMD_AVX512)
constexpr int kStep = 4;  // int8 elements per word
constexpr int kElementBytes = 1;
struct I : IntVector {
  // acc += sum of 4 (unsigned document byte x signed query byte) products per lane.
  static type dot(type acc, type document_word, type query_words) {
    // The instruction itself: with the intrinsic, GCC 12 spills 20 of the 24 accumulators to the stack in every
    // unrolled block of the tile loop; "+v" keeps each accumulator in its register.
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(document_word), "v"(query_words));
    return acc;
  }
};
#elif defined(TOKENSET_SIMD_VNNI)
// avxvnni: the AVX2 tile with 256-bit vpdpbusd. Built twice (CMakeLists.txt): with the VEX encoding (AVX-VNNI CPUs)
// and with the EVEX one (AVX-512 VNNI + VL CPUs without AVX-VNNI, e.g. Zen 4, where the level is tested); the same
// instruction on the same registers (ymm0-15: "x"), so both builds compute the same bits.
// ("%{" is a literal brace in an asm template; a bare one opens an assembler-dialect alternative.)
#if defined(TOKENSET_VNNI256_EVEX)
#define TOKENSET_VNNI256_ENCODING "%{evex%} "
#else
#define TOKENSET_VNNI256_ENCODING "%{vex%} "
#endif
constexpr int kStep = 4;
constexpr int kElementBytes = 1;
struct I : IntVector {
  static type dot(type acc, type document_word, type query_words) {
    asm(TOKENSET_VNNI256_ENCODING "vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(document_word), "x"(query_words));
    return acc;
  }
};
#elif defined(TOKENSET_SIMD_AVX512)
constexpr int kStep = 2;
constexpr int kElementBytes = 1;
struct I : IntVector {
  static type dot(type acc, type document_word, type query_words) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(document_word, query_words));
  }
};
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kStep = 2;
constexpr int kElementBytes = 1;
struct I : IntVector {
  static type dot(type acc, type document_word, type query_words) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(document_word, query_words));
  }
};
#else
constexpr int kStep = 1;
constexpr int kElementBytes = 1;
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

static int64_t panel_words(int64_t dim) { return (steps_of(dim) + 2) * QB; }

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

// Query token `lane` of a panel from its int8 row: its step words, its starting value (the VNNI correction) and the
// float32 factor the epilogue reads for it (the int8 kernel: the token's scale).
static void pack_query_row(const int8_t* row, int64_t dim, int lane, float factor, int32_t* panel) {
  const int64_t steps = steps_of(dim);
  for (int64_t g = 0; g < steps; ++g) panel[g * QB + lane] = query_word(row, dim, g);
  int32_t start = 0;
  if constexpr (kStep == 4) {  // document bytes enter as d + 128: subtract 128 * sum_k q_k up front
    for (int64_t k = 0; k < dim; ++k) start -= 128 * row[k];
  }
  panel[steps * QB + lane] = start;
  std::memcpy(panel + (steps + 1) * QB + lane, &factor, sizeof(float));
}

// One document row as step words (steps of them; the padding words' elements are zero, or 0 + 128 for VNNI, which
// multiply the query's zero padding).
template <int kDim = 0>
static inline void document_words(const int8_t* src, int64_t runtime_dim, int32_t* dst) {
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
#if defined(TOKENSET_SIMD_VNNI) && defined(TOKENSET_SIMD_AVX512)
  uint8_t* out = reinterpret_cast<uint8_t*>(dst);
  const int64_t padded = steps_of(dim) * 4;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t k0 = 0; k0 < dim; k0 += 64) {
    const int64_t have = dim - k0 < 64 ? dim - k0 : 64, room = padded - k0 < 64 ? padded - k0 : 64;
    const __mmask64 load = have == 64 ? ~__mmask64(0) : (__mmask64(1) << have) - 1;
    const __mmask64 store = room == 64 ? ~__mmask64(0) : (__mmask64(1) << room) - 1;
    _mm512_mask_storeu_epi8(out + k0, store, _mm512_xor_si512(_mm512_maskz_loadu_epi8(load, src + k0), bias));
  }
#elif defined(TOKENSET_SIMD_VNNI)
  uint8_t* out = reinterpret_cast<uint8_t*>(dst);
  const int64_t padded = steps_of(dim) * 4;
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  int64_t k = 0;
  for (; k + 32 <= dim; k += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k),
                        _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)), bias));
  for (; k < dim; ++k) out[k] = static_cast<uint8_t>(static_cast<uint8_t>(src[k]) ^ 0x80u);
  for (; k < padded; ++k) out[k] = 0x80;
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

// Scores ROWS converted document rows (words[r * steps + g]) against one panel and folds epilogue(r, v, float(dot))
// into the running maxima (strictly greater: the lower row keeps a tie).
template <int ROWS, bool kArgmax, int kSteps = 0, typename Epilogue>
static inline void tile(const int32_t* panel, int64_t runtime_steps, const int32_t* words, const Epilogue& epilogue,
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
    for (int r = 0; r < ROWS; ++r)
      __builtin_prefetch(prefetch + r * prefetch_stride + g0 * kStep * kElementBytes, 0, 2);
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
    for (int v = 0; v < QV; ++v) {
      const V::type sim = epilogue(r, v, I::to_float(acc[r][v]));
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

// A panel's running maxima before its first document row: -inf, argmax 0.
static inline void start_running(V::type* running_max, V::itype* running_arg) {
  for (int v = 0; v < QV; ++v) {
    running_max[v] = V::set1(-std::numeric_limits<float>::infinity());
    running_arg[v] = V::iset1(0);
  }
}

template <int ROWS, bool kArgmax, typename Epilogue>
static inline void tile_any(int rows_left, const int32_t* panel, int64_t steps, const int32_t* words,
                            const Epilogue& epilogue, int32_t first_row, const char* prefetch, int64_t prefetch_stride,
                            V::type* running_max, V::itype* running_arg) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      tile<ROWS, kArgmax>(panel, steps, words, epilogue, first_row, prefetch, prefetch_stride, running_max,
                          running_arg);
    else
      tile_any<ROWS - 1, kArgmax>(rows_left, panel, steps, words, epilogue, first_row, prefetch, prefetch_stride,
                                  running_max, running_arg);
  }
}

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
