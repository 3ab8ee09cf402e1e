#include "embedding_bag_cpu.h"

#include <sstream>
#include <vector>

#include "lookup_plan.h"

namespace shark {

std::string bag_bounds_from_offsets(const void* offsets, IndexType ot, uint64_t n_offsets, bool include_last_offset,
                                    uint64_t n_indices, std::vector<uint64_t>* bounds) {
  std::ostringstream e;
  if (include_last_offset && n_offsets == 0) {
    e << "offsets is empty but include_last_offset=1 needs at least one offset (B + 1 entries)";
    return e.str();
  }
  const uint64_t n_bags = include_last_offset ? n_offsets - 1 : n_offsets;
  bounds->assign(n_bags + 1, 0);
  int64_t prev = 0;
  for (uint64_t i = 0; i < n_offsets; ++i) {
    const int64_t o = read_index(offsets, ot, i);
    if (i == 0 && o != 0) {
      e << "offsets[0] is " << o << ", must be 0";
      return e.str();
    }
    if (o < prev) {
      e << "offsets[" << i << "] = " << o << " is less than offsets[" << i - 1 << "] = " << prev
        << " (offsets must be non-decreasing)";
      return e.str();
    }
    if (static_cast<uint64_t>(o) > n_indices) {
      e << "offsets[" << i << "] = " << o << " is greater than the number of indices " << n_indices;
      return e.str();
    }
    (*bounds)[i] = static_cast<uint64_t>(o);
    prev = o;
  }
  if (!include_last_offset) (*bounds)[n_bags] = n_indices;
  return std::string();
}

void bag_bounds_fixed(uint64_t n_bags, uint64_t bag_len, std::vector<uint64_t>* bounds) {
  bounds->resize(n_bags + 1);
  for (uint64_t b = 0; b <= n_bags; ++b) (*bounds)[b] = b * bag_len;
}

LookupError embedding_bag_cpu(const TableView& t, const BagArgs& a, ParallelFor& pf) {
  OutLayout out;
  out.out = a.out;
  out.type = a.out_type;
  BagPlan plan(t, a, out);
  run_plan(plan, pf);
  return plan.error();
}

}  // namespace shark
