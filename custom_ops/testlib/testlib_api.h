// C ABI of the test library (libshark_export_testlib.so, built with -DSHARK_BUILD_TESTS=ON; never part
// of the production library). Used from Python through ctypes by tests/test_cuda.py and
// benchmarks/gpu/verify_and_bench.py.
//
//   shark_emu_*   the CUDA kernels' per-group code (custom_ops/cuda/lookup_body.h) run on the host, lane
//                 by lane, on host pointers: always built, no GPU or CUDA toolkit needed.
//   shark_cuda_*  the CUDA launchers (custom_ops/cuda/lookup_cuda.h) on device pointers, enqueued on
//                 `stream` (a cudaStream_t, e.g. torch.cuda.current_stream().cuda_stream; 0 = legacy
//                 default stream); `err_slot` is a device buffer of 2 uint64 (ErrorSlot), reset by the
//                 launcher and filled by the kernel. Return a cudaError_t (0 = success). Built only with
//                 SHARK_WITH_CUDA.
//
// Tables: payload (uint8), meta (uint64 [blocks, 4], NULL for a uniform table), default_row (float32
// [dim], or NULL when no row is dropped), num_rows, dim, uniform_tier (0..5, -1 mixed), format_version
// (1 or 2: the row strides; 3 only through the *_ex entry points, which also take SHARK_GROUP_ARGS:
// payload_bytes, the payload's length, which ends with the v3 group section, and scale_group_rows, the
// attribute; both ignored before v3). The table must be valid (FORMAT.md): validation
// is the ORT adapter's job, not the launchers'. index_is_64 / offsets_is_64 / out_half are 0 or 1.
// The entry points without _ex refuse format_version 3 (emu -3, CUDA cudaErrorInvalidValue), as do the
// _ex ones a scale_group_rows that is not a power of two in 1 .. 2^40 or a payload shorter than its groups.
// emu err2[0] = lowest bad index position, err2[1] = lowest bad offsets position (~0 = none).
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define SHARK_TEST_API __declspec(dllexport)
#else
#define SHARK_TEST_API __attribute__((visibility("default")))
#endif

#define SHARK_TABLE_ARGS                                                                        \
  const uint8_t *payload, const uint64_t *meta, const float *default_row, uint64_t num_rows, \
      uint32_t dim, int32_t uniform_tier, int32_t format_version

#define SHARK_GROUP_ARGS uint64_t payload_bytes, int64_t scale_group_rows

#define SHARK_GATHER_ARGS \
  const void *indices, int index_is_64, uint64_t count, void *out, int out_half

#define SHARK_BAG_ARGS                                                                                  \
  const void *indices, int index_is_64, uint64_t n_indices, const void *offsets, int offsets_is_64,   \
      uint64_t n_offsets, int include_last_offset, uint64_t bag_len, uint64_t n_bags, const float *weights, \
      int mode, int64_t padding_idx, void *out, int out_half

#ifdef __cplusplus
extern "C" {
#endif

SHARK_TEST_API uint32_t shark_test_group_size(uint32_t dim);
SHARK_TEST_API int shark_emu_gather(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t *err2);
SHARK_TEST_API int shark_emu_bag(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t *err2);
// The same with an output layout (GatherParams / BagParams in custom_ops/cuda/device_table.h): a field's
// column block of a wider [B, W] output (out = the block's first column, out_stride = W; 0 = rows back to
// back). The plain entry points are these with rows_per_sample = 1, out_stride = 0. A layout whose rows
// would overlap is refused: the emulation returns -2, the launchers cudaErrorInvalidValue.
SHARK_TEST_API int shark_emu_gather_strided(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                                            uint64_t out_stride, uint64_t *err2);
SHARK_TEST_API int shark_emu_bag_strided(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, uint64_t *err2);
// Any format version (v3: scale groups), with the strided layouts above.
SHARK_TEST_API int shark_emu_gather_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                                       uint64_t out_stride, uint64_t *err2);
SHARK_TEST_API int shark_emu_bag_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_BAG_ARGS, uint64_t out_stride,
                                    uint64_t *err2);
SHARK_TEST_API int shark_testlib_has_cuda(void);
// Word loads the host emulation made at addresses the GPU would reject (misaligned), on this thread.
SHARK_TEST_API uint64_t shark_emu_misaligned_loads(void);

SHARK_TEST_API int shark_cuda_gather(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, void *err_slot, void *stream);
SHARK_TEST_API int shark_cuda_bag(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, void *err_slot, void *stream);
SHARK_TEST_API int shark_cuda_gather_strided(SHARK_TABLE_ARGS, SHARK_GATHER_ARGS, uint64_t rows_per_sample,
                                             uint64_t out_stride, void *err_slot, void *stream);
SHARK_TEST_API int shark_cuda_bag_strided(SHARK_TABLE_ARGS, SHARK_BAG_ARGS, uint64_t out_stride, void *err_slot,
                                          void *stream);
SHARK_TEST_API int shark_cuda_gather_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_GATHER_ARGS,
                                        uint64_t rows_per_sample, uint64_t out_stride, void *err_slot, void *stream);
SHARK_TEST_API int shark_cuda_bag_ex(SHARK_TABLE_ARGS, SHARK_GROUP_ARGS, SHARK_BAG_ARGS, uint64_t out_stride,
                                     void *err_slot, void *stream);
SHARK_TEST_API const char *shark_cuda_error_string(int err);
SHARK_TEST_API int shark_cuda_runtime_version(void);
SHARK_TEST_API int shark_cuda_driver_version(void);

#ifdef __cplusplus
}
#endif
