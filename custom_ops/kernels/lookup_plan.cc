#include "lookup_plan.h"

#include "cpu_features.h"
#include "half.h"

namespace shark {
namespace {

constexpr uint64_t kBagTaskLookups = 2048;  // a bag task closes after this many lookups ...
constexpr uint64_t kBagTaskMaxBags = 1024;  // ... or this many bags

#if SHARK_X86_AVX2_PATH
bool use_avx2(bool generic_only) { return cpu_isa() == CpuIsa::kAvx2 && !generic_only; }
#endif

uint64_t stride_of(const OutLayout& o, uint32_t dim) { return o.out_stride ? o.out_stride : o.per_sample * dim; }

}  // namespace

GatherPlan::GatherPlan(const TableView& t, const void* indices, IndexType index_type, uint64_t count,
                       const OutLayout& out, bool stream, bool generic_only)
    : index_type_(index_type) {
  TaskFn fn = nullptr;
#if SHARK_X86_AVX2_PATH
  if (use_avx2(generic_only)) fn = avx2::select_gather(t.uniform_tier, index_type, out.type, stream);
#else
  (void)stream;  // builds without the AVX2 loops (e.g. aarch64) have only the portable path
  (void)generic_only;
#endif
  if (!fn) fn = portable::select_gather(t.uniform_tier, index_type, out.type, false);
  fn_ = fn;
  const void* dflt_out = t.default_row;
  if (out.type == OutType::kFloat16 && t.default_row) {
    dflt16_.resize(t.dim);
    for (uint32_t j = 0; j < t.dim; ++j) dflt16_[j] = float_to_half(t.default_row[j]);
    dflt_out = dflt16_.data();
  }
  job_ = GatherJob{&t, indices, count, out.out, dflt_out, kGatherChunk, out.per_sample, stride_of(out, t.dim),
                   &first_error_};
  n_tasks_ = (count + kGatherChunk - 1) / kGatherChunk;
  lookups_ = count;
}

LookupError GatherPlan::error() const {
  LookupError err;
  err.position = first_error_.load();
  if (!err.ok()) err.value = read_index(job_.indices, index_type_, err.position);
  return err;
}

BagPlan::BagPlan(const TableView& t, const BagArgs& a, const OutLayout& out) : t_(&t), args_(a) {
  // Partition the bags into tasks of about kBagTaskLookups lookups.
  if (a.n_bags > 0) {
    task_bags_.push_back(0);
    uint64_t start_k = a.bounds[0];
    for (uint64_t b = 0; b < a.n_bags; ++b) {
      const uint64_t bags_in_task = b + 1 - task_bags_.back();
      if (a.bounds[b + 1] - start_k >= kBagTaskLookups || bags_in_task >= kBagTaskMaxBags) {
        task_bags_.push_back(b + 1);
        start_k = a.bounds[b + 1];
      }
    }
    if (task_bags_.back() != a.n_bags) task_bags_.push_back(a.n_bags);
    n_tasks_ = task_bags_.size() - 1;
    lookups_ = a.bounds[a.n_bags] - a.bounds[0] + a.n_bags;  // + one output row per bag
  }
  if (out.type == OutType::kFloat16 && t.dim > kBagStackAcc) heap_scratch_.resize(n_tasks_ * t.dim);
  const bool weighted = a.weights != nullptr;
  TaskFn fn = nullptr;
#if SHARK_X86_AVX2_PATH
  if (use_avx2(a.generic_only)) fn = avx2::select_bag(t.uniform_tier, t.dim, a.index_type, out.type, weighted);
#endif
  if (!fn) fn = portable::select_bag(t.uniform_tier, t.dim, a.index_type, out.type, weighted);
  fn_ = fn;
  job_ = BagJob{&t,      a.indices, a.bounds, a.weights, a.padding_idx, a.mode == BagMode::kMean, out.out,
                out.out_stride ? out.out_stride : t.dim, t.dim, task_bags_.data(), heap_scratch_.data(),
                &first_error_};
}

LookupError BagPlan::error() const {
  LookupError err;
  err.position = first_error_.load();
  if (!err.ok()) {
    err.value = read_index(args_.indices, args_.index_type, err.position);
    return err;
  }
  // Indices after the last bag (include_last_offset with offsets[-1] < len(indices)) belong to no bag and
  // are never read as rows, but an out-of-range one is still an error, as everywhere else.
  const uint64_t first = args_.n_bags == 0 ? 0 : args_.bounds[args_.n_bags];
  for (uint64_t k = first; k < args_.n_indices; ++k) {
    const int64_t v = read_index(args_.indices, args_.index_type, k);
    if (v < 0 || static_cast<uint64_t>(v) >= t_->num_rows) {
      err.position = k;
      err.value = v;
      return err;
    }
  }
  return err;
}

namespace {
void plan_task(void* p, size_t task) { static_cast<LookupPlan*>(p)->run_task(task); }
}  // namespace

void run_plan(LookupPlan& plan, ParallelFor& pf) {
  if (plan.n_tasks() == 1) {
    plan.run_task(0);
  } else if (plan.n_tasks() > 1) {
    pf.run(static_cast<size_t>(plan.n_tasks()), &plan_task, &plan);
  }
}

}  // namespace shark
