// Sparse-attention kernels, once per SIMD level (TOKENSET_SIMD_NS). A query tile (up to 64 rows, scaled by
// scale * log2(e) so that the softmax runs on exp2, and transposed once) meets the listed keys 64 at a time: the
// chunk's K and V rows are gathered into packed float32 tiles, row-major, and the scores are kept transposed
// (S^T = K . Q^T), so blocks and single-column stripes take the same path and nothing larger than a chunk is copied.
// Scores, P.V and the backward's four products all run through one register-blocked GEMM (gemm, tile_math.h).
// Accumulation is float32; the softmax is online (running max and sum per row); the backward recomputes P from the
// saved log-sum-exp.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.h"
#include "sparse_attention_kernels.h"
#include "tile_math.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

namespace {

constexpr int64_t RT = kAttentionRowTile;
constexpr int64_t KC = kAttentionKeyChunk;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();

static_assert(KC % W == 0 && 16 % W == 0, "chunks and packed rows hold whole vectors");

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


// ---- tiles ----------------------------------------------------------------------------------------------------------
// The scores are kept transposed, S^T [keys][query rows] = K . Q^T: the keys are packed row-major as they are read
// (no per-chunk transpose), the query tile is transposed once, and the softmax runs down the key axis with whole
// vectors of rows (running max and sum per row without horizontal reductions).

// Rows [t0, t0 + rows) of a query-side array (q, grad_out), times `factor`, into dst [RT][dp] (row-major); zeros for
// unmapped rows.
static void load_tile(const AttentionHeadView& h, const void* base, int64_t stride, int64_t t0, int64_t rows,
                      int64_t dp, float factor, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = physical(h.row_map, t0 + r);
    if (p >= 0) load_row(base, p, stride, h.dtype, h.dim, dp, factor, dst + r * dp);
    else for (int64_t c = 0; c < dp; ++c) dst[r * dp + c] = 0.0f;
  }
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

// The chunk's keys row-major: k_rows, v_rows [n][dp]; missing[j] true for an unmapped key (its rows are zeros and its
// scores are masked).
static void pack_keys(const AttentionHeadView& h, const int64_t* cols, int64_t n, int64_t dp, float* k_rows,
                      float* v_rows, bool* missing) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = physical(h.row_map, cols[j]);
    missing[j] = p < 0;
    if (p >= 0) {
      load_row(h.k, p, h.k_stride, h.dtype, h.dim, dp, 1.0f, k_rows + j * dp);
      load_row(h.v, p, h.v_stride, h.dtype, h.dim, dp, 1.0f, v_rows + j * dp);
    } else {
      for (int64_t c = 0; c < dp; ++c) k_rows[j * dp + c] = v_rows[j * dp + c] = 0.0f;
    }
  }
}

// Masks S^T [n][RT]: whole rows of keys that are unmapped or not listed (missing[j]); with causal masking, key j (the
// logical key cols[j]) is invisible to tile rows r < cols[j] - t0 - shift (a prefix of its row). hidden_rows[j]
// receives that prefix length: the backward and the non-finite fix-ups tell masked pairs by it, never by the value
// (a real score may be -inf too).
static void mask_scores(float* st, int64_t n, int64_t padded, const bool* missing, const int64_t* cols, bool causal,
                        int64_t t0, int64_t shift, int64_t* hidden_rows) {
  for (int64_t j = 0; j < n; ++j) {
    float* row = st + j * RT;
    int64_t hidden = 0;
    if (missing[j]) {
      hidden = padded;
    } else if (causal) {
      const int64_t first_visible = cols[j] - t0 - shift;
      hidden = first_visible < 0 ? 0 : (first_visible > padded ? padded : first_visible);
    }
    for (int64_t r = 0; r < hidden; ++r) row[r] = -kInf;
    hidden_rows[j] = hidden;
  }
}

// ---- non-finite rows ------------------------------------------------------------------------------------------------
// A GEMM multiplies every row of its B operand, masked pairs too (weight 0), and 0 * inf is NaN: a row holding inf or
// NaN would spread to outputs that never listed it. Such rows are zeroed before the GEMM and their visible pairs added
// after it, one by one (rare: only for non-finite inputs).
static int64_t take_nonfinite_rows(float* data, int64_t count, int64_t dp, int64_t* bad) {
  int64_t found = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float* row = data + i * dp;
    V::mask odd = V::no_mask();
    for (int64_t c = 0; c < dp; c += W) {
      const V::type x = V::load(row + c);
      odd = V::unordered(V::sub(x, x), odd);  // x - x is NaN for inf and NaN
    }
    if (V::mask_bits(odd) == 0) continue;
    bad[found++] = i;
    for (int64_t c = 0; c < dp; ++c) data[i * dp + c] = 0.0f;
  }
  return found;
}

// dst[0..dp) += weight * src[0..dp)
static inline void add_scaled(float* dst, float weight, const float* src, int64_t dp) {
  const V::type w = V::set1(weight);
  for (int64_t c = 0; c < dp; c += W) V::store(dst + c, V::fmadd(w, V::load(src + c), V::load(dst + c)));
}

// ---- forward --------------------------------------------------------------------------------------------------------
static void forward_block(const AttentionHeadView& h, int64_t qb, const int64_t* keys, int64_t count, float* scratch) {
  const int64_t dim = h.dim, dp = attention_packed_dim(dim);
  const float c = h.scale * kLog2e;
  const int64_t shift = h.key_length - h.query_length;  // causal: key j is visible to row i when j <= i + shift
  float* Q = scratch;            // [RT][dp]
  float* QT = Q + RT * dp;       // [dp][RT]
  float* O = QT + dp * RT;       // [RT][dp]
  float* ST = O + RT * dp;       // [KC][RT]
  float* m = ST + KC * RT;       // [RT] running max (log2 units)
  float* l = m + RT;             // [RT] running sum
  float* alpha = l + RT;         // [RT] this chunk's rescale
  float* K = alpha + RT;         // [KC][dp]
  float* Vr = K + KC * dp;       // [KC][dp]
  float* row = Vr + KC * dp;     // [dp]
  bool missing[KC];
  int64_t bad[KC], hidden_rows[KC];
  const int64_t r_begin = qb * h.block_size;
  const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
  for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
    const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
    const int64_t padded = (rows + W - 1) / W * W;
    load_tile(h, h.q, h.q_stride, t0, rows, dp, c, Q);
    transpose_rows(Q, rows, padded, dp, RT, QT);
    for (int64_t x = 0; x < rows * dp; ++x) O[x] = 0.0f;
    for (int64_t r = 0; r < padded; ++r) m[r] = -kInf, l[r] = 0.0f;
    const int64_t horizon = h.causal ? t0 + rows + shift : h.key_length;  // keys >= horizon: invisible to the tile
    for_each_chunk(h, keys, count, horizon, [&](const int64_t* cols, int64_t n) {
      pack_keys(h, cols, n, dp, K, Vr, missing);
      gemm<false>(K, dp, 1, QT, RT, ST, RT, n, dp, padded);
      mask_scores(ST, n, padded, missing, cols, h.causal, t0, shift, hidden_rows);
      for (int64_t v = 0; v < padded; v += W) {
        V::type top = V::set1(-kInf);
        V::mask nan = V::no_mask();
        for (int64_t j = 0; j < n; ++j) {
          const V::type x = V::load(ST + j * RT + v);
          top = V::max(top, x);
          nan = V::unordered(x, nan);
        }
        const V::type m_old = V::load(m + v);
        V::type m_new = V::max(top, m_old);
        nan = V::unordered(m_old, nan);
        m_new = V::select(nan, m_new, V::set1(std::numeric_limits<float>::quiet_NaN()));  // NaN rows stay NaN
        // A row that has seen nothing yet keeps max -inf: shift by 0 so that its masked scores give exp2(-inf) = 0.
        const V::mask dead = V::equal(m_new, V::set1(-kInf));
        const V::type shift_by = V::select(dead, m_new, V::zero());
        const V::type a = exp2_vector(V::sub(m_old, shift_by));
        V::type sum = V::zero();
        for (int64_t j = 0; j < n; ++j) {
          const V::type p = exp2_vector(V::sub(V::load(ST + j * RT + v), shift_by));
          V::store(ST + j * RT + v, p);
          sum = V::add(sum, p);
        }
        V::store(l + v, V::fmadd(V::load(l + v), a, sum));
        V::store(m + v, m_new);
        V::store(alpha + v, a);
      }
      const int64_t bad_values = take_nonfinite_rows(Vr, n, dp, bad);
      gemm<true>(ST, 1, RT, Vr, dp, O, dp, rows, n, dp, alpha);  // O <- alpha * O + P . V
      for (int64_t b = 0; b < bad_values; ++b) {
        const int64_t j = bad[b];
        load_row(h.v, physical(h.row_map, cols[j]), h.v_stride, h.dtype, dim, dp, 1.0f, row);
        for (int64_t r = hidden_rows[j]; r < rows; ++r) add_scaled(O + r * dp, ST[j * RT + r], row, dp);
      }
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

// P^T <- exp2(S^T - lse2) and dS^T <- P^T * (dP^T - delta) over n keys and `padded` rows. Exactly 0 for masked pairs
// (rows r < hidden_rows[j] of key j) and for rows that see nothing or hold no token (lse -inf), whatever the scores,
// lse or dP hold there (NaN, inf): a key gets gradient only from the rows that list it and can see it.
static void probabilities_and_ds(float* st, float* dpt, int64_t n, int64_t padded, const float* lse2,
                                 const float* delta, const int64_t* hidden_rows) {
  float lane_rows[W];
  for (int64_t v = 0; v < padded; v += W) {
    const V::type l2 = V::load(lse2 + v);
    const V::mask dead = V::equal(l2, V::set1(-kInf));
    const V::type dl = V::load(delta + v);
    for (int i = 0; i < W; ++i) lane_rows[i] = static_cast<float>(v + i);
    const V::type rows = V::load(lane_rows);
    for (int64_t j = 0; j < n; ++j) {
      const V::mask masked = V::greater(V::set1(static_cast<float>(hidden_rows[j])), rows);  // row < hidden prefix
      const V::type s = V::load(st + j * RT + v);
      V::type p = exp2_vector(V::sub(s, l2));
      V::type ds = V::mul(p, V::sub(V::load(dpt + j * RT + v), dl));
      p = V::select(dead, V::select(masked, p, V::zero()), V::zero());
      ds = V::select(dead, V::select(masked, ds, V::zero()), V::zero());
      V::store(st + j * RT + v, p);
      V::store(dpt + j * RT + v, ds);
    }
  }
}

// Per tile row: lse2 = lse * log2(e) (-inf past `rows` and for unmapped rows), and delta from the head's array.
static void load_row_stats(const AttentionHeadView& h, int64_t t0, int64_t rows, int64_t padded, float* lse2,
                           float* delta) {
  for (int64_t r = 0; r < padded; ++r) {
    const int64_t p = r < rows ? physical(h.row_map, t0 + r) : -1;
    lse2[r] = p >= 0 ? h.lse[p] * kLog2e : -kInf;
    delta[r] = p >= 0 ? h.delta[t0 + r] : 0.0f;
  }
}

// The query-side tiles of both backward passes, carved from `base`: the tile's q rows (scaled by scale * log2 e) and
// grad_out rows, row-major and transposed; the transposed P / dS tiles; per row lse (log2 units) and delta.
struct BackwardTiles {
  float *Q, *QT, *dO, *dOT, *ST, *dPT, *lse2, *delta;
  BackwardTiles(float* base, int64_t dp)
      : Q(base), QT(Q + RT * dp), dO(QT + dp * RT), dOT(dO + RT * dp), ST(dOT + dp * RT), dPT(ST + KC * RT),
        lse2(dPT + KC * RT), delta(lse2 + RT) {}
  float* end() const { return delta + RT; }
  void load(const AttentionHeadView& h, int64_t t0, int64_t rows, int64_t padded, int64_t dp, float c) const {
    load_tile(h, h.q, h.q_stride, t0, rows, dp, c, Q);
    load_tile(h, h.grad_out, h.grad_out_stride, t0, rows, dp, 1.0f, dO);
    transpose_rows(Q, rows, padded, dp, RT, QT);
    transpose_rows(dO, rows, padded, dp, RT, dOT);
  }
};

// ---- backward, query pass: delta = rowsum(dO * O) and dQ = scale * dS . K -----------------------------------------
static void backward_query_block(const AttentionHeadView& h, int64_t qb, const int64_t* keys, int64_t count,
                                 float* scratch) {
  const int64_t dim = h.dim, dp = attention_packed_dim(dim);
  const float c = h.scale * kLog2e;
  const int64_t shift = h.key_length - h.query_length;
  const BackwardTiles t(scratch, dp);
  float *Q = t.Q, *dO = t.dO, *ST = t.ST, *dPT = t.dPT, *lse2 = t.lse2, *delta = t.delta;
  float* dQ = t.end();            // [RT][dp]
  float* K = dQ + RT * dp;        // [KC][dp]
  float* Vr = K + KC * dp;        // [KC][dp]
  float* row = Vr + KC * dp;      // [dp]
  bool missing[KC];
  int64_t bad[KC], hidden_rows[KC];
  const int64_t r_begin = qb * h.block_size;
  const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
  for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
    const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
    const int64_t padded = (rows + W - 1) / W * W;
    t.load(h, t0, rows, padded, dp, c);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = physical(h.row_map, t0 + r);
      float d = 0.0f;
      if (p >= 0) {
        load_row(h.out, p, h.out_stride, h.dtype, dim, dp, 1.0f, row);
        for (int64_t x = 0; x < dim; ++x) d += dO[r * dp + x] * row[x];
      }
      h.delta[t0 + r] = d;
    }
    load_row_stats(h, t0, rows, padded, lse2, delta);
    for (int64_t x = 0; x < rows * dp; ++x) dQ[x] = 0.0f;
    const int64_t horizon = h.causal ? t0 + rows + shift : h.key_length;
    for_each_chunk(h, keys, count, horizon, [&](const int64_t* cols, int64_t n) {
      pack_keys(h, cols, n, dp, K, Vr, missing);
      gemm<false>(K, dp, 1, t.QT, RT, ST, RT, n, dp, padded);
      gemm<false>(Vr, dp, 1, t.dOT, RT, dPT, RT, n, dp, padded);
      mask_scores(ST, n, padded, missing, cols, h.causal, t0, shift, hidden_rows);
      probabilities_and_ds(ST, dPT, n, padded, lse2, delta, hidden_rows);
      const int64_t bad_keys = take_nonfinite_rows(K, n, dp, bad);
      gemm<true>(dPT, 1, RT, K, dp, dQ, dp, rows, n, dp);
      for (int64_t b = 0; b < bad_keys; ++b) {
        const int64_t j = bad[b];
        load_row(h.k, physical(h.row_map, cols[j]), h.k_stride, h.dtype, dim, dp, 1.0f, row);
        for (int64_t r = hidden_rows[j]; r < rows; ++r)
          if (lse2[r] != -kInf) add_scaled(dQ + r * dp, dPT[j * RT + r], row, dp);
      }
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
  float* K = scratch;             // [KC][dp]
  float* Vr = K + KC * dp;        // [KC][dp]
  float* dK = Vr + KC * dp;       // [KC][dp]
  float* dV = dK + KC * dp;       // [KC][dp]
  const BackwardTiles t(dV + KC * dp, dp);
  float *Q = t.Q, *dO = t.dO, *ST = t.ST, *dPT = t.dPT, *lse2 = t.lse2, *delta = t.delta;
  float* row = t.end();           // [dp]
  bool missing[KC], unlisted[KC];
  int64_t bad[RT], hidden_rows[KC];
  const int64_t n = kv.key_length - key0 < KC ? kv.key_length - key0 : KC;
  int64_t cols[KC];
  for (int64_t j = 0; j < KC; ++j) cols[j] = key0 + j;
  pack_keys(kv, cols, n, dp, K, Vr, missing);
  for (int64_t x = 0; x < KC * dp; ++x) dK[x] = dV[x] = 0.0f;
  for (int64_t e = 0; e < count; ++e) {
    const AttentionHeadView& h = heads[entries[e].head];
    const uint64_t listed = entries[e].keys;
    for (int64_t j = 0; j < n; ++j) unlisted[j] = missing[j] || !((listed >> j) & 1u);
    const int64_t r_begin = entries[e].query_block * h.block_size;
    const int64_t r_end = r_begin + h.block_size < h.query_length ? r_begin + h.block_size : h.query_length;
    for (int64_t t0 = r_begin; t0 < r_end; t0 += RT) {
      const int64_t rows = r_end - t0 < RT ? r_end - t0 : RT;
      if (h.causal && key0 > t0 + rows - 1 + shift) continue;  // every key of the group is past this tile's rows
      const int64_t padded = (rows + W - 1) / W * W;
      t.load(h, t0, rows, padded, dp, c);
      load_row_stats(h, t0, rows, padded, lse2, delta);
      gemm<false>(K, dp, 1, t.QT, RT, ST, RT, n, dp, padded);
      gemm<false>(Vr, dp, 1, t.dOT, RT, dPT, RT, n, dp, padded);
      mask_scores(ST, n, padded, unlisted, cols, h.causal, t0, shift, hidden_rows);
      probabilities_and_ds(ST, dPT, n, padded, lse2, delta, hidden_rows);
      auto visible = [&](int64_t j, int64_t r) { return r >= hidden_rows[j] && lse2[r] != -kInf; };
      const int64_t bad_grads = take_nonfinite_rows(dO, rows, dp, bad);
      gemm<true>(ST, RT, 1, dO, dp, dV, dp, n, rows, dp);
      for (int64_t b = 0; b < bad_grads; ++b) {
        const int64_t r = bad[b];
        load_row(h.grad_out, physical(h.row_map, t0 + r), h.grad_out_stride, h.dtype, dim, dp, 1.0f, row);
        for (int64_t j = 0; j < n; ++j)
          if (visible(j, r)) add_scaled(dV + j * dp, ST[j * RT + r], row, dp);
      }
      const int64_t bad_queries = take_nonfinite_rows(Q, rows, dp, bad);
      gemm<true>(dPT, RT, 1, Q, dp, dK, dp, n, rows, dp);
      for (int64_t b = 0; b < bad_queries; ++b) {
        const int64_t r = bad[b];
        load_row(h.q, physical(h.row_map, t0 + r), h.q_stride, h.dtype, dim, dp, c, row);
        for (int64_t j = 0; j < n; ++j)
          if (visible(j, r)) add_scaled(dK + j * dp, dPT[j * RT + r], row, dp);
      }
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
