// RowwiseDequantGather on the CPU: out[i, :] = row(indices[i]). No ORT header.
#pragma once

#include <cstdint>

#include "lookup.h"
#include "parallel.h"
#include "table.h"

namespace shark {

struct GatherArgs {
  const void* indices = nullptr;
  IndexType index_type = IndexType::kInt64;
  uint64_t count = 0;  // number of indices (product of the indices shape)
  void* out = nullptr;  // [count, dim] of float or fp16 (uint16 bits)
  OutType out_type = OutType::kFloat32;
  int stream = -1;  // non-temporal output stores: -1 auto (outputs of stream_bytes or more), 0 never, 1 when possible
  uint64_t stream_bytes = uint64_t{8} << 20;
  bool generic_only = false;  // the portable path even where AVX2 runs
};

// `t` must have passed validate_table(). Every index is range-checked while the rows are copied;
// on error the output content is unspecified and the lowest bad position is returned.
LookupError gather_cpu(const TableView& t, const GatherArgs& a, ParallelFor& pf);

// Lookups per parallel task (exposed for tests/benchmarks).
constexpr uint64_t kGatherChunk = 1024;

// Whether output rows of `dim` elements starting at `first_row`, `row_stride` elements apart, go out with
// non-temporal stores: `stream` -1 decides by size (out_bytes >= stream_bytes), 0 never, 1 when possible.
bool stream_output(uint32_t dim, OutType out_type, const void* first_row, uint64_t row_stride, uint64_t out_bytes,
                   int stream, uint64_t stream_bytes);

}  // namespace shark
