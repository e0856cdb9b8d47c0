// Framework-free array views: what every kernel sees of its inputs and outputs.
//
// A view is {data, dtype, ndim, shape, strides (in elements), device}; the bindings build it from any Python array
// (the buffer protocol on the CPU, DLPack on any device) and check it before a kernel may read it.
#pragma once

#include <cstdint>

// Small accessors of views and params structs are callable from CUDA kernels too.
#if defined(__CUDACC__)
#define TOKENSET_HOST_DEVICE __host__ __device__
#else
#define TOKENSET_HOST_DEVICE
#endif

namespace tokenset {

// Element types. Token values are float32 / float16 / bfloat16 (accumulation is always float32); the integer types
// carry offsets, indices and quantised stores.
enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2, Int8 = 3, Int32 = 4, Int64 = 5 };

TOKENSET_HOST_DEVICE inline int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Int8: return 1;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
  }
  return 0;  // not a dtype: every check that uses the size fails on it
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int8: return "int8";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
  }
  return "unknown";
}

inline bool is_float_dtype(DType dtype) {
  return dtype == DType::Float32 || dtype == DType::Float16 || dtype == DType::BFloat16;
}

enum class DeviceType : int32_t { CPU = 0, CUDA = 1 };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = -1;  // CUDA ordinal; -1 on the CPU
};

constexpr int kMaxDims = 4;

struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};  // in elements; may be negative
  Device device;
  // uint8 data (DType::Int8 views are also bytes: masks, workspaces); never token codes, which are signed.
  bool is_unsigned = false;

  TOKENSET_HOST_DEVICE int64_t size(int axis) const { return shape[axis]; }
  TOKENSET_HOST_DEVICE int64_t stride(int axis) const { return strides[axis]; }
  TOKENSET_HOST_DEVICE int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  TOKENSET_HOST_DEVICE bool is_contiguous() const {  // C order (extent-1 axes may have any stride; empty: always)
    if (numel() == 0) return true;
    int64_t expected = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
  template <typename T>
  TOKENSET_HOST_DEVICE T* ptr() const {
    return static_cast<T*>(data);
  }
};

// B sets of d-dimensional tokens: set i is rows offsets[i] .. offsets[i+1]-1 of `values` ([rows, dim], elements
// contiguous within a row, rows `values.strides[0]` elements apart, possibly negative).
//
// CPU batches may instead give a per-set pointer table (a Python list of arrays read in place): set i's rows then
// start at set_rows[i], set_row_strides[i] elements apart, and `values` only carries the dtype and dim; the offsets
// still give every set's length and its tokens' position in batch order.
struct SetBatch {
  ArrayView values;
  const int64_t* offsets = nullptr;       // count + 1 entries, what the kernel reads (device memory on CUDA)
  const int64_t* host_offsets = nullptr;  // the same offsets on the host, owned by the caller's Ragged and checked
  int64_t count = 0;
  int64_t max_length = 0;  // filled by check_set_batch
  const void* const* set_rows = nullptr;
  const int64_t* set_row_strides = nullptr;
  // int8 token values only (stored documents and quantised queries): token t's value is scales[t] * values[t], one
  // float32 scale per row of `values` (`scale_count` of them, contiguous, on the values' device). Only ops that say so
  // take int8 batches (check_set_batch's allow_int8).
  const float* scales = nullptr;
  int64_t scale_count = 0;

  TOKENSET_HOST_DEVICE int64_t dim() const { return values.shape[1]; }
  TOKENSET_HOST_DEVICE DType dtype() const { return values.dtype; }
  TOKENSET_HOST_DEVICE int64_t row_stride() const { return values.strides[0]; }
  TOKENSET_HOST_DEVICE int64_t begin(int64_t i) const { return offsets[i]; }
  TOKENSET_HOST_DEVICE int64_t length(int64_t i) const { return offsets[i + 1] - offsets[i]; }
  TOKENSET_HOST_DEVICE int64_t tokens() const { return offsets[count] - offsets[0]; }
  // The first row of set i and the distance between its rows (elements): host code on CPU batches.
  const void* set_data(int64_t i) const {
    if (set_rows) return set_rows[i];
    return static_cast<const char*>(values.data) + offsets[i] * values.strides[0] * dtype_size(values.dtype);
  }
  int64_t set_stride(int64_t i) const { return set_rows ? set_row_strides[i] : values.strides[0]; }
  // The scales of set i's rows (int8 batches; values mode only, so row t of set i is row offsets[i] + t).
  const float* set_scales(int64_t i) const { return scales + offsets[i]; }
};

}  // namespace tokenset
