// The CUDA variants of RowwiseDequantGather / RowwiseDequantEmbeddingBag / RowwiseDequantMultiLookup
// (CUDAExecutionProvider), next to the CPU ones in the same domain and in the same files (gather_op.cc,
// embedding_bag_op.cc, multi_lookup_op.cc); this file and cuda_adapter.h hold what they share. ORT adapter only: the kernels are the
// ORT-free launchers in custom_ops/cuda/ (lookup_cuda.h). The multi-lookup variant shares its attribute
// parsing, input checks and messages with the CPU op (multi_lookup.h) and launches the gather / bag
// kernels once per field into the field's column block of the one output (GatherParams / BagParams
// out_stride), one error slot per field, all read back with one copy after the last launch.
//
// Streams. Every CUDA call of a run goes on ORT's compute stream (KernelContext_GetGPUComputeStream;
// microsoft/onnxruntime #6952, #17412). No default-stream work, no device-wide synchronization in a run.
//
// Table validation. The three table tensors are ordinary (device-memory) inputs: the kernels need
// row_meta and default_row on the device. validate_table() reads the tensors' shapes and, for a mixed
// table, row_meta's content (0.5 byte per row: 5 MB for 10M rows) -- never the payload. When the table
// tensors are constant initializers (the exported models' case) that happens once, at session creation
// (one synchronous copy of row_meta to the host after a device synchronize -- session creation only),
// and is then cached by the tensors' device pointers and sizes, exactly as the CPU kernels cache it.
// Tables fed as graph inputs are validated on every run: a copy of row_meta on the compute stream and a
// stream synchronize (the slow path, as on the CPU where it is a full pass over row_meta).
//
// Errors. The kernels never read outside the table: an out-of-range index gives a zero row (gather) or
// is skipped (bag), bad offsets are clamped, and the lowest bad position goes to a 16-byte device
// ErrorSlot (atomicMin; a multi lookup has one per field). After the launches the kernel copies the
// slots into pinned host memory on the compute stream and synchronizes that stream (cudaStreamSynchronize,
// never the device): the run then fails with the same message as the CPU kernel (node, field, value,
// position, R; a multi lookup reports bad offsets of any field before out-of-range indices, as the CPU op). Cost: one 16-byte memset and
// one 16-byte copy on the stream, and the host waits for the stream to drain (a few microseconds plus the
// queued GPU work: ORT cannot enqueue the nodes after this one while it runs). The readback is skipped
// only while the stream is being captured into a CUDA graph, where a synchronize is illegal (bad indices
// then read as zero rows / skipped entries: validate inputs before replaying a captured graph). No switch
// turns the check off.
//
// Runtime. The CUDA runtime is linked statically (it loads libcuda.so.1 itself on first use), so the
// library loads and runs its CPU kernels on hosts without a GPU or CUDA libraries. The CUDA variants are
// registered only when the driver supports this library's CUDA runtime version (else the nodes stay on
// the CPU EP, and a line on stderr says why when a driver was found); the session config entry
// shark_export.cuda=0 never registers them, =force always does (for tests).
#include "cuda_adapter.h"

#include <cstdio>

namespace shark_ort {

bool cuda_ops_enabled(const shark::KernelConfig& config) {
  if (config.cuda < 0) return false;
  if (config.cuda > 0) return true;
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) return false;  // no NVIDIA driver: CPU-only host
  if (driver < CUDART_VERSION) {
    std::fprintf(stderr,
                 "shark_export: the NVIDIA driver supports CUDA %d.%d, the library's CUDA kernels need %d.%d or newer: "
                 "RowwiseDequantGather/RowwiseDequantEmbeddingBag/RowwiseDequantMultiLookup run on the CPU execution provider\n",
                 driver / 1000, (driver % 1000) / 10, CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10);
    return false;
  }
  return true;
}

}  // namespace shark_ort
