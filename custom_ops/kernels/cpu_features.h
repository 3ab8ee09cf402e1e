// Runtime choice of the CPU code path. No ORT header.
#pragma once

namespace shark {

enum class CpuIsa { kGeneric = 0, kAvx2 = 1 };

// The path the CPU runs: AVX2+FMA+F16C+POPCNT when it has them and the build has the AVX2 loops, else
// portable C++ (a session can ask for the portable path: KernelConfig::generic_only).
CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

}  // namespace shark
