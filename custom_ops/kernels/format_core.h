// The storage format's arithmetic, defined once (docs/FORMAT.md): tier codes, row bytes and strides per
// format version, and where a row of a mixed table lives in its 64-row block. Used by the CPU kernels and
// validation (table.h), the CUDA kernels and their host emulation (cuda/row_decode.h). Every function is
// `__host__ __device__` under nvcc and plain inline C++ elsewhere. No ORT header, no allocation.
#pragma once

#include <cstdint>
#include <utility>

#if defined(__CUDACC__)
#define SHARK_FORMAT_FN __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define SHARK_FORMAT_FN inline __attribute__((always_inline))
#else
#define SHARK_FORMAT_FN inline
#endif

namespace shark_format {

// Tier codes (the 3-bit codes stored in row_meta's planes); codes from kNumTiers to 7 are invalid.
constexpr int kFp32 = 0, kFp16 = 1, kInt8 = 2, kInt4 = 3, kInt2 = 4, kDropped = 5;
constexpr int kNumTiers = 6;
constexpr int kMixed = -1;  // uniform_tier of a mixed table
constexpr int kRowsPerBlock = 64;
constexpr int kMetaWords = 4;  // row_meta is uint64[blocks, 4]: offset, plane 0, plane 1, plane 2

SHARK_FORMAT_FN uint32_t popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__popcll(x));
#elif defined(__GNUC__) || defined(__clang__)
  return static_cast<uint32_t>(__builtin_popcountll(x));
#else
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<uint32_t>((x * 0x0101010101010101ull) >> 56);
#endif
}

// Each tier's storage (docs/FORMAT.md): bits per element, and whether its codes come with a [scale f16][bias f16]
// pair. A new tier is one specialization here, one case in visit_tier, its block popcount below, and its row
// decoding (kernels/rows_*.h on the CPU, cuda/row_decode.h); docs/ARCHITECTURE.md lists the rest.
template <int T>
struct TierTraits;
template <>
struct TierTraits<kFp32> {
  static constexpr uint32_t kBits = 32;
  static constexpr bool kQuantized = false;
  static constexpr const char* kName = "fp32";
};
template <>
struct TierTraits<kFp16> {
  static constexpr uint32_t kBits = 16;
  static constexpr bool kQuantized = false;
  static constexpr const char* kName = "fp16";
};
template <>
struct TierTraits<kInt8> {
  static constexpr uint32_t kBits = 8;
  static constexpr bool kQuantized = true;
  static constexpr const char* kName = "int8";
};
template <>
struct TierTraits<kInt4> {
  static constexpr uint32_t kBits = 4;
  static constexpr bool kQuantized = true;
  static constexpr const char* kName = "int4";
};
template <>
struct TierTraits<kInt2> {
  static constexpr uint32_t kBits = 2;
  static constexpr bool kQuantized = true;
  static constexpr const char* kName = "int2";
};
template <>
struct TierTraits<kDropped> {
  static constexpr uint32_t kBits = 0;
  static constexpr bool kQuantized = false;
  static constexpr const char* kName = "dropped";
};

// A tier code as a type: inside a generic lambda `[&](auto t)`, `decltype(t)::value` is a constant.
template <int T>
struct TierConst {
  static constexpr int value = T;
};

// The one switch over the tier codes: f(TierConst<tier>{}), its result returned. A code that is no tier goes as
// kDropped (tables are validated first: codes 6 and 7 never reach a kernel). Every per-tier choice of the CPU
// kernels, the CUDA kernels and their host emulation goes through visit_tier or visit_layout.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class F>
SHARK_FORMAT_FN decltype(auto) visit_tier(int tier, F&& f) {
  switch (tier) {
    case kFp32: return f(TierConst<kFp32>{});
    case kFp16: return f(TierConst<kFp16>{});
    case kInt8: return f(TierConst<kInt8>{});
    case kInt4: return f(TierConst<kInt4>{});
    case kInt2: return f(TierConst<kInt2>{});
    default: return f(TierConst<kDropped>{});
  }
}

// visit_tier for a table's layout: its uniform tier, or kMixed (rows of any tier, each read from its block).
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <class F>
SHARK_FORMAT_FN decltype(auto) visit_layout(int uniform_tier, F&& f) {
  if (uniform_tier == kMixed) return f(TierConst<kMixed>{});
  return visit_tier(uniform_tier, static_cast<F&&>(f));
}

// (Visitors here are structs with always-inline members, not lambdas: a lambda of an inline function is a weak
// symbol that the AVX2 translation unit could emit for everyone; tests/test_build.py checks none is.)
struct RowBytesOf {
  uint64_t dim;
  template <class T>
  SHARK_FORMAT_FN uint64_t operator()(T) const {
    return (dim * TierTraits<T::value>::kBits + 7) / 8 + (TierTraits<T::value>::kQuantized ? 4 : 0);
  }
};
struct IsQuantized {
  template <class T>
  SHARK_FORMAT_FN bool operator()(T) const { return TierTraits<T::value>::kQuantized; }
};

// Bytes of a row of `tier` with `dim` elements, before any padding.
SHARK_FORMAT_FN uint64_t row_bytes(int tier, uint64_t dim) { return visit_tier(tier, RowBytesOf{dim}); }

SHARK_FORMAT_FN bool is_quantized(int tier) { return visit_tier(tier, IsQuantized{}); }

// Bytes in front of a quantized row's codes: its own [scale f16][bias f16] in v1 and v2; none in v3, where
// scale and bias are shared by a group of rows (group_slot_offset).
SHARK_FORMAT_FN uint64_t row_header_bytes(int tier, int64_t format_version) {
  return is_quantized(tier) && format_version < 3 ? 4 : 0;
}

// Stored size of a row: v1 rounds the bytes up to a multiple of 4; v2 stores them unpadded; v3 stores
// quantized rows as their codes alone, unpadded.
SHARK_FORMAT_FN uint64_t row_stride(int tier, uint64_t dim, int64_t format_version) {
  const uint64_t bytes = row_bytes(tier, dim);
  if (format_version == 1) return (bytes + 3) & ~uint64_t{3};
  return format_version >= 3 && is_quantized(tier) ? bytes - 4 : bytes;
}

// v3 group scales: rows r with equal r >> group_shift form a group; after the rows, `payload` holds one
// 12-byte record per group, three [scale f16][bias f16] slots for int8, int4 and int2 rows in that order.
// The tier codes 0 .. kNumTiers-1, for folds over every tier.
using AllTiers = std::make_integer_sequence<int, kNumTiers>;

// How many quantized tiers have a code below `tier`: a quantized tier's slot in a v3 group record.
template <int... C>
SHARK_FORMAT_FN constexpr int quantized_below(int tier, std::integer_sequence<int, C...>) {
  return (0 + ... + (C < tier && TierTraits<C>::kQuantized ? 1 : 0));
}

constexpr int kGroupSlotBytes = 4;
constexpr int kGroupRecordBytes = kGroupSlotBytes * quantized_below(kNumTiers, AllTiers{});
SHARK_FORMAT_FN uint64_t group_count(uint64_t num_rows, int group_shift) {
  return group_shift < 0 ? 0 : ((num_rows - 1) >> group_shift) + 1;
}
SHARK_FORMAT_FN uint64_t group_section_bytes(uint64_t num_rows, int group_shift) {
  return group_count(num_rows, group_shift) * kGroupRecordBytes;
}
// Byte offset, inside the group section, of the scale and bias of row r of a quantized tier.
SHARK_FORMAT_FN uint64_t group_slot_offset(uint64_t r, int group_shift, int tier) {
  return (r >> group_shift) * kGroupRecordBytes + static_cast<uint64_t>(quantized_below(tier, AllTiers{})) * kGroupSlotBytes;
}

// Per-tier strides of a table (codes that are no tier: 0).
SHARK_FORMAT_FN void fill_strides(uint64_t dim, int64_t format_version, uint32_t stride[8]) {
  for (int k = 0; k < 8; ++k) stride[k] = k < kNumTiers ? static_cast<uint32_t>(row_stride(k, dim, format_version)) : 0u;
}

// Tier code of row j (0..63) of a block with planes p0, p1, p2 (bit j of plane k = bit k of the code).
SHARK_FORMAT_FN int tier_in_block(uint64_t p0, uint64_t p1, uint64_t p2, unsigned j) {
  return static_cast<int>(((p0 >> j) & 1u) | (((p1 >> j) & 1u) << 1) | (((p2 >> j) & 1u) << 2));
}

// The rows among `mask` whose 3-bit code in planes p0, p1, p2 is C.
template <int C>
SHARK_FORMAT_FN uint64_t rows_of_code(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t mask) {
  return mask & ((C & 1) ? p0 : ~p0) & ((C & 2) ? p1 : ~p1) & ((C & 4) ? p2 : ~p2);
}

// Bytes of the rows among `mask`: each tier's rows counted with a popcount, times its stride (a dropped row has
// no bytes, so its rows are not counted at all).
template <int... C>
SHARK_FORMAT_FN uint64_t rows_bytes(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t mask, const uint32_t* stride,
                                    std::integer_sequence<int, C...>) {
  return (uint64_t{0} + ... + (TierTraits<C>::kBits ? uint64_t{stride[C]} * popcount64(rows_of_code<C>(p0, p1, p2, mask))
                                                    : uint64_t{0}));
}

// The rows of a block whose code is no tier (validation rejects them).
template <int... C>
SHARK_FORMAT_FN uint64_t invalid_rows(uint64_t p0, uint64_t p1, uint64_t p2, std::integer_sequence<int, C...>) {
  return (uint64_t{0} | ... | rows_of_code<kNumTiers + C>(p0, p1, p2, ~uint64_t{0}));
}
SHARK_FORMAT_FN uint64_t invalid_rows(uint64_t p0, uint64_t p1, uint64_t p2) {
  return invalid_rows(p0, p1, p2, std::make_integer_sequence<int, 8 - kNumTiers>{});
}

// Byte offset of row j of a block whose first row starts at `base`: base plus the strides of the rows
// below j (rows of invalid codes are rejected by validation).
SHARK_FORMAT_FN uint64_t offset_in_block(uint64_t base, uint64_t p0, uint64_t p1, uint64_t p2, unsigned j,
                                         const uint32_t* stride) {
  return base + rows_bytes(p0, p1, p2, (uint64_t{1} << j) - 1, stride, AllTiers{});
}

// Bytes of all the rows of a block whose rows at or past num_rows are masked off by `valid`.
SHARK_FORMAT_FN uint64_t block_bytes(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t valid, const uint32_t* stride) {
  return rows_bytes(p0, p1, p2, valid, stride, AllTiers{});
}

// Rows of a block that are dropped, among `valid`.
SHARK_FORMAT_FN uint64_t dropped_in_block(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t valid) {
  return popcount64(rows_of_code<kDropped>(p0, p1, p2, valid));
}

}  // namespace shark_format
