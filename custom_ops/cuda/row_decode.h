// Row location and decoding shared by the CUDA kernels and their host emulation (test library):
// every function is `__host__ __device__` under nvcc and a plain inline function under a host
// compiler, so the exact code the kernels run is also compiled and tested on a machine without a GPU.
//
// A row is handled in *units* of 4 consecutive elements (unit u = elements 4u .. 4u+3; the last unit
// of a row with D % 4 != 0 is partial). Each lane of a lookup group owns the units u ≡ lane (mod G).
// A unit is first loaded as raw words (`Raw`, at most 16 bytes: fp32/dropped 4 words, fp16 2, int8
// one 32-bit word, int4 16 bits, int2 8 bits), then decoded to 4 floats. Loads never leave the row's
// stored bytes: a unit reads exactly the bytes of its elements (ld_bytes), with word loads only where
// the address is aligned (v1 rows always are; v2/v3 rows and v3 group slots start at any byte, no padding).
//
// Numbers are bit-identical to the CPU kernels (custom_ops/kernels/row_scalar.h and rows_avx2.h, FORMAT.md):
//   quantized: x = fma(float(q), scale, bias) in float32 (the CPU's float(q) * scale + bias with an
//              exact product, one rounding: same value); fp16 rows widen exactly; fp32 rows copy bits;
//   fp16 output: round to nearest even (__float2half_rn); fp16 rows to fp16 output copy bits;
//   bags: acc = acc + x (or acc + w * x, multiply and add rounded separately), in index order;
//         mean: acc / count (IEEE division) when count > 1.
// The device code spells every float operation with an _rn intrinsic, so no FMA contraction can
// change a result (the build also passes --fmad=false).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels/half.h"  // host side of the fp16 conversions (nvcc's host pass uses it too)
#include "device_table.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define SHARK_HD __host__ __device__ __forceinline__
#define SHARK_HD_CONSTEXPR __host__ __device__ constexpr
#else
#define SHARK_HD inline
#define SHARK_HD_CONSTEXPR constexpr
#endif

namespace shark_cuda {

// ---- loads (read-only data path on the device) ------------------------------------------------------
// A word load must be naturally aligned on the device (else cudaErrorMisalignedAddress). The host
// emulation counts the loads that would not be (SHARK_EMU_CHECK_ALIGNMENT, set by the test library), so
// a misaligned load fails a CPU test instead of a GPU run.
#if !defined(__CUDA_ARCH__) && defined(SHARK_EMU_CHECK_ALIGNMENT)
inline uint64_t& emu_misaligned_loads() {
  static thread_local uint64_t count = 0;
  return count;
}
#define SHARK_EMU_ALIGNED(p, a) \
  (((reinterpret_cast<uintptr_t>(p) & ((a) - 1)) != 0) ? (void)++::shark_cuda::emu_misaligned_loads() : (void)0)
#else
#define SHARK_EMU_ALIGNED(p, a) ((void)0)
#endif

SHARK_HD uint32_t ld_u32(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(reinterpret_cast<const unsigned int*>(p));
#else
  SHARK_EMU_ALIGNED(p, 4);
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}

SHARK_HD uint32_t ld_u16(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(reinterpret_cast<const unsigned short*>(p));
#else
  SHARK_EMU_ALIGNED(p, 2);
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
#endif
}

SHARK_HD uint32_t ld_u8(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

SHARK_HD uint64_t ld_u64(const uint64_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(reinterpret_cast<const unsigned long long*>(p));
#else
  SHARK_EMU_ALIGNED(p, 8);
  return *p;
#endif
}

SHARK_HD float ld_f32(const float* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  SHARK_EMU_ALIGNED(p, 4);
  return *p;
#endif
}

// 16 / 8 bytes from an address aligned to 16 / 8.
SHARK_HD void ld_16(const uint8_t* p, uint32_t w[4]) {
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#else
  SHARK_EMU_ALIGNED(p, 16);
  std::memcpy(w, p, 16);
#endif
}

SHARK_HD void ld_8(const uint8_t* p, uint32_t w[2]) {
#if defined(__CUDA_ARCH__)
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  w[0] = v.x, w[1] = v.y;
#else
  SHARK_EMU_ALIGNED(p, 8);
  std::memcpy(w, p, 8);
#endif
}

// n (1..4) bytes at p as a little-endian word, with the widest aligned loads p allows. Format v2 rows
// start at any byte and are not padded, so a load may neither assume alignment nor read past the
// bytes it needs (the last row ends where the payload ends).
SHARK_HD uint32_t ld_bytes(const uint8_t* p, uint32_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (n == 4 && (a & 3u) == 0) return ld_u32(p);
  if (n >= 2 && (a & 1u) == 0) {
    uint32_t v = ld_u16(p);
    if (n == 3) v |= ld_u8(p + 2) << 16;
    if (n == 4) v |= ld_u16(p + 2) << 16;
    return v;
  }
  uint32_t v = 0;
  for (uint32_t i = 0; i < n; ++i) v |= ld_u8(p + i) << (8 * i);
  return v;
}

template <typename IdxT>
SHARK_HD int64_t ld_index(const IdxT* p, uint64_t i) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__ldg(p + i));
#else
  return static_cast<int64_t>(p[i]);
#endif
}

SHARK_HD int64_t ld_index_kind(const void* p, IndexKind k, uint64_t i) {
  return k == IndexKind::kInt64 ? ld_index(static_cast<const int64_t*>(p), i)
                                : ld_index(static_cast<const int32_t*>(p), i);
}

// ---- numbers -------------------------------------------------------------------------------------
SHARK_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

SHARK_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

SHARK_HD float half_to_f32(uint32_t h) {  // low 16 bits
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
  return shark::half_to_float(static_cast<uint16_t>(h));
#endif
}

SHARK_HD uint16_t f32_to_half(float f) {  // round to nearest even
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  return shark::float_to_half(f);
#endif
}

SHARK_HD float dequant(uint32_t q, float s, float b) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(static_cast<float>(q), s, b);
#else
  return std::fmaf(static_cast<float>(q), s, b);
#endif
}

SHARK_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SHARK_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SHARK_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Lowest position wins (atomicMin on the device; the host emulation runs one lane at a time).
SHARK_HD void record_min(unsigned long long* slot, unsigned long long pos) {
#if defined(__CUDA_ARCH__)
  atomicMin(slot, pos);
#else
  if (pos < *slot) *slot = pos;
#endif
}

// ---- row location --------------------------------------------------------------------------------
using shark_format::is_quantized;

// A located row: `data` its values (fp32/fp16) or codes (int8/int4/int2), `sb` (quantized tiers only) its
// [scale f16][bias f16] -- the row's own header in v1/v2 (codes at +4), its group's slot in v3 (the row
// is its codes alone). The CPU's RowRef (kernels/table.h), plus the tier.
struct RowRef {
  const uint8_t* data;
  const uint8_t* sb;
  int tier;
};

// Row r of tier `tier` stored at `p`.
SHARK_HD RowRef row_ref(const DeviceTable& t, const uint8_t* p, int tier, uint64_t r) {
  if (!is_quantized(tier)) return RowRef{p, p, tier};
  if (t.group_shift >= 0) {
    return RowRef{p, t.group_scales + shark_format::group_slot_offset(r, t.group_shift, tier), tier};
  }
  return RowRef{p + 4, p, tier};
}

// Row r (< R, validated table) of a table whose tier is TIER (kMixed: read from row_meta).
// Mixed: block b = r / 64 holds [offset of row 64b, plane0, plane1, plane2]; bit j of plane k is bit k
// of the tier code of row 64b + j; the row's offset adds the strides of the rows below it in the block.
template <int TIER>
SHARK_HD RowRef locate_row(const DeviceTable& t, uint64_t r) {
  if constexpr (TIER != kMixed) {
    return row_ref(t, t.payload + r * t.stride[TIER], TIER, r);
  } else {
    const uint64_t* blk = t.meta + (r >> 6) * 4;
    const unsigned j = static_cast<unsigned>(r & 63u);
    const uint64_t base = ld_u64(blk), p0 = ld_u64(blk + 1), p1 = ld_u64(blk + 2), p2 = ld_u64(blk + 3);
    return row_ref(t, t.payload + shark_format::offset_in_block(base, p0, p1, p2, j, t.stride),
                   shark_format::tier_in_block(p0, p1, p2, j), r);
  }
}

// ---- units ---------------------------------------------------------------------------------------
struct Raw {
  uint32_t w[4];
};

// A quantized row's scale and bias (fp16 each) at RowRef::sb: any byte alignment (v2 rows, v3 groups).
SHARK_HD void scale_bias(const uint8_t* sb, float* s, float* b) {
  const uint32_t v = ld_bytes(sb, 4);
  *s = half_to_f32(v & 0xffffu);
  *b = half_to_f32(v >> 16);
}

// Raw words of unit u (elements 4u .. min(4u+4, D)) of a row of tier TIER; `row` is RowRef::data (the
// values or codes), `dflt` default_row.
template <int TIER>
SHARK_HD Raw load_unit(const uint8_t* row, const float* dflt, uint32_t u, uint32_t D) {
  Raw r{{0u, 0u, 0u, 0u}};
  const uint32_t n = D - 4 * u < 4 ? D - 4 * u : 4;  // elements in this unit
  if constexpr (TIER == kDropped) {
    const float* p = dflt + 4 * static_cast<uint64_t>(u);  // default_row: a float array, aligned
    for (uint32_t i = 0; i < 4; ++i)
      if (i < n) r.w[i] = f32_bits(ld_f32(p + i));
  } else if constexpr (TIER == kFp32) {
    const uint8_t* p = row + 16 * static_cast<uint64_t>(u);
    if (n == 4 && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
      ld_16(p, r.w);
    } else {
      r.w[0] = ld_bytes(p, 4);
      if (n > 1) r.w[1] = ld_bytes(p + 4, 4);
      if (n > 2) r.w[2] = ld_bytes(p + 8, 4);
      if (n > 3) r.w[3] = ld_bytes(p + 12, 4);
    }
  } else if constexpr (TIER == kFp16) {
    const uint8_t* p = row + 8 * static_cast<uint64_t>(u);
    if (n == 4 && (reinterpret_cast<uintptr_t>(p) & 7u) == 0) {
      ld_8(p, r.w);
    } else {
      r.w[0] = ld_bytes(p, n > 1 ? 4 : 2);                // elements 4u, 4u+1
      if (n > 2) r.w[1] = ld_bytes(p + 4, n > 3 ? 4 : 2);  // elements 4u+2, 4u+3
    }
  } else if constexpr (shark_format::TierTraits<TIER>::kQuantized) {  // a unit's 4 codes: BITS / 2 bytes
    constexpr uint32_t kBits = shark_format::TierTraits<TIER>::kBits;
    r.w[0] = ld_bytes(row + kBits / 2 * static_cast<uint64_t>(u), (n * kBits + 7) / 8);
  }
  return r;
}

// The 4 float32 values of a unit (elements past D are unspecified and never stored).
template <int TIER>
SHARK_HD void decode_unit(const Raw& r, float s, float b, float x[4]) {
  if constexpr (TIER == kFp32 || TIER == kDropped) {
    for (int i = 0; i < 4; ++i) x[i] = bits_f32(r.w[i]);
  } else if constexpr (TIER == kFp16) {
    x[0] = half_to_f32(r.w[0] & 0xffffu);
    x[1] = half_to_f32(r.w[0] >> 16);
    x[2] = half_to_f32(r.w[1] & 0xffffu);
    x[3] = half_to_f32(r.w[1] >> 16);
  } else {
    constexpr uint32_t kBits = shark_format::TierTraits<TIER>::kBits;
    constexpr uint32_t kMask = (1u << kBits) - 1;
    for (uint32_t i = 0; i < 4; ++i) x[i] = dequant((r.w[0] >> (kBits * i)) & kMask, s, b);
  }
}

// ---- stores --------------------------------------------------------------------------------------
// n (1..4) float32 values to o[0..n).
SHARK_HD void store_f32(float* o, const float x[4], uint32_t n) {
#if defined(__CUDA_ARCH__)
  if (n == 4 && (reinterpret_cast<uintptr_t>(o) & 15u) == 0) {
    *reinterpret_cast<float4*>(o) = make_float4(x[0], x[1], x[2], x[3]);
    return;
  }
#endif
  o[0] = x[0];
  if (n > 1) o[1] = x[1];
  if (n > 2) o[2] = x[2];
  if (n > 3) o[3] = x[3];
}

// n (1..4) fp16 bit patterns (packed two per word in w) to o[0..n).
SHARK_HD void store_f16_bits(uint16_t* o, const uint32_t w[2], uint32_t n) {
#if defined(__CUDA_ARCH__)
  if (n == 4 && (reinterpret_cast<uintptr_t>(o) & 7u) == 0) {
    *reinterpret_cast<uint2*>(o) = make_uint2(w[0], w[1]);
    return;
  }
#endif
  // Partial (or unaligned) unit: element by element, no dynamically indexed array (it would go to local memory).
  o[0] = static_cast<uint16_t>(w[0]);
  if (n > 1) o[1] = static_cast<uint16_t>(w[0] >> 16);
  if (n > 2) o[2] = static_cast<uint16_t>(w[1]);
  if (n > 3) o[3] = static_cast<uint16_t>(w[1] >> 16);
}

SHARK_HD void store_f16(uint16_t* o, const float x[4], uint32_t n) {
  uint32_t w[2];
  w[0] = uint32_t{f32_to_half(x[0])} | (uint32_t{f32_to_half(x[1])} << 16);
  w[1] = uint32_t{f32_to_half(x[2])} | (uint32_t{f32_to_half(x[3])} << 16);
  store_f16_bits(o, w, n);
}

template <typename OutT>
SHARK_HD void store_unit(OutT* o, const float x[4], uint32_t n) {
  if constexpr (sizeof(OutT) == 4) {
    store_f32(o, x, n);
  } else {
    store_f16(o, x, n);
  }
}

}  // namespace shark_cuda
