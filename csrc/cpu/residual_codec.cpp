// The residual codec on the CPU, the driver (compiled once): threads over tokens, the first non-finite token named.
#include <atomic>
#include <limits>

#include "parallel.h"
#include "residual_codec_kernels.h"
#include "tokenset/residual_codec.h"

namespace tokenset {
namespace cpu {

void residual_codec(const ResidualCodecParams& p, const Launch&) {
  validate(p);
  if (p.rows == 0) return;
  const ResidualCodecKernel& kernel = TOKENSET_SIMD_KERNEL(residual_codec_kernel);
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  parallel_for_ranges(p.rows, grain_for(p.rows, num_threads(), 256), [&](int64_t begin, int64_t end) {
    AlignedBuffer<float> scratch(static_cast<size_t>(2 * p.dim));
    for (int64_t t = begin; t < end; ++t) {
      if (!p.encode) {
        kernel.decode(p, t, scratch.data());
      } else if (!kernel.encode(p, t, scratch.data())) {
        int64_t seen = first_bad.load();
        while (t < seen && !first_bad.compare_exchange_weak(seen, t)) {
        }
      }
    }
  });
  const int64_t bad = first_bad.load();
  TOKENSET_CHECK(bad == std::numeric_limits<int64_t>::max(), ValueError, "token ", bad,
                 " holds NaN or infinity: residual codes need finite tokens (drop or fix it before encoding)");
}

}  // namespace cpu
}  // namespace tokenset
