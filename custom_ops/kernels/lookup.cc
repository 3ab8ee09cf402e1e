#include "lookup.h"

namespace shark {

void record_error(std::atomic<uint64_t>* first, uint64_t pos) {
  uint64_t cur = first->load(std::memory_order_relaxed);
  while (pos < cur && !first->compare_exchange_weak(cur, pos, std::memory_order_relaxed)) {
  }
}

}  // namespace shark
