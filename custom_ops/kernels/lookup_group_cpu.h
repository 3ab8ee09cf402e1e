// RowwiseDequantMultiLookup on the CPU: the lookups of several fields (each its own table, gather or bag)
// written straight into one output [n_samples, width]: field k fills columns [column_k, column_k + w_k) of
// every row (w_k = per_sample * dim for a gather, dim for a bag). All fields run as one set of parallel
// tasks. No ORT header.
#pragma once

#include <cstdint>
#include <vector>

#include "embedding_bag_cpu.h"
#include "gather_cpu.h"
#include "lookup.h"
#include "parallel.h"
#include "table.h"

namespace shark {

// Below this many rows in all fields together, the tasks run on the calling thread.
constexpr uint64_t kGroupInlineLookups = 2048;

struct GroupField {
  const TableView* table = nullptr;  // validated
  bool is_bag = false;
  // gather: indices, index_type and count (= n_samples * per_sample); out, out_type and the rest unused
  GatherArgs gather;
  uint64_t per_sample = 1;
  // bag: as for embedding_bag_cpu, with n_bags = n_samples; out and out_type unused
  BagArgs bag;
  uint64_t column = 0;  // element offset of the field's block in an output row
};

struct GroupArgs {
  uint64_t n_samples = 0;
  uint64_t width = 0;  // elements per output row: the sum of the fields' blocks
  void* out = nullptr;
  OutType out_type = OutType::kFloat32;
  int stream = -1;  // as GatherArgs::stream
  uint64_t stream_bytes = uint64_t{8} << 20;
  bool generic_only = false;
};

struct GroupError {
  size_t field = 0;  // the first field (in order) with an out-of-range index
  LookupError error;
  bool ok() const { return error.ok(); }
};

// Every field's table must have passed validate_table(), and its inputs match n_samples (the ORT layer
// checks). Every index of every field is range-checked.
GroupError lookup_group_cpu(const std::vector<GroupField>& fields, const GroupArgs& a, ParallelFor& pf);

}  // namespace shark
