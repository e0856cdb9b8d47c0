// Residual codec kernels, once per SIMD level (TOKENSET_SIMD_NS): plain loops the level's flags vectorise. Each step
// is elementwise and correctly rounded (-ffp-contract=off), and the sum of squares keeps 16 partial sums in k order,
// added pairwise at the end (residual_codec.h), so the levels agree bit for bit.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "residual_codec_kernels.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// 1 / ||v|| in the fixed order (0 for a zero vector).
static float inverse_norm(const float* v, int64_t dim) {
  float partial[16] = {};
  int64_t k = 0;
  for (; k + 16 <= dim; k += 16)
    for (int l = 0; l < 16; ++l) partial[l] = partial[l] + v[k + l] * v[k + l];
  for (int l = 0; k + l < dim; ++l) partial[l] = partial[l] + v[k + l] * v[k + l];
  for (int half = 8; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) partial[l] = partial[l] + partial[l + half];
  return partial[0] > 0.0f ? 1.0f / std::sqrt(partial[0]) : 0.0f;
}

// Codes of one token (one per byte of `codes`) into PLAID's bit stream.
static void pack(const uint8_t* codes, int64_t dim, int bits, uint8_t* out) {
  const int64_t bytes = dim * bits / 8;
  std::memset(out, 0, static_cast<size_t>(bytes));
  for (int64_t k = 0; k < dim; ++k)
    for (int j = 0; j < bits; ++j) {
      const int64_t position = k * bits + j;
      out[position >> 3] |= static_cast<uint8_t>(((codes[k] >> j) & 1) << (7 - (position & 7)));
    }
}

static void unpack(const uint8_t* in, int64_t dim, int bits, uint8_t* codes) {
  for (int64_t k = 0; k < dim; ++k) {
    uint8_t code = 0;
    for (int j = 0; j < bits; ++j) {
      const int64_t position = k * bits + j;
      code |= static_cast<uint8_t>(((in[position >> 3] >> (7 - (position & 7))) & 1) << j);
    }
    codes[k] = code;
  }
}

static bool encode(const ResidualCodecParams& p, int64_t t, float* scratch) {
  const int64_t dim = p.dim;
  const float* x = p.tokens + t * dim;
  bool finite = true;
  for (int64_t k = 0; k < dim; ++k) finite &= std::isfinite(x[k]);
  if (!finite) return false;
  const float* centroid = p.centroids + static_cast<int64_t>(p.host_centroid_ids[t]) * dim;
  const int levels = 1 << p.bits;
  uint8_t* codes = reinterpret_cast<uint8_t*>(scratch + dim);
  float* v = scratch;
  for (int64_t k = 0; k < dim; ++k) {
    const float residual = x[k] - centroid[k];
    int code = 0;
    for (int j = 0; j + 1 < levels; ++j) code += p.bucket_cutoffs[j] < residual;
    codes[k] = static_cast<uint8_t>(code);
    v[k] = centroid[k] + p.bucket_weights[code];
  }
  pack(codes, dim, p.bits, p.packed + t * p.code_bytes());
  p.inverse_norms[t] = inverse_norm(v, dim);
  return true;
}

static void decode(const ResidualCodecParams& p, int64_t t, float* scratch) {
  const int64_t dim = p.dim;
  uint8_t* codes = reinterpret_cast<uint8_t*>(scratch);
  unpack(p.packed + t * p.code_bytes(), dim, p.bits, codes);
  const float* centroid = p.centroids + static_cast<int64_t>(p.host_centroid_ids[t]) * dim;
  const float n = p.inverse_norms[t];
  float* out = p.decoded + t * dim;
  for (int64_t k = 0; k < dim; ++k) out[k] = (centroid[k] + p.bucket_weights[codes[k]]) * n;
}

extern const ResidualCodecKernel residual_codec_kernel = {&encode, &decode};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
