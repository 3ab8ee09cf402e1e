// Plain data the CUDA launchers take: the table (device pointers), the lookup arguments and the
// error slot the kernels report out-of-range indices / bad offsets into. No CUDA, no ORT header:
// included by the .cu launchers, the ORT adapter and the host-side test library alike.
#pragma once

#include <cstdint>

#include "../kernels/format_core.h"

namespace shark_cuda {

// Tier codes and strides: the one definition in kernels/format_core.h.
using shark_format::kDropped;
using shark_format::kFp16;
using shark_format::kFp32;
using shark_format::kInt2;
using shark_format::kInt4;
using shark_format::kInt8;
using shark_format::kMixed;
constexpr unsigned long long kNoError = ~0ull;

// A validated table (shark::validate_table passed on its host-side description). All pointers are
// device pointers for the CUDA launchers (host pointers for the host emulation in the test library).
struct DeviceTable {
  const uint8_t* payload;      // all rows, each at its tier's stride (v1: 4-byte aligned; v2, v3: any byte)
  const uint64_t* meta;        // row_meta [ceil(R/64), 4] for a mixed table, else null
  const float* default_row;    // [dim]: what dropped rows read as (null: the table has none)
  uint64_t num_rows;           // R
  uint32_t dim;                // D
  int32_t uniform_tier;        // 0..5, or kMixed (-1)
  uint32_t stride[8];          // bytes per row of each tier code (6, 7: 0)
  // v3 scale groups: the group section at the end of payload (12 bytes per group, slots int8/int4/int2)
  // and log2 of the rows per group. group_shift -1 (v1, v2): every quantized row starts with its own
  // [scale][bias]. Set both with fill_layout.
  const uint8_t* group_scales = nullptr;
  int32_t group_shift = -1;
};

// Filled by the kernels (atomicMin), read back by the caller after the kernel on the same stream.
// Both words start at kNoError (the launchers reset them on the stream before the kernel).
struct ErrorSlot {
  unsigned long long index_pos;   // lowest flat position of an index < 0 or >= R
  unsigned long long offset_pos;  // lowest i of a bad offsets[i] (bag op, 1-D indices + offsets)
};

enum class IndexKind : int { kInt32 = 0, kInt64 = 1 };
enum class OutKind : int { kFloat32 = 1, kFloat16 = 10 };  // ONNX element type numbers

struct GatherParams {
  const void* indices;  // [count] int32/int64 (device)
  IndexKind index_kind;
  uint64_t count;
  void* out;  // [count, dim] float32 or float16 bits (device); see the layout below
  OutKind out_kind;
  // Output layout. A plain gather writes its rows back to back (the defaults). A field of
  // RowwiseDequantMultiLookup writes its column block of the wider [B, W] output (out = the block's first
  // column, out_stride = W): lookup i is row i % rows_per_sample of sample i / rows_per_sample, written at
  // out + (i / rows_per_sample) * out_stride + (i % rows_per_sample) * dim (elements), as the CPU's GatherJob.
  uint64_t rows_per_sample = 1;  // >= 1 (indices [B, L] of a field: L)
  uint64_t out_stride = 0;       // elements from one sample's first row to the next; 0: rows_per_sample * dim
};

struct BagParams {
  const void* indices;  // [n_indices] int32/int64 (device)
  IndexKind index_kind;
  uint64_t n_indices;
  // 1-D indices: offsets (device) with torch's convention, validated on the device (offset_pos):
  // offsets[0] == 0, non-decreasing, <= n_indices. Null for 2-D indices [n_bags, bag_len].
  const void* offsets;
  IndexKind offsets_kind;
  uint64_t n_offsets;
  int32_t include_last_offset;  // 0/1
  uint64_t bag_len;             // 2-D indices only
  uint64_t n_bags;              // = n_offsets (- 1 with include_last_offset), or the 2-D rows
  const float* weights;         // per_sample_weights [n_indices] (device) or null; sum mode only
  int32_t mode;                 // 0 sum, 1 mean
  int64_t padding_idx;          // -1: none
  void* out;                    // [n_bags, dim] float32 or float16 bits (device), bag b at out + b * out_stride
  OutKind out_kind;
  uint64_t out_stride = 0;      // elements from one bag's output row to the next (>= dim); 0: dim
};

// The output strides with their defaults resolved (elements).
inline uint64_t gather_out_stride(const GatherParams& p, uint32_t dim) {
  return p.out_stride ? p.out_stride : p.rows_per_sample * dim;
}
inline uint64_t bag_out_stride(const BagParams& p, uint32_t dim) { return p.out_stride ? p.out_stride : dim; }

// A layout whose rows cannot overlap: the launchers refuse anything else (cudaErrorInvalidValue).
inline bool gather_layout_ok(const GatherParams& p, uint32_t dim) {
  return p.rows_per_sample >= 1 && gather_out_stride(p, dim) >= p.rows_per_sample * dim;
}
inline bool bag_layout_ok(const BagParams& p, uint32_t dim) { return bag_out_stride(p, dim) >= dim; }

// Per-tier row strides of a table of `dim` dims (FORMAT.md: the row bytes, rounded up to 4 in v1).
inline void fill_strides(uint32_t dim, uint32_t stride[8], int64_t format_version) {
  shark_format::fill_strides(dim, format_version, stride);
}

// Strides and (v3) the group section of a table whose payload (t->payload, already set) has
// `payload_bytes` bytes; `scale_group_rows` is the v3 attribute (a power of two, validated by the caller;
// ignored before v3). The group section is the last 12 * ceil(R / G) bytes of the payload.
inline void fill_layout(DeviceTable* t, uint64_t payload_bytes, int64_t format_version, int64_t scale_group_rows) {
  fill_strides(t->dim, t->stride, format_version);
  t->group_scales = nullptr;
  t->group_shift = -1;
  if (format_version < 3) return;
  int shift = 0;
  while ((int64_t{1} << shift) < scale_group_rows) ++shift;
  t->group_shift = shift;
  const uint64_t group_bytes = shark_format::group_section_bytes(t->num_rows, shift);
  // A payload too short for its groups fails validation; no pointer before the payload meanwhile.
  if (t->payload && payload_bytes >= group_bytes) t->group_scales = t->payload + (payload_bytes - group_bytes);
}

}  // namespace shark_cuda
