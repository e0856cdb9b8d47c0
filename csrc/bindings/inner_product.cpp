// Inner-product top-k bindings, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/inner_product.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void inner_product_topk(py::handle queries, py::handle vectors, int64_t k, py::handle top_scores,
                        py::handle top_indices, py::handle mask, py::handle scales, intptr_t stream,
                        py::handle allocate) {
  TOKENSET_CHECK(k >= 1, ValueError, "k must be >= 1, got ", k);
  Call call(stream);
  InnerProductParams p;
  p.queries = call.view(queries, "queries");
  p.vectors = call.view(vectors, "vectors");
  p.k = k;
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  TOKENSET_CHECK(p.queries.ndim == 2 && p.vectors.ndim == 2, ValueError, "queries and vectors must be 2-D");
  const ArrayView s = call.view(top_scores, "top-k scores", true);
  check_array(s, "top-k scores", DType::Float32, {p.queries.shape[0], k}, device);
  const ArrayView i = call.view(top_indices, "top-k indices", true);
  check_array(i, "top-k indices", DType::Int64, {p.queries.shape[0], k}, device);
  p.top_scores = s.ptr<float>();
  p.top_indices = i.ptr<int64_t>();
  if (!mask.is_none()) {
    const ArrayView m = call.view(mask, "mask");
    check_array(m, "mask", DType::Int8, {p.vectors.shape[0]}, device);
    p.mask = static_cast<const uint8_t*>(m.data);
  }
  if (!scales.is_none()) {
    const ArrayView sc = call.view(scales, "scales");
    check_array(sc, "scales", DType::Float32, {p.vectors.shape[0]}, device);
    p.scales = sc.ptr<const float>();
  }
  run_op(call, &backend::inner_product_topk, p, allocate);
}

}  // namespace

void bind_inner_product(py::module_& m) {
  m.def("inner_product_topk", &inner_product_topk, py::arg("queries"), py::arg("vectors"), py::arg("k"),
        py::arg("top_scores"), py::arg("top_indices"), py::arg("mask") = py::none(), py::arg("scales") = py::none(),
        py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "The k vectors [n, F] with the largest inner product with each query [nq, F] float32, into top_scores "
        "[nq, k] float32 and top_indices [nq, k] int64; mask [n] uint8 (the vectors' device) excludes vectors where 0; "
        "int8 vectors take scales [n] float32 (score = scale * <q, codes>).");
}

}  // namespace bindings
}  // namespace tokenset
