// Storage format v1, v2 and v3 (docs/FORMAT.md): tiers, strides, the table view the kernels read, row
// location, and the validation that makes every later row read stay inside `payload`.
// Portable C++17, no ONNX Runtime header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "format_core.h"

namespace shark {

constexpr int64_t kFormatVersion = 3;        // the newest version this library reads
constexpr int64_t kOldestFormatVersion = 1;  // still read
constexpr int64_t kMaxGroupShift = 40;       // v3 scale groups: 1 .. 2^40 rows
constexpr uint64_t kMaxRows = uint64_t{1} << 40;
constexpr int64_t kMaxDim = 65536;
constexpr int kRowsPerBlock = shark_format::kRowsPerBlock;
constexpr int kMetaWords = shark_format::kMetaWords;

enum Tier : int {
  kFp32 = shark_format::kFp32,
  kFp16 = shark_format::kFp16,
  kInt8 = shark_format::kInt8,
  kInt4 = shark_format::kInt4,
  kInt2 = shark_format::kInt2,
  kDropped = shark_format::kDropped,
};
constexpr int kNumTiers = shark_format::kNumTiers;
// Rows of tier T are codes with a scale and bias (shark_format::TierTraits): the int tiers.
template <int T>
constexpr bool kQuantizedTier = shark_format::TierTraits<T>::kQuantized;
constexpr int kMixed = shark_format::kMixed;

enum class OutType : int { kFloat32 = 1, kFloat16 = 10 };  // ONNX element type numbers

const char* tier_name(int tier);

// Bytes of a row before padding, and its stored size per format version (format_core.h).
inline uint64_t tier_row_bytes(int tier, uint64_t dim) { return shark_format::row_bytes(tier, dim); }
inline uint64_t tier_stride(int tier, uint64_t dim, int64_t format_version = kFormatVersion) {
  return shark_format::row_stride(tier, dim, format_version);
}

// Attributes every op node that reads a table carries.
struct TableAttrs {
  int64_t format_version = 0;
  int64_t num_rows = 0;
  int64_t dim = 0;
  int64_t uniform_tier = kMixed;
  int64_t output_dtype = 1;
  int64_t scale_group_rows = 0;  // v3: rows per scale group (a power of two); 0 (absent) in v1 and v2
};

// Returns an empty string when the attributes are valid, else a message naming the value.
std::string validate_attrs(const TableAttrs& a);

// What the kernels read. Build it with make_table_view(), then validate_table().
struct TableView {
  const uint8_t* payload = nullptr;
  uint64_t payload_bytes = 0;
  const uint64_t* meta = nullptr;  // [meta_blocks, 4], null for a uniform table
  uint64_t meta_blocks = 0;
  const float* default_row = nullptr;  // [dim]; null when empty (v2: only a table without dropped rows)
  uint64_t num_rows = 0;
  uint32_t dim = 0;
  int uniform_tier = kMixed;
  uint32_t stride[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // per tier code; 6 and 7 are invalid (0)
  int64_t format_version = kFormatVersion;
  int group_shift = -1;     // v3: log2 of the rows per scale group; -1: every quantized row has its own header
  uint64_t group_bytes = 0;  // v3: the group section at the end of payload (12 bytes per group)

  bool uniform() const { return uniform_tier != kMixed; }
};

TableView make_table_view(const TableAttrs& a);

// Shapes of the three table tensors, as given to the op.
struct TableShapes {
  std::vector<int64_t> payload, row_meta, default_row;
};

// Checks shapes against the attributes and the table content (block offsets chain, no code 6/7,
// zero bits past R, payload length = sum of strides). Empty string when the table is valid.
// Must be called (and pass) before any kernel reads the view.
std::string validate_table(const TableView& t, const TableShapes& shapes);

#if defined(__GNUC__) || defined(__clang__)
#define SHARK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SHARK_ALWAYS_INLINE inline
#endif

// Always inlined, so that inside the AVX2 kernels (target popcnt) it compiles to POPCNT.
static SHARK_ALWAYS_INLINE uint64_t popcount64(uint64_t x) { return shark_format::popcount64(x); }

struct RowLoc {
  uint64_t offset;
  int tier;
};

// The v3 group section (null before v3): payload ends with it, after the rows. A free function with
// internal linkage, so that no instruction set's copy can stand in for another's at link time.
static SHARK_ALWAYS_INLINE const uint8_t* group_scales(const TableView& t) {
  return t.group_shift < 0 ? nullptr : t.payload + (t.payload_bytes - t.group_bytes);
}

// A stored row as the row code reads it: `data` its values or codes, `sb` (quantized tiers only) its
// [scale f16][bias f16] -- the row's own header (v1, v2) or its group's slot (v3).
struct RowRef {
  const uint8_t* data;
  const uint8_t* sb;
};

// Row r of tier TIER at byte `offset` of the rows; `gs` is group_scales(t), hoisted out of the loop.
template <int TIER>
static SHARK_ALWAYS_INLINE RowRef row_ref(const TableView& t, const uint8_t* gs, uint64_t offset, uint64_t r) {
  const uint8_t* p = t.payload + offset;
  if constexpr (kQuantizedTier<TIER>) {
    if (gs) return RowRef{p, gs + shark_format::group_slot_offset(r, t.group_shift, TIER)};
    return RowRef{p + 4, p};
  } else {
    (void)gs;
    (void)r;
    return RowRef{p, p};
  }
}

// The same for a tier known at run time only (mixed tables).
static SHARK_ALWAYS_INLINE RowRef row_ref_any(const TableView& t, const uint8_t* gs, int tier, uint64_t offset,
                                              uint64_t r) {
  const uint8_t* p = t.payload + offset;
  if (!shark_format::is_quantized(tier)) return RowRef{p, p};
  if (gs) return RowRef{p, gs + shark_format::group_slot_offset(r, t.group_shift, tier)};
  return RowRef{p + 4, p};
}

// Position of row r = 64 b + j in a mixed table: tier code and byte offset, from block b's 32-byte
// record. Valid only for a validated table and r < num_rows.
static SHARK_ALWAYS_INLINE RowLoc locate_mixed_row(const uint64_t* block, unsigned j, const uint32_t* stride) {
  const uint64_t p0 = block[1], p1 = block[2], p2 = block[3];
  return RowLoc{shark_format::offset_in_block(block[0], p0, p1, p2, j, stride), shark_format::tier_in_block(p0, p1, p2, j)};
}

}  // namespace shark
