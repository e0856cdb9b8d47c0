// MaxSim of bfloat16 queries against bfloat16 documents with AVX-512 BF16 dot products (vdpbf16ps), the run-time level
// avx512bf16 (Cooper Lake, Zen 4 and later; its own object in CMakeLists.txt, like the VNNI and AMX kernels):
//
//   score = sum_i max_j <q_i, d_j>,   <q_i, d_j> accumulated a pair of elements at a time by vdpbf16ps
//
// The register tile is int8_tile.h's with 32-bit words of two bfloat16 (query panels of 32 tokens x word pairs,
// document rows broadcast a word at a time): each instruction does 32 products, twice the float32 FMA's 16.
// vdpbf16ps rounds differently from an FMA chain (it treats denormal inputs as zero, flushes denormal results, and its
// two products and the sum round in a way the Intel documentation does not pin down and Zen 4 does not match any
// simple model of), so this level's scores are not bit-identical to the float kernels': they are within a stated
// tolerance (README), and the same on every run and thread count. NaN similarities make the score NaN, as in every
// MaxSim kernel (the epilogue tracks them); argmax requests go to the float kernel (the driver).
//
// Denormal inputs would be read as zero (a denormal times inf would give NaN, a large value times a denormal would be
// lost): a (query, document) pair where either side holds a denormal bfloat16 is scored instead by FMA chains in k
// order, the float kernel's arithmetic (the same bits as the avx512 level). The check reads each document row once
// (a few instructions per 64 bytes) and each query once, when it is packed.
#include <cstdint>
#include <cstring>
#include <limits>

#include "int8_tile.h"
#include "maxsim_kernels.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// Panels, then one word: whether the query holds a denormal.
static int64_t packed_floats(const MaxsimParams& params, int64_t length) {
  return (length + QB - 1) / QB * panel_words(params.queries.dim()) + 1;
}

// Elements [2g, 2g + 2) of a bfloat16 row as one word (zero past dim).
static inline int32_t pair_word(const uint16_t* row, int64_t dim, int64_t g) {
  const uint32_t low = row[2 * g], high = 2 * g + 1 < dim ? row[2 * g + 1] : 0u;
  return static_cast<int32_t>(low | high << 16);
}

// A bfloat16 denormal: exponent bits 0, mantissa not 0.
static inline bool is_denormal(uint16_t b) { return (b & 0x7F80u) == 0 && (b & 0x7Fu) != 0; }

// Copies a row's elements into its words (2 per word, the last padded with 0) when `out` is given, and tells whether
// the row holds a denormal: the check rides on the copy's loads.
static bool copy_row_checked(const uint16_t* row, int64_t dim, int32_t* out) {
  int64_t k = 0;
  __mmask32 found = 0;
  const __m512i exponent = _mm512_set1_epi16(0x7F80), mantissa = _mm512_set1_epi16(0x7F);
  for (; k + 32 <= dim; k += 32) {
    const __m512i x = _mm512_loadu_si512(row + k);
    if (out) _mm512_storeu_si512(out + k / 2, x);
    found |= _mm512_mask_test_epi16_mask(_mm512_testn_epi16_mask(x, exponent), x, mantissa);
  }
  bool any = found != 0;
  for (; k < dim; k += 2) {
    any |= is_denormal(row[k]) || (k + 1 < dim && is_denormal(row[k + 1]));
    if (out) out[k / 2] = pair_word(row, dim, k / 2);
  }
  return any;
}

static void pack_query(const MaxsimParams& params, int64_t set, float* packed_out) {
  const SetBatch& queries = params.queries;
  int32_t* packed = reinterpret_cast<int32_t*>(packed_out);
  const int64_t length = queries.length(set), dim = queries.dim(), steps = steps_of(dim);
  const int64_t panels = (length + QB - 1) / QB, words = panel_words(dim);
  const uint16_t* first = static_cast<const uint16_t*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  std::memset(packed, 0, sizeof(int32_t) * panels * words);  // starting values 0.0f; factors unused
  bool denormal = false;
  for (int64_t t = 0; t < length; ++t) {
    int32_t* panel = packed + (t / QB) * words;
    const int lane = static_cast<int>(t % QB);
    for (int64_t g = 0; g < steps; ++g) panel[g * QB + lane] = pair_word(first + t * stride, dim, g);
    denormal |= copy_row_checked(first + t * stride, dim, nullptr);
  }
  packed[panels * words] = denormal ? 1 : 0;
}

// The float kernel's arithmetic for one pair: per (query token, document token) an FMA chain in k order from 0, the
// maxima (NaN kept) summed in query-token order. The query's elements are read back from its packed words.
static float score_exact(const int32_t* packed, int64_t query_length, const uint16_t* first, int64_t row_stride,
                         int64_t length, int64_t dim) {
  const int64_t words = panel_words(dim);
  float total = 0.0f;
  for (int64_t i = 0; i < query_length; ++i) {
    const int32_t* panel = packed + (i / QB) * words;
    const int64_t lane = i % QB;
    float best = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int64_t j = 0; j < length; ++j) {
      const uint16_t* row = first + j * row_stride;
      float acc = 0.0f;
      for (int64_t k = 0; k < dim; ++k) {
        const uint32_t word = static_cast<uint32_t>(panel[(k / 2) * QB + lane]);
        const uint16_t q = static_cast<uint16_t>(k % 2 ? word >> 16 : word & 0xFFFFu);
        acc = std::fma(bfloat_to_float(q), bfloat_to_float(row[k]), acc);
      }
      nan |= acc != acc;
      best = acc > best ? acc : best;
    }
    total += nan ? std::numeric_limits<float>::quiet_NaN() : best;
  }
  return total;
}

// The similarity as accumulated; a NaN lane is remembered (max would drop it).
struct NanTrackingEpilogue {
  V::mask* nan;
  V::type operator()(int, int v, V::type dot) const {
    nan[v] = V::unordered(dot, nan[v]);
    return dot;
  }
};

template <int kDim = 0>
static void score_impl(const float* packed_in, int64_t query_length, const MaxsimParams& params, int64_t doc,
                       float* scratch, float* score) {
  constexpr int kSteps = kDim > 0 ? (kDim + 1) / 2 : 0;
  const SetBatch& docs = params.documents;
  const int64_t length = docs.length(doc), dim = kDim > 0 ? kDim : docs.dim(), steps = steps_of(dim);
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    return;
  }
  const int32_t* packed = reinterpret_cast<const int32_t*>(packed_in);
  int32_t* words = reinterpret_cast<int32_t*>(scratch);  // R rows of `steps` words
  const uint16_t* first = static_cast<const uint16_t*>(docs.set_data(doc));
  const int64_t row_stride = docs.set_stride(doc);
  const int64_t panels = (query_length + QB - 1) / QB, per_panel = panel_words(dim);
  if (packed[panels * per_panel] != 0) {  // the query holds a denormal
    *score = score_exact(packed, query_length, first, row_stride, length, dim);
    return;
  }
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const int32_t* panel = packed + c * per_panel;
    V::type running_max[QV];
    V::itype running_arg[QV];
    start_running(running_max, running_arg);
    V::mask nan[QV];
    for (int v = 0; v < QV; ++v) nan[v] = V::no_mask();
    const NanTrackingEpilogue epilogue{nan};
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      bool denormal = false;
      for (int r = 0; r < rows_left; ++r)
        denormal |= copy_row_checked(first + (j0 + r) * row_stride, dim, words + r * steps);
      if (denormal) {  // the whole pair again, with the float kernel's arithmetic
        *score = score_exact(packed, query_length, first, row_stride, length, dim);
        return;
      }
      const char* prefetch = reinterpret_cast<const char*>(first + (j0 + R) * row_stride);
      if (rows_left == R)
        tile<R, false, kSteps>(panel, steps, words, epilogue, static_cast<int32_t>(j0), prefetch, row_stride * 2,
                               running_max, running_arg);
      else
        tile_any<R - 1, false>(rows_left, panel, steps, words, epilogue, static_cast<int32_t>(j0), prefetch,
                               row_stride * 2, running_max, running_arg);
    }
    float maxima[QB];
    for (int v = 0; v < QV; ++v)
      V::store(maxima + v * W, V::select(nan[v], running_max[v], V::set1(std::numeric_limits<float>::quiet_NaN())));
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) total += maxima[lane];
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const MaxsimParams& params, int64_t doc, float* scratch,
                  float* out, int32_t* /*argmax: never asked of this kernel (the driver)*/) {
  if (params.queries.dim() == 128) return score_impl<128>(packed, query_length, params, doc, scratch, out);
  score_impl(packed, query_length, params, doc, scratch, out);
}

extern const MaxsimKernel maxsim_bf16_kernel = {QB, R, &pack_query, &score, &packed_floats};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
