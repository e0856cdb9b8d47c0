// Sparse-attention bindings (forward and backward), compiled into both modules (views.h).
#include <pybind11/pybind11.h>

#include "tokenset/sparse_attention.h"
#include "views.h"

namespace tokenset {
namespace bindings {
namespace {

struct Inputs {
  py::handle q, k, v, out, lse, cu_q, cu_q_device, cu_k, cu_k_device, key_offsets, key_offsets_device, key_index,
      key_index_device, row_map, row_map_device;
  int64_t block_size, key_block_size;
  bool causal;
  double scale;
};

SparseAttentionParams forward_params(Call& call, const Inputs& in, bool out_written) {
  SparseAttentionParams p;
  p.q.values = call.view(in.q, "q");
  const Device device = kModuleDevice == DeviceType::CPU ? Device{DeviceType::CPU, -1} : call.device();
  p.k.values = call.view(in.k, "k");
  p.v.values = call.view(in.v, "v");
  p.out.values = call.view(in.out, "out", out_written);
  const Int64Input cu_q = int64_input(call, in.cu_q, in.cu_q_device, "cu_seqlens_q", device);
  const Int64Input cu_k = int64_input(call, in.cu_k, in.cu_k_device, "cu_seqlens_k", device);
  p.batch = attention_batch(p.q.values, cu_q, cu_k);
  p.q.cu_seqlens = p.out.cu_seqlens = cu_q.host;
  p.k.cu_seqlens = p.v.cu_seqlens = cu_k.host;
  p.q.cu_seqlens_count = p.out.cu_seqlens_count = cu_q.count;
  p.k.cu_seqlens_count = p.v.cu_seqlens_count = cu_k.count;
  p.device_cu_seqlens_q = cu_q.device;
  p.device_cu_seqlens_k = cu_k.device;
  const Int64Input offsets = int64_input(call, in.key_offsets, in.key_offsets_device, "key_offsets", device);
  const Int64Input index = int64_input(call, in.key_index, in.key_index_device, "key_index", device);
  TOKENSET_CHECK(offsets.host != nullptr && index.host != nullptr, ValueError, "key_offsets and key_index are needed");
  p.key_offsets = offsets.host;
  p.key_offsets_count = offsets.count;
  p.key_index = index.host;
  p.key_index_count = index.count;
  p.device_key_offsets = offsets.device;
  p.device_key_index = index.device;
  const Int64Input map = int64_input(call, in.row_map, in.row_map_device, "row_map", device);
  p.row_map = map.host;
  p.row_map_length = map.count;
  p.device_row_map = map.device;
  p.block_size = in.block_size;
  p.key_block_size = in.key_block_size;
  p.causal = in.causal;
  p.scale = static_cast<float>(in.scale);
  if (!in.lse.is_none()) {
    const ArrayView l = call.view(in.lse, "lse", out_written);
    const int64_t heads = p.q.values.shape[1];
    if (p.q.values.ndim == 4) {
      check_array(l, "lse", DType::Float32, {p.q.values.shape[0], heads, p.q.values.shape[2]}, device);
    } else {
      check_array(l, "lse", DType::Float32, {heads, p.q.values.shape[0]}, device);
    }
    p.lse = l.ptr<float>();
  }
  return p;
}

void sparse_attention(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse, py::handle cu_q,
                      py::handle cu_q_device, py::handle cu_k, py::handle cu_k_device, py::handle key_offsets,
                      py::handle key_offsets_device, py::handle key_index, py::handle key_index_device,
                      py::handle row_map, py::handle row_map_device, int64_t block_size, int64_t key_block_size,
                      bool causal, double scale, intptr_t stream, py::handle allocate) {
  Call call(stream);
  const Inputs in{q, k, v, out, lse, cu_q, cu_q_device, cu_k, cu_k_device, key_offsets, key_offsets_device, key_index,
                  key_index_device, row_map, row_map_device, block_size, key_block_size, causal, scale};
  const SparseAttentionParams p = forward_params(call, in, true);
  run_op(call, &backend::sparse_attention, p, allocate);
}

void sparse_attention_backward(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
                               py::handle grad_out, py::handle grad_q, py::handle grad_k, py::handle grad_v,
                               py::handle cu_q, py::handle cu_q_device, py::handle cu_k, py::handle cu_k_device,
                               py::handle key_offsets, py::handle key_offsets_device, py::handle key_index,
                               py::handle key_index_device, py::handle row_map, py::handle row_map_device,
                               int64_t block_size, int64_t key_block_size, bool causal, double scale, intptr_t stream,
                               py::handle allocate) {
  Call call(stream);
  TOKENSET_CHECK(!lse.is_none(), ValueError, "the backward needs the forward's lse");
  const Inputs in{q, k, v, out, lse, cu_q, cu_q_device, cu_k, cu_k_device, key_offsets, key_offsets_device, key_index,
                  key_index_device, row_map, row_map_device, block_size, key_block_size, causal, scale};
  SparseAttentionBackwardParams p;
  p.forward = forward_params(call, in, false);
  p.grad_out.values = call.view(grad_out, "grad_out");
  p.grad_q.values = call.view(grad_q, "grad_q", true);
  p.grad_k.values = call.view(grad_k, "grad_k", true);
  p.grad_v.values = call.view(grad_v, "grad_v", true);
  p.grad_out.cu_seqlens = p.grad_q.cu_seqlens = p.forward.q.cu_seqlens;
  p.grad_k.cu_seqlens = p.grad_v.cu_seqlens = p.forward.k.cu_seqlens;
  p.grad_out.cu_seqlens_count = p.grad_q.cu_seqlens_count = p.forward.q.cu_seqlens_count;
  p.grad_k.cu_seqlens_count = p.grad_v.cu_seqlens_count = p.forward.k.cu_seqlens_count;
  run_op(call, &backend::sparse_attention_backward, p, allocate);
}

}  // namespace

void bind_sparse_attention(py::module_& m) {
  m.def("sparse_attention", &sparse_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("cu_seqlens_q"), py::arg("cu_seqlens_q_device"), py::arg("cu_seqlens_k"),
        py::arg("cu_seqlens_k_device"), py::arg("key_offsets"), py::arg("key_offsets_device"), py::arg("key_index"),
        py::arg("key_index_device"), py::arg("row_map"), py::arg("row_map_device"), py::arg("block_size"),
        py::arg("key_block_size"), py::arg("causal"), py::arg("scale"), py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "Sparse attention over CSR lists of key blocks per (batch, head, query block): out (and lse when given) "
        "written; see tokenset/sparse_attention.h.");
  m.def("sparse_attention_backward", &sparse_attention_backward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("grad_out"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"),
        py::arg("cu_seqlens_q"), py::arg("cu_seqlens_q_device"), py::arg("cu_seqlens_k"),
        py::arg("cu_seqlens_k_device"), py::arg("key_offsets"), py::arg("key_offsets_device"), py::arg("key_index"),
        py::arg("key_index_device"), py::arg("row_map"), py::arg("row_map_device"), py::arg("block_size"),
        py::arg("key_block_size"), py::arg("causal"), py::arg("scale"), py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "Gradients of sparse_attention for q, k and v from the forward's out and lse (no attention matrix).");
}

}  // namespace bindings
}  // namespace tokenset
