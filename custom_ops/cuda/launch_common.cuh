// Launch geometry shared by the .cu launchers.
#pragma once

#include <cstdint>

#include "lookup_body.h"

namespace shark_cuda {

constexpr int kBlockThreads = 256;           // 8 warps; groups of G <= 32 lanes never straddle a warp
constexpr uint64_t kMaxBlocks = 1ull << 20;  // grid-stride loops beyond

inline unsigned blocks_for(uint64_t groups, uint32_t G) {
  const uint64_t per_block = kBlockThreads / G;
  uint64_t b = (groups + per_block - 1) / per_block;
  if (b < 1) b = 1;
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<unsigned>(b);
}

inline bool aligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

// The kernels' word loads and stores need naturally aligned buffers: row_meta and default_row, and the
// payload (rows read with word loads only where their own address allows, see ld_bytes). Checked before
// any launch (cudaErrorMisalignedAddress).
inline bool table_aligned(const DeviceTable& t) {
  return aligned(t.payload, 4) && aligned(t.meta, 8) && aligned(t.default_row, 4);
}
// A v3 table (group_shift >= 0) needs its group section (fill_layout); else cudaErrorInvalidValue.
inline bool groups_ok(const DeviceTable& t) { return t.group_shift < 0 || t.group_scales != nullptr; }
inline uintptr_t index_align(IndexKind k) { return k == IndexKind::kInt64 ? 8 : 4; }
inline uintptr_t out_align(OutKind k) { return k == OutKind::kFloat16 ? 2 : 4; }

// Calls f.template run<TIER>() for the table's tier (kMixed for a mixed table).
template <class F>
cudaError_t dispatch_tier(int tier, F&& f) {
  if (tier < kMixed || tier >= shark_format::kNumTiers) return cudaErrorInvalidValue;
  return shark_format::visit_layout(tier, [&](auto t) { return f.template run<decltype(t)::value>(); });
}

}  // namespace shark_cuda
