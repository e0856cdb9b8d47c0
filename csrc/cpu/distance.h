// The one definition of the token-to-token distances of the selection kernels (k-center, nearest centre), and the
// register tile that computes them. Included only by kernel files compiled once per SIMD level, after simd.h.
//
// Every pair (a, b) is summed in k order, one fused multiply-add per element, starting from 0:
//   dot(a, b) = fma(a_k, b_k, acc)                     k = 0 .. d-1
//   l2(a, b)  = fma(a_k - b_k, a_k - b_k, acc)         the difference form: exact to a few ulp of the distance
//                                                      itself, whatever offset the tokens share
// A vector lane holds one pair, never a strided part of one sum, so the scalar, AVX2 and AVX-512 levels (and the
// CUDA kernels, which add in the same order with fmaf) give the same bits; products commute and a - b = -(b - a)
// exactly, so d(a, b) and d(b, a) are the same bits too. The last step (finish_distance) is scalar and compiled
// with -ffp-contract=off, so no level fuses it differently.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "simd.h"
#include "tokenset/dispatch.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// One element of every pair of a vector: acc + panel * b (dot) or acc + (panel - b)^2 (l2).
template <Metric M>
static inline V::type accumulate_pair(V::type acc, V::type panel, V::type b) {
  if constexpr (M == Metric::L2) {
    const V::type diff = V::sub(panel, b);
    return V::fmadd(diff, diff, acc);
  } else {
    return V::fmadd(b, panel, acc);
  }
}

// The distance from a pair's sum: cosine 1 - dot (r_a r_b) with r = 1 / ||x|| (0 for a zero vector), ip -dot, l2 the
// squared distance; a NaN distance counts as -inf.
static inline float finish_distance(Metric metric, float sum, float stat_a, float stat_b) {
  float d;
  if (metric == Metric::Cosine) {
    const float scale = stat_a * stat_b;
    const float similarity = sum * scale;
    d = 1.0f - similarity;
  } else if (metric == Metric::L2) {
    d = sum;
  } else {
    d = -sum;
  }
  return d != d ? -std::numeric_limits<float>::infinity() : d;
}

// The distances of a vector of pairs at once, the same operations as finish_distance lane by lane (IEEE, so the
// same bits): sums against the lanes' stats and one row's stat. A NaN distance becomes `nan_as` (-inf for k-center,
// which picks far tokens last when unsure; +inf for nearest, which never joins a token to a NaN distance).
template <Metric M>
static inline V::type finish_vector(V::type sum, V::type stat_lanes, float stat_row,
                                    float nan_as = -std::numeric_limits<float>::infinity()) {
  V::type d;
  if constexpr (M == Metric::Cosine) {
    const V::type scale = V::mul(stat_lanes, V::set1(stat_row));
    d = V::sub(V::set1(1.0f), V::mul(sum, scale));
  } else if constexpr (M == Metric::L2) {
    d = sum;
  } else {
    d = V::mul(sum, V::set1(-1.0f));  // exactly -sum, -0 for +0 included
  }
  return V::select(V::unordered(d, V::no_mask()), d, V::set1(nan_as));
}

template <DType D>
static inline void row_stats_typed(const void* base, int64_t stride, int64_t dim, int64_t count, float* out) {
  constexpr int G = 8;
  constexpr int64_t esize = D == DType::Float32 ? 4 : 2;
  for (int64_t j0 = 0; j0 < count; j0 += G) {
    const int g_count = count - j0 < G ? static_cast<int>(count - j0) : G;
    const char* rows[G];
    float sq[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      rows[g] = static_cast<const char*>(base) + (j0 + (g < g_count ? g : 0)) * stride * esize;
      sq[g] = 0.0f;
    }
    for (int64_t k = 0; k < dim; ++k) {
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        const float x = element_to_float(rows[g], k, D);
        sq[g] = std::fma(x, x, sq[g]);
      }
    }
    for (int g = 0; g < g_count; ++g) out[j0 + g] = sq[g] > 0.0f ? 1.0f / std::sqrt(sq[g]) : 0.0f;
  }
}

// The per-row statistic finish_distance needs, for rows [0, count) (row j at base + j * stride elements): 1 / ||x||
// (cosine; 0 for a zero row) or 0 (l2, ip). Each squared norm is summed in k order, as the pairs are; eight rows are
// summed side by side so the eight FMA chains overlap.
static inline void row_stats_of(Metric metric, const void* base, int64_t stride, DType dtype, int64_t dim,
                                int64_t count, float* out) {
  if (metric != Metric::Cosine) {
    for (int64_t j = 0; j < count; ++j) out[j] = 0.0f;
    return;
  }
  TOKENSET_FLOAT_SWITCH(dtype, kDType, [&] { row_stats_typed<kDType>(base, stride, dim, count, out); });
}

// Tile shape: QV vectors of panel lanes (QB = QV * W tokens packed transposed, panel[k * QB + lane]) against R rows
// broadcast element by element. l2 needs two registers more (the differences): AVX2 has 16, so it takes 5 rows there.
#if defined(TOKENSET_SIMD_AVX512)
constexpr int kPanelVectors = 2;
constexpr int kTileRowsDot = 12;  // 24 accumulators + 2 panel vectors + 1 broadcast (+ 2 differences) of 32
constexpr int kTileRowsL2 = 12;
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kPanelVectors = 2;
constexpr int kTileRowsDot = 6;  // 12 accumulators + 2 panel vectors + 1 broadcast of 16
constexpr int kTileRowsL2 = 5;   // 10 accumulators + 2 + 1 + 2 differences
#else
constexpr int kPanelVectors = 8;
constexpr int kTileRowsDot = 4;
constexpr int kTileRowsL2 = 4;
#endif
constexpr int kPanelWidth = kPanelVectors * W;

// Continues the sums of ROWS rows against one panel over k in [0, kc): the rows are packed tile-major (element k of
// row r at rows[k * RT + r], RT the tile's full height, so one pointer and constant offsets address them all);
// acc_buf holds the tile's running sums (ROWS x kPanelWidth), zero when `start`. Splitting k into blocks this way
// keeps the order of every sum (the partial sums are stored and reloaded, never combined): blocking changes no bit.
template <int RT, int ROWS, Metric M>
static inline void pair_tile(const float* panel, const float* rows, int64_t kc, bool start, float* acc_buf) {
  constexpr int QV = kPanelVectors, QB = kPanelWidth;
  V::type acc[ROWS][QV];
  if (start) {
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = V::zero();
  } else {
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = V::load(acc_buf + r * QB + v * W);
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    V::type p[QV];
    for (int v = 0; v < QV; ++v) p[v] = V::load(panel + k * QB + v * W);
    for (int r = 0; r < ROWS; ++r) {
      const V::type b = V::set1(rows[k * RT + r]);
      for (int v = 0; v < QV; ++v) acc[r][v] = accumulate_pair<M>(acc[r][v], p[v], b);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < QV; ++v) V::store(acc_buf + r * QB + v * W, acc[r][v]);
}

template <int RT, int ROWS, Metric M>
static inline void pair_tile_any(int rows_left, const float* panel, const float* rows, int64_t kc, bool start,
                                 float* acc_buf) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      pair_tile<RT, ROWS, M>(panel, rows, kc, start, acc_buf);
    else
      pair_tile_any<RT, ROWS - 1, M>(rows_left, panel, rows, kc, start, acc_buf);
  }
}

template <Metric M>
constexpr int tile_rows() {
  return M == Metric::L2 ? kTileRowsL2 : kTileRowsDot;
}

// Blocks of k that keep a panel slice (kBlockK x kPanelWidth floats: 16 KiB at AVX-512) in L1.
constexpr int64_t kBlockK = 128;

// The sums of `panels` packed panels (pack_panels) against `here` rows packed tile-major (pack_tiles<tile_rows<M>()>)
// as a register-blocked GEMM: k in blocks of kBlockK, for each block every panel against every tile from
// first_tile(c) on (tiles before it are neither computed nor written). sums: panel c, tile t at
// (c * tiles + t) * RT * kPanelWidth, RT x kPanelWidth running sums each (tiles = ceil(here / RT)).
template <Metric M, typename FirstTile>
static void panel_block_sums(const float* packed, int64_t panels, int64_t dim, const float* block, int64_t here,
                             FirstTile&& first_tile, float* sums) {
  constexpr int RT = tile_rows<M>(), QB = kPanelWidth;
  const int64_t tiles = (here + RT - 1) / RT;
  for (int64_t k0 = 0; k0 < dim; k0 += kBlockK) {
    const int64_t kc = dim - k0 < kBlockK ? dim - k0 : kBlockK;
    for (int64_t c = 0; c < panels; ++c) {
      const float* panel = packed + c * dim * QB + k0 * QB;
      for (int64_t t = first_tile(c); t < tiles; ++t) {
        const int take = here - t * RT < RT ? static_cast<int>(here - t * RT) : RT;
        pair_tile_any<RT, RT, M>(take, panel, block + t * RT * dim + k0 * RT, kc, k0 == 0,
                                 sums + (c * tiles + t) * RT * QB);
      }
    }
  }
}

#if defined(TOKENSET_SIMD_AVX512)
// c[k] = element k of the 16 rows r[0..15] (a 16 x 16 float32 transpose in registers: unpacks and 4 x 4 shuffles
// within 128-bit lanes, then two rounds of lane shuffles).
static inline void transpose16(const __m512* r, __m512* c) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + j]: element 4m + j of rows 4g .. 4g + 3 in 128-bit lane m
    u[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), v1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 w0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD), w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    c[j] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    c[8 + j] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    c[4 + j] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    c[12 + j] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}

// Elements [0, dim - dim % 16) of `count` <= 16 rows (row i at rows[i], dtype D; missing rows read as 0), transposed:
// element k of row i goes to out[k * out_stride + i] for i < `lanes` (a masked store; lanes >= count are 0).
template <DType D>
static inline void transpose_rows16(const void* const* rows, int count, int64_t dim, float* out, int64_t out_stride,
                                    int lanes) {
  const __mmask16 keep = static_cast<__mmask16>((1u << lanes) - 1u);
  __m512 r[16], c[16];
  for (int64_t k0 = 0; k0 + 16 <= dim; k0 += 16) {
    for (int i = 0; i < 16; ++i) r[i] = i < count ? load_as_float<D>(rows[i], k0) : _mm512_setzero_ps();
    transpose16(r, c);
    for (int k = 0; k < 16; ++k) _mm512_mask_storeu_ps(out + (k0 + k) * out_stride, keep, c[k]);
  }
}
#endif

// Packs rows [begin, end) of a set (element k of row j at base + j * stride) as float32 panels of kPanelWidth tokens:
// panel c, element k, lane l = row begin + c * kPanelWidth + l, zero-padded to whole panels.
static void pack_panels(const void* base, int64_t stride, DType dtype, int64_t dim, int64_t begin, int64_t end,
                        float* packed) {
  constexpr int QB = kPanelWidth;
  const int64_t count = end - begin, panels = (count + QB - 1) / QB;
  const int64_t esize = static_cast<int64_t>(dtype_size(dtype));
  for (int64_t c = 0; c < panels; ++c) {
    float* panel = packed + c * dim * QB;
    const int64_t lanes = count - c * QB < QB ? count - c * QB : QB;
    if (lanes < QB)
      for (int64_t k = 0; k < dim; ++k)
        for (int64_t l = lanes; l < QB; ++l) panel[k * QB + l] = 0.0f;
    int64_t l = 0;
#if defined(TOKENSET_SIMD_AVX512)
    // Sixteen rows at a time, transposed in registers; the last dim % 16 elements by the loops below.
    const int64_t head = dim - dim % 16;
    if (head > 0) {
      for (int64_t g = 0; g < lanes; g += 16) {
        const void* rows[16];
        const int take = lanes - g < 16 ? static_cast<int>(lanes - g) : 16;
        for (int i = 0; i < take; ++i)
          rows[i] = static_cast<const char*>(base) + (begin + c * QB + g + i) * stride * esize;
        TOKENSET_FLOAT_SWITCH(dtype, kDType, [&] { transpose_rows16<kDType>(rows, take, dim, panel + g, QB, 16); });
      }
      for (int64_t r = 0; r < lanes; ++r) {
        const void* row = static_cast<const char*>(base) + (begin + c * QB + r) * stride * esize;
        for (int64_t k = head; k < dim; ++k) panel[k * QB + r] = element_to_float(row, k, dtype);
      }
      continue;
    }
#endif
    if (dtype == DType::Float32) {  // eight rows side by side: eight adjacent lanes stored per element
      for (; l + 8 <= lanes; l += 8) {
        const float* r[8];
        for (int g = 0; g < 8; ++g)
          r[g] = reinterpret_cast<const float*>(static_cast<const char*>(base) + (begin + c * QB + l + g) * stride * 4);
        for (int64_t k = 0; k < dim; ++k) {
          float* out = panel + k * QB + l;
#pragma GCC unroll 8
          for (int g = 0; g < 8; ++g) out[g] = r[g][k];
        }
      }
    }
    for (; l < lanes; ++l) {
      const void* row = static_cast<const char*>(base) + (begin + c * QB + l) * stride * esize;
      for (int64_t k = 0; k < dim; ++k) panel[k * QB + l] = element_to_float(row, k, dtype);
    }
  }
}

// Packs rows [begin, end) tile-major for pair_tile: tile t holds rows begin + t * RT ..., element k of its row r at
// packed[t * dim * RT + k * RT + r] (a last partial tile leaves its missing rows unwritten: never read).
template <int RT>
static void pack_tiles(const void* base, int64_t stride, DType dtype, int64_t dim, int64_t begin, int64_t end,
                       float* packed) {
  const int64_t esize = static_cast<int64_t>(dtype_size(dtype));
  int64_t head = 0;
#if defined(TOKENSET_SIMD_AVX512)
  static_assert(RT <= 16, "a tile is at most one transposed block of rows");
  head = dim - dim % 16;  // transposed in registers, a tile at a time; the last dim % 16 elements below
  if (head > 0) {
    for (int64_t j0 = begin; j0 < end; j0 += RT) {
      const void* rows[16];
      const int take = end - j0 < RT ? static_cast<int>(end - j0) : RT;
      for (int i = 0; i < take; ++i) rows[i] = static_cast<const char*>(base) + (j0 + i) * stride * esize;
      float* out = packed + ((j0 - begin) / RT) * dim * RT;
      TOKENSET_FLOAT_SWITCH(dtype, kDType, [&] { transpose_rows16<kDType>(rows, take, dim, out, RT, take); });
    }
  }
#endif
  for (int64_t j = begin; j < end; ++j) {
    const int64_t r = j - begin;
    float* out = packed + (r / RT) * dim * RT + (r % RT);
    const void* row = static_cast<const char*>(base) + j * stride * esize;
    if (dtype == DType::Float32 && head == 0) {
      const float* x = static_cast<const float*>(row);
      for (int64_t k = 0; k < dim; ++k) out[k * RT] = x[k];
    } else {
      for (int64_t k = head; k < dim; ++k) out[k * RT] = element_to_float(row, k, dtype);
    }
  }
}

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
