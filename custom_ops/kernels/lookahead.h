// Look-ahead over a stream of lookups, shared by the gather and bag loops of every instruction set:
// rows are prefetched kAhead lookups before their turn, and a mixed table's rows are located once, a
// turn ahead. No ORT header.
#pragma once

#include <cstdint>

#include "table.h"

namespace shark {

// Lookups ahead at which rows are prefetched (powers of two: a mixed table's ring is indexed by k % AHEAD).
// Measured on the 2M x 64 Zipf benchmark (benchmarks/bench_lookup.py): a gather writes a whole output row
// per lookup and is best at 16 (32 and 64 measured no better); a bag only adds each row into registers, so
// a row is consumed in a few nanoseconds and must be asked for further ahead: the pooled int8 bags of 20
// took 16.7 ms at 16, 12.2 at 32, 9.2 at 64 and 8.8 at 128 rows ahead (1 thread; torch's byte-rowwise bag
// 14.5-16.7 ms in the same runs).
#ifndef SHARK_GATHER_PREFETCH
#define SHARK_GATHER_PREFETCH 16
#endif
#ifndef SHARK_BAG_PREFETCH
#define SHARK_BAG_PREFETCH 64
#endif
constexpr uint64_t kGatherAhead = SHARK_GATHER_PREFETCH;
constexpr uint64_t kBagAhead = SHARK_BAG_PREFETCH;
static_assert((kGatherAhead & (kGatherAhead - 1)) == 0, "SHARK_GATHER_PREFETCH must be a power of two");
static_assert((kBagAhead & (kBagAhead - 1)) == 0, "SHARK_BAG_PREFETCH must be a power of two");

// Prefetches [p, p + n) (n > 0) with three branch-free prefetches (first, middle and last byte):
// every line of a row of up to 3 lines, and a head start for the hardware prefetcher beyond.
static inline void prefetch_bytes(const void* p, uint64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  __builtin_prefetch(c);
  __builtin_prefetch(c + n / 2);
  __builtin_prefetch(c + n - 1);
#else
  (void)p;
  (void)n;
#endif
}

// Uniform table: prefetch the row of lookup k + kAhead (no range check needed to prefetch).
template <uint64_t kAhead, typename IdxT>
static inline void uniform_ahead(const IdxT* idx, uint64_t k, uint64_t k_end, uintptr_t base, uint64_t stride) {
  if (k + kAhead < k_end) {
    const uint64_t rp = static_cast<uint64_t>(static_cast<int64_t>(idx[k + kAhead]));
    prefetch_bytes(reinterpret_cast<const void*>(base + rp * stride), stride);
  }
}

// Mixed table, lookup k of [first, k_end) with row ru (already range-checked): its location, and
// the look-ahead: the block record of lookup k + 2 kAhead is prefetched, lookup k + kAhead is located
// (kept in `ring` until its turn) and its row prefetched. Each row is located once.
template <uint64_t kAhead, typename IdxT>
static inline RowLoc mixed_step(const TableView& t, const IdxT* idx, uint64_t k, uint64_t first, uint64_t k_end,
                                uint64_t ru, RowLoc* ring) {
  const uint64_t R = t.num_rows;
  const uint64_t* meta = t.meta;
  const RowLoc l = k < first + kAhead ? locate_mixed_row(meta + (ru >> 6) * kMetaWords, ru & 63u, t.stride)
                                      : ring[k & (kAhead - 1)];
  if (k + 2 * kAhead < k_end) {
    const uint64_t rm = static_cast<uint64_t>(static_cast<int64_t>(idx[k + 2 * kAhead]));
    if (rm < R) prefetch_bytes(meta + (rm >> 6) * kMetaWords, 32);
  }
  if (k + kAhead < k_end) {
    const uint64_t rp = static_cast<uint64_t>(static_cast<int64_t>(idx[k + kAhead]));
    if (rp < R) {  // an out-of-range index fails at its own turn, before its ring slot would be read
      const RowLoc lp = locate_mixed_row(meta + (rp >> 6) * kMetaWords, rp & 63u, t.stride);
      ring[(k + kAhead) & (kAhead - 1)] = lp;
      if (t.stride[lp.tier]) prefetch_bytes(t.payload + lp.offset, t.stride[lp.tier]);
    }
  }
  return l;
}

}  // namespace shark
