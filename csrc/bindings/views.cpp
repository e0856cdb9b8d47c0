#include "views.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <string>

namespace tokenset {
namespace bindings {

// ---- DLPack (the stable C ABI of dlpack.h v0.8; only what a consumer reads) ---------------------------------------
namespace {
struct DLDevice {
  int32_t device_type;  // kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null = C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
constexpr int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13;

DType dtype_from_dlpack(DLDataType t, const char* name) {
  if (t.lanes == 1) {
    if (t.code == 2 && t.bits == 32) return DType::Float32;
    if (t.code == 2 && t.bits == 16) return DType::Float16;
    if (t.code == 4 && t.bits == 16) return DType::BFloat16;
    if (t.code == 0 && t.bits == 8) return DType::Int8;
    if (t.code == 0 && t.bits == 32) return DType::Int32;
    if (t.code == 0 && t.bits == 64) return DType::Int64;
    if (t.code == 1 && t.bits == 8) return DType::Int8;  // uint8: workspaces (bytes)
  }
  throw TypeError(std::string(name) + ": dtype (DLPack code " + std::to_string(t.code) + ", " +
                  std::to_string(t.bits) + " bits) is not supported; use float32, float16, bfloat16 or int64");
}

DType dtype_from_numpy(const py::dtype& dt, const char* name) {
  const char kind = dt.kind();
  const py::ssize_t size = dt.itemsize();
  // The kernels read native byte order: a big-endian float32 scale would be read as another number entirely.
  TOKENSET_CHECK(size == 1 || dt.attr("isnative").cast<bool>(), TypeError, name, ": dtype ",
                 py::str(dt).cast<std::string>(), " is not in this machine's byte order; convert it with "
                 "x.astype(x.dtype.newbyteorder('='))");
  if (kind == 'f' && size == 4) return DType::Float32;
  if (kind == 'f' && size == 2) return DType::Float16;
  if (size == 2 && py::str(dt.attr("name")).cast<std::string>() == "bfloat16") return DType::BFloat16;  // ml_dtypes
  if ((kind == 'i' || kind == 'u') && size == 1) return DType::Int8;
  if (kind == 'i' && size == 4) return DType::Int32;
  if (kind == 'i' && size == 8) return DType::Int64;
  throw TypeError(std::string(name) + ": dtype " + py::str(dt).cast<std::string>() +
                  " is not supported; tokenset takes float32, float16 or bfloat16 values and int64 indices "
                  "(try x.astype(np.float32))");
}
}  // namespace

void register_exceptions() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

Call::~Call() {
  for (void* m : managed_) {
    auto* tensor = static_cast<DLManagedTensor*>(m);
    if (tensor->deleter) tensor->deleter(tensor);
  }
}

void Call::check_device(const ArrayView& v, const char* name, bool on_host) {
  if (on_host || kModuleDevice == DeviceType::CPU) {
    TOKENSET_CHECK(v.device.type == DeviceType::CPU, ValueError, name,
                   " must be a CPU array here (this is tokenset's CPU module); move it with .cpu()");
    return;
  }
  TOKENSET_CHECK(v.device.type == DeviceType::CUDA, ValueError, name,
                 " must be a CUDA array here (this is tokenset's CUDA module); move it with .cuda()");
  if (!have_device_) {
    device_ = v.device;
    have_device_ = true;
  }
  TOKENSET_CHECK(v.device.index == device_.index, ValueError, name, " is on cuda:", v.device.index,
                 " but the other arrays are on cuda:", device_.index, "; move them to one device first");
}

ArrayView Call::from_buffer(py::handle obj, const char* name, bool writable) {
  py::array array = py::reinterpret_borrow<py::array>(obj);
  ArrayView v;
  v.dtype = dtype_from_numpy(array.dtype(), name);
  v.is_unsigned = array.dtype().kind() == 'u';
  TOKENSET_CHECK(array.ndim() <= kMaxDims, ValueError, name, ": at most ", kMaxDims, " dimensions, got ",
                 array.ndim());
  TOKENSET_CHECK(!writable || array.writeable(), ValueError, name, " is read-only; pass a writable array");
  v.ndim = static_cast<int>(array.ndim());
  const int64_t item = array.itemsize();
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = array.shape(i);
    TOKENSET_CHECK(array.strides(i) % item == 0, ValueError, name,
                   " has a stride that is not a whole number of elements; try np.ascontiguousarray");
    v.strides[i] = array.strides(i) / item;
  }
  v.data = const_cast<void*>(array.data());
  v.device = Device{DeviceType::CPU, -1};
  keep_.push_back(py::reinterpret_borrow<py::object>(obj));
  return v;
}

ArrayView Call::from_dlpack(py::handle obj, const char* name, bool on_host) {
  py::tuple dev = obj.attr("__dlpack_device__")();
  const int type = dev[0].cast<int>();
  py::object capsule;
  if (type == kDLCUDA || type == kDLCUDAManaged) {
    TOKENSET_CHECK(!on_host && kModuleDevice == DeviceType::CUDA, ValueError, name,
                   " is a GPU array but a CPU array is needed here; move it with .cpu()");
    // DLPack's stream argument: 1 names the legacy default stream (0 is not allowed for CUDA).
    const intptr_t stream = stream_ == 0 ? 1 : stream_;
    capsule = obj.attr("__dlpack__")(py::arg("stream") = stream);
  } else {
    capsule = obj.attr("__dlpack__")();
  }
  PyObject* raw = capsule.ptr();
  TOKENSET_CHECK(PyCapsule_IsValid(raw, "dltensor"), TypeError, name, ": __dlpack__ did not return a DLPack capsule");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(raw, "dltensor"));
  PyCapsule_SetName(raw, "used_dltensor");  // consumed: the producer's capsule destructor leaves it to us
  managed_.push_back(managed);
  const DLTensor& t = managed->dl_tensor;
  ArrayView v;
  v.dtype = dtype_from_dlpack(t.dtype, name);
  v.is_unsigned = t.dtype.code == 1;
  TOKENSET_CHECK(t.ndim <= kMaxDims, ValueError, name, ": at most ", kMaxDims, " dimensions, got ", t.ndim);
  v.ndim = t.ndim;
  int64_t expected = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : expected;
    expected *= t.shape[i];
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  if (t.device.device_type == kDLCUDA || t.device.device_type == kDLCUDAManaged)
    v.device = Device{DeviceType::CUDA, t.device.device_id};
  else if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost)
    v.device = Device{DeviceType::CPU, -1};
  else
    throw ValueError(std::string(name) + ": arrays on DLPack device type " + std::to_string(t.device.device_type) +
                     " are not supported; use a CPU or CUDA array");
  keep_.push_back(py::reinterpret_borrow<py::object>(obj));
  return v;
}

ArrayView Call::view(py::handle obj, const char* name, bool writable, bool on_host) {
  ArrayView v;
  if (py::isinstance<py::array>(obj))
    v = from_buffer(obj, name, writable);
  else if (py::hasattr(obj, "__dlpack__") && py::hasattr(obj, "__dlpack_device__"))
    v = from_dlpack(obj, name, on_host);
  else
    throw TypeError(std::string(name) + ": expected an array (numpy, torch, cupy or any DLPack producer), got " +
                    py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  check_device(v, name, on_host);
  return v;
}

ArrayView Call::optional_view(py::handle obj, const char* name, bool writable, bool on_host) {
  if (obj.is_none()) return ArrayView();
  return view(obj, name, writable, on_host);
}

SetBatch Call::set_batch(py::handle batch, const char* name, bool allow_int8, bool packed_codes) {
  const std::string n(name);
  SetBatch b;
  const ArrayView offsets = view(batch.attr("offsets"), (n + " offsets").c_str(), false, true);
  TOKENSET_CHECK(offsets.dtype == DType::Int64 && offsets.ndim == 1 && offsets.is_contiguous(), ValueError, n,
                 ": offsets must be a contiguous 1-D int64 array");
  TOKENSET_CHECK(offsets.shape[0] >= 1, ValueError, n, ": offsets must have at least one entry (offsets[0])");
  b.count = offsets.shape[0] - 1;
  // Checked and read from our own copy: the caller's buffer may change while the kernel runs (another thread, with
  // the GIL released), and what a kernel follows must be what was checked.
  b.host_offsets = own_int64(offsets.ptr<const int64_t>(), offsets.shape[0]);
  b.offsets = b.host_offsets;
  py::object sets = batch.attr("sets");
  if (!sets.is_none()) {  // a list of arrays, read in place
    TOKENSET_CHECK(kModuleDevice == DeviceType::CPU, ValueError, n, ": set lists are read in place on the CPU only");
    py::sequence seq = py::reinterpret_borrow<py::sequence>(sets);
    TOKENSET_CHECK(static_cast<int64_t>(seq.size()) == b.count, ValueError, n, ": ", seq.size(), " sets but ",
                   b.count, " offsets");
    TOKENSET_CHECK(b.count > 0, ValueError, n, ": an empty list of sets has no token dimension");
    tables_.emplace_back(static_cast<size_t>(b.count));
    table_strides_.emplace_back(static_cast<size_t>(b.count));
    std::vector<const void*>& rows = tables_.back();
    std::vector<int64_t>& strides = table_strides_.back();
    for (int64_t i = 0; i < b.count; ++i) {
      const std::string item = n + "[" + std::to_string(i) + "]";
      ArrayView s = view(seq[static_cast<size_t>(i)], item.c_str());
      TOKENSET_CHECK(!(allow_int8 && s.dtype == DType::Int8), TypeError, item,
                     ": int8 sets are read as one batch with their scales (a tokenset.Quantized), not as a list");
      check_token_values(s, item);
      if (i == 0) {
        b.values = s;  // dtype and dim of the batch
      } else {
        TOKENSET_CHECK(s.dtype == b.values.dtype, TypeError, item, " is ", dtype_name(s.dtype), " but ", n,
                       "[0] is ", dtype_name(b.values.dtype), "; give every set one dtype");
        TOKENSET_CHECK(s.shape[1] == b.values.shape[1], ValueError, item, " has token dimension ", s.shape[1],
                       " but ", n, "[0] has ", b.values.shape[1]);
      }
      TOKENSET_CHECK(s.shape[0] == b.host_offsets[i + 1] - b.host_offsets[i], ValueError, item, " has ", s.shape[0],
                     " tokens but the offsets give it ", b.host_offsets[i + 1] - b.host_offsets[i]);
      rows[static_cast<size_t>(i)] = s.data;
      strides[static_cast<size_t>(i)] = s.shape[0] > 1 ? s.strides[0] : s.shape[1];
    }
    b.set_rows = rows.data();
    b.set_row_strides = strides.data();
  } else {
    b.values = view(batch.attr("values"), (n + " values").c_str());
    // A row stride is meaningless for 0 or 1 rows (numpy reports anything there); keep the addressing simple.
    if (b.values.ndim == 2 && b.values.shape[0] <= 1) b.values.strides[0] = b.values.shape[1];
    const py::object given_scales = py::getattr(batch, "scales", py::none());
    if ((allow_int8 || packed_codes) && b.values.dtype == DType::Int8 && !given_scales.is_none()) {  // none: check_set_batch says so
      const ArrayView scales = view(given_scales, (n + " scales").c_str());
      TOKENSET_CHECK(scales.dtype == DType::Float32 && scales.ndim == 1 && scales.is_contiguous(), ValueError, n,
                     ": scales must be a contiguous 1-D float32 array, one per token");
      TOKENSET_CHECK(scales.device.type == b.values.device.type && scales.device.index == b.values.device.index,
                     ValueError, n, ": scales and values are on different devices");
      b.scales = scales.ptr<const float>();
      b.scale_count = scales.shape[0];
    }
  }
  if (kModuleDevice == DeviceType::CUDA) {
    const ArrayView dev = view(batch.attr("device_offsets"), (n + " device offsets").c_str());
    TOKENSET_CHECK(dev.dtype == DType::Int64 && dev.ndim == 1 && dev.is_contiguous() && dev.shape[0] == b.count + 1,
                   ValueError, n, ": device offsets must be a contiguous int64 copy of the offsets");
    b.offsets = dev.ptr<const int64_t>();
  }
  check_set_batch(b, name, allow_int8, packed_codes);
  return b;
}

const int64_t* Call::own_int64(const int64_t* data, int64_t count) {
  // Never null, even for no entries (a null pointer means "not given" to some params, e.g. MaxSim's candidates); a
  // deque, so earlier copies stay where they are.
  std::vector<int64_t>& copy = int64_copies_.emplace_back(static_cast<size_t>(count > 0 ? count : 1), 0);
  if (count > 0) std::copy(data, data + count, copy.begin());
  return copy.data();
}

Launch Call::launch(py::handle allocate, int64_t bytes) {
  Launch l;
  l.stream = reinterpret_cast<void*>(stream_);
  if (bytes <= 0) return l;
  TOKENSET_CHECK(!allocate.is_none(), ValueError, "this op needs a device workspace but no allocator was given");
  py::object buffer = allocate(bytes);
  const ArrayView w = view(buffer, "workspace", true);
  TOKENSET_CHECK(w.numel() * dtype_size(w.dtype) >= bytes && w.is_contiguous(), ValueError,
                 "the workspace allocator returned a buffer smaller than the ", bytes, " bytes asked for");
  l.workspace = w.data;
  l.workspace_bytes = bytes;
  return l;
}

const int64_t* per_set_int64(Call& call, py::handle host, py::handle device_copy, const char* name, int64_t count,
                             Device device, const int64_t** host_out) {
  const ArrayView h = call.view(host, name, false, true);
  check_array(h, name, DType::Int64, {count}, Device{DeviceType::CPU, -1});
  *host_out = call.own_int64(h.ptr<const int64_t>(), count);
  if (kModuleDevice == DeviceType::CPU) return *host_out;
  const ArrayView d = call.view(device_copy, name);
  check_array(d, name, DType::Int64, {count}, device);
  return d.ptr<const int64_t>();
}


Int64Input int64_input(Call& call, py::handle host, py::handle device_copy, const char* name, Device device) {
  Int64Input in;
  if (host.is_none()) return in;
  const ArrayView h = call.view(host, name, false, true);
  check_array(h, name, DType::Int64, {-1}, Device{DeviceType::CPU, -1});
  in.count = h.shape[0];
  in.host = call.own_int64(h.ptr<const int64_t>(), in.count);
  if (kModuleDevice == DeviceType::CPU) {
    in.device = in.host;
    return in;
  }
  const ArrayView d = call.view(device_copy, name);
  check_array(d, name, DType::Int64, {in.count}, device);
  in.device = d.ptr<const int64_t>();
  return in;
}

int64_t attention_batch(const ArrayView& q, const Int64Input& cu_q, const Int64Input& cu_k) {
  if (q.ndim == 3) {
    TOKENSET_CHECK(cu_q.host && cu_k.host, ValueError, "3-D [total, heads, dim] q and k need cu_seqlens_q and "
                   "cu_seqlens_k (batch + 1 row offsets each)");
    TOKENSET_CHECK(cu_q.count >= 1 && cu_q.count == cu_k.count, ValueError, "cu_seqlens_q has ", cu_q.count,
                   " entries and cu_seqlens_k ", cu_k.count, ": both need batch + 1");
    return cu_q.count - 1;
  }
  TOKENSET_CHECK(q.ndim == 4, ValueError, "q must be [batch, heads, length, dim] or [total, heads, dim], got ", q.ndim,
                 "-D");
  TOKENSET_CHECK(cu_q.host == nullptr && cu_k.host == nullptr, ValueError, "cu_seqlens go with 3-D [total, heads, "
                 "dim] q and k only");
  return q.shape[0];
}

}  // namespace bindings
}  // namespace tokenset
