// SIMD vector traits and element conversion shared by the CPU kernels.
//
// Included only by kernel files that CMake compiles once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512,
// and the extra levels' namespaces: avxvnni, avxvnni_evex, avx512vnni, avx512bf16).
// Everything lands in the level's namespace or is `static`, so copies built with different -m flags never merge at
// link time (an inline function shared between levels would let the linker pick the AVX-512 copy for the scalar path).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tokenset/common.h"

#if defined(TOKENSET_SIMD_AVX2) || defined(TOKENSET_SIMD_AVX512)
#include <immintrin.h>
#endif

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// ---- vector traits ---------------------------------------------------------------------------------------------------
#if defined(TOKENSET_SIMD_AVX512)
struct V {
  using type = __m512;
  using itype = __m512i;
  using mask = __mmask16;
  static constexpr int width = 16;
  static type zero() { return _mm512_setzero_ps(); }
  static type set1(float x) { return _mm512_set1_ps(x); }
  static type load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
  static type fmadd(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
  static type add(type a, type b) { return _mm512_add_ps(a, b); }
  static type sub(type a, type b) { return _mm512_sub_ps(a, b); }
  static type mul(type a, type b) { return _mm512_mul_ps(a, b); }
  static type min(type a, type b) { return _mm512_min_ps(a, b); }  // b when either is NaN
  // max(a, b) returns b when either is NaN: NaN is tracked separately by unordered().
  static type max(type a, type b) { return _mm512_max_ps(a, b); }
  static mask no_mask() { return 0; }
  static mask unordered(type a, mask m) { return m | _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static mask greater(type a, type b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static mask equal(type a, type b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static type select(mask m, type if_false, type if_true) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static itype iset1(int32_t x) { return _mm512_set1_epi32(x); }
  static itype iselect(mask m, itype if_false, itype if_true) { return _mm512_mask_blend_epi32(m, if_false, if_true); }
  static void istore(int32_t* p, itype v) { _mm512_storeu_si512(p, v); }
  static itype iadd(itype a, itype b) { return _mm512_add_epi32(a, b); }
  static itype ixor(itype a, itype b) { return _mm512_xor_si512(a, b); }
  static itype isrl(itype a, int n) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(n)); }  // logical shift
  static void store_mask(bool* out, mask m) {
    for (int i = 0; i < width; ++i) out[i] = (m >> i) & 1;
  }
  static uint32_t mask_bits(mask m) { return static_cast<uint32_t>(m); }  // lane i -> bit i
  static type div(type a, type b) { return _mm512_div_ps(a, b); }
};
#elif defined(TOKENSET_SIMD_AVX2)
struct V {
  using type = __m256;
  using itype = __m256i;
  using mask = __m256;
  static constexpr int width = 8;
  static type zero() { return _mm256_setzero_ps(); }
  static type set1(float x) { return _mm256_set1_ps(x); }
  static type load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
  static type fmadd(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  static type add(type a, type b) { return _mm256_add_ps(a, b); }
  static type sub(type a, type b) { return _mm256_sub_ps(a, b); }
  static type mul(type a, type b) { return _mm256_mul_ps(a, b); }
  static type min(type a, type b) { return _mm256_min_ps(a, b); }
  static type max(type a, type b) { return _mm256_max_ps(a, b); }
  static mask no_mask() { return _mm256_setzero_ps(); }
  static mask unordered(type a, mask m) { return _mm256_or_ps(m, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
  static mask greater(type a, type b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static mask equal(type a, type b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static type select(mask m, type if_false, type if_true) { return _mm256_blendv_ps(if_false, if_true, m); }
  static itype iset1(int32_t x) { return _mm256_set1_epi32(x); }
  static itype iselect(mask m, itype if_false, itype if_true) {
    return _mm256_blendv_epi8(if_false, if_true, _mm256_castps_si256(m));
  }
  static void istore(int32_t* p, itype v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static itype iadd(itype a, itype b) { return _mm256_add_epi32(a, b); }
  static itype ixor(itype a, itype b) { return _mm256_xor_si256(a, b); }
  static itype isrl(itype a, int n) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(n)); }
  static void store_mask(bool* out, mask m) {
    const int bits = _mm256_movemask_ps(m);
    for (int i = 0; i < width; ++i) out[i] = (bits >> i) & 1;
  }
  static uint32_t mask_bits(mask m) { return static_cast<uint32_t>(_mm256_movemask_ps(m)); }
  static type div(type a, type b) { return _mm256_div_ps(a, b); }
};
#else
struct V {
  using type = float;
  using itype = int32_t;
  using mask = bool;
  static constexpr int width = 1;
  static type zero() { return 0.0f; }
  static type set1(float x) { return x; }
  static type load(const float* p) { return *p; }
  static void store(float* p, type v) { *p = v; }
  // Fused, as the vector levels and the GPU: float32 dot products are bit-identical on every path.
  static type fmadd(type a, type b, type c) { return std::fma(a, b, c); }
  static type add(type a, type b) { return a + b; }
  static type sub(type a, type b) { return a - b; }
  static type mul(type a, type b) { return a * b; }
  static type min(type a, type b) { return a < b ? a : b; }  // b when either is NaN, as the SIMD paths
  static type max(type a, type b) { return a > b ? a : b; }  // b when either is NaN, as the SIMD paths
  static mask no_mask() { return false; }
  static mask unordered(type a, mask m) { return m || a != a; }
  static mask greater(type a, type b) { return a > b; }
  static mask equal(type a, type b) { return a == b; }
  static type select(mask m, type if_false, type if_true) { return m ? if_true : if_false; }
  static itype iset1(int32_t x) { return x; }
  static itype iselect(mask m, itype if_false, itype if_true) { return m ? if_true : if_false; }
  static void istore(int32_t* p, itype v) { *p = v; }
  static itype iadd(itype a, itype b) { return static_cast<itype>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b)); }
  static itype ixor(itype a, itype b) { return a ^ b; }
  static itype isrl(itype a, int n) { return static_cast<itype>(static_cast<uint32_t>(a) >> n); }
  static void store_mask(bool* out, mask m) { out[0] = m; }
  static uint32_t mask_bits(mask m) { return m ? 1u : 0u; }
  static type div(type a, type b) { return a / b; }
};
#endif

constexpr int W = V::width;

// ---- element conversion ----------------------------------------------------------------------------------------------
static inline float half_to_float(uint16_t h) {
  // IEEE binary16 -> binary32, exact, including subnormals, inf and NaN.
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

static inline float bfloat_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

static inline float element_to_float(const void* base, int64_t index, DType dtype) {
  switch (dtype) {
    case DType::Float32: return static_cast<const float*>(base)[index];
    case DType::Float16: return half_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::BFloat16: return bfloat_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::Int8: return static_cast<float>(static_cast<const int8_t*>(base)[index]);  // scaled by the caller
    default: return 0.0f;  // not token values: validate() rejects them before any kernel runs
  }
}

// W elements of a row of dtype D from element k on, as float32 (float16 / bfloat16 converted in registers).
template <DType D>
static inline V::type load_as_float(const void* row, int64_t k) {
  if constexpr (D == DType::Float32) {
    return V::load(static_cast<const float*>(row) + k);
  } else if constexpr (D == DType::Int8) {  // the codes as floats (exact); the caller applies the row's scale
    const int8_t* p = static_cast<const int8_t*>(row) + k;
#if defined(TOKENSET_SIMD_AVX512)
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(TOKENSET_SIMD_AVX2)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
    return static_cast<float>(*p);
#endif
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(row) + k;
#if defined(TOKENSET_SIMD_AVX512)
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (D == DType::Float16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif defined(TOKENSET_SIMD_AVX2)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (D == DType::Float16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    return D == DType::Float16 ? half_to_float(*p) : bfloat_to_float(*p);
#endif
  }
}

// Converts `count` contiguous 16-bit elements to float32.
static void convert_row(const uint16_t* src, float* dst, int64_t count, DType dtype) {
  int64_t i = 0;
#if defined(TOKENSET_SIMD_AVX512)
  if (dtype == DType::Float16) {
    for (; i + 16 <= count; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  } else {
    for (; i + 16 <= count; i += 16) {
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
  }
#elif defined(TOKENSET_SIMD_AVX2)
  if (dtype == DType::Float16) {
    for (; i + 8 <= count; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  } else {
    for (; i + 8 <= count; i += 8) {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  }
#endif
  if (dtype == DType::Float16) {
    for (; i < count; ++i) dst[i] = half_to_float(src[i]);
  } else {
    for (; i < count; ++i) dst[i] = bfloat_to_float(src[i]);
  }
}

// int8 row -> float32, each element times the row's scale: float(q) * scale, one rounding, the same bits at every
// level (what numpy's values.astype(float32) * scale gives, i.e. tokenset.Quantized.dequantize()).
static void dequantize_row(const int8_t* src, float scale, float* dst, int64_t count) {
  int64_t i = 0;
#if defined(TOKENSET_SIMD_AVX512)
  const __m512 s = _mm512_set1_ps(scale);
  for (; i + 16 <= count; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)))), s));
#elif defined(TOKENSET_SIMD_AVX2)
  const __m256 s = _mm256_set1_ps(scale);
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i)))), s));
#endif
  for (; i < count; ++i) dst[i] = static_cast<float>(src[i]) * scale;
}

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
