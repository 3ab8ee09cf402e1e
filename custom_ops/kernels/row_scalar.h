// Scalar row primitives shared by every instruction set: element j of a stored row as float32, and a
// float32 value stored as the output type. The vector paths use them for row tails. No ORT header.
//
// Exactness: a quantized element is x = float(q) * scale + bias. q has at most 8 significant bits and
// scale (an fp16 value) 11, so the product is exact in float32 and the single rounding of the addition
// gives exactly fma(q, scale, bias), as FORMAT.md requires: a multiply and an add here (the build uses
// -ffp-contract=off), the FMA instruction on AVX2, the same bits. fp16 rows widen exactly, fp32 rows
// copy; fp16 output rounds to nearest even.
#pragma once

#include <cstdint>
#include <cstring>

#include "half.h"
#include "table.h"

namespace shark {

// Internal linkage throughout: these are compiled into each instruction set's translation unit, with
// its flags, and one must never stand in for another at link time.
static inline void put(float* o, float x) { *o = x; }
static inline void put(uint16_t* o, float x) { *o = float_to_half(x); }

static inline int load_i32(const uint8_t* p) {
  int v;
  std::memcpy(&v, p, 4);
  return v;
}

// A quantized row's fp16 scale and bias (RowRef::sb: its own header, or its v3 group's slot).
static inline void scale_bias(const uint8_t* sb, float* s, float* b) {
  uint16_t h[2];
  std::memcpy(h, sb, 4);
  *s = half_to_float(h[0]);
  *b = half_to_float(h[1]);
}

// Code j of a row of a BITS-bit tier: element per·k + i sits in bits BITS·i .. BITS·i + BITS-1 of byte k.
template <uint32_t BITS>
static inline uint32_t code_at(const uint8_t* c, uint32_t j) {
  constexpr uint32_t kPer = 8 / BITS;
  return (c[j / kPer] >> ((j % kPer) * BITS)) & ((1u << BITS) - 1u);
}

// Element j of a row as float32 (`row`: RowRef::data, the values or codes; `dflt`: default_row, read by
// dropped rows; s, b: a quantized row's scale and bias).
template <int TIER>
static inline float load1(const uint8_t* row, const float* dflt, uint32_t j, float s, float b) {
  if constexpr (TIER == kFp32) {
    float v;
    std::memcpy(&v, row + 4 * static_cast<size_t>(j), 4);
    return v;
  } else if constexpr (TIER == kFp16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * static_cast<size_t>(j), 2);
    return half_to_float(h);
  } else if constexpr (TIER == kDropped) {
    return dflt[j];
  } else {
    return static_cast<float>(code_at<shark_format::TierTraits<TIER>::kBits>(row, j)) * s + b;
  }
}

}  // namespace shark
