// The storage format's arithmetic, defined once (docs/FORMAT.md): tier codes, row bytes and strides per
// format version, and where a row of a mixed table lives in its 64-row block. Used by the CPU kernels and
// validation (table.h), the CUDA kernels and their host emulation (cuda/row_decode.h). Every function is
// `__host__ __device__` under nvcc and plain inline C++ elsewhere. No ORT header, no allocation.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SHARK_FORMAT_FN __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define SHARK_FORMAT_FN inline __attribute__((always_inline))
#else
#define SHARK_FORMAT_FN inline
#endif

namespace shark_format {

// Tier codes (the 3-bit codes stored in row_meta's planes); 6 and 7 are invalid.
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

// Bytes of a row of `tier` with `dim` elements, before any padding.
SHARK_FORMAT_FN uint64_t row_bytes(int tier, uint64_t dim) {
  switch (tier) {
    case kFp32: return 4 * dim;
    case kFp16: return 2 * dim;
    case kInt8: return 4 + dim;
    case kInt4: return 4 + (dim + 1) / 2;
    case kInt2: return 4 + (dim + 3) / 4;
    default: return 0;
  }
}

SHARK_FORMAT_FN bool is_quantized(int tier) { return tier == kInt8 || tier == kInt4 || tier == kInt2; }

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
constexpr int kGroupSlotBytes = 4;
constexpr int kGroupRecordBytes = 12;
SHARK_FORMAT_FN uint64_t group_count(uint64_t num_rows, int group_shift) {
  return group_shift < 0 ? 0 : ((num_rows - 1) >> group_shift) + 1;
}
SHARK_FORMAT_FN uint64_t group_section_bytes(uint64_t num_rows, int group_shift) {
  return group_count(num_rows, group_shift) * kGroupRecordBytes;
}
// Byte offset, inside the group section, of the scale and bias of row r of a quantized tier.
SHARK_FORMAT_FN uint64_t group_slot_offset(uint64_t r, int group_shift, int tier) {
  return (r >> group_shift) * kGroupRecordBytes + static_cast<uint64_t>(tier - kInt8) * kGroupSlotBytes;
}

// Per-tier strides of a table (codes 6 and 7: 0).
SHARK_FORMAT_FN void fill_strides(uint64_t dim, int64_t format_version, uint32_t stride[8]) {
  for (int k = 0; k < 8; ++k) stride[k] = k < kNumTiers ? static_cast<uint32_t>(row_stride(k, dim, format_version)) : 0u;
}

// Tier code of row j (0..63) of a block with planes p0, p1, p2 (bit j of plane k = bit k of the code).
SHARK_FORMAT_FN int tier_in_block(uint64_t p0, uint64_t p1, uint64_t p2, unsigned j) {
  return static_cast<int>(((p0 >> j) & 1u) | (((p1 >> j) & 1u) << 1) | (((p2 >> j) & 1u) << 2));
}

// Byte offset of row j of a block whose first row starts at `base`: base plus the strides of the rows
// below j, counted per tier with popcounts of the planes (codes 6/7 are rejected by validation).
SHARK_FORMAT_FN uint64_t offset_in_block(uint64_t base, uint64_t p0, uint64_t p1, uint64_t p2, unsigned j,
                                         const uint32_t* stride) {
  const uint64_t below = (uint64_t{1} << j) - 1;
  const uint64_t n0 = ~p0 & below, n1 = ~p1, n2 = ~p2, q0 = p0 & below;
  uint64_t off = base;
  off += uint64_t{stride[kFp32]} * popcount64(n0 & n1 & n2);
  off += uint64_t{stride[kFp16]} * popcount64(q0 & n1 & n2);
  off += uint64_t{stride[kInt8]} * popcount64(n0 & p1 & n2);
  off += uint64_t{stride[kInt4]} * popcount64(q0 & p1 & n2);
  off += uint64_t{stride[kInt2]} * popcount64(n0 & n1 & p2);
  return off;
}

// Bytes of all the rows of a block whose rows at or past num_rows are masked off by `valid`.
SHARK_FORMAT_FN uint64_t block_bytes(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t valid, const uint32_t* stride) {
  const uint64_t n0 = ~p0 & valid, n1 = ~p1, n2 = ~p2, q0 = p0 & valid;
  return uint64_t{stride[kFp32]} * popcount64(n0 & n1 & n2) + uint64_t{stride[kFp16]} * popcount64(q0 & n1 & n2) +
         uint64_t{stride[kInt8]} * popcount64(n0 & p1 & n2) + uint64_t{stride[kInt4]} * popcount64(q0 & p1 & n2) +
         uint64_t{stride[kInt2]} * popcount64(n0 & n1 & p2);
}

// Rows of a block that are dropped (code 5 = bits 0 and 2), among `valid`.
SHARK_FORMAT_FN uint64_t dropped_in_block(uint64_t p0, uint64_t p1, uint64_t p2, uint64_t valid) {
  return popcount64(p0 & valid & ~p1 & p2);
}

}  // namespace shark_format
