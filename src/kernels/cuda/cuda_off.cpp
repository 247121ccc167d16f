// The CUDA backend's entry points in a build without it (-DEDGEVLM_CUDA=OFF, or no nvcc found): each says so.
#include <cstdio>

#include "kernels/cuda/cuda_backend.h"

namespace ev {
namespace {
Status not_built() {
  return Unsupported("this build has no CUDA backend (configure with -DEDGEVLM_CUDA=ON on a machine with nvcc)");
}
}  // namespace

bool cuda_built() { return false; }

std::string CudaDeviceInfo::describe() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d)", name.c_str(), sm_major, sm_minor);
  return buf;
}

Result<CudaDeviceInfo> cuda_device_info(int) { return not_built(); }
Result<std::unique_ptr<Backend>> make_cuda_backend(const CudaOptions&) { return not_built(); }
Result<std::unique_ptr<Executor>> make_cuda_executor(Backend*, Backend*) { return not_built(); }
Result<CudaRunStats> cuda_run_stats(const Executor&) { return not_built(); }
void cuda_set_dependent_launch(bool) {}
bool cuda_dependent_launch() { return false; }

}  // namespace ev
