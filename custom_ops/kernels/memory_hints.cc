#include "memory_hints.h"

#include <cstdint>
#include <cstdio>

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

bool is_file_mapped(const void* p) {
#if defined(__linux__)
  std::FILE* maps = std::fopen("/proc/self/maps", "r");
  if (!maps) return false;
  const auto at = reinterpret_cast<uintptr_t>(p);
  bool found = false;
  char line[512];
  while (std::fgets(line, sizeof line, maps)) {
    unsigned long long begin = 0, end = 0, inode = 0;
    // start-end perms offset dev inode [path]
    if (std::sscanf(line, "%llx-%llx %*s %*s %*s %llu", &begin, &end, &inode) == 3 && begin <= at && at < end) {
      found = inode != 0;
      break;
    }
  }
  std::fclose(maps);
  return found;
#else
  (void)p;
  return false;
#endif
}

void advise_huge_pages(const void* p, size_t n) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (!p || n < 4 * kHuge || is_file_mapped(p)) return;
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
