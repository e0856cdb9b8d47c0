// MaxSim of float32 queries against PLAID residual codes (tokenset.ResidualCodes), scored in place:
//
//   sim(i, t) = n_t * (cs[i, id_t] + f_i * float(<q8_i, w8[code_t]>))     (maxsim.h has the whole definition)
//   score = sum_i max_t sim(i, t)                                         (query-token order)
//
// Per query, pack_query builds the int8 query panels of int8_tile.h (f_i = s_i * s_w as each lane's factor) and a
// 256-entry table that expands one byte of packed codes into its 8 / b int8 bucket weights; fill_table then computes
// the centroid table cs[i, c] = <q_i, C_c> (float32 FMAs in k order, as the float kernel) for the centroids the call's
// documents use, spread over the threads by the driver (entries of other centroids are never read). A document's codes
// are expanded R tokens at a time into int8 rows in scratch (never into memory beyond that) and multiplied by the int8
// register tile; the integer dot products are exact and the float steps come in one order, so every SIMD level (and
// the CUDA twin) gives the same bits.
//
// Compiled once per SIMD level, once more with AVX-512 VNNI (level avx512vnni) and twice as the level avxvnni (VEX
// and EVEX builds of AVX2 + 256-bit VNNI), CMakeLists.txt.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "int8_tile.h"
#include "maxsim_kernels.h"
#include "parallel.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// The byte expansion table (256 entries of up to 8 int8 weights), then the four 16-byte tables the vector levels
// shuffle with (shuffle_tables), biased by 128 for VNNI's unsigned document bytes.
constexpr int64_t kExpandWords = 256 * 8 / 4 + 16;
constexpr int kCentroidBlock = 8;              // centroid rows per FMA block of the table

// tokenset.quantize's rule for one row: s = max |x| / 127, q = rint(x / s) in [-127, 127]; s = 0 -> codes 0.
static float quantize_row(const float* x, int64_t n, int8_t* codes) {
  float largest = 0.0f;
  for (int64_t k = 0; k < n; ++k) largest = std::fabs(x[k]) > largest ? std::fabs(x[k]) : largest;
  const float scale = largest / 127.0f;
  for (int64_t k = 0; k < n; ++k) {
    float code = scale > 0.0f ? std::nearbyint(x[k] / scale) : 0.0f;
    code = code > 127.0f ? 127.0f : (code < -127.0f ? -127.0f : code);
    codes[k] = static_cast<int8_t>(code);
  }
  return scale;
}

static int64_t panel_floats(const MaxsimParams& p) {
  return panel_words(p.queries.dim()) + p.residual.num_centroids * QB;
}

static int64_t packed_floats(const MaxsimParams& p, int64_t length) {
  return kExpandWords + (length + QB - 1) / QB * panel_floats(p);
}

// expand[byte * 8 + e]: the int8 weight of field e of a packed byte (fields from the most significant bits: PLAID's
// stream order), each field's bits stored least significant first.
static void build_expansion(int bits, const int8_t* weights8, int8_t* expand) {
  const int fields = 8 / bits;
  for (int byte = 0; byte < 256; ++byte)
    for (int e = 0; e < 8; ++e) {
      if (e >= fields) {
        expand[byte * 8 + e] = 0;
        continue;
      }
      int code = 0;
      for (int j = 0; j < bits; ++j) code |= ((byte >> (7 - (e * bits + j))) & 1) << j;
      expand[byte * 8 + e] = weights8[code];
    }
}

// tables[t * 16 + n], indexed by a nibble n of a code byte (from the byte expansion table):
//  * 4 bits: t = 0, the weight of a field (a byte holds two);
//  * 2 bits: t = 0, 1 the weight of the byte's field 0 / 1 given its high nibble, t = 2, 3 of field 2 / 3 given its
//    low nibble (a byte holds four);
//  * 1 bit: tables[0] and tables[1] the weights of a 0 and a 1 bit.
static void shuffle_tables(int bits, const int8_t* expand, int8_t* tables) {
  std::memset(tables, 0, 64);
  for (int n = 0; n < 16; ++n) {
    if (bits == 4) {
      tables[n] = expand[(n << 4) * 8];
    } else if (bits == 2) {
      tables[n] = expand[(n << 4) * 8];
      tables[16 + n] = expand[(n << 4) * 8 + 1];
      tables[32 + n] = expand[n * 8 + 2];
      tables[48 + n] = expand[n * 8 + 3];
    }
  }
  if (bits == 1) {
    tables[0] = expand[0];
    tables[1] = expand[0x80 * 8];
  }
  if constexpr (kStep == 4)
    for (int i = 0; i < 64; ++i) tables[i] = static_cast<int8_t>(tables[i] ^ 0x80);
}

// Codes expanded in registers: each code byte's fields are looked up by byte shuffles and come out in dimension order.
#if defined(TOKENSET_SIMD_AVX512)
// 2 bits: 16 code bytes -> 64 dims. Each byte is spread over the 4 bytes of its dimensions, then every position takes
// its field's table.
static inline void expand_quarters(const uint8_t* codes, const int8_t* tables, int8_t* out) {
  const __m512i lanes = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m512i spread = _mm512_shuffle_epi8(
      lanes, _mm512_set_epi32(0x0f0f0f0f, 0x0e0e0e0e, 0x0d0d0d0d, 0x0c0c0c0c, 0x0b0b0b0b, 0x0a0a0a0a, 0x09090909,
                              0x08080808, 0x07070707, 0x06060606, 0x05050505, 0x04040404, 0x03030303, 0x02020202,
                              0x01010101, 0x00000000));
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i high_nibble = _mm512_and_si512(_mm512_srli_epi16(spread, 4), low);
  const __m512i low_nibble = _mm512_and_si512(spread, low);
  auto table = [&](int t) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 16 * t)));
  };
  __m512i w = _mm512_shuffle_epi8(table(0), high_nibble);
  w = _mm512_mask_blend_epi8(0x2222222222222222ULL, w, _mm512_shuffle_epi8(table(1), high_nibble));
  w = _mm512_mask_blend_epi8(0x4444444444444444ULL, w, _mm512_shuffle_epi8(table(2), low_nibble));
  w = _mm512_mask_blend_epi8(0x8888888888888888ULL, w, _mm512_shuffle_epi8(table(3), low_nibble));
  _mm512_storeu_si512(out, w);
}

// 1 bit: 8 code bytes -> 64 dims: each byte spread over its 8 dimensions, each position tests its bit.
static inline void expand_bits(const uint8_t* codes, const int8_t* tables, int8_t* out) {
  uint64_t word;
  std::memcpy(&word, codes, 8);
  const __m512i spread = _mm512_shuffle_epi8(
      _mm512_set1_epi64(static_cast<long long>(word)),
      _mm512_set_epi64(0x0707070707070707LL, 0x0606060606060606LL, 0x0505050505050505LL, 0x0404040404040404LL,
                       0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0x0000000000000000LL));
  const __mmask64 ones = _mm512_test_epi8_mask(spread, _mm512_set1_epi64(0x0102040810204080LL));
  _mm512_storeu_si512(out, _mm512_mask_blend_epi8(ones, _mm512_set1_epi8(tables[0]), _mm512_set1_epi8(tables[1])));
}
#endif

#if defined(TOKENSET_SIMD_AVX512)
constexpr int64_t kNibbleDims = 128;  // dims per step: 64 bytes of codes
static inline void expand_nibbles(const uint8_t* codes, __m512i table, int8_t* out) {
  const __m512i bytes = _mm512_loadu_si512(codes), low = _mm512_set1_epi8(0x0F);
  const __m512i high_weights = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low));
  const __m512i low_weights = _mm512_shuffle_epi8(table, _mm512_and_si512(bytes, low));
  // Per 128-bit lane L: unpacklo holds dims 32L .. 32L+15, unpackhi dims 32L+16 .. 32L+31.
  const __m512i first = _mm512_unpacklo_epi8(high_weights, low_weights);
  const __m512i second = _mm512_unpackhi_epi8(high_weights, low_weights);
  _mm512_storeu_si512(out, _mm512_permutex2var_epi64(first, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), second));
  _mm512_storeu_si512(out + 64,
                      _mm512_permutex2var_epi64(first, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), second));
}
static inline __m512i nibble_table(const int8_t* t) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int64_t kNibbleDims = 64;  // 32 bytes of codes
static inline void expand_nibbles(const uint8_t* codes, __m256i table, int8_t* out) {
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)), low = _mm256_set1_epi8(0x0F);
  const __m256i high_weights = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low));
  const __m256i low_weights = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, low));
  const __m256i first = _mm256_unpacklo_epi8(high_weights, low_weights);   // dims 0..15 | 32..47
  const __m256i second = _mm256_unpackhi_epi8(high_weights, low_weights);  // dims 16..31 | 48..63
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(first, second, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_permute2x128_si256(first, second, 0x31));
}
static inline __m256i nibble_table(const int8_t* t) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
#endif

static void pack_query(const MaxsimParams& p, int64_t set, float* packed_out) {
  const SetBatch& queries = p.queries;
  const int64_t length = queries.length(set), dim = queries.dim(), words = panel_words(dim);
  const int64_t per_panel = panel_floats(p), panels = (length + QB - 1) / QB;
  const int levels = 1 << p.residual.bits;
  int8_t weights8[16];
  const float weight_scale = quantize_row(p.residual.bucket_weights, levels, weights8);
  int8_t* expand = reinterpret_cast<int8_t*>(packed_out);
  build_expansion(p.residual.bits, weights8, expand);
  shuffle_tables(p.residual.bits, expand, expand + 256 * 8);
  const float* first = static_cast<const float*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  std::vector<int8_t> codes(static_cast<size_t>(dim));
  for (int64_t c = 0; c < panels; ++c) {
    int32_t* panel = reinterpret_cast<int32_t*>(packed_out + kExpandWords + c * per_panel);
    std::memset(panel, 0, sizeof(int32_t) * words);
    for (int64_t lane = 0; lane < QB && c * QB + lane < length; ++lane) {
      const float* row = first + (c * QB + lane) * stride;
      const float scale = quantize_row(row, dim, codes.data());
      pack_query_row(codes.data(), dim, static_cast<int>(lane), scale * weight_scale, panel);
    }
  }
}

// cs[c][lane] = sum_k q[lane][k] * C[c][k] for the listed centroids, one FMA chain per entry in k order; blocks of
// kCentroidBlock centroids give that many independent chains per query vector.
static void fill_table(const MaxsimParams& p, int64_t set, float* packed_out, const int32_t* list, int64_t count) {
  const SetBatch& queries = p.queries;
  const int64_t length = queries.length(set), dim = queries.dim(), words = panel_words(dim);
  const int64_t per_panel = panel_floats(p), panels = (length + QB - 1) / QB;
  const float* first = static_cast<const float*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  AlignedBuffer<float> transposed(static_cast<size_t>(dim * QB));  // one panel's float tokens, [k][lane]
  for (int64_t c = 0; c < panels; ++c) {
    float* table = packed_out + kExpandWords + c * per_panel + words;
    std::memset(transposed.data(), 0, sizeof(float) * dim * QB);
    for (int64_t lane = 0; lane < QB && c * QB + lane < length; ++lane) {
      const float* row = first + (c * QB + lane) * stride;
      for (int64_t k = 0; k < dim; ++k) transposed.data()[k * QB + lane] = row[k];
    }
    for (int64_t i0 = 0; i0 < count; i0 += kCentroidBlock) {
      const int rows = static_cast<int>(count - i0 < kCentroidBlock ? count - i0 : kCentroidBlock);
      const float* centroid[kCentroidBlock];
      for (int r = 0; r < kCentroidBlock; ++r)
        centroid[r] = p.residual.centroids + static_cast<int64_t>(list[i0 + (r < rows ? r : 0)]) * dim;
      V::type acc[kCentroidBlock][QV];
      for (int r = 0; r < kCentroidBlock; ++r)
        for (int v = 0; v < QV; ++v) acc[r][v] = V::zero();
      for (int64_t k = 0; k < dim; ++k) {
        V::type q[QV];
        for (int v = 0; v < QV; ++v) q[v] = V::load(transposed.data() + k * QB + v * W);
        for (int r = 0; r < kCentroidBlock; ++r) {
          const V::type b = V::set1(centroid[r][k]);
          for (int v = 0; v < QV; ++v) acc[r][v] = V::fmadd(q[v], b, acc[r][v]);
        }
      }
      // A constant trip count: with `r < rows` as the bound GCC indexed acc in memory and stored all 16
      // accumulators to the stack on every k (1.5 ms of a 1-query call against 16,384 centroids, now 0.4).
      for (int r = 0; r < kCentroidBlock; ++r)
        if (r < rows)
          for (int v = 0; v < QV; ++v) V::store(table + static_cast<int64_t>(list[i0 + r]) * QB + v * W, acc[r][v]);
    }
  }
}

// n_t * (cs[i, id_t] + f_i * float(dot)).
struct ResidualEpilogue {
  const float* table;      // this panel's centroid table [centroids][QB]
  const float* factors;    // this panel's f_i [QB]
  const int32_t* ids;      // the rows' centroid ids
  const float* norms;      // the rows' 1/||reconstruction||
  uint32_t centroids;
  V::type operator()(int r, int v, V::type dot) const {
    // Checked before the call (maxsim.h); a buffer rewritten meanwhile by another thread still reads inside the table.
    const uint32_t id = static_cast<uint32_t>(ids[r]) < centroids ? static_cast<uint32_t>(ids[r]) : 0u;
    const V::type centroid_score = V::load(table + static_cast<int64_t>(id) * QB + v * W);
    return V::mul(V::add(centroid_score, V::mul(dot, V::load(factors + v * W))), V::set1(norms[r]));
  }
};

// One token's packed codes into its int8 weights (dim bytes).
static inline void expand_codes(const uint8_t* codes, int64_t code_bytes, int fields, const int8_t* expand,
                                int8_t* out) {
  if (fields == 2) {
    for (int64_t m = 0; m < code_bytes; ++m) std::memcpy(out + 2 * m, expand + codes[m] * 8, 2);
  } else if (fields == 4) {
    for (int64_t m = 0; m < code_bytes; ++m) std::memcpy(out + 4 * m, expand + codes[m] * 8, 4);
  } else {
    for (int64_t m = 0; m < code_bytes; ++m) std::memcpy(out + 8 * m, expand + codes[m] * 8, 8);
  }
}

template <int kDim = 0>
static void score_impl(const float* packed, int64_t query_length, const MaxsimParams& p, int64_t doc, float* scratch,
                       float* score) {
  constexpr int kSteps = kDim > 0 ? (kDim + kStep - 1) / kStep : 0;
  const SetBatch& docs = p.documents;
  const int64_t length = docs.length(doc), dim = kDim > 0 ? kDim : p.queries.dim(), steps = steps_of(dim);
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    return;
  }
  const int8_t* expand = reinterpret_cast<const int8_t*>(packed);
  int32_t* words = reinterpret_cast<int32_t*>(scratch);  // R rows of `steps` words
  int8_t* expanded = reinterpret_cast<int8_t*>(words + R * steps);  // R rows of dim int8 weights
  const uint8_t* codes = static_cast<const uint8_t*>(docs.set_data(doc));
  const int64_t code_bytes = docs.dim(), row_stride = docs.set_stride(doc);
  const int fields = 8 / p.residual.bits;
  const float* norms = docs.set_scales(doc);
  const int32_t* ids = p.residual.centroid_ids + docs.offsets[doc];
  const int64_t panels = (query_length + QB - 1) / QB, per_panel = panel_floats(p), words_per_panel = panel_words(dim);
  const uint32_t centroids = static_cast<uint32_t>(p.residual.num_centroids);
#if defined(TOKENSET_SIMD_AVX512) || defined(TOKENSET_SIMD_AVX2)
  const int8_t* tables = expand + 256 * 8;
  const auto nibbles = nibble_table(tables);
#if defined(TOKENSET_SIMD_AVX512)
  const bool vector_expansion = dim % (fields == 2 ? kNibbleDims : 64) == 0;
#else
  const bool vector_expansion = fields == 2 && dim % kNibbleDims == 0;
#endif
#endif
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const float* panel_floats_at = packed + kExpandWords + c * per_panel;
    const int32_t* panel = reinterpret_cast<const int32_t*>(panel_floats_at);
    const float* factors = panel_floats_at + (steps + 1) * QB;
    const float* table = panel_floats_at + words_per_panel;
    V::type running_max[QV];
    V::itype running_arg[QV];
    start_running(running_max, running_arg);
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      for (int r = 0; r < rows_left; ++r) {
        const uint8_t* row_codes = codes + (j0 + r) * row_stride;
#if defined(TOKENSET_SIMD_AVX512) || defined(TOKENSET_SIMD_AVX2)
        if (vector_expansion) {
          // VNNI: the biased weights are the row's words already (steps * 4 == dim).
          int8_t* out = kStep == 4 ? reinterpret_cast<int8_t*>(words + r * steps) : expanded + r * dim;
          if (fields == 2) {
            for (int64_t k = 0; k < dim; k += kNibbleDims) expand_nibbles(row_codes + k / 2, nibbles, out + k);
#if defined(TOKENSET_SIMD_AVX512)
          } else if (fields == 4) {
            for (int64_t k = 0; k < dim; k += 64) expand_quarters(row_codes + k / 4, tables, out + k);
          } else {
            for (int64_t k = 0; k < dim; k += 64) expand_bits(row_codes + k / 8, tables, out + k);
#endif
          }
          if constexpr (kStep != 4) document_words<kDim>(expanded + r * dim, dim, words + r * steps);
          continue;
        }
#endif
        expand_codes(row_codes, code_bytes, fields, expand, expanded + r * dim);
        document_words<kDim>(expanded + r * dim, dim, words + r * steps);
      }
      // The next rows' centroid-table entries (QB floats each, two cache lines at QB = 32): the table is larger than
      // L2 for tens of thousands of centroids, and its rows are read in the codes' random order.
      for (int64_t r = j0 + R; r < j0 + 2 * R && r < length; ++r) {
        const uint32_t id = static_cast<uint32_t>(ids[r]) < centroids ? static_cast<uint32_t>(ids[r]) : 0u;
        const char* entry = reinterpret_cast<const char*>(table + static_cast<int64_t>(id) * QB);
        for (int64_t byte = 0; byte < QB * 4; byte += 64) __builtin_prefetch(entry + byte, 0, 3);
      }
      const ResidualEpilogue epilogue{table, factors, ids + j0, norms + j0, centroids};
      const char* prefetch = reinterpret_cast<const char*>(codes + (j0 + R) * row_stride);  // a hint only
      if (rows_left == R)
        tile<R, false, kSteps>(panel, steps, words, epilogue, static_cast<int32_t>(j0), prefetch, row_stride,
                               running_max, running_arg);
      else
        tile_any<R - 1, false>(rows_left, panel, steps, words, epilogue, static_cast<int32_t>(j0), prefetch,
                               row_stride, running_max, running_arg);
    }
    float maxima[QB];
    for (int v = 0; v < QV; ++v) V::store(maxima + v * W, running_max[v]);
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) total += maxima[lane];
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const MaxsimParams& p, int64_t doc, float* scratch,
                  float* out, int32_t* /*argmax: refused against codes (maxsim.h)*/) {
  // ColBERT's width as a constant (the row words' offsets off one base register); other widths take the run-time
  // loop. (Every width of the float kernel's list cost ~0.3 MB of module for a few percent at those widths.)
  if constexpr (W > 1)
    if (p.queries.dim() == 128) return score_impl<128>(packed, query_length, p, doc, scratch, out);
  score_impl(packed, query_length, p, doc, scratch, out);
}

// Scratch: R rows of words (at most dim words each) and R rows of dim bytes, in rows of the queries' dim floats.
// Query groups of 4 MiB of tables (or one query): a document is scored by the group while its tables stay in L2 / L3
// (measured on Zen 4 with 16,384 centroids and 32 queries: 81 ns per document token with the driver's 64 MiB groups).
extern const MaxsimKernel maxsim_residual_kernel = {QB,           2 * R, &pack_query, &score, &packed_floats,
                                                    int64_t(4) << 20, &fill_table};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
