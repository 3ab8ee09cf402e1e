#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

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

static CpuIsa detect() {
  const char* env = std::getenv("SHARK_EXPORT_CPU_ISA");
  if (env && std::strcmp(env, "generic") == 0) return CpuIsa::kGeneric;
  return cpu_has_avx2_set() ? CpuIsa::kAvx2 : CpuIsa::kGeneric;
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

unsigned long long stream_threshold_bytes() {
  static const unsigned long long v = [] {
    const char* env = std::getenv("SHARK_EXPORT_STREAM_BYTES");
    if (env && *env) return std::strtoull(env, nullptr, 10);
    return 8ull << 20;
  }();
  return v;
}

const char* cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::kAvx2 ? "avx2" : "generic"; }

}  // namespace shark
