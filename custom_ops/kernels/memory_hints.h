// Operating-system memory hints for table data. No ORT header.
#pragma once

#include <cstddef>

namespace shark {

// Asks the OS to back the whole 2 MiB pages inside [p, p + n) with transparent huge pages
// (MADV_HUGEPAGE, then MADV_COLLAPSE to do it now): random row reads from a large table otherwise
// miss the TLB on almost every lookup. Linux only, best effort, errors ignored; contents are not
// changed. Skipped for ranges under 8 MiB (and by the caller when the session asks: huge_pages=0).
void advise_huge_pages(const void* p, size_t n);

}  // namespace shark
