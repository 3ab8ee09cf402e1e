#include "gather_cpu.h"

#include <atomic>
#include <vector>

#include "cpu_features.h"
#include "half.h"
#include "isa_kernels.h"

namespace shark {

LookupError gather_cpu(const TableView& t, const GatherArgs& a, ParallelFor& pf) {
  LookupError err;
  if (a.count == 0) return err;
  TaskFn fn = nullptr;
#if SHARK_X86_AVX2_PATH
  if (cpu_isa() == CpuIsa::kAvx2 && !a.generic_only) {
    // Large outputs go out with non-temporal stores (no read-for-ownership of the output lines,
    // which would not stay in cache anyway); needs whole 8-lane rows and an aligned output.
    const uint64_t out_bytes = a.count * t.dim * (a.out_type == OutType::kFloat32 ? 4 : 2);
    const bool stream = t.dim % 8 == 0 && (reinterpret_cast<uintptr_t>(a.out) & 15) == 0 &&
                        (a.stream < 0 ? out_bytes >= a.stream_bytes : a.stream > 0);
    fn = avx2::select_gather(t.uniform_tier, a.index_type, a.out_type, stream);
  }
#endif
  if (!fn) fn = portable::select_gather(t.uniform_tier, a.index_type, a.out_type, false);

  std::vector<uint16_t> dflt16;
  const void* dflt_out = t.default_row;
  if (a.out_type == OutType::kFloat16 && t.default_row) {
    dflt16.resize(t.dim);
    for (uint32_t j = 0; j < t.dim; ++j) dflt16[j] = float_to_half(t.default_row[j]);
    dflt_out = dflt16.data();
  }
  std::atomic<uint64_t> first_error{kNoError};
  GatherJob job{&t, a.indices, a.count, a.out, dflt_out, kGatherChunk, &first_error};
  const uint64_t n_tasks = (a.count + kGatherChunk - 1) / kGatherChunk;
  if (n_tasks == 1) {
    fn(&job, 0);
  } else {
    pf.run(static_cast<size_t>(n_tasks), fn, &job);
  }
  err.position = first_error.load();
  if (!err.ok()) err.value = read_index(a.indices, a.index_type, err.position);
  return err;
}

}  // namespace shark
