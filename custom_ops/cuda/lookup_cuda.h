// ORT-free CUDA launchers of the two lookup ops. Plain C++ signatures: a validated table of device
// pointers, the lookup's device pointers, a device ErrorSlot and the stream to launch on (the caller's
// stream: ORT's compute stream in the ORT adapter, torch's current stream in the GPU harness). Nothing
// here synchronizes: the launchers enqueue `cudaMemsetAsync(err, 0xff)` and the kernel on `stream` and
// return the launch status. The caller reads `err` back after the kernel, on the same stream.
//
// Semantics: those of the CPU kernels (docs/FORMAT.md, custom_ops/README.md), bit for bit (gathers and
// bags alike: each output element is summed in index order with the same float32 operations). An index
// outside [0, R) is never read: a gathered row becomes zeros, a bag skips the entry (it neither adds
// nor counts), and the lowest bad flat position goes to err->index_pos. Bad offsets (1-D bags) are
// clamped into [0, n_indices] for reading and the lowest bad i goes to err->offset_pos. Either way the
// caller must treat the output as invalid when a slot word is not kNoError.
//
// Output layout: rows back to back by default; GatherParams / BagParams `out_stride` (and the gather's
// `rows_per_sample`) let a field of RowwiseDequantMultiLookup write its column block of a wider [B, W] output
// (out = the block's first column, out_stride = W); nothing outside the block's columns is written. A layout
// whose rows would overlap (out_stride < rows_per_sample * dim) is refused: cudaErrorInvalidValue, as is a
// v3 table without its group section (DeviceTable::group_scales; fill_layout sets it).
//
// Buffers must be naturally aligned (payload 4 bytes, row_meta 8, indices/offsets their element size,
// output its element size; CUDA allocations are): otherwise cudaErrorMisalignedAddress, nothing launched.
// Wider loads/stores (8, 16 bytes) are used where the address allows, per unit.
#pragma once

#include <cuda_runtime_api.h>

#include "device_table.h"

namespace shark_cuda {

cudaError_t gather(const DeviceTable& t, const GatherParams& p, ErrorSlot* err, cudaStream_t stream);
cudaError_t embedding_bag(const DeviceTable& t, const BagParams& p, ErrorSlot* err, cudaStream_t stream);

}  // namespace shark_cuda
