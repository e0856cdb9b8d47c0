// Weighted segment sums on the CPU, the driver (compiled once): threads over output segments, members in order.
#include <algorithm>
#include <cstring>

#include "parallel.h"
#include "segment_sum_kernels.h"
#include "tokenset/segment_sum.h"

namespace tokenset {
namespace cpu {

void segment_sum(const SegmentSumParams& p, const Launch&) {
  validate(p);
  if (p.segments == 0) return;
  const SegmentSumKernel& kernel = TOKENSET_SIMD_KERNEL(segment_sum_kernel);
  const int64_t dim = p.values.shape[1];
  const int64_t rows = p.values.shape[0];
  const int64_t row_bytes = (rows > 1 ? p.values.strides[0] : dim) * dtype_size(p.values.dtype);
  const char* base = static_cast<const char*>(p.values.data);
  parallel_for_ranges(p.segments, grain_for(p.segments, num_threads(), 8), [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      float* out = p.out + s * dim;
      std::memset(out, 0, sizeof(float) * dim);
      for (int64_t m = p.host_starts[s]; m < p.host_starts[s + 1]; ++m) {
        const int64_t i = p.host_order[m];
        kernel.accumulate(base + i * row_bytes, p.values.dtype, p.weights ? p.weights[i] : 1.0f, dim, out);
      }
    }
  });
}

}  // namespace cpu
}  // namespace tokenset
