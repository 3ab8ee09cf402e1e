// A minimal parallel-for abstraction the kernels use; the ORT layer adapts ORT's intra-op pool to it.
#pragma once

#include <cstddef>

namespace shark {

struct ParallelFor {
  virtual ~ParallelFor() = default;
  // Runs fn(ctx, i) for every i in [0, n_tasks), possibly concurrently, and returns when all are done.
  virtual void run(size_t n_tasks, void (*fn)(void*, size_t), void* ctx) = 0;
};

struct SerialFor final : ParallelFor {
  void run(size_t n_tasks, void (*fn)(void*, size_t), void* ctx) override {
    for (size_t i = 0; i < n_tasks; ++i) fn(ctx, i);
  }
};

}  // namespace shark
