// Tile arithmetic shared by the attention kernels (sparse_attention_kernels.cpp, attention_scores_kernels.cpp),
// compiled once per SIMD level like simd.h: everything is `static` inside the level's namespace, so copies built with
// different -m flags never merge. exp2 on whole vectors, rows converted to float32 tiles, and one register-blocked
// float32 GEMM with row / column strides on A (so transposed score tiles need no copy).
#pragma once

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

#if defined(TOKENSET_SIMD_AVX512)
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 4;  // 16 accumulators of 32 registers
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 2;  // 8 accumulators of 16 registers
#else
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 4;
#endif

// 2^x for x <= 0 (larger x are clamped at 127), NaN kept: Cephes' exp2f polynomial on x - round(x), relative error
// ~2e-7; results below 2^-126 flush to 0 (as exp2(-inf) = 0).
static inline V::type exp2_vector(V::type x) {
#if defined(TOKENSET_SIMD_AVX512)
  x = _mm512_min_ps(_mm512_set1_ps(127.0f), _mm512_max_ps(_mm512_set1_ps(-160.0f), x));  // NaN stays (2nd operand)
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
#elif defined(TOKENSET_SIMD_AVX2)
  x = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), x));
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
#else
  return std::exp2(x);
#endif
#if defined(TOKENSET_SIMD_AVX512) || defined(TOKENSET_SIMD_AVX2)
  V::type p = V::set1(1.535336188319500e-4f);
  p = V::fmadd(p, f, V::set1(1.339887440266574e-3f));
  p = V::fmadd(p, f, V::set1(9.618437357674640e-3f));
  p = V::fmadd(p, f, V::set1(5.550332471162809e-2f));
  p = V::fmadd(p, f, V::set1(2.402264791363012e-1f));
  p = V::fmadd(p, f, V::set1(6.931472028550421e-1f));
  p = V::fmadd(p, f, V::set1(1.0f));
#if defined(TOKENSET_SIMD_AVX512)
  return _mm512_scalef_ps(p, n);  // p * 2^n, underflow to 0
#else
  // 2^n from the exponent field; n = -127 gives the bits of 0.0, so x <= -126.5 flushes to 0.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
#endif
#endif
}

// ---- rows in and out ----------------------------------------------------------------------------------------------
static inline const char* row_address(const void* base, int64_t row, int64_t stride, DType dtype) {
  return static_cast<const char*>(base) + row * stride * static_cast<int64_t>(dtype_size(dtype));
}

// Row `row` as float32 times `factor` into dst[0..dim), zeros in dst[dim..dp).
static void load_row(const void* base, int64_t row, int64_t stride, DType dtype, int64_t dim, int64_t dp, float factor,
                     float* dst) {
  const char* src = row_address(base, row, stride, dtype);
  if (dtype == DType::Float32) {
    // A vector loop, not memcpy: rows are short (a call per 128-byte row cost more than the copy).
    const float* f = reinterpret_cast<const float*>(src);
    int64_t c = 0;
    for (; c + W <= dim; c += W) V::store(dst + c, V::load(f + c));
    for (; c < dim; ++c) dst[c] = f[c];
  } else {
    convert_row(reinterpret_cast<const uint16_t*>(src), dst, dim, dtype);
  }
  if (factor != 1.0f)
    for (int64_t c = 0; c < dim; ++c) dst[c] *= factor;
  for (int64_t c = dim; c < dp; ++c) dst[c] = 0.0f;
}

// ---- C[M][N] (+)= A[M][K] . B[K][N]: B and C row-major, N a multiple of W; A element (r, k) at A[r * ar + k * ak] --
// (ak = 1: row-major A; ar = 1: A stored transposed, as the scores are).
template <int RM, int NB, bool Accumulate>
static inline void gemm_block(const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* C,
                              int64_t ldc, int64_t K, const float* c_scale) {
  V::type acc[RM][NB];
  for (int r = 0; r < RM; ++r) {
    const V::type scale = V::set1(c_scale ? c_scale[r] : 1.0f);
    for (int v = 0; v < NB; ++v)
      acc[r][v] = Accumulate ? (c_scale ? V::mul(V::load(C + r * ldc + v * W), scale) : V::load(C + r * ldc + v * W))
                             : V::zero();
  }
  for (int64_t k = 0; k < K; ++k) {
    V::type b[NB];
    for (int v = 0; v < NB; ++v) b[v] = V::load(B + k * ldb + v * W);
    for (int r = 0; r < RM; ++r) {
      const V::type a = V::set1(A[r * ar + k * ak]);
      for (int v = 0; v < NB; ++v) acc[r][v] = V::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NB; ++v) V::store(C + r * ldc + v * W, acc[r][v]);
}

template <int RM, bool Accumulate>
static inline void gemm_rows(const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* C, int64_t ldc,
                             int64_t K, int64_t vectors, const float* c_scale) {
  int64_t v = 0;
  for (; v + kVectorsPerBlock <= vectors; v += kVectorsPerBlock)
    gemm_block<RM, kVectorsPerBlock, Accumulate>(A, ar, ak, B + v * W, ldb, C + v * W, ldc, K, c_scale);
  if constexpr (kVectorsPerBlock > 2) {
    for (; v + 2 <= vectors; v += 2)
      gemm_block<RM, 2, Accumulate>(A, ar, ak, B + v * W, ldb, C + v * W, ldc, K, c_scale);
  }
  for (; v < vectors; ++v) gemm_block<RM, 1, Accumulate>(A, ar, ak, B + v * W, ldb, C + v * W, ldc, K, c_scale);
}

// c_scale (Accumulate only; null for none): C's row r is multiplied by c_scale[r] as it is loaded (the online
// softmax's rescale of the output, fused).
template <bool Accumulate>
static void gemm(const float* A, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M,
                 int64_t K, int64_t N, const float* c_scale = nullptr) {
  const int64_t vectors = N / W;
  int64_t r = 0;
  auto scale_at = [&](int64_t row) { return c_scale ? c_scale + row : nullptr; };
#if defined(TOKENSET_SIMD_AVX512)
  if (vectors == 2) {  // narrow outputs (d = 32 on AVX-512): 8 rows x 2 vectors keep 16 accumulators busy
    for (; r + 8 <= M; r += 8)
      gemm_block<8, 2, Accumulate>(A + r * ar, ar, ak, B, ldb, C + r * ldc, ldc, K, scale_at(r));
  }
#endif
  for (; r + kRowsPerBlock <= M; r += kRowsPerBlock)
    gemm_rows<kRowsPerBlock, Accumulate>(A + r * ar, ar, ak, B, ldb, C + r * ldc, ldc, K, vectors, scale_at(r));
  for (; r < M; ++r) gemm_rows<1, Accumulate>(A + r * ar, ar, ak, B, ldb, C + r * ldc, ldc, K, vectors, scale_at(r));
}

// A tile of query rows turned around for the transposed scores: src [rows][dp] -> dst [dp][ld], zeros in columns
// rows .. padded - 1.
static void transpose_rows(const float* src, int64_t rows, int64_t padded, int64_t dp, int64_t ld, float* dst) {
  for (int64_t c = 0; c < dp; ++c) {
    float* out = dst + c * ld;
    for (int64_t r = 0; r < rows; ++r) out[r] = src[r * dp + c];
    for (int64_t r = rows; r < padded; ++r) out[r] = 0.0f;
  }
}

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
