// The CUDA module: device pointers in (from torch / cupy, as integers), kernels launched on the caller's stream.
// Offsets arrive twice: on the device for the kernel, and on the host, where they are checked before any launch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "buffers.h"
#include "tokenset/cuda_runtime.h"
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

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "tokenset CUDA kernels (internal: use the tokenset package)";
  bindings::register_exceptions(m);
  m.def("maxsim", &maxsim, py::arg("q_spec"), py::arg("d_spec"), py::arg("candidates"), py::arg("num_candidates"),
        py::arg("scores"), py::arg("argmax"), py::arg("device"), py::arg("stream"));
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
