// One table's lookups made ready to run as parallel tasks: the job, the task function chosen for the
// CPU and the table, and the first error once the tasks ran. gather_cpu / embedding_bag_cpu run one
// plan; lookup_group_cpu runs one per field of a group as one set of tasks. No ORT header.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "embedding_bag_cpu.h"
#include "gather_cpu.h"
#include "isa_kernels.h"

namespace shark {

class LookupPlan {
 public:
  virtual ~LookupPlan() = default;
  uint64_t n_tasks() const { return n_tasks_; }
  uint64_t lookups() const { return lookups_; }  // rows read (gathers: indices; bags: indices in bags)
  virtual void run_task(size_t task) = 0;
  // After every task ran: the first out-of-range index (lowest position), or ok.
  virtual LookupError error() const = 0;

 protected:
  uint64_t n_tasks_ = 0;
  uint64_t lookups_ = 0;
  std::atomic<uint64_t> first_error_{kNoError};
};

// Where a plan writes: lookup i of sample s (slot i % per_sample, s = i / per_sample) at
// out + s * out_stride + slot * dim elements; a bag is one row per sample.
struct OutLayout {
  void* out = nullptr;
  OutType type = OutType::kFloat32;
  uint64_t per_sample = 1;
  uint64_t out_stride = 0;  // elements; 0 means per_sample * dim (rows back to back)
};

class GatherPlan final : public LookupPlan {
 public:
  // `stream`: non-temporal stores (the caller checked dim % 8 == 0 and 16-byte aligned rows).
  GatherPlan(const TableView& t, const void* indices, IndexType index_type, uint64_t count, const OutLayout& out,
             bool stream, bool generic_only);
  void run_task(size_t task) override { fn_(&job_, task); }
  LookupError error() const override;

 private:
  GatherJob job_;
  TaskFn fn_ = nullptr;
  std::vector<uint16_t> dflt16_;  // default_row as fp16 for fp16 output
  IndexType index_type_;
};

class BagPlan final : public LookupPlan {
 public:
  // `a.out` / `a.out_type` are ignored: the layout says where the bags go.
  BagPlan(const TableView& t, const BagArgs& a, const OutLayout& out);
  void run_task(size_t task) override { fn_(&job_, task); }
  LookupError error() const override;

 private:
  const TableView* t_;
  BagArgs args_;
  BagJob job_;
  TaskFn fn_ = nullptr;
  std::vector<uint64_t> task_bags_;
  std::vector<float> heap_scratch_;
};

// Runs every task of `plan` (serially when there is one).
void run_plan(LookupPlan& plan, ParallelFor& pf);

}  // namespace shark
