// The one converter from Python arrays to tokenset views, shared by every op binding and both modules.
//
// CPU arrays come through the buffer protocol (numpy, including ml_dtypes.bfloat16) or DLPack (torch, JAX, ...);
// GPU arrays through DLPack (`__dlpack__` / `__dlpack_device__`: torch, cupy, JAX, any producer), with the caller's
// stream passed explicitly. A `Call` keeps every Python object, DLPack capsule and per-set pointer table alive until
// the kernel has been launched, then returns them (DLPack deleters run with the GIL held).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "tokenset/attention_scores.h"
#include "tokenset/common.h"
#include "tokenset/coverage.h"
#include "tokenset/fde.h"
#include "tokenset/inner_product.h"
#include "tokenset/kcenter.h"
#include "tokenset/maxsim.h"
#include "tokenset/nearest.h"
#include "tokenset/sparse_attention.h"
#include "tokenset/segment_sum.h"

namespace tokenset {
namespace bindings {

namespace py = pybind11;

// Maps tokenset::ValueError / TypeError to Python ValueError / TypeError.
void register_exceptions();

// The device type of the module being built: CUDA for _cuda (TOKENSET_BINDING_CUDA), CPU for _core.
#if defined(TOKENSET_BINDING_CUDA)
constexpr DeviceType kModuleDevice = DeviceType::CUDA;
#else
constexpr DeviceType kModuleDevice = DeviceType::CPU;
#endif

struct DLManagedTensorHandle;

class Call {
 public:
  // `stream`: the caller's CUDA stream handle (0 = the default stream); unused on the CPU.
  explicit Call(intptr_t stream = 0) : stream_(stream) {}
  ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // A view of any array on this module's device (on_host: a host array whatever the module). `writable`: the op
  // writes it (read-only numpy arrays are refused).
  ArrayView view(py::handle array, const char* name, bool writable = false, bool on_host = false);
  // A view, or an empty one (data == nullptr) for None.
  ArrayView optional_view(py::handle array, const char* name, bool writable = false, bool on_host = false);

  // A set batch from a tokenset._dispatch.KernelBatch: `values` (a [rows, dim] array) or `sets` (a list of [n_i, dim]
  // arrays read in place through a pointer table, CPU only), `offsets` (host int64, owned and read-only), and
  // `device_offsets` (the same offsets on the GPU, CUDA only). Checked with check_set_batch.
  // int8 batches (allow_int8: the ops that score them) also carry `scales` (float32 [rows], one per row of values).
  // Residual codes (packed_codes) carry their 1/||reconstruction|| as `scales` and uint8 values.
  SetBatch set_batch(py::handle batch, const char* name, bool allow_int8 = false, bool packed_codes = false);

  // The workspace of `bytes` bytes from `allocate(bytes)` (a uint8 array on the values' device and the caller's
  // stream), kept alive for the call; nothing is allocated for 0 bytes.
  Launch launch(py::handle allocate, int64_t bytes);

  // A copy of `count` int64 values owned by this call (alive until the kernel has run): what validate() checks and a
  // CPU kernel reads, so a caller that rewrites its buffer meanwhile (another thread; the GIL is released) is never
  // followed.
  const int64_t* own_int64(const int64_t* data, int64_t count);

  // The same for `count` elements of a 4-byte type (the FDE's int32 indices and float32 state).
  template <typename T>
  const T* own(const T* data, int64_t count) {
    static_assert(sizeof(T) <= sizeof(int64_t) && alignof(T) <= alignof(int64_t), "own(): a small scalar type");
    std::vector<int64_t>& copy =
        int64_copies_.emplace_back(static_cast<size_t>((count * static_cast<int64_t>(sizeof(T)) + 7) / 8 + 1), 0);
    if (count > 0) std::memcpy(copy.data(), data, static_cast<size_t>(count) * sizeof(T));
    return reinterpret_cast<const T*>(copy.data());
  }

  // The device of the first array seen; every later array must be on it.
  Device device() const { return device_; }

 private:
  ArrayView from_buffer(py::handle array, const char* name, bool writable);
  ArrayView from_dlpack(py::handle array, const char* name, bool on_host);
  void check_device(const ArrayView& view, const char* name, bool on_host);

  intptr_t stream_;
  bool have_device_ = false;
  Device device_;
  std::vector<py::object> keep_;
  std::vector<void*> managed_;  // DLManagedTensor*, returned to their producers at the end of the call
  std::deque<std::vector<const void*>> tables_;
  std::deque<std::vector<int64_t>> table_strides_;
  std::deque<std::vector<int64_t>> int64_copies_;  // host offsets and index arrays as checked: what the kernels read
};

// A per-set int64 [count] array given twice: `host` (contiguous int64, copied into the call: *host_out is the copy,
// what validate() checks and what a CPU kernel reads) and, in the CUDA module, `device_copy` (what the kernel reads:
// Python's _dispatch.host_and_device makes it from the same immutable host array). Returns the kernel's pointer.
const int64_t* per_set_int64(Call& call, py::handle host, py::handle device_copy, const char* name, int64_t count,
                             Device device, const int64_t** host_out);

// An optional 1-D int64 host array copied into the call (what validate() checks and a CPU kernel reads) and, in the
// CUDA module, its device copy (made by Python from the same immutable host array). Null pointers for None.
struct Int64Input {
  const int64_t* host = nullptr;
  const int64_t* device = nullptr;
  int64_t count = 0;
};
Int64Input int64_input(Call& call, py::handle host, py::handle device_copy, const char* name, Device device);

// The batch of an attention call from q's layout: 3-D [total, heads, dim] q needs cu_seqlens for q and k (batch + 1
// entries each), 4-D [batch, heads, length, dim] q neither.
int64_t attention_batch(const ArrayView& q, const Int64Input& cu_q, const Int64Input& cu_k);

// The op entries of this module's device: tokenset::cpu::<op> in _core, tokenset::cuda::<op> in _cuda (same signature).
#if defined(TOKENSET_BINDING_CUDA)
namespace backend = ::tokenset::cuda;
#else
namespace backend = ::tokenset::cpu;
#endif

// Makes the arrays' GPU current around `fn` (nothing on the CPU).
template <typename Fn>
void run_on_device(Device device, Fn&& fn);

// Runs an op entry with the GIL released, after taking the workspace the op asks for (GPU only; CPU entries keep
// per-thread scratch of their own). The entry validates its params itself.
template <typename Params>
void run_op(Call& call, void (*entry)(const Params&, const Launch&), const Params& params, py::handle allocate) {
  const Launch launch = call.launch(allocate, kModuleDevice == DeviceType::CUDA ? workspace_bytes(params) : 0);
  py::gil_scoped_release release;
  run_on_device(call.device(), [&] { entry(params, launch); });
}

// Each op's binding file registers its functions in whichever module it is compiled into.
void bind_maxsim(py::module_& m);
void bind_residual_codec(py::module_& m);
void bind_fde(py::module_& m);
void bind_inner_product(py::module_& m);
void bind_kcenter(py::module_& m);
void bind_coverage(py::module_& m);
void bind_segment_sum(py::module_& m);
void bind_nearest(py::module_& m);
void bind_sparse_attention(py::module_& m);
void bind_attention_scores(py::module_& m);

}  // namespace bindings
}  // namespace tokenset

#if defined(TOKENSET_BINDING_CUDA)
#include "tokenset/cuda_runtime.h"
template <typename Fn>
void tokenset::bindings::run_on_device(Device device, Fn&& fn) {
  cuda::DeviceGuard guard(device.index);
  fn();
}
#else
template <typename Fn>
void tokenset::bindings::run_on_device(Device, Fn&& fn) {
  fn();
}
#endif
