#include "gather_cpu.h"

#include "lookup_plan.h"

namespace shark {

bool stream_output(uint32_t dim, OutType out_type, const void* first_row, uint64_t row_stride, uint64_t out_bytes,
                   int stream, uint64_t stream_bytes) {
  // Large outputs go out with non-temporal stores (no read-for-ownership of the output lines, which would
  // not stay in cache anyway); needs whole 8-lane rows and 16-byte aligned rows.
  const uint64_t esize = out_type == OutType::kFloat32 ? 4 : 2;
  const bool aligned = (reinterpret_cast<uintptr_t>(first_row) & 15) == 0 && (row_stride * esize) % 16 == 0;
  return dim % 8 == 0 && aligned && (stream < 0 ? out_bytes >= stream_bytes : stream > 0);
}

LookupError gather_cpu(const TableView& t, const GatherArgs& a, ParallelFor& pf) {
  if (a.count == 0) return LookupError{};
  const uint64_t out_bytes = a.count * t.dim * (a.out_type == OutType::kFloat32 ? 4 : 2);
  OutLayout out;
  out.out = a.out;
  out.type = a.out_type;
  const bool stream = stream_output(t.dim, a.out_type, a.out, t.dim, out_bytes, a.stream, a.stream_bytes);
  GatherPlan plan(t, a.indices, a.index_type, a.count, out, stream, a.generic_only);
  run_plan(plan, pf);
  return plan.error();
}

}  // namespace shark
