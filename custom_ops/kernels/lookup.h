// Shared types of the lookup kernels. No ORT header.
#pragma once

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

}  // namespace shark
