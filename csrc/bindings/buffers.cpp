#include "buffers.h"

#include <string>

namespace tokenset {
namespace bindings {

void register_exceptions(py::module_& m) {
  (void)m;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

DType dtype_from_code(int code) {
  if (code < 0 || code > 2) throw ValueError("unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

const int64_t* int64_data(const py::array& array, const char* name, int ndim) {
  const std::string n(name);
  if (!py::isinstance<py::array_t<int64_t>>(array) || array.itemsize() != 8 || array.dtype().kind() != 'i')
    throw TypeError(n + " must be an int64 array");
  if (array.ndim() != ndim) throw ValueError(n + " must have " + std::to_string(ndim) + " dimension(s)");
  if (!(array.flags() & py::array::c_style)) throw ValueError(n + " must be C-contiguous");
  return static_cast<const int64_t*>(array.data());
}

const void* checked_data(const py::array& array, const char* name, char kind, int itemsize,
                         std::initializer_list<int64_t> shape) {
  const std::string n(name);
  if (array.dtype().kind() != kind || array.itemsize() != itemsize)
    throw TypeError(n + ": expected " + (kind == 'f' ? "float" : kind == 'u' ? "uint" : "int") +
                    std::to_string(8 * itemsize) + " elements, got dtype kind '" + array.dtype().kind() + "' of " +
                    std::to_string(array.itemsize()) + " bytes");
  if (array.ndim() != static_cast<py::ssize_t>(shape.size()))
    throw ValueError(n + ": expected " + std::to_string(shape.size()) + " dimension(s), got " +
                     std::to_string(array.ndim()));
  int64_t axis = 0;
  for (int64_t extent : shape) {
    if (array.shape(axis) != extent)
      throw ValueError(n + ": axis " + std::to_string(axis) + " has size " + std::to_string(array.shape(axis)) +
                       ", expected " + std::to_string(extent));
    ++axis;
  }
  if (!(array.flags() & py::array::c_style)) throw ValueError(n + " must be C-contiguous; try np.ascontiguousarray");
  return array.data();
}

SetBatch host_set_batch(const py::array& values, int dtype_code, const py::array& offsets, const char* name) {
  const std::string n(name);
  SetBatch batch;
  batch.dtype = dtype_from_code(dtype_code);
  if (values.ndim() != 2)
    throw ValueError(n + " values must be 2-D [tokens, dim], got " + std::to_string(values.ndim()) + "-D");
  const char kind = values.dtype().kind();
  if (values.itemsize() != dtype_size(batch.dtype) || (batch.dtype == DType::Float32 && kind != 'f') ||
      (batch.dtype == DType::Float16 && kind != 'f'))
    throw TypeError(n + " values do not hold " + dtype_name(batch.dtype) + " elements");
  const int64_t item = values.itemsize();
  batch.rows = values.shape(0);
  batch.dim = values.shape(1);
  if (batch.rows > 0 && batch.dim > 1 && values.strides(1) != item)
    throw ValueError(n + " values must be contiguous along the token dimension; try np.ascontiguousarray");
  if (values.strides(0) % item != 0) throw ValueError(n + " values have a row stride that is not a whole element");
  batch.row_stride = values.strides(0) / item;
  if (batch.rows <= 1) batch.row_stride = batch.dim;
  batch.values = values.data();
  const int64_t* host_offsets = int64_data(offsets, (n + " offsets").c_str(), 1);
  if (offsets.shape(0) < 1) throw ValueError(n + " offsets must have at least one entry (offsets[0] = 0)");
  batch.offsets = host_offsets;
  batch.count = offsets.shape(0) - 1;
  check_set_batch(batch, host_offsets, name);
  return batch;
}

}  // namespace bindings
}  // namespace tokenset

namespace tokenset {
namespace bindings {

namespace {
int64_t state_int(const py::dict& state, const char* key) {
  if (!state.contains(key)) throw ValueError(std::string("FDE state: '") + key + "' missing");
  return state[key].cast<int64_t>();
}
py::object state_item(const py::dict& state, const char* key) {
  return state.contains(key) ? py::reinterpret_borrow<py::object>(state[key]) : py::object(py::none());
}
}  // namespace

void fde_state_from_dict(const py::dict& state, FdeParams& p) {
  const int64_t dim = p.sets.dim;
  p.reps = state_int(state, "reps");
  const int64_t bits = state_int(state, "simhash_bits");
  if (bits < 0 || bits > 30) throw ValueError("simhash_bits must be in 0..30, got " + std::to_string(bits));
  p.simhash_bits = static_cast<int32_t>(bits);  // in range before the narrowing
  p.proj_dim = state_int(state, "proj_dim");
  p.final_dim = state_int(state, "final_dim");
  check_fde_config(p);  // every shape below is computed from these
  p.simhash = static_cast<const float*>(
      checked_data(state["simhash"].cast<py::array>(), "FDE simhash", 'f', 4, {dim, p.reps * p.simhash_bits}));
  const py::object proj_index = state_item(state, "proj_index"), proj_weight = state_item(state, "proj_weight");
  if (!proj_index.is_none() || !proj_weight.is_none()) {
    p.proj_index = static_cast<const int32_t*>(
        checked_data(proj_index.cast<py::array>(), "FDE projection index", 'i', 4, {p.reps, dim}));
    p.proj_weight = static_cast<const float*>(
        checked_data(proj_weight.cast<py::array>(), "FDE projection weights", 'f', 4, {p.reps, dim}));
  }
  const int32_t* order = nullptr;
  const int64_t* starts = nullptr;
  if (p.final_dim > 0) {
    const int64_t n = p.fde_dim();
    p.final_index = static_cast<const int32_t*>(
        checked_data(state_item(state, "final_index").cast<py::array>(), "Count-Sketch index", 'i', 4, {n}));
    p.final_sign = static_cast<const float*>(
        checked_data(state_item(state, "final_sign").cast<py::array>(), "Count-Sketch signs", 'f', 4, {n}));
    const py::object o = state_item(state, "final_order"), st = state_item(state, "final_starts");
    if (!o.is_none() || !st.is_none()) {
      order = static_cast<const int32_t*>(checked_data(o.cast<py::array>(), "Count-Sketch order", 'i', 4, {n}));
      starts = static_cast<const int64_t*>(
          checked_data(st.cast<py::array>(), "Count-Sketch starts", 'i', 8, {p.final_dim + 1}));
      p.final_order = order;
      p.final_starts = starts;
    }
  }
  const int32_t* proj_order = nullptr;
  const int32_t* proj_starts = nullptr;
  const py::object po = state_item(state, "proj_order"), ps = state_item(state, "proj_starts");
  if (p.proj_index != nullptr && (!po.is_none() || !ps.is_none())) {
    proj_order = static_cast<const int32_t*>(
        checked_data(po.cast<py::array>(), "projection order", 'i', 4, {p.reps, dim}));
    proj_starts = static_cast<const int32_t*>(
        checked_data(ps.cast<py::array>(), "projection starts", 'i', 4, {p.reps, p.proj_dim + 1}));
    p.proj_order = proj_order;
    p.proj_starts = proj_starts;
  }
  check_fde_params(p, p.proj_index, p.final_index, order, starts, proj_order, proj_starts);
}

}  // namespace bindings
}  // namespace tokenset
