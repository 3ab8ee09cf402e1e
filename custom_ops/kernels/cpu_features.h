// Runtime choice of the CPU code path. No ORT header.
#pragma once

namespace shark {

enum class CpuIsa { kGeneric = 0, kAvx2 = 1 };

// The path the kernels use: AVX2+FMA+F16C+POPCNT when the CPU has them, else portable C++.
// Environment variable SHARK_EXPORT_CPU_ISA=generic forces the portable path (for testing);
// =avx2 asks for AVX2 but still falls back when the CPU lacks it. Read once per process.
CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

// Gather outputs of at least this many bytes are written with non-temporal stores (AVX2 path).
// Default 8 MiB; environment variable SHARK_EXPORT_STREAM_BYTES overrides it (0 = always,
// a huge value = never). Read once per process.
unsigned long long stream_threshold_bytes();

}  // namespace shark
