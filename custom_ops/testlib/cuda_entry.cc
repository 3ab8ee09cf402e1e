// C entry points over the CUDA launchers, for the ctypes GPU harness (tests/test_cuda.py,
// benchmarks/gpu/verify_and_bench.py). Device pointers; launched on the caller's stream; no sync.
#include <cuda_runtime_api.h>

#include "../cuda/lookup_cuda.h"
#include "flat_args.h"

extern "C" {

int shark_cuda_gather_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                         uint64_t out_stride, void* err_slot, void* stream) {
  if (!shark_test::group_args_ok(true, format_version, num_rows, payload_bytes, scale_group_rows)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const auto t = shark_test::make_table(payload, meta, default_row, num_rows, dim, uniform_tier, format_version,
                                        payload_bytes, scale_group_rows);
  auto p = shark_test::make_gather(indices, index_is_64, count, out, out_half);
  p.rows_per_sample = rows_per_sample;
  p.out_stride = out_stride;
  return static_cast<int>(shark_cuda::gather(t, p, static_cast<shark_cuda::ErrorSlot*>(err_slot),
                                             static_cast<cudaStream_t>(stream)));
}

// Without SHARK_GROUP_ARGS: format v1 and v2 only (the _ex call refuses v3 with payload_bytes 0).
int shark_cuda_gather_strided(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample, uint64_t out_stride,
                              void* err_slot, void* stream) {
  return shark_cuda_gather_ex(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, 0, 0, indices,
                              index_is_64, count, out, out_half, rows_per_sample, out_stride, err_slot, stream);
}

int shark_cuda_gather(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, void* err_slot, void* stream) {
  return shark_cuda_gather_strided(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, indices,
                                   index_is_64, count, out, out_half, 1, 0, err_slot, stream);
}

int shark_cuda_bag_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, void* err_slot,
                      void* stream) {
  if (!shark_test::group_args_ok(true, format_version, num_rows, payload_bytes, scale_group_rows)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const auto t = shark_test::make_table(payload, meta, default_row, num_rows, dim, uniform_tier, format_version,
                                        payload_bytes, scale_group_rows);
  auto p = shark_test::make_bag(indices, index_is_64, n_indices, offsets, offsets_is_64, n_offsets,
                                include_last_offset, bag_len, n_bags, weights, mode, padding_idx, out, out_half);
  p.out_stride = out_stride;
  return static_cast<int>(shark_cuda::embedding_bag(t, p, static_cast<shark_cuda::ErrorSlot*>(err_slot),
                                                    static_cast<cudaStream_t>(stream)));
}

int shark_cuda_bag_strided(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, void* err_slot, void* stream) {
  return shark_cuda_bag_ex(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, 0, 0, indices,
                           index_is_64, n_indices, offsets, offsets_is_64, n_offsets, include_last_offset, bag_len,
                           n_bags, weights, mode, padding_idx, out, out_half, out_stride, err_slot, stream);
}

int shark_cuda_bag(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, void* err_slot, void* stream) {
  return shark_cuda_bag_strided(payload, meta, default_row, num_rows, dim, uniform_tier, format_version, indices,
                                index_is_64, n_indices, offsets, offsets_is_64, n_offsets, include_last_offset, bag_len,
                                n_bags, weights, mode, padding_idx, out, out_half, 0, err_slot, stream);
}

const char* shark_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

int shark_cuda_runtime_version(void) {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : -1;
}

int shark_cuda_driver_version(void) {
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : -1;
}

}  // extern "C"
