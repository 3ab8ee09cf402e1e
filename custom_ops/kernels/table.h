// Storage format v1 and v2 (docs/FORMAT.md): tiers, strides, the table view the kernels read, row
// location, and the validation that makes every later row read stay inside `payload`.
// Portable C++17, no ONNX Runtime header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shark {

constexpr int64_t kFormatVersion = 2;     // what the converter writes
constexpr int64_t kOldestFormatVersion = 1;  // still read
constexpr uint64_t kMaxRows = uint64_t{1} << 40;
constexpr int64_t kMaxDim = 65536;
constexpr int kRowsPerBlock = 64;
constexpr int kMetaWords = 4;  // row_meta is uint64[blocks, 4]

enum Tier : int { kFp32 = 0, kFp16 = 1, kInt8 = 2, kInt4 = 3, kInt2 = 4, kDropped = 5 };
constexpr int kNumTiers = 6;
constexpr int kMixed = -1;  // uniform_tier attribute of a mixed table

enum class OutType : int { kFloat32 = 1, kFloat16 = 10 };  // ONNX element type numbers

const char* tier_name(int tier);

// Bytes of a row before padding.
inline uint64_t tier_row_bytes(int tier, uint64_t dim) {
  switch (tier) {
    case kFp32: return 4 * dim;
    case kFp16: return 2 * dim;
    case kInt8: return 4 + dim;
    case kInt4: return 4 + (dim + 1) / 2;
    case kInt2: return 4 + (dim + 3) / 4;
    default: return 0;
  }
}

// Stored size of a row: v1 rounds its bytes up to a multiple of 4; v2 stores them unpadded (a D = 1
// fp16 row is 2 bytes, a D = 5 int8 row 9), so rows need not be aligned.
inline uint64_t tier_stride(int tier, uint64_t dim, int64_t format_version = kFormatVersion) {
  const uint64_t bytes = tier_row_bytes(tier, dim);
  return format_version == 1 ? (bytes + 3) & ~uint64_t{3} : bytes;
}

// Attributes every op node that reads a table carries.
struct TableAttrs {
  int64_t format_version = 0;
  int64_t num_rows = 0;
  int64_t dim = 0;
  int64_t uniform_tier = kMixed;
  int64_t output_dtype = 1;
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
static SHARK_ALWAYS_INLINE uint64_t popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return static_cast<uint64_t>(__builtin_popcountll(x));
#else
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return (x * 0x0101010101010101ull) >> 56;
#endif
}

struct RowLoc {
  uint64_t offset;
  int tier;
};

// Position of row r = 64 b + j in a mixed table: tier code and byte offset, from block b's 32-byte
// record. Valid only for a validated table and r < num_rows.
static SHARK_ALWAYS_INLINE RowLoc locate_mixed_row(const uint64_t* block, unsigned j, const uint32_t* stride) {
  const uint64_t p0 = block[1], p1 = block[2], p2 = block[3];
  const int tier = static_cast<int>(((p0 >> j) & 1u) | (((p1 >> j) & 1u) << 1) | (((p2 >> j) & 1u) << 2));
  const uint64_t below = (uint64_t{1} << j) - 1;
  const uint64_t n0 = ~p0 & below, n1 = ~p1, n2 = ~p2;
  const uint64_t q0 = p0 & below;
  uint64_t off = block[0];
  off += stride[kFp32] * popcount64(n0 & n1 & n2);
  off += stride[kFp16] * popcount64(q0 & n1 & n2);
  off += stride[kInt8] * popcount64(n0 & p1 & n2);
  off += stride[kInt4] * popcount64(q0 & p1 & n2);
  off += stride[kInt2] * popcount64(n0 & n1 & p2);
  return RowLoc{off, tier};
}

}  // namespace shark
