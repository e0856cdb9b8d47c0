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
