#include "embedding_bag_cpu.h"

#include <atomic>
#include <sstream>
#include <vector>

#include "cpu_features.h"
#include "isa_kernels.h"

namespace shark {
namespace {

constexpr uint64_t kBagTaskLookups = 2048;   // a task closes after this many lookups ...
constexpr uint64_t kBagTaskMaxBags = 1024;   // ... or this many bags

}  // namespace

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

namespace {

// Indices after the last bag (include_last_offset with offsets[-1] < len(indices)) belong to no bag and
// are never read as rows, but an out-of-range one is still an error, as everywhere else.
LookupError check_trailing_indices(const TableView& t, const BagArgs& a) {
  LookupError err;
  const uint64_t first = a.n_bags == 0 ? 0 : a.bounds[a.n_bags];
  for (uint64_t k = first; k < a.n_indices; ++k) {
    const int64_t v = read_index(a.indices, a.index_type, k);
    if (v < 0 || static_cast<uint64_t>(v) >= t.num_rows) {
      err.position = k;
      err.value = v;
      return err;
    }
  }
  return err;
}

}  // namespace

LookupError embedding_bag_cpu(const TableView& t, const BagArgs& a, ParallelFor& pf) {
  LookupError err;
  if (a.n_bags == 0) return check_trailing_indices(t, a);

  // Partition the bags into tasks of about kBagTaskLookups lookups.
  std::vector<uint64_t> task_bags;
  task_bags.push_back(0);
  uint64_t start_k = a.bounds[0];
  for (uint64_t b = 0; b < a.n_bags; ++b) {
    const uint64_t bags_in_task = b + 1 - task_bags.back();
    if (a.bounds[b + 1] - start_k >= kBagTaskLookups || bags_in_task >= kBagTaskMaxBags) {
      task_bags.push_back(b + 1);
      start_k = a.bounds[b + 1];
    }
  }
  if (task_bags.back() != a.n_bags) task_bags.push_back(a.n_bags);
  const uint64_t n_tasks = task_bags.size() - 1;

  std::vector<float> heap_scratch;
  if (a.out_type == OutType::kFloat16 && t.dim > kBagStackAcc) heap_scratch.resize(n_tasks * t.dim);

  TaskFn fn = nullptr;
  const bool weighted = a.weights != nullptr;
#if SHARK_X86_AVX2_PATH
  if (cpu_isa() == CpuIsa::kAvx2 && !a.generic_only) fn = avx2::select_bag(t.uniform_tier, t.dim, a.index_type, a.out_type, weighted);
#endif
  if (!fn) fn = portable::select_bag(t.uniform_tier, t.dim, a.index_type, a.out_type, weighted);

  std::atomic<uint64_t> first_error{kNoError};
  BagJob job{&t,     a.indices,         a.bounds,         a.weights,           a.padding_idx,
             a.mode == BagMode::kMean, a.out, t.dim, task_bags.data(), heap_scratch.data(), &first_error};
  if (n_tasks == 1) {
    fn(&job, 0);
  } else {
    pf.run(static_cast<size_t>(n_tasks), fn, &job);
  }
  err.position = first_error.load();
  if (!err.ok()) {
    err.value = read_index(a.indices, a.index_type, err.position);
    return err;
  }
  return check_trailing_indices(t, a);
}

}  // namespace shark
