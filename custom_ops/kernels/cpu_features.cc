#include "cpu_features.h"


namespace shark {

static bool cpu_has_avx2_set() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
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
