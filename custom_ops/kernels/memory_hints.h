// Operating-system memory hints for table data. No ORT header.
#pragma once

#include <cstddef>

namespace shark {

// Asks the OS to back the whole 2 MiB pages inside [p, p + n) with transparent huge pages
// (MADV_HUGEPAGE, then MADV_COLLAPSE to do it now): random row reads from a large table otherwise
// miss the TLB on almost every lookup. Linux only, best effort, errors ignored; contents are not
// changed. Skipped for ranges under 8 MiB (and by the caller when the session asks: huge_pages=0), and for
// memory mapped from a file (external data): there each fault would read a 2 MiB folio, and the collapse the
// whole table, into the resident set, which is then the file's size instead of the rows read.
void advise_huge_pages(const void* p, size_t n);

// Whether `p` lies in a mapping of a file (Linux: /proc/self/maps; elsewhere false).
bool is_file_mapped(const void* p);

// A table ONNX Runtime maps from an external data file is read at random rows: no read-around, so the
// process's resident set follows the rows the lookups touch (a fault would otherwise read megabytes around
// each row). Harmless on heap memory.
void advise_random(const void* p, size_t n);

}  // namespace shark
