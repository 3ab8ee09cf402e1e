// The CUDA kernels' per-group bodies (custom_ops/cuda/lookup_body.h) run on the host: each "launch"
// visits every group and, within it, every lane in turn. The lanes of a group share nothing, so this
// computes exactly what the kernels compute on the GPU (same loads, same float operations; only
// atomicMin becomes a plain min). Host pointers.
#define SHARK_EMU_CHECK_ALIGNMENT 1  // count word loads the GPU would reject (see row_decode.h)
#include "../cuda/lookup_body.h"
#include "flat_args.h"

namespace {

using namespace shark_cuda;

template <int TIER, typename IdxT, typename OutT>
void emu_gather(const DeviceTable& t, const GatherParams& p, ErrorSlot* err) {
  const uint32_t G = group_size(t.dim);
  const GatherOut<OutT> out = gather_out<OutT>(p, t.dim);
  for (uint64_t i = 0; i < p.count; ++i)
    for (uint32_t lane = 0; lane < G; ++lane)
      gather_group<TIER, IdxT, OutT>(t, static_cast<const IdxT*>(p.indices), i, out, lane, G, err);
}

template <int TIER, typename IdxT, typename OutT>
void emu_bag(const DeviceTable& t, const BagParams& p, ErrorSlot* err) {
  if (p.offsets) {
    for (uint64_t i = 0; i < p.n_offsets; ++i) bag_check_offset(p, i, err);
    for (uint64_t k = bag_tail_start(p); k < p.n_indices; ++k) bag_check_index(t, p, k, err);
  }
  const uint32_t G = group_size(t.dim);
  for (uint64_t b = 0; b < p.n_bags; ++b)
    for (uint32_t lane = 0; lane < G; ++lane) bag_group<TIER, IdxT, OutT>(t, p, b, lane, G, err);
}

template <template <int, typename, typename> class F, typename... A>
int dispatch(int tier, int idx64, int half, A&&... a) {
  if (tier < kMixed || tier >= shark_format::kNumTiers) return -1;
  shark_format::visit_layout(tier, [&](auto t) {
    constexpr int T = decltype(t)::value;
    if (idx64) {
      half ? F<T, int64_t, uint16_t>::run(a...) : F<T, int64_t, float>::run(a...);
    } else {
      half ? F<T, int32_t, uint16_t>::run(a...) : F<T, int32_t, float>::run(a...);
    }
  });
  return 0;
}

template <int TIER, typename IdxT, typename OutT>
struct GatherF {
  static void run(const DeviceTable& t, const GatherParams& p, ErrorSlot* e) { emu_gather<TIER, IdxT, OutT>(t, p, e); }
};
template <int TIER, typename IdxT, typename OutT>
struct BagF {
  static void run(const DeviceTable& t, const BagParams& p, ErrorSlot* e) { emu_bag<TIER, IdxT, OutT>(t, p, e); }
};

int emu_gather_any(bool has_groups, SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                   uint64_t out_stride, uint64_t* err2) {
  if (!shark_test::group_args_ok(has_groups, format_version, num_rows, payload_bytes, scale_group_rows)) return -3;
  const DeviceTable t = shark_test::make_table(payload, meta, default_row, num_rows, dim, uniform_tier, format_version,
                                               payload_bytes, scale_group_rows);
  GatherParams p = shark_test::make_gather(indices, index_is_64, count, out, out_half);
  p.rows_per_sample = rows_per_sample;
  p.out_stride = out_stride;
  ErrorSlot err{kNoError, kNoError};
  // The launcher's refusal of overlapping rows (it returns before any kernel).
  if (p.count > 0 && !gather_layout_ok(p, dim)) return -2;
  const int rc = dispatch<GatherF>(uniform_tier, index_is_64, out_half, t, p, &err);
  err2[0] = err.index_pos;
  err2[1] = err.offset_pos;
  return rc;
}

int emu_bag_any(bool has_groups, SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_BAG_ARGS, uint64_t out_stride,
                uint64_t* err2) {
  if (!shark_test::group_args_ok(has_groups, format_version, num_rows, payload_bytes, scale_group_rows)) return -3;
  const DeviceTable t = shark_test::make_table(payload, meta, default_row, num_rows, dim, uniform_tier, format_version,
                                               payload_bytes, scale_group_rows);
  BagParams p = shark_test::make_bag(indices, index_is_64, n_indices, offsets, offsets_is_64, n_offsets,
                                     include_last_offset, bag_len, n_bags, weights, mode, padding_idx, out, out_half);
  p.out_stride = out_stride;
  ErrorSlot err{kNoError, kNoError};
  if (!bag_layout_ok(p, dim)) return -2;
  const int rc = dispatch<BagF>(uniform_tier, index_is_64, out_half, t, p, &err);
  err2[0] = err.index_pos;
  err2[1] = err.offset_pos;
  return rc;
}

}  // namespace

extern "C" {

uint32_t shark_test_group_size(uint32_t dim) { return shark_cuda::group_size(dim); }

int shark_emu_gather_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                        uint64_t out_stride, uint64_t* err2) {
  return emu_gather_any(true, payload, meta, default_row, num_rows, dim, uniform_tier, format_version, payload_bytes,
                        scale_group_rows, indices, index_is_64, count, out, out_half, rows_per_sample, out_stride, err2);
}

int shark_emu_gather_strided(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample, uint64_t out_stride,
                             uint64_t* err2) {
  return emu_gather_any(false, payload, meta, default_row, num_rows, dim, uniform_tier, format_version, 0, 0, indices,
                        index_is_64, count, out, out_half, rows_per_sample, out_stride, err2);
}

int shark_emu_gather(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t* err2) {
  return shark_emu_gather_strided(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, indices,
                                  index_is_64, count, out, out_half, 1, 0, err2);
}

int shark_emu_bag_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, uint64_t* err2) {
  return emu_bag_any(true, payload, meta, default_row, num_rows, dim, uniform_tier, format_version, payload_bytes,
                     scale_group_rows, indices, index_is_64, n_indices, offsets, offsets_is_64, n_offsets,
                     include_last_offset, bag_len, n_bags, weights, mode, padding_idx, out, out_half, out_stride, err2);
}

int shark_emu_bag_strided(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, uint64_t* err2) {
  return emu_bag_any(false, payload, meta, default_row, num_rows, dim, uniform_tier, format_version, 0, 0, indices,
                     index_is_64, n_indices, offsets, offsets_is_64, n_offsets, include_last_offset, bag_len, n_bags,
                     weights, mode, padding_idx, out, out_half, out_stride, err2);
}

int shark_emu_bag(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t* err2) {
  return shark_emu_bag_strided(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, indices,
                               index_is_64, n_indices, offsets, offsets_is_64, n_offsets, include_last_offset, bag_len,
                               n_bags, weights, mode, padding_idx, out, out_half, 0, err2);
}

uint64_t shark_emu_misaligned_loads(void) { return shark_cuda::emu_misaligned_loads(); }

int shark_testlib_has_cuda(void) {
#ifdef SHARK_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

}  // extern "C"
