// Framework-free core types shared by every op: dtype tags, the ragged set batch view, errors and checks.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

// Small accessors of the plain params structs are callable from CUDA kernels too.
#if defined(__CUDACC__)
#define TOKENSET_HOST_DEVICE __host__ __device__
#else
#define TOKENSET_HOST_DEVICE
#endif

namespace tokenset {

// Element types of token values. Accumulation is always float32.
enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2 };

inline int dtype_size(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

// Raised for bad arguments; the bindings turn these into Python ValueError / TypeError.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// B sets of d-dimensional tokens: set i is rows offsets[i] .. offsets[i+1]-1 of `values`.
// Rows are `row_stride` elements apart; elements within a row are contiguous.
struct SetBatch {
  const void* values = nullptr;
  DType dtype = DType::Float32;
  int64_t rows = 0;        // rows addressable through `values`
  int64_t dim = 0;
  int64_t row_stride = 0;  // in elements, may be negative
  const int64_t* offsets = nullptr;  // count + 1 entries (host memory for CPU ops)
  int64_t count = 0;
  int64_t max_length = 0;  // filled by check_set_batch

  TOKENSET_HOST_DEVICE int64_t begin(int64_t i) const { return offsets[i]; }
  TOKENSET_HOST_DEVICE int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
};

// Validates offsets against the values before any kernel reads memory; fills max_length.
// `host_offsets` must point at host memory holding the same offsets the kernel will read.
inline void check_set_batch(SetBatch& batch, const int64_t* host_offsets, const char* name) {
  const std::string n(name);
  if (batch.dim < 1) throw ValueError(n + ": token dimension must be >= 1, got " + std::to_string(batch.dim));
  if (batch.rows < 0) throw ValueError(n + ": negative number of rows");
  if (batch.count < 0) throw ValueError(n + ": negative number of sets");
  if (host_offsets == nullptr) throw ValueError(n + ": offsets missing");
  if (batch.rows > 0 && batch.values == nullptr) throw ValueError(n + ": values pointer is null");
  if (host_offsets[0] < 0) throw ValueError(n + ": offsets[0] is negative (" + std::to_string(host_offsets[0]) + ")");
  int64_t max_length = 0;
  for (int64_t i = 0; i < batch.count; ++i) {
    const int64_t a = host_offsets[i], b = host_offsets[i + 1];
    if (b < a)
      throw ValueError(n + ": offsets must be non-decreasing, but offsets[" + std::to_string(i + 1) + "]=" +
                       std::to_string(b) + " < offsets[" + std::to_string(i) + "]=" + std::to_string(a));
    if (b - a > max_length) max_length = b - a;
  }
  if (host_offsets[batch.count] > batch.rows)
    throw ValueError(n + ": offsets[-1]=" + std::to_string(host_offsets[batch.count]) + " exceeds the " +
                     std::to_string(batch.rows) + " rows of values");
  batch.max_length = max_length;
}

}  // namespace tokenset
