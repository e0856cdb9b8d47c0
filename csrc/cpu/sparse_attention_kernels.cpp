// Sparse-attention kernels, once per SIMD level (TOKENSET_SIMD_NS). A query tile (up to 64 rows, scaled by
// scale * log2(e) so that the softmax runs on exp2) meets the listed keys 64 at a time: the chunk's keys are gathered
// into packed float32 tiles (K transposed for the scores, V row-major for the output), so blocks and single-column
// stripes take the same path and nothing larger than a chunk is ever copied. Scores, P.V and the backward's four
// products all run through one register-blocked GEMM (gemm below). Accumulation is float32; the softmax is online
// (running max and sum per row); the backward recomputes P from the saved log-sum-exp.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.h"
#include "sparse_attention_kernels.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

namespace {

constexpr int64_t RT = kAttentionRowTile;
constexpr int64_t KC = kAttentionKeyChunk;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();

#if defined(TOKENSET_SIMD_AVX512)
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 4;  // 16 accumulators of 32 registers
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 2;  // 8 accumulators of 16 registers
#else
constexpr int kRowsPerBlock = 4, kVectorsPerBlock = 4;
#endif
static_assert(KC % W == 0 && 16 % W == 0, "chunks and packed rows hold whole vectors");

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
    std::memcpy(dst, src, static_cast<size_t>(dim) * sizeof(float));
  } else {
    convert_row(reinterpret_cast<const uint16_t*>(src), dst, dim, dtype);
  }
  if (factor != 1.0f)
    for (int64_t c = 0; c < dim; ++c) dst[c] *= factor;
  for (int64_t c = dim; c < dp; ++c) dst[c] = 0.0f;
}

static inline uint16_t float_to_half(float value) {  // round to nearest even; inf, NaN and subnormals kept
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (ax < 0x38800000u) {  // a half subnormal: value / 2^-24, rounded to nearest even (exact scaling by 2^24)
    float a;
    std::memcpy(&a, &ax, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t r = ax - 0x38000000u;  // rebias 127 -> 15
  r += 0x0fffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

static inline uint16_t float_to_bfloat(float value) {  // round to nearest even; NaN stays NaN
  uint32_t x;
  std::memcpy(&x, &value, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// src[0..dim) times `factor` into row `row` in the array's dtype.
static void store_row(const float* src, float factor, void* base, int64_t row, int64_t stride, DType dtype,
                      int64_t dim) {
  char* dst = const_cast<char*>(row_address(base, row, stride, dtype));
  if (dtype == DType::Float32) {
    float* out = reinterpret_cast<float*>(dst);
    for (int64_t c = 0; c < dim; ++c) out[c] = src[c] * factor;
  } else if (dtype == DType::Float16) {
    uint16_t* out = reinterpret_cast<uint16_t*>(dst);
    for (int64_t c = 0; c < dim; ++c) out[c] = float_to_half(src[c] * factor);
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(dst);
    for (int64_t c = 0; c < dim; ++c) out[c] = float_to_bfloat(src[c] * factor);
  }
}

static inline int64_t physical(const int64_t* map, int64_t i) { return map ? map[i] : i; }

// ---- C[M][N] (+)= A[M][K] . B[K][N], row-major, N a multiple of W --------------------------------------------------
template <int RM, int NB, bool Accumulate>
static inline void gemm_block(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                              int64_t K) {
  V::type acc[RM][NB];
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NB; ++v) acc[r][v] = Accumulate ? V::load(C + r * ldc + v * W) : V::zero();
  for (int64_t k = 0; k < K; ++k) {
    V::type b[NB];
    for (int v = 0; v < NB; ++v) b[v] = V::load(B + k * ldb + v * W);
    for (int r = 0; r < RM; ++r) {
      const V::type a = V::set1(A[r * lda + k]);
      for (int v = 0; v < NB; ++v) acc[r][v] = V::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < RM; ++r)
    for (int v = 0; v < NB; ++v) V::store(C + r * ldc + v * W, acc[r][v]);
}

template <int RM, bool Accumulate>
static inline void gemm_rows(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t K,
                             int64_t vectors) {
  int64_t v = 0;
  for (; v + kVectorsPerBlock <= vectors; v += kVectorsPerBlock)
    gemm_block<RM, kVectorsPerBlock, Accumulate>(A, lda, B + v * W, ldb, C + v * W, ldc, K);
  for (; v < vectors; ++v) gemm_block<RM, 1, Accumulate>(A, lda, B + v * W, ldb, C + v * W, ldc, K);
}

template <bool Accumulate>
static void gemm(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc, int64_t M, int64_t K,
                 int64_t N) {
  const int64_t vectors = N / W;
  int64_t r = 0;
  for (; r + kRowsPerBlock <= M; r += kRowsPerBlock)
    gemm_rows<kRowsPerBlock, Accumulate>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, K, vectors);
  for (; r < M; ++r) gemm_rows<1, Accumulate>(A + r * lda, lda, B, ldb, C + r * ldc, ldc, K, vectors);
}

// ---- chunks of listed keys ------------------------------------------------------------------------------------------
// Walks the listed key blocks of one query tile as chunks of up to KC logical key columns: on_chunk(cols, n) for each.
// Keys past the last row's causal horizon are never visited (lists are sorted, so the walk stops there).
template <typename OnChunk>
static void for_each_chunk(const AttentionHeadView& h, const int64_t* keys, int64_t count, int64_t horizon,
                           OnChunk&& on_chunk) {
  int64_t cols[KC];
  int64_t n = 0;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t start = keys[e] * h.key_block_size;
    if (start >= horizon) break;
    int64_t end = start + h.key_block_size;
    if (end > h.key_length) end = h.key_length;
    if (end > horizon) end = horizon;
    for (int64_t j = start; j < end; ++j) {
      cols[n++] = j;
      if (n == KC) {
        on_chunk(cols, n);
        n = 0;
      }
    }
  }
  if (n > 0) on_chunk(cols, n);
}

// Packs the chunk's keys: kt [dp][KC] (transposed; null to skip), kr [KC][dp] (row-major; null to skip) from `k`, and
// the same for `v` into vt / vr; bias[j] = 0 for a key that exists, -inf for padding and unmapped rows.
static void pack_chunk(const AttentionHeadView& h, const int64_t* cols, int64_t n, int64_t dp, float* kt, float* kr,
                       float* vt, float* vr, float* bias, float* row) {
  for (int64_t j = 0; j < KC; ++j) {
    const int64_t p = j < n ? physical(h.row_map, cols[j]) : -1;
    bias[j] = p < 0 ? -kInf : 0.0f;
    if (kt || kr) {
      if (p >= 0) load_row(h.k, p, h.k_stride, h.dtype, h.dim, dp, 1.0f, row);
      else for (int64_t c = 0; c < dp; ++c) row[c] = 0.0f;
      if (kt) for (int64_t c = 0; c < dp; ++c) kt[c * KC + j] = row[c];
      if (kr) std::memcpy(kr + j * dp, row, static_cast<size_t>(dp) * sizeof(float));
    }
    if (vt || vr) {
      if (p >= 0) load_row(h.v, p, h.v_stride, h.dtype, h.dim, dp, 1.0f, row);
      else for (int64_t c = 0; c < dp; ++c) row[c] = 0.0f;
      if (vt) for (int64_t c = 0; c < dp; ++c) vt[c * KC + j] = row[c];
      if (vr) std::memcpy(vr + j * dp, row, static_cast<size_t>(dp) * sizeof(float));
    }
  }
}

// s[0..KC) += bias, then -inf where the logical key cols[j] (or key0 + j) is past the row's causal limit.
static inline void mask_scores(float* s, const float* bias, const int64_t* cols, int64_t key0, int64_t limit,
                               bool diagonal) {
  for (int64_t j = 0; j < KC; j += W) V::store(s + j, V::add(V::load(s + j), V::load(bias + j)));
  if (!diagonal) return;
  for (int64_t j = 0; j < KC; ++j)
    if ((cols ? cols[j] : key0 + j) > limit) s[j] = -kInf;
}

static inline float row_max(const float* s) {
  V::type m = V::set1(-kInf);
  for (int64_t j = 0; j < KC; j += W) m = V::max(m, V::load(s + j));
  float lanes[W];
  V::store(lanes, m);
  float out = -kInf;
  for (int i = 0; i < W; ++i) {
    if (lanes[i] != lanes[i]) return lanes[i];  // a NaN score makes the row NaN (as the reference and SDPA)
    out = lanes[i] > out ? lanes[i] : out;
  }
  return out;
}

// s <- exp2(s - shift) (masked -inf entries give 0); returns the sum.
static inline float exp2_row(float* s, float shift) {
  const V::type sh = V::set1(shift);
  V::type sum = V::zero();
  for (int64_t j = 0; j < KC; j += W) {
    const V::type e = exp2_vector(V::sub(V::load(s + j), sh));
    V::store(s + j, e);
    sum = V::add(sum, e);
  }
  float lanes[W];
  V::store(lanes, sum);
  float out = 0.0f;
  for (int i = 0; i < W; ++i) out += lanes[i];
  return out;
}

// ---- forward --------------------------------------------------------------------------------------------------------
static void forward_block(const AttentionHeadView& h, int64_t qb, const int64_t* keys, int64_t count, float* scratch) {
  const int64_t dim = h.dim, dp = attention_packed_dim(dim);
  const float c = h.scale * kLog2e;
  const int64_t shift = h.key_length - h.query_length;  // causal: key j is visible to row i when j <= i + shift
  float* Q = scratch;
  float* O = Q + RT * dp;
  float* S = O + RT * dp;
  float* m = S + RT * KC;
  float* l = m + RT;
  float* kt = l + 2 * RT;
  float* vr = kt + dp * KC;
  float* bias = vr + KC * dp;
  float* row = bias + KC;  // dp floats (within the 64 of headroom plus KC)
  const int64_t r_begin = qb * h.block_size;
  const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
  for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
    const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = physical(h.row_map, t0 + r);
      if (p >= 0) load_row(h.q, p, h.q_stride, h.dtype, dim, dp, c, Q + r * dp);
      else for (int64_t x = 0; x < dp; ++x) Q[r * dp + x] = 0.0f;
      for (int64_t x = 0; x < dp; ++x) O[r * dp + x] = 0.0f;
      m[r] = -kInf;
      l[r] = 0.0f;
    }
    const int64_t horizon = h.causal ? t0 + rows + shift : h.key_length;  // keys >= horizon: invisible to the tile
    for_each_chunk(h, keys, count, horizon, [&](const int64_t* cols, int64_t n) {
      pack_chunk(h, cols, n, dp, kt, nullptr, nullptr, vr, bias, row);
      gemm<false>(Q, dp, kt, KC, S, KC, rows, dp, KC);
      const bool diagonal = h.causal && cols[n - 1] > t0 + shift;
      int64_t padded[KC];
      if (diagonal) {
        for (int64_t j = 0; j < KC; ++j) padded[j] = j < n ? cols[j] : 0;
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* s = S + r * KC;
        mask_scores(s, bias, padded, 0, t0 + r + shift, diagonal);
        const float top = row_max(s);
        const float m_new = (top != top || top > m[r]) ? top : m[r];
        if (m_new == -kInf) {  // nothing visible to this row yet
          for (int64_t j = 0; j < KC; ++j) s[j] = 0.0f;
          continue;
        }
        const float alpha = std::exp2(m[r] - m_new);
        const float sum = exp2_row(s, m_new);
        l[r] = l[r] * alpha + sum;
        m[r] = m_new;
        if (alpha != 1.0f) {
          const V::type a = V::set1(alpha);
          for (int64_t x = 0; x < dp; x += W) V::store(O + r * dp + x, V::mul(V::load(O + r * dp + x), a));
        }
      }
      gemm<true>(S, KC, vr, dp, O, dp, rows, KC, dp);
    });
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = physical(h.row_map, t0 + r);
      if (p < 0) continue;
      const bool seen = l[r] > 0.0f || l[r] != l[r];
      store_row(O + r * dp, seen ? 1.0f / l[r] : 0.0f, h.out, p, h.out_stride, h.dtype, dim);
      if (h.lse) h.lse[p] = seen ? (m[r] + std::log2(l[r])) * kLn2 : -kInf;
    }
  }
}

// ---- backward, query pass: delta = rowsum(dO * O) and dQ = scale * dS . K -----------------------------------------
static void backward_query_block(const AttentionHeadView& h, int64_t qb, const int64_t* keys, int64_t count,
                                 float* scratch) {
  const int64_t dim = h.dim, dp = attention_packed_dim(dim);
  const float c = h.scale * kLog2e;
  const int64_t shift = h.key_length - h.query_length;
  float* Q = scratch;
  float* dO = Q + RT * dp;
  float* dQ = dO + RT * dp;
  float* S = dQ + RT * dp;
  float* dP = S + RT * KC;
  float* lse2 = dP + RT * KC;
  float* delta = lse2 + RT;
  float* kt = delta + 2 * RT;
  float* kr = kt + dp * KC;
  float* vt = kr + KC * dp;
  float* bias = vt + dp * KC;
  float* row = bias + KC;
  const int64_t r_begin = qb * h.block_size;
  const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
  for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
    const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = physical(h.row_map, t0 + r);
      for (int64_t x = 0; x < dp; ++x) dQ[r * dp + x] = 0.0f;
      if (p < 0) {
        for (int64_t x = 0; x < dp; ++x) Q[r * dp + x] = dO[r * dp + x] = 0.0f;
        lse2[r] = -kInf;
        delta[r] = 0.0f;
      } else {
        load_row(h.q, p, h.q_stride, h.dtype, dim, dp, c, Q + r * dp);
        load_row(h.grad_out, p, h.grad_out_stride, h.dtype, dim, dp, 1.0f, dO + r * dp);
        load_row(h.out, p, h.out_stride, h.dtype, dim, dp, 1.0f, row);
        float d = 0.0f;
        for (int64_t x = 0; x < dim; ++x) d += dO[r * dp + x] * row[x];
        delta[r] = d;
        lse2[r] = h.lse[p] * kLog2e;
      }
      h.delta[t0 + r] = delta[r];
    }
    const int64_t horizon = h.causal ? t0 + rows + shift : h.key_length;
    for_each_chunk(h, keys, count, horizon, [&](const int64_t* cols, int64_t n) {
      pack_chunk(h, cols, n, dp, kt, kr, vt, nullptr, bias, row);
      gemm<false>(Q, dp, kt, KC, S, KC, rows, dp, KC);
      gemm<false>(dO, dp, vt, KC, dP, KC, rows, dp, KC);
      const bool diagonal = h.causal && cols[n - 1] > t0 + shift;
      int64_t padded[KC];
      if (diagonal) {
        for (int64_t j = 0; j < KC; ++j) padded[j] = j < n ? cols[j] : 0;
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* s = S + r * KC;
        float* dp_row = dP + r * KC;
        if (lse2[r] == -kInf) {  // a row that saw nothing (or no token): no gradient
          for (int64_t j = 0; j < KC; ++j) s[j] = 0.0f;
          continue;
        }
        mask_scores(s, bias, padded, 0, t0 + r + shift, diagonal);
        exp2_row(s, lse2[r]);
        const V::type dl = V::set1(delta[r]);
        for (int64_t j = 0; j < KC; j += W)
          V::store(s + j, V::mul(V::load(s + j), V::sub(V::load(dp_row + j), dl)));
      }
      gemm<true>(S, KC, kr, dp, dQ, dp, rows, KC, dp);
    });
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = physical(h.row_map, t0 + r);
      if (p >= 0) store_row(dQ + r * dp, h.scale, h.grad_q, p, h.grad_q_stride, h.dtype, dim);
    }
  }
}

// ---- backward, key pass: dV = P^T . dO and dK = scale * dS^T . Q over every query block listing the group ---------
static void backward_key_group(const AttentionHeadView* heads, int64_t key0, const KeyGroupEntry* entries,
                               int64_t count, void* grad_k, int64_t grad_k_stride, void* grad_v, int64_t grad_v_stride,
                               float* scratch) {
  const AttentionHeadView& kv = heads[0];
  const int64_t dim = kv.dim, dp = attention_packed_dim(dim);
  const float c = kv.scale * kLog2e;
  const int64_t shift = kv.key_length - kv.query_length;
  float* kt = scratch;
  float* vt = kt + dp * KC;
  float* dK = vt + dp * KC;
  float* dV = dK + KC * dp;
  float* Q = dV + KC * dp;
  float* dO = Q + RT * dp;
  float* S = dO + RT * dp;
  float* dP = S + RT * KC;
  float* PT = dP + RT * KC;
  float* dST = PT + KC * RT;
  float* lse2 = dST + KC * RT;
  float* delta = lse2 + RT;
  float* bias = delta + 2 * RT;
  float* entry_bias = bias + KC;
  float* row = entry_bias + KC;
  const int64_t n = kv.key_length - key0 < KC ? kv.key_length - key0 : KC;
  int64_t cols[KC];
  for (int64_t j = 0; j < KC; ++j) cols[j] = key0 + j;
  pack_chunk(kv, cols, n, dp, kt, nullptr, vt, nullptr, bias, row);
  for (int64_t x = 0; x < KC * dp; ++x) dK[x] = dV[x] = 0.0f;
  for (int64_t e = 0; e < count; ++e) {
    const AttentionHeadView& h = heads[entries[e].head];
    const uint64_t listed = entries[e].keys;
    for (int64_t j = 0; j < KC; ++j) entry_bias[j] = ((listed >> j) & 1u) ? bias[j] : -kInf;
    const int64_t r_begin = entries[e].query_block * h.block_size;
    const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
    for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
      const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
      if (h.causal && key0 > t0 + rows - 1 + shift) continue;  // every key of the group is past this tile's rows
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = physical(h.row_map, t0 + r);
        if (p < 0) {
          for (int64_t x = 0; x < dp; ++x) Q[r * dp + x] = dO[r * dp + x] = 0.0f;
          lse2[r] = -kInf;
          delta[r] = 0.0f;
        } else {
          load_row(h.q, p, h.q_stride, h.dtype, dim, dp, c, Q + r * dp);
          load_row(h.grad_out, p, h.grad_out_stride, h.dtype, dim, dp, 1.0f, dO + r * dp);
          lse2[r] = h.lse[p] * kLog2e;
          delta[r] = h.delta[t0 + r];
        }
      }
      gemm<false>(Q, dp, kt, KC, S, KC, rows, dp, KC);
      gemm<false>(dO, dp, vt, KC, dP, KC, rows, dp, KC);
      const bool diagonal = h.causal && key0 + KC - 1 > t0 + shift;
      for (int64_t r = 0; r < rows; ++r) {
        float* s = S + r * KC;
        float* ds = dP + r * KC;
        if (lse2[r] == -kInf) {
          for (int64_t j = 0; j < KC; ++j) s[j] = ds[j] = 0.0f;
        } else {
          mask_scores(s, entry_bias, nullptr, key0, t0 + r + shift, diagonal);
          exp2_row(s, lse2[r]);
          const V::type dl = V::set1(delta[r]);
          for (int64_t j = 0; j < KC; j += W)
            V::store(ds + j, V::mul(V::load(s + j), V::sub(V::load(ds + j), dl)));
        }
        for (int64_t j = 0; j < KC; ++j) {
          PT[j * RT + r] = s[j];
          dST[j * RT + r] = ds[j];
        }
      }
      gemm<true>(PT, RT, dO, dp, dV, dp, KC, rows, dp);
      gemm<true>(dST, RT, Q, dp, dK, dp, KC, rows, dp);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = physical(kv.row_map, key0 + j);
    if (p < 0) continue;
    store_row(dK + j * dp, 1.0f / kLog2e, grad_k, p, grad_k_stride, kv.dtype, dim);
    store_row(dV + j * dp, 1.0f, grad_v, p, grad_v_stride, kv.dtype, dim);
  }
}

}  // namespace

extern const SparseAttentionKernel sparse_attention_kernel = {&forward_block, &backward_query_block,
                                                             &backward_key_group};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
