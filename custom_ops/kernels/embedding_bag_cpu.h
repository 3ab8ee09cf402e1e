// RowwiseDequantEmbeddingBag on the CPU (torch.nn.EmbeddingBag semantics). No ORT header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lookup.h"
#include "parallel.h"
#include "table.h"

namespace shark {

enum class BagMode : int { kSum = 0, kMean = 1 };

struct BagArgs {
  const void* indices = nullptr;
  IndexType index_type = IndexType::kInt64;
  uint64_t n_indices = 0;
  // Bag b covers indices[bounds[b] .. bounds[b + 1]); bounds has n_bags + 1 non-decreasing entries,
  // the last <= n_indices (build it with bag_bounds_from_offsets / bag_bounds_fixed).
  const uint64_t* bounds = nullptr;
  uint64_t n_bags = 0;
  const float* weights = nullptr;  // per_sample_weights (same length as indices) or null; sum mode only
  BagMode mode = BagMode::kSum;
  int64_t padding_idx = -1;  // entries equal to it neither add nor count; -1 for none
  void* out = nullptr;       // [n_bags, dim] float or fp16 (uint16 bits)
  OutType out_type = OutType::kFloat32;
  bool generic_only = false;  // the portable path even where AVX2 runs
};

// Bag bounds from a 1-D `offsets` tensor (torch convention). Returns "" or an error message that
// names the offending offset values.
std::string bag_bounds_from_offsets(const void* offsets, IndexType offsets_type, uint64_t n_offsets,
                                    bool include_last_offset, uint64_t n_indices, std::vector<uint64_t>* bounds);

// Bag bounds of 2-D indices [n_bags, bag_len].
void bag_bounds_fixed(uint64_t n_bags, uint64_t bag_len, std::vector<uint64_t>* bounds);

// Sums (or averages) each bag's rows in float32, in index order (acc += row, or acc += w * row with a
// separate multiply and add); mean divides the sum by the number of non-padding entries; empty bags
// give zeros. `t` must have passed validate_table(). Every index is range-checked, including indices
// after the last bag (include_last_offset), which belong to no bag.
LookupError embedding_bag_cpu(const TableView& t, const BagArgs& a, ParallelFor& pf);

}  // namespace shark
