// Weighted segment-sum bindings, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/segment_sum.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void segment_sum(py::handle values, py::handle order, py::handle order_device, py::handle starts,
                 py::handle starts_device, py::handle weights, py::handle out, intptr_t stream, py::handle allocate) {
  Call call(stream);
  SegmentSumParams p;
  p.values = call.view(values, "values");
  check_token_values(p.values, "values");
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const ArrayView hs = call.view(starts, "starts", false, true);
  check_array(hs, "starts", DType::Int64, {-1}, Device{DeviceType::CPU, -1});
  TOKENSET_CHECK(hs.shape[0] >= 1, ValueError, "starts must have S + 1 >= 1 entries");
  p.segments = hs.shape[0] - 1;
  p.host_starts = call.own_int64(hs.ptr<const int64_t>(), hs.shape[0]);  // checked and read from the call's copy
  const ArrayView ho = call.view(order, "order", false, true);
  check_array(ho, "order", DType::Int64, {-1}, Device{DeviceType::CPU, -1});
  p.members = ho.shape[0];
  p.host_order = call.own_int64(ho.ptr<const int64_t>(), ho.shape[0]);
  p.starts = p.host_starts;
  p.order = p.host_order;
  if (kModuleDevice == DeviceType::CUDA) {
    const ArrayView ds = call.view(starts_device, "starts");
    check_array(ds, "starts", DType::Int64, {p.segments + 1}, device);
    const ArrayView dord = call.view(order_device, "order");
    check_array(dord, "order", DType::Int64, {p.members}, device);
    p.starts = ds.ptr<const int64_t>();
    p.order = dord.ptr<const int64_t>();
  }
  if (!weights.is_none()) {
    const ArrayView w = call.view(weights, "weights");
    check_array(w, "weights", DType::Float32, {p.values.shape[0]}, device);
    p.weights = w.ptr<const float>();
  }
  const ArrayView o = call.view(out, "out", true);
  check_array(o, "out", DType::Float32, {p.segments, p.values.shape[1]}, device);
  p.out = o.ptr<float>();
  run_op(call, &backend::segment_sum, p, allocate);
}

}  // namespace

void bind_segment_sum(py::module_& m) {
  m.def("segment_sum", &segment_sum, py::arg("values"), py::arg("order"), py::arg("order_device"), py::arg("starts"),
        py::arg("starts_device"), py::arg("weights") = py::none(), py::arg("out") = py::none(), py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "out[s] = sum of weights[i] * values[i] over i = order[starts[s] .. starts[s+1]) into out [S, d] float32; "
        "order / starts: host int64 (and their device copies, CUDA module only).");
}

}  // namespace bindings
}  // namespace tokenset
