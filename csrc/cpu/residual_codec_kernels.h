// The per-level residual codec kernels (residual_codec_kernels.cpp, once per SIMD level), picked by the driver
// residual_codec.cpp. One token per call; the arithmetic is elementwise plus the fixed-order sum of squares, so every
// level gives the same bits.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/residual_codec.h"

namespace tokenset {
namespace cpu {

struct ResidualCodecKernel {
  // Token t of p.tokens into p.packed / p.inverse_norms; false (nothing written) when the token is not finite.
  // scratch: 2 * dim floats.
  bool (*encode)(const ResidualCodecParams& p, int64_t t, float* scratch);
  // Token t's codes into p.decoded. scratch: dim floats.
  void (*decode)(const ResidualCodecParams& p, int64_t t, float* scratch);
};

TOKENSET_DECLARE_SIMD_KERNELS(ResidualCodecKernel, residual_codec_kernel)

}  // namespace cpu
}  // namespace tokenset
