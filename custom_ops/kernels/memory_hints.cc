#include "memory_hints.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#endif

namespace shark {

void advise_huge_pages(const void* p, size_t n) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (!p || n < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end <= begin) return;
  void* b = reinterpret_cast<void*>(begin);
  if (madvise(b, end - begin, MADV_HUGEPAGE) == 0) {
    (void)madvise(b, end - begin, MADV_COLLAPSE);  // Linux >= 6.1; older kernels: khugepaged, later
  }
#else
  (void)p;
  (void)n;
#endif
}

void advise_random(const void* p, size_t n) {
#if defined(__linux__)
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  if (!p || n < 16 * page) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_RANDOM);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace shark
