// PLAID residual codec: encode float32 tokens into (centroid id, b-bit bucket codes, 1/||reconstruction||) and decode
// them back. The nearest centroid (argmax of the inner product) is found by the caller (the `nearest` op) and given.
//
//   residual   r_k = x_k - C[id]_k                         (float32)
//   code       c_k = #{j : cutoffs[j] < r_k}               (torch.bucketize, right=False)
//   packing    bit j of c_k at stream position k * bits + j (least significant first), 8 stream bits per byte, the
//              first in the byte's most significant bit (np.packbits): a PLAID reader decodes the same codes
//   v_k = C[id]_k + weights[c_k],  inverse_norm = 1 / sqrt(sum_k v_k^2)  (0 when the sum is 0)
//   decode     out_k = v_k * inverse_norm
//
// The sum of squares is taken in one fixed order on every SIMD level and device: 16 partial sums, partial[l] = sum
// over k = l (mod 16) of float32(v_k * v_k) in k order, then halves added pairwise (8, 4, 2, 1). Every other step is
// one correctly rounded operation, so encode and decode are bit-identical across levels and devices.
#pragma once

#include <cmath>

#include "tokenset/common.h"

namespace tokenset {

struct ResidualCodecParams {
  int bits = 0;                          // 1, 2 or 4
  int64_t dim = 0;                       // token dimension; dim * bits a multiple of 8
  int64_t num_centroids = 0;
  int64_t rows = 0;                      // tokens encoded / decoded
  const float* centroids = nullptr;      // [num_centroids, dim] float32
  // The codec's buckets, held by value (a private copy every device reads): 2^bits - 1 non-decreasing cutoffs and
  // 2^bits weights, finite.
  float bucket_cutoffs[15] = {};
  float bucket_weights[16] = {};
  const int32_t* centroid_ids = nullptr; // [rows] (device memory on CUDA)
  const int32_t* host_centroid_ids = nullptr;  // the same on the host, checked
  // encode: tokens in, packed and inverse_norms out; decode: packed and inverse_norms in, decoded out.
  const float* tokens = nullptr;         // [rows, dim] float32, finite
  uint8_t* packed = nullptr;             // [rows, dim * bits / 8]
  float* inverse_norms = nullptr;        // [rows]
  float* decoded = nullptr;              // [rows, dim] float32
  bool encode = true;

  TOKENSET_HOST_DEVICE int64_t code_bytes() const { return dim * bits / 8; }
};

inline void validate(const ResidualCodecParams& p) {
  TOKENSET_CHECK(p.bits == 1 || p.bits == 2 || p.bits == 4, ValueError, "residual codes have 1, 2 or 4 bits, got ",
                 p.bits);
  TOKENSET_CHECK(p.dim >= 1 && p.dim <= kMaxTokenDim, ValueError, "token dimension must be in 1..", kMaxTokenDim,
                 ", got ", p.dim);
  TOKENSET_CHECK(p.dim * p.bits % 8 == 0, ValueError, "dim x bits = ", p.dim, " x ", p.bits,
                 " is not a multiple of 8: every token's codes fill whole bytes (PLAID's packing); use ",
                 p.bits == 1 ? "a dim that is a multiple of 8" : "more bits or a dim that fills whole bytes");
  TOKENSET_CHECK(p.num_centroids >= 1 && p.num_centroids <= (int64_t(1) << 31) - 1, ValueError,
                 "a codec needs 1 .. 2^31 - 1 centroids, got ", p.num_centroids);
  TOKENSET_CHECK(p.rows >= 0, ValueError, "negative number of tokens");
  TOKENSET_CHECK(p.centroids != nullptr, ValueError, "codec centroids missing");
  const int levels = 1 << p.bits;
  for (int j = 0; j < levels; ++j)
    TOKENSET_CHECK(std::isfinite(p.bucket_weights[j]), ValueError, "bucket weight ", j, " is not finite");
  for (int j = 0; j + 1 < levels; ++j)
    TOKENSET_CHECK(std::isfinite(p.bucket_cutoffs[j]) && (j == 0 || p.bucket_cutoffs[j - 1] <= p.bucket_cutoffs[j]),
                   ValueError, "bucket cutoffs must be finite and non-decreasing (cutoff ", j, ")");
  if (p.rows == 0) return;
  TOKENSET_CHECK(p.centroid_ids && p.host_centroid_ids && p.packed && p.inverse_norms, ValueError,
                 "code arrays missing");
  TOKENSET_CHECK(p.encode ? p.tokens != nullptr : p.decoded != nullptr, ValueError,
                 p.encode ? "tokens missing" : "decoded output missing");
  for (int64_t t = 0; t < p.rows; ++t)
    TOKENSET_CHECK(p.host_centroid_ids[t] >= 0 && p.host_centroid_ids[t] < p.num_centroids, ValueError,
                   "centroid id ", p.host_centroid_ids[t], " of token ", t, " is not in [0, ", p.num_centroids,
                   "): the codes do not belong to this codec");
}

inline int64_t workspace_bytes(const ResidualCodecParams&) { return 0; }

namespace cpu {
// Threads over tokens; SIMD level chosen at run time.
void residual_codec(const ResidualCodecParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// One warp per token; the same arithmetic in the same order as the CPU.
void residual_codec(const ResidualCodecParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
