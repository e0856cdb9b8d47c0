// k-center bindings, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/kcenter.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void kcenter(py::handle tokens, int metric, py::handle k, py::handle k_device, py::handle first,
             py::handle first_device, int64_t max_k, py::handle indices, py::handle distances, intptr_t stream,
             py::handle allocate) {
  TOKENSET_CHECK(metric >= 0 && metric <= 2, ValueError, "metric must be 0 (cosine), 1 (l2) or 2 (ip), got ", metric);
  Call call(stream);
  KcenterParams p;
  p.tokens = call.set_batch(tokens, "tokens");
  p.metric = static_cast<Metric>(metric);
  p.max_k = max_k;
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const int64_t count = p.tokens.count;
  p.k = per_set_int64(call, k, k_device, "k", count, device, &p.host_k);
  p.first = per_set_int64(call, first, first_device, "first", count, device, &p.host_first);
  TOKENSET_CHECK(max_k >= 0, ValueError, "max_k must be >= 0, got ", max_k);
  const ArrayView i = call.view(indices, "indices", true);
  check_array(i, "indices", DType::Int64, {count, max_k}, device);
  p.indices = i.ptr<int64_t>();
  if (!distances.is_none()) {
    const ArrayView d = call.view(distances, "distances", true);
    check_array(d, "distances", DType::Float32, {count, max_k}, device);
    p.distances = d.ptr<float>();
  }
  run_op(call, &backend::kcenter, p, allocate);
}

}  // namespace

void bind_kcenter(py::module_& m) {
  m.def("kcenter", &kcenter, py::arg("tokens"), py::arg("metric"), py::arg("k"), py::arg("k_device"),
        py::arg("first"), py::arg("first_device"), py::arg("max_k"), py::arg("indices"),
        py::arg("distances") = py::none(), py::arg("stream") = 0, py::arg("allocate") = py::none(),
        "Greedy farthest-first k-center of every set into indices [B, max_k] int64 (pick order, -1 after the "
        "min(k[i], n_i) picks) and optionally distances [B, max_k] float32. k, first: host int64 [B] (first -1 = "
        "the most isolated token); k_device, first_device: the same on the GPU (CUDA module only).");
}

}  // namespace bindings
}  // namespace tokenset
