// Small CUDA runtime helpers for the bindings, so that host code compiled without nvcc needs no CUDA headers.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "tokenset/cuda_runtime.h"

namespace tokenset {
namespace cuda {

int device_count(std::string* error) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return count;
}

int runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

DeviceGuard::DeviceGuard(int device) {
  if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
  const cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess)
    throw std::runtime_error("cannot use CUDA device " + std::to_string(device) + ": " + cudaGetErrorString(err));
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace cuda
}  // namespace tokenset
