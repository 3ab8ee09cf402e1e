// IEEE binary16 <-> binary32 conversions in portable C++ (no ORT, no intrinsics).
// Widening is exact; narrowing is round-to-nearest-even with overflow to infinity, the same
// result as numpy's float32 -> float16 cast and the F16C VCVTPS2PH instruction (imm = 0).
#pragma once

#include <cstdint>
#include <cstring>

namespace shark {

static inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float32
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (143u << 23)) {                      // |f| >= 65536, inf or nan
    o = (u > 0x7f800000u) ? 0x7e00u : 0x7c00u;  // nan -> quiet nan, else inf
  } else if (u < (113u << 23)) {                // result is subnormal or zero
    // Adding 0.5 (2^-1) aligns the value so that float rounding (nearest even) does the work.
    const float magic = bits_to_float(126u << 23);
    o = float_to_bits(bits_to_float(u) + magic) - (126u << 23);
  } else {  // normal range; a carry out of the mantissa rounds up into inf correctly
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd;
    o = u >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

}  // namespace shark
