// MUVERA Fixed Dimensional Encodings on the CPU (semantics in tokenset/fde.h).
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512); each build defines a kernel
// table, and the scalar build also holds the driver (threads over sets, partitions, fill, Count-Sketch).
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

#include "simd.h"
#include "tokenset/cpu_runtime.h"
#include "tokenset/fde.h"

namespace tokenset {
namespace cpu {

// The per-level kernel table.
struct FdeKernel {
  int width;  // floats per vector: a block's tokens are padded to a multiple of it
  // dst[t * dim + k] = float(set row `first + t`, element k) for t < count.
  void (*convert_rows)(const SetBatch& sets, int64_t first, int64_t count, float* dst);
  // The hyperplane dots of a transposed block of tokens, tokens in lanes: dots[c * npad + t] = sum over k of
  // g[k * columns + c] * xt[k * npad + t] for c < columns, t < npad (npad a multiple of width, at most 64).
  void (*simhash_dots)(const float* xt, int64_t npad, int64_t dim, const float* g, int64_t columns, float* dots);
  // acc[k] += x[k] for k < dim.
  void (*add_row)(float* acc, const float* x, int64_t dim);
  // dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (width x width register tiles).
  void (*transpose)(const float* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst, int64_t dst_stride);
  // The AMS projection of a transposed block of tokens: yt[j * npad + t] = sum over k in starts[j] .. starts[j+1] of
  // weight[k] * xt[order[k] * npad + t] (order: the input coordinates sent to column j, weight: theirs, in the same
  // order). Each input coordinate costs one broadcast-FMA per `width` tokens, instead of one per token with a dense
  // matrix.
  void (*project_tokens)(const float* xt, int64_t npad, const int32_t* order, const int32_t* starts,
                         const float* weight, int64_t pd, float* yt);
  // rep_row[parts[t] * pd + j] += yt[j * npad + t] for t < nb, j < pd; counts[parts[t]] += 1.
  void (*accumulate_projected)(const float* yt, int64_t npad, int64_t nb, int64_t pd, const int32_t* parts,
                               float* rep_row, int32_t* counts);
  // Sign patterns and partitions of `count` tokens of a block from its dots: codes[r * stride + t] has bit
  // bits - 1 - m set when dots[(r * bits + m) * npad + t] > 0 (the first hyperplane is the most significant bit; NaN
  // is not > 0), and parts[r * stride + t] is the partition whose Gray code is that pattern.
  void (*sign_codes)(const float* dots, int64_t npad, int64_t count, int64_t reps, int bits, int64_t stride,
                     uint32_t* codes, int32_t* parts);
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

// Register tile of the hyperplane dots: CT hyperplane columns x TV vectors of tokens (a 64-token block at most).
#if defined(TOKENSET_SIMD_AVX512)
constexpr int kTileColumns = 6, kTileVectors = 4;  // 24 accumulators + 4 token vectors + 1 broadcast
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int kTileColumns = 4, kTileVectors = 2;  // 8 accumulators + 2 token vectors + 1 broadcast
#else
constexpr int kTileColumns = 4, kTileVectors = 4;
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
    case SimdLevel::AMX:  // AMX only changes bfloat16 MaxSim
    case SimdLevel::AVX512: return avx512::fde_kernel;
    case SimdLevel::AVX2: return avx2::fde_kernel;
    case SimdLevel::Scalar: break;
  }
#endif
  return scalar::fde_kernel;
}

// Tokens go through the encoder in blocks of this many: a block is transposed once (dim x 64 floats, 32 KiB at dim
// 128, so it stays in L1) and its hyperplane dots and projections are computed with tokens in vector lanes.
constexpr int64_t kBlockTokens = 64;
// Raw tokens are summed per partition in scratch of 2^bits * dim floats when it is at most this large; above it
// (many partitions) tokens go straight to the output row.
constexpr int64_t kMaxPartitionSums = int64_t(1) << 20;

inline uint32_t gray_code(uint32_t p) { return p ^ (p >> 1); }

// Float scratch starting on a cache line (std::vector only promises 16 bytes): a 64-byte vector load or store that
// straddles two lines costs two.
class AlignedFloats {
 public:
  void resize(size_t n) {
    storage_.assign(n + 16, 0.0f);
    const uintptr_t address = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + ((64 - address % 64) % 64) / sizeof(float);
  }
  float* data() { return data_; }

 private:
  std::vector<float> storage_;
  float* data_ = nullptr;
};

struct Scratch {
  AlignedFloats tokens;         // the set as float32 (float16 / bfloat16 input only) [n, dim]
  AlignedFloats xt;             // a block of tokens, transposed [dim, kBlockTokens]
  AlignedFloats dots;           // its hyperplane dots [reps * bits, kBlockTokens]
  AlignedFloats yt;             // projected encoders: its projection by one repetition [proj_dim, kBlockTokens]
  std::vector<uint32_t> codes;  // sign pattern of every token in every repetition [reps, n]
  std::vector<int32_t> parts;   // ... and its partition [reps, n]
  std::vector<int32_t> counts;  // tokens per partition [2^bits] ([reps, 2^bits] for projected encoders)
  AlignedFloats sums;           // identity encoders: raw partition sums of the current repetition [2^bits, dim];
                                // projected encoders: projected partition sums, all repetitions [fde_dim]
  AlignedFloats row;            // the FDE before the Count-Sketch [fde_dim]
};

struct Ctx {
  const FdeParams* p;
  const FdeKernel* kernel;
  bool via_sums = false;  // encode_rep_via_sums (else encode_rep_direct)
  // The AMS projection grouped by output column, per repetition: proj_order[r * dim + ..], proj_starts[r][pd + 1].
  std::vector<int32_t> proj_order, proj_starts;
  std::vector<float> proj_weight_ordered;  // proj_weight[r][proj_order[r][k]] at [r * dim + k]
  std::vector<Scratch> scratch;  // one per worker
};

// The token nearest to empty partition `part`, given the sign patterns of one repetition: least Hamming distance
// between a token's pattern and the partition's Gray code, lowest index on ties. 1 is the least distance possible
// for an empty partition.
int64_t nearest_token(const uint32_t* rep_codes, int64_t n, int64_t part) {
  const uint32_t target = gray_code(static_cast<uint32_t>(part));
  int64_t best = 0;
  int best_distance = 33;
  for (int64_t t = 0; t < n && best_distance > 1; ++t) {
    const int distance = __builtin_popcount(rep_codes[t] ^ target);
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
  const int64_t dim = p.sets.dim, parts = p.num_partitions(), pd = dim;
  const uint32_t* rep_codes = s.codes.data() + r * n;
  const int32_t* token_parts = s.parts.data() + r * n;
  int32_t* counts = s.counts.data();
  float* sums = s.sums.data();
  std::fill(counts, counts + parts, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t part = token_parts[t];
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
      source = x + nearest_token(rep_codes, n, part) * stride;
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
// is added to its zeroed output block, then non-empty blocks are divided and empty ones filled with the nearest token.
void encode_rep_direct(Ctx& c, Scratch& s, int64_t r, const float* x, int64_t stride, int64_t n, float* rep_row) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t parts = p.num_partitions(), pd = p.proj_dim;
  const uint32_t* rep_codes = s.codes.data() + r * n;
  const int32_t* token_parts = s.parts.data() + r * n;
  int32_t* counts = s.counts.data();
  std::fill(counts, counts + parts, 0);
  std::fill(rep_row, rep_row + parts * pd, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    kernel.add_row(rep_row + token_parts[t] * pd, x + t * stride, pd);
    ++counts[token_parts[t]];
  }
  for (int64_t part = 0; part < parts; ++part) {
    float* block = rep_row + part * pd;
    const int32_t count = counts[part];
    if (count > 1 && p.average)
      kernel.divide_row(block, block, pd, static_cast<float>(count));
    else if (count == 0 && p.fill_empty && p.simhash_bits > 0 && n > 0)
      std::memcpy(block, x + nearest_token(rep_codes, n, part) * stride, sizeof(float) * pd);
  }
}

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

// Asks for the input rows that the next block reads (into L2: the current block's working set fills L1), so that
// reading the input from memory overlaps with computing on the current block.
inline void prefetch_rows(const SetBatch& sets, int64_t first, int64_t rows) {
  const int64_t size = dtype_size(sets.dtype), bytes = sets.dim * size;
  const char* values = static_cast<const char*>(sets.values);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(values + ((first + t) * sets.row_stride) * size + b, 0, 2);
}

// Encodes one set into its output row (sets up to `last_set` follow on this worker); `s` was sized by fde_encode for
// the longest set (nothing here allocates).
//
// Tokens go in blocks of up to 64. A block is transposed once (the last one padded only to a multiple of the vector
// width); its hyperplane dots for all repetitions at once give every token's sign pattern and partition. Projected
// encoders then project the block per repetition with the sparse AMS structure (project_tokens) and add the projected
// tokens to their partitions in the zeroed output row (accumulate_projected). Identity encoders sum raw token rows per
// partition once every partition is known. Last, blocks are divided and empty ones filled.
void encode_set(Ctx& c, int64_t set, int64_t last_set, Scratch& s) {
  const FdeParams& p = *c.p;
  const FdeKernel& kernel = *c.kernel;
  const int64_t dim = p.sets.dim, n = p.sets.length(set), first = p.sets.begin(set);
  const int64_t reps = p.reps, bits = p.simhash_bits, parts = p.num_partitions(), pd = p.proj_dim;
  const int64_t width = kernel.width;
  const bool projected = p.proj_index != nullptr && p.encode;
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

  uint32_t* codes = s.codes.data();
  int32_t* token_parts = s.parts.data();
  if (bits == 0) {
    std::fill(codes, codes + n * reps, 0u);
    std::fill(token_parts, token_parts + n * reps, 0);
  }
  // Projected encoders accumulate in scratch (cache-resident), then write each output block once.
  float* out_row = p.final_dim > 0 ? s.row.data() : p.out + set * p.output_dim();
  float* row = projected ? s.sums.data() : out_row;
  int32_t* counts = s.counts.data();
  if (projected) {
    std::fill(counts, counts + reps * parts, 0);
    std::fill(row, row + p.fde_dim(), 0.0f);
  }
  if (bits > 0 || projected) {
    float* xt = s.xt.data();
    for (int64_t t0 = 0; t0 < n; t0 += kBlockTokens) {
      const int64_t nb = std::min(kBlockTokens, n - t0);
      const int64_t npad = (nb + width - 1) / width * width;
      kernel.transpose(x + t0 * stride, nb, dim, stride, xt, npad);
      if (nb < npad)  // padding lanes are computed too (and ignored): keep them finite
        for (int64_t k = 0; k < dim; ++k) std::fill(xt + k * npad + nb, xt + (k + 1) * npad, 0.0f);
      if (bits > 0) {
        kernel.simhash_dots(xt, npad, dim, p.simhash, reps * bits, s.dots.data());
        kernel.sign_codes(s.dots.data(), npad, nb, reps, static_cast<int>(bits), n, codes + t0, token_parts + t0);
      }
      if (!projected) continue;
      // The next block's input rows are prefetched a slice per repetition (a burst would stall on outstanding misses).
      int64_t next_first = first + t0 + nb, next_rows = std::min(kBlockTokens, n - t0 - nb);
      if (next_rows == 0 && set + 1 < last_set)
        next_first = p.sets.begin(set + 1), next_rows = std::min(kBlockTokens, p.sets.length(set + 1));
      for (int64_t r = 0; r < reps; ++r) {
        const int64_t slice_begin = next_rows * r / reps, slice_end = next_rows * (r + 1) / reps;
        prefetch_rows(p.sets, next_first + slice_begin, slice_end - slice_begin);
        kernel.project_tokens(xt, npad, c.proj_order.data() + r * dim, c.proj_starts.data() + r * (pd + 1),
                              c.proj_weight_ordered.data() + r * dim, pd, s.yt.data());
        kernel.accumulate_projected(s.yt.data(), npad, nb, pd, token_parts + r * n + t0, row + r * parts * pd,
                                    counts + r * parts);
      }
    }
  }
  if (p.partitions) {
    int32_t* out = p.partitions + (first - p.sets.offsets[0]) * reps;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t r = 0; r < reps; ++r) out[t * reps + r] = token_parts[r * n + t];
  }
  if (!p.encode) return;

  if (projected) {
    for (int64_t r = 0; r < reps; ++r) {
      for (int64_t part = 0; part < parts; ++part) {
        const float* sum = row + (r * parts + part) * pd;
        float* block = out_row + (r * parts + part) * pd;
        const int32_t count = counts[r * parts + part];
        if (count > 1 && p.average)
          kernel.divide_row(block, sum, pd, static_cast<float>(count));
        else if (count == 0 && p.fill_empty && bits > 0 && n > 0)
          project_token(c, r, x + nearest_token(codes + r * n, n, part) * stride, block);
        else
          std::memcpy(block, sum, sizeof(float) * pd);
      }
    }
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
    for (int64_t i = 0; i < fde_dim; ++i) out[p.final_index[i]] += p.final_sign[i] * out_row[i];
  }
}

void encode_range(void* ctx, int64_t begin, int64_t end, int worker) {
  Ctx& c = *static_cast<Ctx*>(ctx);
  for (int64_t set = begin; set < end; ++set) encode_set(c, set, end, c.scratch[static_cast<size_t>(worker)]);
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
  const int64_t dim = p.sets.dim, columns = p.reps * p.simhash_bits;
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
    s.xt.resize(static_cast<size_t>(dim * kBlockTokens));
    s.dots.resize(static_cast<size_t>(columns * kBlockTokens));
    s.codes.resize(static_cast<size_t>(longest * p.reps));
    s.parts.resize(static_cast<size_t>(longest * p.reps));
    if (!p.encode) continue;
    s.counts.resize(static_cast<size_t>(p.num_partitions()));
    if (c.via_sums) s.sums.resize(static_cast<size_t>(p.num_partitions() * dim));
    if (p.proj_index != nullptr) {
      s.sums.resize(static_cast<size_t>(p.fde_dim()));
      s.counts.resize(static_cast<size_t>(p.reps * p.num_partitions()));
      s.yt.resize(static_cast<size_t>(p.proj_dim * kBlockTokens));
    }
    if (p.final_dim > 0) s.row.resize(static_cast<size_t>(p.fde_dim()));
  }
  const int64_t grain = std::max<int64_t>(1, p.sets.count / (static_cast<int64_t>(threads) * 16));
  parallel_for(p.sets.count, grain, threads, encode_range, &c);
}

}  // namespace cpu
}  // namespace tokenset
#endif  // TOKENSET_SIMD_SCALAR
