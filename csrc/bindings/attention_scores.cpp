// Attention-scores binding, compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/attention_scores.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

void attention_scores(py::handle q, py::handle k, py::handle out, py::handle cu_q, py::handle cu_q_device,
                      py::handle cu_k, py::handle cu_k_device, py::handle query_lengths,
                      py::handle query_lengths_device, py::handle key_lengths, py::handle key_lengths_device,
                      py::handle rows, py::handle rows_device, int64_t rows_per_batch, int reduce, bool causal,
                      double scale, intptr_t stream, py::handle allocate) {
  Call call(stream);
  AttentionScoresParams p;
  p.q.values = call.view(q, "q");
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  p.k.values = call.view(k, "k");
  p.out = call.view(out, "out", true);
  const Int64Input cq = int64_input(call, cu_q, cu_q_device, "cu_seqlens_q", device);
  const Int64Input ck = int64_input(call, cu_k, cu_k_device, "cu_seqlens_k", device);
  p.batch = attention_batch(p.q.values, cq, ck);
  p.q.cu_seqlens = cq.host;
  p.q.cu_seqlens_count = cq.count;
  p.k.cu_seqlens = ck.host;
  p.k.cu_seqlens_count = ck.count;
  p.device_cu_seqlens_q = cq.device;
  p.device_cu_seqlens_k = ck.device;
  const Int64Input ql = int64_input(call, query_lengths, query_lengths_device, "query_lengths", device);
  const Int64Input kl = int64_input(call, key_lengths, key_lengths_device, "key_lengths", device);
  p.query_lengths = ql.host;
  p.query_lengths_count = ql.count;
  p.device_query_lengths = ql.device;
  p.key_lengths = kl.host;
  p.key_lengths_count = kl.count;
  p.device_key_lengths = kl.device;
  const Int64Input r = int64_input(call, rows, rows_device, "rows", device);
  p.rows = r.host;
  p.rows_count = r.count;
  p.device_rows = r.device;
  p.rows_per_batch = rows_per_batch;
  TOKENSET_CHECK(reduce >= 0 && reduce <= 2, ValueError, "reduce must be 0 (none), 1 (sum) or 2 (mean)");
  p.reduce = static_cast<ScoresReduce>(reduce);
  p.causal = causal;
  p.scale = static_cast<float>(scale);
  run_op(call, &backend::attention_scores, p, allocate);
}

}  // namespace

void bind_attention_scores(py::module_& m) {
  m.def("attention_scores", &attention_scores, py::arg("q"), py::arg("k"), py::arg("out"), py::arg("cu_seqlens_q"),
        py::arg("cu_seqlens_q_device"), py::arg("cu_seqlens_k"), py::arg("cu_seqlens_k_device"),
        py::arg("query_lengths"), py::arg("query_lengths_device"), py::arg("key_lengths"),
        py::arg("key_lengths_device"), py::arg("rows"), py::arg("rows_device"), py::arg("rows_per_batch"),
        py::arg("reduce"), py::arg("causal"), py::arg("scale"), py::arg("stream") = 0, py::arg("allocate") = py::none(),
        "Softmax attention of given query rows over all keys, or the column mean over all rows, per head or reduced "
        "over heads, without the attention matrix: out written; see tokenset/attention_scores.h.");
}

}  // namespace bindings
}  // namespace tokenset
