// Shared types of the lookup kernels. No ORT header.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shark {

enum class IndexType { kInt32, kInt64 };

constexpr uint64_t kNoError = ~uint64_t{0};

// Result of a lookup kernel: ok, or the first (lowest flat position) out-of-range index.
struct LookupError {
  uint64_t position = kNoError;
  int64_t value = 0;
  bool ok() const { return position == kNoError; }
};

inline int64_t read_index(const void* p, IndexType t, uint64_t i) {
  return t == IndexType::kInt64 ? static_cast<const int64_t*>(p)[i]
                                : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

// A parallel task of a lookup kernel: fn(job, task_index).
using TaskFn = void (*)(void*, size_t);

// Keeps the lowest failing flat position seen by any task (so errors name the first bad index).
inline void record_error(std::atomic<uint64_t>* first, uint64_t pos) {
  uint64_t cur = first->load(std::memory_order_relaxed);
  while (pos < cur && !first->compare_exchange_weak(cur, pos, std::memory_order_relaxed)) {
  }
}

}  // namespace shark
