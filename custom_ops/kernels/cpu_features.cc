#include "cpu_features.h"

#include "isa_kernels.h"  // SHARK_X86_AVX2_PATH: whether this build has the AVX2 loops

namespace shark {

static bool cpu_has_avx2_set() {
#if SHARK_X86_AVX2_PATH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = cpu_has_avx2_set() ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::kAvx2 ? "avx2" : "generic"; }

}  // namespace shark
