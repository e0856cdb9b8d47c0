// MUVERA Fixed Dimensional Encodings on the CPU (semantics in tokenset/fde.h).
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512); each build defines the level's
// kernel table (fde_kernels.h). The driver, fde.cpp, runs a table over threads (partitions, fill, Count-Sketch).
//
// Per set, tokens go in blocks of 64, each transposed once so that tokens sit in vector lanes. One GEMM-shaped
// register tile gives the block's dots with all reps * simhash_bits hyperplanes at once (broadcast a hyperplane
// coefficient, FMA with a vector of tokens); compares of whole vectors of tokens then give every sign pattern and its
// Gray-decoded partition. Projected encoders project the transposed block per repetition with the sparse AMS
// structure and add the projected tokens to their partitions, transposing tiles back in registers. Identity encoders
// sum raw token rows per partition (SIMD adds) and write each output block once.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fde_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {

namespace TOKENSET_SIMD_NS {

// Register tile of the hyperplane dots: CT hyperplane columns x TV vectors of tokens (a 64-token block at most).
#if defined(TOKENSET_SIMD_AVX512)
constexpr int kTileColumns = 6, kTileVectors = 4;  // 24 accumulators + 4 token vectors + 1 broadcast
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kTileColumns = 4, kTileVectors = 2;  // 8 accumulators + 2 token vectors + 1 broadcast
#else
constexpr int kTileColumns = 4, kTileVectors = 4;
#endif

static void convert_rows(const void* rows, int64_t stride, DType dtype, int64_t count, int64_t dim, float* dst) {
  for (int64_t t = 0; t < count; ++t)
    convert_row(static_cast<const uint16_t*>(rows) + t * stride, dst + t * dim, dim, dtype);
}

template <int CT, int TV>
static inline void dots_tile(const float* xt, int64_t npad, int64_t dim, const float* g, int64_t columns,
                             float* dots) {
  V::type acc[CT][TV];
  for (int c = 0; c < CT; ++c)
    for (int v = 0; v < TV; ++v) acc[c][v] = V::zero();
#pragma GCC unroll 4
  for (int64_t k = 0; k < dim; ++k) {
    V::type x[TV];
    for (int v = 0; v < TV; ++v) x[v] = V::load(xt + k * npad + v * W);
    for (int c = 0; c < CT; ++c) {
      const V::type b = V::set1(g[k * columns + c]);
      for (int v = 0; v < TV; ++v) acc[c][v] = V::fmadd(b, x[v], acc[c][v]);
    }
  }
  for (int c = 0; c < CT; ++c)
    for (int v = 0; v < TV; ++v) V::store(dots + c * npad + v * W, acc[c][v]);
}

template <int CT, int TV>
static inline void dots_tile_any(int cols, int vectors, const float* xt, int64_t npad, int64_t dim, const float* g,
                                 int64_t columns, float* dots) {
  if constexpr (CT >= 1 && TV >= 1) {
    if (cols < CT) {
      dots_tile_any<CT - 1, TV>(cols, vectors, xt, npad, dim, g, columns, dots);
    } else if (vectors < TV) {
      dots_tile_any<CT, TV - 1>(cols, vectors, xt, npad, dim, g, columns, dots);
    } else {
      dots_tile<CT, TV>(xt, npad, dim, g, columns, dots);
    }
  }
}

static void simhash_dots(const float* xt, int64_t npad, int64_t dim, const float* g, int64_t columns, float* dots) {
  const int64_t vectors = npad / W;
  for (int64_t v0 = 0; v0 < vectors; v0 += kTileVectors) {
    const int vs = static_cast<int>(vectors - v0 < kTileVectors ? vectors - v0 : kTileVectors);
    for (int64_t c0 = 0; c0 < columns; c0 += kTileColumns) {
      const int cs = static_cast<int>(columns - c0 < kTileColumns ? columns - c0 : kTileColumns);
      dots_tile_any<kTileColumns, kTileVectors>(cs, vs, xt + v0 * W, npad, dim, g + c0, columns,
                                                dots + c0 * npad + v0 * W);
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
// out[c] = column c of the tile (rows src + i * ss).
static inline void transpose_tile_regs(const float* src, int64_t ss, V::type out[W]) {
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
    out[0 + m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    out[4 + m] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    out[8 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    out[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}
#elif defined(TOKENSET_SIMD_AVX2)
// 8 x 8 tile: 32-bit then 64-bit interleaves within 128-bit lanes, then one 128-bit lane permute.
static inline void transpose_tile_regs(const float* src, int64_t ss, V::type out[W]) {
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
    out[m] = _mm256_permute2f128_ps(r[m], r[4 + m], 0x20);
    out[4 + m] = _mm256_permute2f128_ps(r[m], r[4 + m], 0x31);
  }
}
#else
static inline void transpose_tile_regs(const float* src, int64_t ss, V::type out[W]) { (void)ss, out[0] = *src; }
#endif

static inline void transpose_tile(const float* src, int64_t ss, float* dst, int64_t ds) {
  V::type columns[W];
  transpose_tile_regs(src, ss, columns);
  for (int c = 0; c < W; ++c) V::store(dst + c * ds, columns[c]);
}

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

// npad tokens (a multiple of W, at most 64) per call.
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

// Adds a projected block to its partitions: token t (t < nb) is column t of yt [pd][npad] and is added to
// rep_row[parts[t] * pd ..]. Whole tiles of W tokens x W columns are transposed in registers, not through memory.
static void accumulate_projected(const float* yt, int64_t npad, int64_t nb, int64_t pd, const int32_t* parts,
                                 float* rep_row, int32_t* counts) {
  for (int64_t t0 = 0; t0 < nb; t0 += W) {  // npad is a multiple of W: a tile never reads past it
    const int tokens = static_cast<int>(nb - t0 < W ? nb - t0 : W);
    float* dst[W];
    for (int i = 0; i < tokens; ++i) {
      dst[i] = rep_row + parts[t0 + i] * pd;
      ++counts[parts[t0 + i]];
    }
    int64_t j0 = 0;
    for (; j0 + W <= pd; j0 += W) {
      V::type rows[W];
      transpose_tile_regs(yt + j0 * npad + t0, npad, rows);
      if (tokens == W) {  // constant trip count: rows stay in registers
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) V::store(dst[i] + j0, V::add(V::load(dst[i] + j0), rows[i]));
      } else {
        for (int i = 0; i < tokens; ++i) V::store(dst[i] + j0, V::add(V::load(dst[i] + j0), rows[i]));
      }
    }
    for (; j0 < pd; ++j0)
      for (int i = 0; i < tokens; ++i) dst[i][j0] += yt[j0 * npad + t0 + i];
  }
}

static void sign_codes(const float* dots, int64_t npad, int64_t count, int64_t reps, int bits, int64_t stride,
                       uint32_t* codes, int32_t* parts) {
  const V::itype one = V::iset1(1);
  for (int64_t t0 = 0; t0 < count; t0 += W) {
    const int64_t lanes = count - t0 < W ? count - t0 : W;
    for (int64_t r = 0; r < reps; ++r) {
      V::itype code = V::iset1(0);
      for (int m = 0; m < bits; ++m) {  // code = 2 * code + bit, first hyperplane first
        code = V::iadd(code, code);
        code = V::iselect(V::greater(V::load(dots + (r * bits + m) * npad + t0), V::zero()), code, V::iadd(code, one));
      }
      V::itype part = code;  // Gray decode: the prefix XOR of the pattern's bits, in log2(bits) steps
      for (int shift = 1; shift < bits; shift <<= 1) part = V::ixor(part, V::isrl(part, shift));
      int32_t* code_out = reinterpret_cast<int32_t*>(codes) + r * stride + t0;
      int32_t* part_out = parts + r * stride + t0;
      if (lanes == W) {
        V::istore(code_out, code);
        V::istore(part_out, part);
      } else {  // the block's last tokens: only `lanes` of the W are real
        int32_t code_lanes[W], part_lanes[W];
        V::istore(code_lanes, code);
        V::istore(part_lanes, part);
        std::memcpy(code_out, code_lanes, sizeof(int32_t) * lanes);
        std::memcpy(part_out, part_lanes, sizeof(int32_t) * lanes);
      }
    }
  }
}

static void divide_row(float* dst, const float* src, int64_t n, float divisor) {
  const V::type d = V::set1(divisor);
  int64_t k = 0;
  for (; k + W <= n; k += W) V::store(dst + k, V::div(V::load(src + k), d));
  for (; k < n; ++k) dst[k] = src[k] / divisor;
}

extern const FdeKernel fde_kernel = {W,          &convert_rows,   &simhash_dots,         &add_row,       &transpose,
                                     &project_tokens, &accumulate_projected, &sign_codes,    &divide_row};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
