// Attention-scores kernels, once per SIMD level (TOKENSET_SIMD_NS). A tile of up to 64 query rows (scaled by
// scale * log2(e) so the softmax runs on exp2, transposed once) meets the keys 256 at a time: the chunk is packed into
// a float32 tile and the scores are kept transposed, S^T [keys][rows] = K . Q^T (gemm, tile_math.h), so the per-row
// statistics run on whole vectors of rows. row_lse walks every chunk with an online max and sum; the output kernels
// recompute a chunk's scores and turn them into probabilities with the saved log-sum-exp, so nothing larger than one
// 64 x 256 tile is ever held.
#include <cmath>
#include <cstdint>
#include <limits>

#include "attention_scores_kernels.h"
#include "simd.h"
#include "tile_math.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

namespace {

constexpr int64_t RT = kScoresRowTile;
constexpr int64_t KS = kScoresKeyChunk;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = std::numeric_limits<float>::infinity();
static_assert(RT % 16 == 0 && KS % 16 == 0, "tiles hold whole vectors at every level");

// One worker's scratch, carved.
struct Tile {
  int64_t dp;
  float* rows;      // [RT][dp] query rows, scaled
  float* qt;        // [dp][RT] the same, transposed
  float* keys;      // [KS][dp] the chunk's keys
  float* st;        // [KS][RT] scores / probabilities, transposed
  float* col;       // [KS][W] per-key column sums, one vector per key
  float* stats;     // [4][RT] running max, sum, NaN flag, row lse2
  int64_t* horizon;  // [RT] the last key each tile row sees (-1: a padding row)

  Tile(int64_t dim, float* scratch) : dp((dim + 15) / 16 * 16) {
    rows = scratch;
    qt = rows + RT * dp;
    keys = qt + dp * RT;
    st = keys + KS * dp;
    col = st + KS * RT;
    stats = col + KS * 16;
    horizon = reinterpret_cast<int64_t*>(stats + 4 * RT);
  }
};

inline int64_t padded_rows(int64_t count) { return (count + W - 1) / W * W; }

// The last key each tile row sees (-1 for padding rows).
static void set_horizons(const ScoresHeadView& h, const int64_t* rows, int64_t row0, int64_t count, Tile& t) {
  const int64_t shift = h.key_length - h.query_length;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t pos = rows ? rows[r] : row0 + r;
    const int64_t last = h.causal ? pos + shift : h.key_length - 1;
    t.horizon[r] = last < h.key_length - 1 ? last : h.key_length - 1;
  }
  for (int64_t r = count; r < padded_rows(count); ++r) t.horizon[r] = -1;
}

// Query rows (rows[r], or row0 + r) into the tile, scaled and transposed; their causal horizons.
static void load_queries(const ScoresHeadView& h, const int64_t* rows, int64_t row0, int64_t count, Tile& t) {
  const int64_t padded = padded_rows(count);
  const float factor = h.scale * kLog2e;
  for (int64_t r = 0; r < count; ++r)
    load_row(h.q, rows ? rows[r] : row0 + r, h.q_stride, h.dtype, h.dim, t.dp, factor, t.rows + r * t.dp);
  set_horizons(h, rows, row0, count, t);
  transpose_rows(t.rows, count, padded, t.dp, RT, t.qt);
}

static void load_keys(const ScoresHeadView& h, int64_t key0, int64_t n, Tile& t) {
  for (int64_t j = 0; j < n; ++j) load_row(h.k, key0 + j, h.k_stride, h.dtype, h.dim, t.dp, 1.0f, t.keys + j * t.dp);
}

// S^T [n][padded] (row stride RT) of the loaded keys and rows into st.
static void scores(int64_t n, int64_t padded, const Tile& t, float* st) {
  gemm<false>(t.keys, t.dp, 1, t.qt, RT, st, RT, n, t.dp, padded);
}

// The lowest horizon of the tile's rows (padding rows included): chunks ending at or before it need no mask.
static int64_t lowest_horizon(const Tile& t, int64_t padded) {
  int64_t low = t.horizon[0];
  for (int64_t r = 1; r < padded; ++r) low = t.horizon[r] < low ? t.horizon[r] : low;
  return low;
}

// Sets the entries of keys a row does not see (key0 + j > horizon[r]) to `value`.
static void hide(int64_t key0, int64_t n, int64_t padded, float value, const Tile& t, float* st) {
  if (key0 + n - 1 <= lowest_horizon(t, padded)) return;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < padded; ++r)
      if (key0 + j > t.horizon[r]) st[j * RT + r] = value;
}

// P = exp2(S - lse2) over the chunk, hidden entries 0 (a NaN row stays NaN only over the keys it sees).
static void probabilities(int64_t key0, int64_t n, int64_t padded, const float* lse2, const Tile& t, float* st) {
  for (int64_t v = 0; v < padded; v += W) {
    const V::type l = V::load(lse2 + v);
    for (int64_t j = 0; j < n; ++j) {
      float* s = st + j * RT + v;
      V::store(s, exp2_vector(V::sub(V::load(s), l)));
    }
  }
  hide(key0, n, padded, 0.0f, t, st);
}

// col[j] (one vector per key) += the tile's probabilities of key j, rows in order.
static void add_columns(int64_t n, int64_t padded, const float* st, float* col) {
  for (int64_t j = 0; j < n; ++j) {
    V::type acc = V::load(col + j * W);
    for (int64_t v = 0; v < padded; v += W) acc = V::add(acc, V::load(st + j * RT + v));
    V::store(col + j * W, acc);
  }
}

static void row_lse(const ScoresHeadView& h, const int64_t* rows, int64_t row0, int64_t count, float* lse2,
                    float* keep, float* scratch) {
  Tile t(h.dim, scratch);
  const int64_t padded = padded_rows(count);
  load_queries(h, rows, row0, count, t);
  float* m = t.stats;
  float* s = m + RT;
  float* nan = s + RT;
  for (int64_t r = 0; r < padded; ++r) m[r] = -kInf, s[r] = 0.0f, nan[r] = 0.0f;
  int64_t reach = -1;  // the farthest key any row sees
  for (int64_t r = 0; r < count; ++r) reach = t.horizon[r] > reach ? t.horizon[r] : reach;
  for (int64_t key0 = 0; key0 <= reach; key0 += KS) {
    const int64_t n = reach + 1 - key0 < KS ? reach + 1 - key0 : KS;
    float* st = keep ? keep + key0 * RT : t.st;
    load_keys(h, key0, n, t);
    scores(n, padded, t, st);
    hide(key0, n, padded, -kInf, t, st);
    for (int64_t v = 0; v < padded; v += W) {
      V::type top = V::set1(-kInf);
      V::mask bad = V::no_mask();
      for (int64_t j = 0; j < n; ++j) {
        const V::type x = V::load(st + j * RT + v);
        bad = V::unordered(x, bad);
        top = V::max(top, x);
      }
      const V::type m_old = V::load(m + v);
      const V::type m_new = V::max(top, m_old);
      // A row that has seen only -inf so far keeps a zero sum: subtract 0 instead of -inf (no -inf - -inf = NaN).
      const V::type m_safe = V::select(V::equal(m_new, V::set1(-kInf)), m_new, V::zero());
      V::type sum = V::mul(V::load(s + v), exp2_vector(V::sub(m_old, m_safe)));
      for (int64_t j = 0; j < n; ++j) sum = V::add(sum, exp2_vector(V::sub(V::load(st + j * RT + v), m_safe)));
      V::store(m + v, m_new);
      V::store(s + v, sum);
      V::store(nan + v, V::select(bad, V::load(nan + v), V::set1(1.0f)));
    }
  }
  for (int64_t r = 0; r < count; ++r) {
    if (nan[r] != 0.0f || std::isnan(s[r])) lse2[r] = std::numeric_limits<float>::quiet_NaN();
    else if (s[r] == 0.0f) lse2[r] = kInf;  // nothing seen, or only -inf: every probability is 0
    else lse2[r] = m[r] + std::log2(s[r]);
  }
}

static void chunk_rows(const ScoresHeadView& h, const int64_t* rows, int64_t count, const float* lse2, int64_t key0,
                       int64_t n, float* dst, int64_t dst_stride, bool accumulate, float* scratch) {
  Tile t(h.dim, scratch);
  load_keys(h, key0, n, t);
  for (int64_t r0 = 0; r0 < count; r0 += RT) {
    const int64_t rc = count - r0 < RT ? count - r0 : RT, padded = padded_rows(rc);
    load_queries(h, rows + r0, 0, rc, t);
    float* l = t.stats + 3 * RT;
    for (int64_t r = 0; r < padded; ++r) l[r] = r < rc ? lse2[r0 + r] : kInf;
    scores(n, padded, t, t.st);
    probabilities(key0, n, padded, l, t, t.st);
    for (int64_t r = 0; r < rc; ++r) {
      float* out = dst + (r0 + r) * dst_stride;
      if (accumulate) {
        for (int64_t j = 0; j < n; ++j) out[j] += t.st[j * RT + r];
      } else {
        for (int64_t j = 0; j < n; ++j) out[j] = t.st[j * RT + r];
      }
    }
  }
}

static void reduce_columns(const float* col, int64_t n, float* dst, bool accumulate) {
  for (int64_t j = 0; j < n; ++j) {
    float total = 0.0f;
    for (int w = 0; w < W; ++w) total += col[j * W + w];
    dst[j] = accumulate ? dst[j] + total : total;
  }
}

static void zero_columns(float* col, int64_t n) {
  for (int64_t j = 0; j < n; ++j) V::store(col + j * W, V::zero());
}

static void chunk_column_sums(const ScoresHeadView& h, const float* lse2, int64_t key0, int64_t n, float* dst,
                              bool accumulate, float* scratch) {
  Tile t(h.dim, scratch);
  load_keys(h, key0, n, t);
  zero_columns(t.col, n);
  // With causal masking row i sees key0 only from i >= key0 - shift on: earlier tiles are skipped whole.
  const int64_t shift = h.key_length - h.query_length;
  int64_t first_row = h.causal ? key0 - shift : 0;
  first_row = first_row < 0 ? 0 : first_row;
  for (int64_t r0 = first_row / RT * RT; r0 < h.query_length; r0 += RT) {
    const int64_t rc = h.query_length - r0 < RT ? h.query_length - r0 : RT, padded = padded_rows(rc);
    load_queries(h, nullptr, r0, rc, t);
    float* l = t.stats + 3 * RT;
    for (int64_t r = 0; r < padded; ++r) l[r] = r < rc ? lse2[r0 + r] : kInf;
    scores(n, padded, t, t.st);
    probabilities(key0, n, padded, l, t, t.st);
    add_columns(n, padded, t.st, t.col);
  }
  reduce_columns(t.col, n, dst, accumulate);
}

static void cached_column_sums(const ScoresHeadView& h, int64_t row0, int64_t count, const float* lse2,
                               float* cache, float* col, float* scratch) {
  Tile t(h.dim, scratch);
  const int64_t padded = padded_rows(count);
  set_horizons(h, nullptr, row0, count, t);
  float* l = t.stats + 3 * RT;
  for (int64_t r = 0; r < padded; ++r) l[r] = r < count ? lse2[r] : kInf;
  int64_t reach = -1;
  for (int64_t r = 0; r < count; ++r) reach = t.horizon[r] > reach ? t.horizon[r] : reach;
  for (int64_t key0 = 0; key0 <= reach; key0 += KS) {
    const int64_t n = reach + 1 - key0 < KS ? reach + 1 - key0 : KS;
    probabilities(key0, n, padded, l, t, cache + key0 * RT);
    add_columns(n, padded, cache + key0 * RT, col + key0 * W);
  }
}

}  // namespace

extern const AttentionScoresKernel attention_scores_kernel = {
    &row_lse, &chunk_rows, &chunk_column_sums, &cached_column_sums, &reduce_columns, &zero_columns};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
