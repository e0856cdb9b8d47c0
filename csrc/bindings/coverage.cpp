// Greedy maximum coverage bindings, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/coverage.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void coverage(py::handle matrix, py::handle rows, py::handle rows_device, py::handle cols, py::handle cols_device,
              py::handle k, py::handle k_device, int64_t max_k, py::handle indices, py::handle gains, intptr_t stream,
              py::handle allocate) {
  Call call(stream);
  CoverageParams p;
  p.matrix = call.view(matrix, "coverage matrix");
  TOKENSET_CHECK(p.matrix.ndim == 3, ValueError, "coverage matrix must be 3-D [B, rows, cols], got ", p.matrix.ndim,
                 "-D");
  TOKENSET_CHECK(max_k >= 0, ValueError, "max_k must be >= 0, got ", max_k);
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  const int64_t b = p.matrix.shape[0];
  p.rows = per_set_int64(call, rows, rows_device, "rows", b, device, &p.host_rows);
  p.cols = per_set_int64(call, cols, cols_device, "cols", b, device, &p.host_cols);
  p.k = per_set_int64(call, k, k_device, "k", b, device, &p.host_k);
  p.max_k = max_k;
  const ArrayView i = call.view(indices, "indices", true);
  check_array(i, "indices", DType::Int64, {b, max_k}, device);
  p.indices = i.ptr<int64_t>();
  if (!gains.is_none()) {
    const ArrayView g = call.view(gains, "gains", true);
    check_array(g, "gains", DType::Float32, {b, max_k}, device);
    p.gains = g.ptr<float>();
  }
  run_op(call, &backend::coverage, p, allocate);
}

}  // namespace

void bind_coverage(py::module_& m) {
  m.def("coverage", &coverage, py::arg("matrix"), py::arg("rows"), py::arg("rows_device"), py::arg("cols"),
        py::arg("cols_device"), py::arg("k"), py::arg("k_device"), py::arg("max_k"), py::arg("indices"),
        py::arg("gains") = py::none(), py::arg("stream") = 0, py::arg("allocate") = py::none(),
        "Greedy maximum coverage of every set's coverage matrix [B, R, N] float32 (set i: [:rows[i], :cols[i]]) "
        "into indices [B, max_k] int64 (pick order, -1 after min(k[i], cols[i]) picks) and optionally gains.");
}

}  // namespace bindings
}  // namespace tokenset
