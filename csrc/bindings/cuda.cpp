// The CUDA module: device pointers in (from torch / cupy, as integers), kernels launched on the caller's stream.
// Offsets arrive twice: on the device for the kernel, and on the host, where they are checked before any launch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "buffers.h"
#include "tokenset/cuda_runtime.h"
#include "tokenset/fde.h"
#include "tokenset/maxsim.h"

namespace py = pybind11;
using namespace tokenset;

namespace {

// spec = (values_ptr, dtype_code, rows, dim, row_stride, device_offsets_ptr, host_offsets ndarray)
SetBatch device_set_batch(const py::tuple& spec, const char* name) {
  const std::string n(name);
  if (spec.size() != 7) throw ValueError(n + ": malformed device batch description");
  SetBatch batch;
  batch.values = reinterpret_cast<const void*>(spec[0].cast<uintptr_t>());
  batch.dtype = bindings::dtype_from_code(spec[1].cast<int>());
  batch.rows = spec[2].cast<int64_t>();
  batch.dim = spec[3].cast<int64_t>();
  batch.row_stride = spec[4].cast<int64_t>();
  batch.offsets = reinterpret_cast<const int64_t*>(spec[5].cast<uintptr_t>());
  const py::array host = spec[6].cast<py::array>();
  const int64_t* host_offsets = bindings::int64_data(host, (n + " offsets").c_str(), 1);
  if (host.shape(0) < 1) throw ValueError(n + " offsets must have at least one entry");
  if (batch.offsets == nullptr) throw ValueError(n + ": device offsets pointer is null");
  batch.count = host.shape(0) - 1;
  check_set_batch(batch, host_offsets, name);
  return batch;
}

void maxsim(const py::tuple& q_spec, const py::tuple& d_spec, uintptr_t candidates, int64_t num_candidates,
            uintptr_t scores, uintptr_t argmax, int device, uintptr_t stream) {
  MaxsimParams p;
  p.queries = device_set_batch(q_spec, "queries");
  p.documents = device_set_batch(d_spec, "documents");
  check_same_dim(p);
  p.candidates = reinterpret_cast<const int64_t*>(candidates);
  p.num_candidates = candidates ? num_candidates : 0;
  if (candidates && num_candidates < 0) throw ValueError("negative number of candidates");
  p.scores = reinterpret_cast<float*>(scores);
  if (p.scores == nullptr) throw ValueError("scores pointer is null");
  p.argmax = reinterpret_cast<int32_t*>(argmax);
  py::gil_scoped_release release;
  cuda::DeviceGuard guard(device);
  cuda::maxsim(p, reinterpret_cast<void*>(stream));
}

template <typename Ptr>
Ptr* device_item(const py::dict& pointers, const char* key) {
  if (!pointers.contains(key)) return nullptr;
  return reinterpret_cast<Ptr*>(pointers[key].cast<uintptr_t>());
}

// `state` holds host numpy arrays (checked here, every index included); `pointers` their device copies, same keys.
void fde_encode(const py::tuple& spec, const py::dict& state, const py::dict& pointers, const py::dict& scratch,
                uintptr_t out, bool documents, bool fill_empty, bool encode, int device, uintptr_t stream) {
  FdeParams p;
  p.sets = device_set_batch(spec, documents ? "documents" : "queries");
  const py::array host_offsets = spec[6].cast<py::array>();
  const int64_t* offsets = static_cast<const int64_t*>(host_offsets.data());
  p.average = documents;
  p.fill_empty = documents && fill_empty;
  check_fde_queries(p, offsets);
  bindings::fde_state_from_dict(state, p);  // host pointers, checked
  const bool projected = p.proj_index != nullptr, sketched = p.final_dim > 0;
  if (projected && p.proj_order == nullptr) throw ValueError("the CUDA FDE needs proj_order / proj_starts");
  // Swap in the device copies.
  p.simhash = device_item<const float>(pointers, "simhash");
  if (p.simhash == nullptr && p.simhash_bits > 0) throw ValueError("device simhash missing");
  if (projected) {
    p.proj_index = device_item<const int32_t>(pointers, "proj_index");
    p.proj_weight = device_item<const float>(pointers, "proj_weight");
    p.proj_order = device_item<const int32_t>(pointers, "proj_order");
    p.proj_starts = device_item<const int32_t>(pointers, "proj_starts");
  }
  if (sketched) {
    p.final_index = device_item<const int32_t>(pointers, "final_index");
    p.final_sign = device_item<const float>(pointers, "final_sign");
    p.final_order = device_item<const int32_t>(pointers, "final_order");
    p.final_starts = device_item<const int64_t>(pointers, "final_starts");
  }
  p.out = reinterpret_cast<float*>(out);
  p.encode = encode;
  p.codes = device_item<uint32_t>(scratch, "codes");
  p.token_partitions = device_item<int32_t>(scratch, "partitions");
  p.counts = device_item<int32_t>(scratch, "counts");
  p.fde_rows = device_item<float>(scratch, "fde_rows");
  p.chunk_sets = scratch.contains("chunk_sets") ? scratch["chunk_sets"].cast<int64_t>() : 0;
  p.base_row = offsets[0];
  p.tokens = offsets[p.sets.count] - offsets[0];
  py::gil_scoped_release release;
  cuda::DeviceGuard guard(device);
  cuda::fde_encode(p, reinterpret_cast<void*>(stream));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "tokenset CUDA kernels (internal: use the tokenset package)";
  bindings::register_exceptions(m);
  m.def("maxsim", &maxsim, py::arg("q_spec"), py::arg("d_spec"), py::arg("candidates"), py::arg("num_candidates"),
        py::arg("scores"), py::arg("argmax"), py::arg("device"), py::arg("stream"));
  m.def("fde_encode", &fde_encode, py::arg("spec"), py::arg("state"), py::arg("pointers"), py::arg("scratch"),
        py::arg("out"), py::arg("documents"), py::arg("fill_empty"), py::arg("encode"), py::arg("device"),
        py::arg("stream"));
  m.def("build_info", [] {
    py::dict info;
    std::string error;
    info["cuda_archs"] = TOKENSET_CUDA_ARCHS;
    info["cuda_version"] = TOKENSET_CUDA_VERSION;
    info["cuda_runtime_version"] = cuda::runtime_version();
    info["cuda_devices"] = cuda::device_count(&error);
    info["cuda_error"] = error.empty() ? py::object(py::none()) : py::object(py::str(error));
    return info;
  });
}
