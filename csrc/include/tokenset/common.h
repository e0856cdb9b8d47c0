// Shared by every op: array views, errors, and the checks every op's validate() is built from.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "tokenset/array.h"
#include "tokenset/check.h"

namespace tokenset {

// Token values of a set batch must be floating point, 2-D, elements contiguous within a row.
// The widest token accepted: far above any embedding model (ColBERT 128, ColPali 128, LLM hidden states 8192); it
// bounds per-worker scratch that is a few rows wide (MaxSim's packed query panels, FDE token blocks).
constexpr int64_t kMaxTokenDim = int64_t(1) << 16;

// packed_codes: the values are a residual codec's packed codes (uint8 bytes per token, tokenset.ResidualCodes).
inline void check_token_values(const ArrayView& v, const std::string& name, bool allow_int8 = false,
                               bool packed_codes = false) {
  TOKENSET_CHECK(v.ndim == 2, ValueError, name, " values must be 2-D [tokens, dim], got ", v.ndim, "-D");
  TOKENSET_CHECK(is_float_dtype(v.dtype) || (allow_int8 && v.dtype == DType::Int8), TypeError, name, ": dtype ",
                 dtype_name(v.dtype),
                 v.dtype == DType::Int8 ? " tokens (tokenset.Quantized) are scored by maxsim, maxsim_pairs and "
                                          "maxsim_topk only; dequantize() them for this op"
                                        : " is not supported; tokenset takes float32, float16 or bfloat16 token values");
  TOKENSET_CHECK(!packed_codes || (v.dtype == DType::Int8 && v.is_unsigned), TypeError, name,
                 ": residual codes are uint8 (tokenset.ResidualCodec.encode), got ", dtype_name(v.dtype));
  TOKENSET_CHECK(packed_codes || !(v.dtype == DType::Int8 && v.is_unsigned), TypeError, name,
                 ": uint8 values are not int8 codes (which are signed); build them with tokenset.quantize");
  TOKENSET_CHECK(v.shape[1] >= 1 && v.shape[1] <= kMaxTokenDim, ValueError, name, ": token dimension must be in 1..",
                 kMaxTokenDim, ", got ", v.shape[1]);
  TOKENSET_CHECK(v.shape[0] >= 0, ValueError, name, ": negative number of rows");
  TOKENSET_CHECK(v.shape[0] == 0 || v.shape[1] == 1 || v.strides[1] == 1, ValueError, name,
                 " values must be contiguous along the token dimension; try np.ascontiguousarray / .contiguous()");
  TOKENSET_CHECK(v.shape[0] == 0 || v.data != nullptr, ValueError, name, ": values pointer is null");
}

// Validates a set batch before any kernel reads memory (offsets from the host copy, every set inside the values);
// fills max_length. int8 batches (allow_int8: the ops that score them) are read in values mode with a scale per row.
inline void check_set_batch(SetBatch& batch, const char* name, bool allow_int8 = false, bool packed_codes = false) {
  const std::string n(name);
  check_token_values(batch.values, n, allow_int8 || packed_codes, packed_codes);
  TOKENSET_CHECK(batch.count >= 0, ValueError, n, ": negative number of sets");
  TOKENSET_CHECK(batch.host_offsets != nullptr && batch.offsets != nullptr, ValueError, n, ": offsets missing");
  const int64_t* offsets = batch.host_offsets;
  TOKENSET_CHECK(offsets[0] >= 0, ValueError, n, ": offsets[0] is negative (", offsets[0], ")");
  int64_t max_length = 0;
  for (int64_t i = 0; i < batch.count; ++i) {
    const int64_t a = offsets[i], b = offsets[i + 1];
    TOKENSET_CHECK(b >= a, ValueError, n, ": offsets must be non-decreasing, but offsets[", i + 1, "]=", b,
                   " < offsets[", i, "]=", a);
    if (b - a > max_length) max_length = b - a;
  }
  batch.max_length = max_length;
  if (batch.set_rows != nullptr) {
    TOKENSET_CHECK(batch.values.device.type == DeviceType::CPU, ValueError, n,
                   ": per-set pointer tables are read on the CPU only");
    TOKENSET_CHECK(batch.set_row_strides != nullptr, ValueError, n, ": per-set row strides missing");
    for (int64_t i = 0; i < batch.count; ++i)
      TOKENSET_CHECK(offsets[i + 1] == offsets[i] || batch.set_rows[i] != nullptr, ValueError, n, ": set ", i,
                     " has a null pointer");
    return;
  }
  TOKENSET_CHECK(offsets[batch.count] <= batch.values.shape[0], ValueError, n, ": offsets[-1]=",
                 offsets[batch.count], " exceeds the ", batch.values.shape[0], " rows of values");
  if (batch.values.dtype == DType::Int8) {
    TOKENSET_CHECK(batch.scales != nullptr || batch.count == 0, ValueError, n,
                   ": int8 values need their per-token scales (build them with tokenset.quantize)");
    TOKENSET_CHECK(offsets[batch.count] <= batch.scale_count, ValueError, n, ": offsets[-1]=", offsets[batch.count],
                   " exceeds the ", batch.scale_count, " scales");
  }
}

// For an op's validate(): check_set_batch again on a batch it already filled (max_length included), so that an entry
// checks every offset its kernels follow itself instead of trusting whoever built the batch. O(count).
inline void check_filled_set_batch(const SetBatch& batch, const char* name, bool allow_int8 = false,
                                   bool packed_codes = false) {
  SetBatch checked = batch;
  check_set_batch(checked, name, allow_int8, packed_codes);
  TOKENSET_CHECK(checked.max_length == batch.max_length, ValueError, name, ": max_length is ", batch.max_length,
                 " but the longest set has ", checked.max_length, " tokens");
}

// Checks an array the op reads or writes whole: dtype, exact shape (-1: any extent), C-contiguous, device.
inline void check_array(const ArrayView& a, const char* name, DType dtype, std::initializer_list<int64_t> shape,
                        Device device) {
  TOKENSET_CHECK(a.dtype == dtype, TypeError, name, " must be ", dtype_name(dtype), ", got ", dtype_name(a.dtype));
  TOKENSET_CHECK(a.ndim == static_cast<int>(shape.size()), ValueError, name, " must have ", shape.size(),
                 " dimension(s), got ", a.ndim);
  int axis = 0;
  bool same = true;
  std::string want = "(", got = "(";
  for (int64_t extent : shape) {
    same = same && (extent < 0 || a.shape[axis] == extent);
    want += (axis ? ", " : "") + (extent < 0 ? std::string("any") : std::to_string(extent));
    got += (axis ? ", " : "") + std::to_string(a.shape[axis]);
    ++axis;
  }
  TOKENSET_CHECK(same, ValueError, name, " must have shape ", want, "), got ", got, ")");
  TOKENSET_CHECK(a.is_contiguous(), ValueError, name, " must be C-contiguous; try np.ascontiguousarray / .contiguous()");
  TOKENSET_CHECK(a.numel() == 0 || a.data != nullptr, ValueError, name, ": null data pointer");
  TOKENSET_CHECK(a.device.type == device.type && (device.type == DeviceType::CPU || a.device.index == device.index),
                 ValueError, name, " is on another device than the token values; move it there first");
}

}  // namespace tokenset

namespace tokenset {

// How a GPU op runs: the caller's stream, and one opaque device workspace of the size the op's workspace_bytes()
// asked for (allocated by the caller's array library on that stream). CPU entries take the same struct and ignore
// it: their scratch is per worker thread, bounded by tiles.
struct Launch {
  void* stream = nullptr;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Carves aligned pieces out of a workspace, in the same order workspace_bytes() sized them.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    T* out = reinterpret_cast<T*>(base_ ? base_ + used_ : nullptr);
    used_ += (count * static_cast<int64_t>(sizeof(T)) + 255) / 256 * 256;
    return out;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// GPU running top-k, shared by every op that ranks on the GPU (MaxSim top-k, inner-product top-k): candidates are
// scored in chunks of kTopkDocChunk for a group of queries, and each query's running top-k (double-buffered 64-bit
// rank keys + scores) is merged with every chunk. The workspace holds one group's chunk scores and running lists, at
// most kTopkWorkspaceBudget bytes unless one query alone needs more (a very large k).
constexpr int64_t kTopkDocChunk = 2048;
constexpr int64_t kTopkWorkspaceBudget = int64_t(64) << 20;

struct TopkWorkspace {
  int64_t group = 0;  // queries per pass
  float* chunk_scores = nullptr;  // [group, kTopkDocChunk]
  unsigned long long* keys[2] = {nullptr, nullptr};  // [group, k] each
  float* scores[2] = {nullptr, nullptr};
};

// The layout for `queries` queries and top-k `k`; with base == nullptr only the size (*bytes) is meaningful.
inline TopkWorkspace carve_topk_workspace(int64_t queries, int64_t k, void* base, int64_t* bytes) {
  WorkspaceCarver carve(base);
  TopkWorkspace w;
  const int64_t per_query = kTopkDocChunk * 4 + 2 * k * (8 + 4);
  w.group = kTopkWorkspaceBudget / per_query;
  if (w.group > queries) w.group = queries;
  if (w.group < 1) w.group = 1;
  w.chunk_scores = carve.take<float>(w.group * kTopkDocChunk);
  for (auto& keys : w.keys) keys = carve.take<unsigned long long>(w.group * k);
  for (auto& scores : w.scores) scores = carve.take<float>(w.group * k);
  if (bytes) *bytes = carve.used();
  return w;
}

}  // namespace tokenset
