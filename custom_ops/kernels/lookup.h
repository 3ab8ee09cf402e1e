// Shared types of the lookup kernels. No ORT header. read_index has internal linkage: each instruction
// set's translation unit (isa_kernels.h) compiles its own copy with its own flags.
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

static inline int64_t read_index(const void* p, IndexType t, uint64_t i) {
  return t == IndexType::kInt64 ? static_cast<const int64_t*>(p)[i]
                                : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

// A parallel task of a lookup kernel: fn(job, task_index).
using TaskFn = void (*)(void*, size_t);

// Keeps the lowest failing flat position seen by any task (so errors name the first bad index). Out of
// line (lookup.cc): it runs once per failing task, and its std::atomic code then stays in one object.
void record_error(std::atomic<uint64_t>* first, uint64_t pos);

}  // namespace shark
