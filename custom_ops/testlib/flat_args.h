// The test library's flat C arguments as the launchers' structs.
#pragma once

#include "../cuda/device_table.h"
#include "testlib_api.h"

namespace shark_test {

// payload_bytes and scale_group_rows: v3 only (the group section at the payload's end).
inline shark_cuda::DeviceTable make_table(const uint8_t* payload, const uint64_t* meta, const float* default_row,
                                          uint64_t num_rows, uint32_t dim, int32_t uniform_tier,
                                          int32_t format_version, uint64_t payload_bytes = 0,
                                          int64_t scale_group_rows = 0) {
  shark_cuda::DeviceTable t{};
  t.payload = payload;
  t.meta = uniform_tier == shark_cuda::kMixed ? meta : nullptr;
  t.default_row = default_row;
  t.num_rows = num_rows;
  t.dim = dim;
  t.uniform_tier = uniform_tier;
  shark_cuda::fill_layout(&t, payload_bytes, format_version, scale_group_rows);
  return t;
}

// What the entry points refuse before any lookup (see testlib_api.h): a v3 table from an entry point
// without SHARK_GROUP_ARGS (`has_groups` false), a bad scale_group_rows, or a payload shorter than its groups.
inline bool group_args_ok(bool has_groups, int32_t format_version, uint64_t num_rows, uint64_t payload_bytes,
                          int64_t scale_group_rows) {
  if (format_version < 3) return true;
  if (!has_groups || scale_group_rows < 1 || scale_group_rows > (int64_t{1} << 40) ||
      (scale_group_rows & (scale_group_rows - 1)) != 0 || num_rows == 0) {
    return false;
  }
  int shift = 0;
  while ((int64_t{1} << shift) < scale_group_rows) ++shift;
  return payload_bytes >= shark_format::group_section_bytes(num_rows, shift);
}

inline shark_cuda::IndexKind kind(int is_64) { return is_64 ? shark_cuda::IndexKind::kInt64 : shark_cuda::IndexKind::kInt32; }
inline shark_cuda::OutKind out_kind(int half) { return half ? shark_cuda::OutKind::kFloat16 : shark_cuda::OutKind::kFloat32; }

inline shark_cuda::GatherParams make_gather(const void* indices, int index_is_64, uint64_t count, void* out, int out_half) {
  return shark_cuda::GatherParams{indices, kind(index_is_64), count, out, out_kind(out_half)};
}

inline shark_cuda::BagParams make_bag(const void* indices, int index_is_64, uint64_t n_indices, const void* offsets,
                                      int offsets_is_64, uint64_t n_offsets, int include_last_offset, uint64_t bag_len,
                                      uint64_t n_bags, const float* weights, int mode, int64_t padding_idx, void* out,
                                      int out_half) {
  shark_cuda::BagParams p{};
  p.indices = indices;
  p.index_kind = kind(index_is_64);
  p.n_indices = n_indices;
  p.offsets = offsets;
  p.offsets_kind = kind(offsets_is_64);
  p.n_offsets = n_offsets;
  p.include_last_offset = include_last_offset;
  p.bag_len = bag_len;
  p.n_bags = n_bags;
  p.weights = weights;
  p.mode = mode;
  p.padding_idx = padding_idx;
  p.out = out;
  p.out_kind = out_kind(out_half);
  return p;
}

}  // namespace shark_test
