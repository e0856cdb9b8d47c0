// CUDA runtime helpers usable from code compiled without nvcc (the pybind11 module).
#pragma once

#include <string>

namespace tokenset {
namespace cuda {

// Visible GPUs; 0 (and the reason in *error) when there is no driver or device.
int device_count(std::string* error);
int runtime_version();

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace cuda
}  // namespace tokenset
