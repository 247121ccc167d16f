// AVX-512 instantiation of the op kernels (this file is compiled with the AVX-512 flags; see CMakeLists.txt).
#include "kernels/cpu/ops_impl.h"

namespace ev::cpu {

const OpsKernels& ops_kernels_avx512() {
  static const OpsKernels k = make_ops_kernels<V16>("avx512");
  return k;
}

}  // namespace ev::cpu
