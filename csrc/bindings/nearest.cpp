// Nearest-target bindings, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/nearest.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void nearest(py::handle queries, py::handle targets, int metric, py::handle index, py::handle distance,
             intptr_t stream, py::handle allocate) {
  TOKENSET_CHECK(metric >= 0 && metric <= 2, ValueError, "metric must be 0 (cosine), 1 (l2) or 2 (ip), got ", metric);
  Call call(stream);
  NearestParams p;
  p.queries = call.set_batch(queries, "queries");
  p.targets = call.set_batch(targets, "targets");
  p.metric = static_cast<Metric>(metric);
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const int64_t rows = nearest_rows(p);
  const ArrayView i = call.view(index, "index", true);
  check_array(i, "index", DType::Int64, {rows}, device);
  p.index = i.ptr<int64_t>();
  if (!distance.is_none()) {
    const ArrayView d = call.view(distance, "distance", true);
    check_array(d, "distance", DType::Float32, {rows}, device);
    p.distance = d.ptr<float>();
  }
  run_op(call, &backend::nearest, p, allocate);
}

}  // namespace

void bind_nearest(py::module_& m) {
  m.def("nearest", &nearest, py::arg("queries"), py::arg("targets"), py::arg("metric"), py::arg("index"),
        py::arg("distance") = py::none(), py::arg("stream") = 0, py::arg("allocate") = py::none(),
        "For every token of query set i, the position of its nearest token of target set i (cosine 1 - cos, l2 "
        "squared, ip -dot; ties to the lowest index, NaN as +inf, -1 for an empty target set) into index [Tq] int64, "
        "and optionally that distance into distance [Tq] float32.");
}

}  // namespace bindings
}  // namespace tokenset
