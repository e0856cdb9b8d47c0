// Weighted segment sums on the GPU: one block per segment (grid-stride over segments), threads over the dimension,
// members added in order with one FMA each (the CPU's order and operations: the same float32 sums).
#include "common.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/segment_sum.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) segment_sum_kernel(const T* values, int64_t row_stride, int64_t dim,
                                                               const int64_t* order, const int64_t* starts,
                                                               int64_t segments, const float* weights, float* out) {
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    const int64_t first = starts[s], last = starts[s + 1];
    for (int64_t k = threadIdx.x; k < dim; k += kThreads) {
      float acc = 0.0f;
      for (int64_t m = first; m < last; ++m) {
        const int64_t i = order[m];
        acc = fmaf(weights ? weights[i] : 1.0f, to_float(values[i * row_stride + k]), acc);
      }
      out[s * dim + k] = acc;
    }
  }
}

}  // namespace

void segment_sum(const SegmentSumParams& p, const Launch& launch) {
  validate(p);
  if (p.segments == 0) return;
  const int64_t rows = p.values.shape[0], dim = p.values.shape[1];
  const int64_t row_stride = rows > 1 ? p.values.strides[0] : dim;
  const int blocks = static_cast<int>(imin(p.segments, int64_t(1) << 20));
  TOKENSET_FLOAT_SWITCH(p.values.dtype, kDType, [&] {
    using T = cuda_type_t<kDType>;
    segment_sum_kernel<T><<<blocks, kThreads, 0, stream_of(launch)>>>(static_cast<const T*>(p.values.data),
                                                                      row_stride, dim, p.order, p.starts, p.segments,
                                                                      p.weights, p.out);
  });
  TOKENSET_CHECK_LAUNCH("segment_sum");
}

}  // namespace cuda
}  // namespace tokenset
