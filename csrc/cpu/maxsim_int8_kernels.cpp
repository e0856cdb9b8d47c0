// MaxSim of int8 queries against int8 documents, each token with a float32 scale (tokenset.quantize):
//
//   m_i = max_j float(<q_i, d_j>) * s_j        (the int8 dot product exact in int32)
//   score = sum_i t_i * m_i                     (t_i the query token's scale, summed in query-token order)
//
// Compiled once per SIMD level (scalar | avx2 | avx512), once more with AVX-512 VNNI (level avx512vnni) and twice as
// the level avxvnni (AVX2 + 256-bit VNNI, VEX and EVEX builds), each its own object in CMakeLists.txt. Integer dot products are exact and the float steps are one multiply and one max per
// (query token, document token) in a fixed order, so every level gives the same bits.
//
// The register tile (query panels of step words, rows converted R at a time) is int8_tile.h, shared with the
// residual-code kernel; here the epilogue is float(dot) * s_j.
// Scales must be finite (the driver checks), so no similarity is NaN and no NaN tracking is needed.
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

static int64_t packed_floats(const MaxsimParams& params, int64_t length) {
  return (length + QB - 1) / QB * panel_words(params.queries.dim());
}

static void pack_query(const MaxsimParams& params, int64_t set, float* packed_floats_out) {
  const SetBatch& queries = params.queries;
  int32_t* packed = reinterpret_cast<int32_t*>(packed_floats_out);
  const int64_t length = queries.length(set), dim = queries.dim();
  const int64_t panels = (length + QB - 1) / QB, words = panel_words(dim);
  const int8_t* first = static_cast<const int8_t*>(queries.set_data(set));
  const int64_t stride = queries.set_stride(set);
  const float* scales = queries.set_scales(set);
  std::memset(packed, 0, sizeof(int32_t) * panels * words);
  for (int64_t t = 0; t < length; ++t)
    pack_query_row(first + t * stride, dim, static_cast<int>(t % QB), scales[t], packed + (t / QB) * words);
}

// float(dot) * s_j: the document token's scale.
struct ScaleEpilogue {
  const float* row_scales;
  V::type operator()(int r, int, V::type dot) const { return V::mul(dot, V::set1(row_scales[r])); }
};

template <bool kArgmax, int kDim = 0>
static void score_impl(const float* packed_floats_in, int64_t query_length, const SetBatch& docs, int64_t doc,
                       float* scratch, float* score, int32_t* argmax) {
  constexpr int kSteps = kDim > 0 ? (kDim + kStep - 1) / kStep : 0;
  const int64_t length = docs.length(doc), dim = kDim > 0 ? kDim : docs.dim(), steps = steps_of(dim);
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    if (kArgmax)
      for (int64_t i = 0; i < query_length; ++i) argmax[i] = -1;
    return;
  }
  const int32_t* packed = reinterpret_cast<const int32_t*>(packed_floats_in);
  int32_t* words = reinterpret_cast<int32_t*>(scratch);  // R rows of `steps` words: at most R * dim floats
  const int8_t* first = static_cast<const int8_t*>(docs.set_data(doc));
  const int64_t row_stride = docs.set_stride(doc);
  const float* scales = docs.set_scales(doc);
  const int64_t panels = (query_length + QB - 1) / QB, per_panel = panel_words(dim);
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const int32_t* panel = packed + c * per_panel;
    V::type running_max[QV];
    V::itype running_arg[QV];
    start_running(running_max, running_arg);
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      const int8_t* src = first + j0 * row_stride;
      for (int r = 0; r < rows_left; ++r) document_words<kDim>(src + r * row_stride, dim, words + r * steps);
      const char* prefetch = reinterpret_cast<const char*>(first + (j0 + R) * row_stride);  // a hint only
      if (rows_left == R)
        tile<R, kArgmax, kSteps>(panel, steps, words, ScaleEpilogue{scales + j0}, static_cast<int32_t>(j0), prefetch, row_stride,
                                 running_max, running_arg);
      else
        tile_any<R - 1, kArgmax>(rows_left, panel, steps, words, ScaleEpilogue{scales + j0}, static_cast<int32_t>(j0), prefetch,
                                 row_stride, running_max, running_arg);
    }
    float maxima[QB], query_scales[QB];
    int32_t args[QB];
    for (int v = 0; v < QV; ++v) {
      V::store(maxima + v * W, running_max[v]);
      V::istore(args + v * W, running_arg[v]);
    }
    std::memcpy(query_scales, panel + (steps + 1) * QB, sizeof(query_scales));
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) {
      total += query_scales[lane] * maxima[lane];
      if (kArgmax) argmax[c * QB + lane] = args[lane];
    }
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const MaxsimParams& params, int64_t doc, float* scratch,
                  float* out, int32_t* argmax) {
  const SetBatch& docs = params.documents;
  if (argmax) return score_impl<true>(packed, query_length, docs, doc, scratch, out, argmax);
  // Common embedding widths as constants (the float kernel's list); the scalar level has no tile worth it.
  if constexpr (W > 1)
    return TOKENSET_DIM_SWITCH(docs.dim(), kDim, [&] {
      score_impl<false, kDim>(packed, query_length, docs, doc, scratch, out, nullptr);
    });
  score_impl<false>(packed, query_length, docs, doc, scratch, out, nullptr);
}

extern const MaxsimKernel maxsim_int8_kernel = {QB, R, &pack_query, &score, &packed_floats};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
