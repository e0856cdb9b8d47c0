// The CUDA module: every op's bindings (csrc/bindings/<op>.cpp, compiled with TOKENSET_BINDING_CUDA) for GPU arrays,
// launched on the caller's stream, and what the build holds.
#include <pybind11/pybind11.h>

#include <string>

#include "tokenset/cuda_runtime.h"
#include "views.h"

namespace py = pybind11;
using namespace tokenset;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "tokenset CUDA kernels (internal: use the tokenset package)";
  bindings::register_exceptions();
  bindings::bind_maxsim(m);
  bindings::bind_residual_codec(m);
  bindings::bind_fde(m);
  bindings::bind_inner_product(m);
  bindings::bind_kcenter(m);
  bindings::bind_coverage(m);
  bindings::bind_segment_sum(m);
  bindings::bind_nearest(m);
  bindings::bind_sparse_attention(m);
  bindings::bind_attention_scores(m);
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
