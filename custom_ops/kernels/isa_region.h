// Macros that open/close a region of function definitions compiled for AVX2+FMA+F16C+POPCNT
// (x86-64 only), so one translation unit holds both the portable and the AVX2 code path and the
// build needs no -march flag. Code in the region runs only after cpu_isa() chose kAvx2.
#pragma once

// -DSHARK_NO_AVX2_PATH builds the portable path only (what non-x86 targets such as aarch64 get).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(SHARK_NO_AVX2_PATH)
#define SHARK_X86_AVX2_PATH 1
#include <immintrin.h>
#if defined(__clang__)
#define SHARK_AVX2_REGION_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c,popcnt\"))), apply_to = function)")
#define SHARK_AVX2_REGION_END _Pragma("clang attribute pop")
#else
#define SHARK_AVX2_REGION_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,popcnt\")")
#define SHARK_AVX2_REGION_END _Pragma("GCC pop_options")
#endif
#else
#define SHARK_X86_AVX2_PATH 0
#endif
