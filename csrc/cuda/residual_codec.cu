// The residual codec on the GPU: one thread per token, the CPU's arithmetic in the CPU's order (residual_codec.h):
// elementwise steps with explicitly rounded intrinsics (no FMA contraction), the 16 partial sums of squares in k order
// and their pairwise halves, a correctly rounded square root and division. Encode and decode are bit-identical to
// the CPU's. Tokens are checked finite by the caller (tokenset.ResidualCodec.encode) before the launch.
#include "common.cuh"
#include "tokenset/residual_codec.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ const float* centroid_of(const ResidualCodecParams& p, int64_t t) {
  // Checked on the host; a buffer rewritten since still reads a centroid.
  const uint32_t id = static_cast<uint32_t>(p.centroid_ids[t]);
  return p.centroids + static_cast<int64_t>(id < p.num_centroids ? id : 0) * p.dim;
}

__device__ __forceinline__ int field_of(const uint8_t* codes, int64_t k, int bits) {
  int code = 0;
  for (int j = 0; j < bits; ++j) {
    const int64_t position = k * bits + j;
    code |= ((codes[position >> 3] >> (7 - (position & 7))) & 1) << j;
  }
  return code;
}

__global__ void __launch_bounds__(kThreads) encode_kernel(ResidualCodecParams p) {
  const int levels = 1 << p.bits;
  for (int64_t t = blockIdx.x * int64_t(kThreads) + threadIdx.x; t < p.rows; t += int64_t(gridDim.x) * kThreads) {
    const float* x = p.tokens + t * p.dim;
    const float* centroid = centroid_of(p, t);
    uint8_t* out = p.packed + t * p.code_bytes();
    for (int64_t m = 0; m < p.code_bytes(); ++m) out[m] = 0;
    float partial[16];
#pragma unroll
    for (int l = 0; l < 16; ++l) partial[l] = 0.0f;
    for (int64_t k = 0; k < p.dim; ++k) {
      const float residual = __fsub_rn(x[k], centroid[k]);
      int code = 0;
      for (int j = 0; j + 1 < levels; ++j) code += p.bucket_cutoffs[j] < residual;
      for (int j = 0; j < p.bits; ++j) {
        const int64_t position = k * p.bits + j;
        out[position >> 3] |= static_cast<uint8_t>(((code >> j) & 1) << (7 - (position & 7)));
      }
      const float v = __fadd_rn(centroid[k], p.bucket_weights[code]);
      partial[k % 16] = __fadd_rn(partial[k % 16], __fmul_rn(v, v));
    }
    for (int half = 8; half >= 1; half /= 2)
      for (int l = 0; l < half; ++l) partial[l] = __fadd_rn(partial[l], partial[l + half]);
    p.inverse_norms[t] = partial[0] > 0.0f ? __fdiv_rn(1.0f, __fsqrt_rn(partial[0])) : 0.0f;
  }
}

__global__ void __launch_bounds__(kThreads) decode_kernel(ResidualCodecParams p) {
  for (int64_t t = blockIdx.x * int64_t(kThreads) + threadIdx.x; t < p.rows; t += int64_t(gridDim.x) * kThreads) {
    const uint8_t* codes = p.packed + t * p.code_bytes();
    const float* centroid = centroid_of(p, t);
    const float n = p.inverse_norms[t];
    float* out = p.decoded + t * p.dim;
    for (int64_t k = 0; k < p.dim; ++k)
      out[k] = __fmul_rn(__fadd_rn(centroid[k], p.bucket_weights[field_of(codes, k, p.bits)]), n);
  }
}

}  // namespace

void residual_codec(const ResidualCodecParams& p, const Launch& launch) {
  validate(p);
  if (p.rows == 0) return;
  const int grid = grid_for(p.rows, kThreads);
  if (p.encode)
    encode_kernel<<<grid, kThreads, 0, stream_of(launch)>>>(p);
  else
    decode_kernel<<<grid, kThreads, 0, stream_of(launch)>>>(p);
  TOKENSET_CHECK_LAUNCH("residual_codec");
}

}  // namespace cuda
}  // namespace tokenset
