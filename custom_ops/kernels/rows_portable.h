// Row code of the portable path (any CPU, plain C++): one stored row into an output row, or added into
// a float32 accumulator. The lookup loops (gather_loops.h, bag_loops.h) are templates over a row class
// with this interface; rows_avx2.h is the other one. No ORT header.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "row_scalar.h"

namespace shark {

struct PortableRows {
  static constexpr const char* kName = "portable";
  // No register accumulators (bag_loops.h): every bag sums in float32 memory.
  static constexpr bool kRegisterAcc = false;

  // out[0..D) = row. `dflt` is default_row as float32, `dflt_out` the same in the output type.
  // STREAM (non-temporal stores) is a request the portable path ignores.
  template <int TIER, bool STREAM, typename OutT>
  static inline void emit_row(RowRef rr, uint32_t D, const float* dflt, const OutT* dflt_out, OutT* out) {
    const uint8_t* row = rr.data;
    constexpr bool kF32Out = std::is_same<OutT, float>::value;
    if constexpr (TIER == kDropped) {
      std::memcpy(out, dflt_out, sizeof(OutT) * D);
    } else if constexpr ((TIER == kFp32 && kF32Out) || (TIER == kFp16 && !kF32Out)) {
      std::memcpy(out, row, sizeof(OutT) * D);
    } else {
      float s = 0.f, b = 0.f;
      if constexpr (kQuantizedTier<TIER>) scale_bias(rr.sb, &s, &b);
      for (uint32_t j = 0; j < D; ++j) put(out + j, load1<TIER>(row, dflt, j, s, b));
    }
  }

  // acc[0..D) += row (WEIGHTED: acc += w * row, multiply then add, two roundings).
  template <int TIER, bool WEIGHTED>
  static inline void accum_row(RowRef rr, uint32_t D, const float* dflt, float w, float* acc) {
    const uint8_t* row = rr.data;
    float s = 0.f, b = 0.f;
    if constexpr (kQuantizedTier<TIER>) scale_bias(rr.sb, &s, &b);
    for (uint32_t j = 0; j < D; ++j) {
      float x = load1<TIER>(row, dflt, j, s, b);
      if constexpr (WEIGHTED) x = w * x;
      acc[j] += x;
    }
  }

  // o[0..D) = acc[0..D) in the output type.
  template <typename OutT>
  static inline void store_row(const float* acc, uint32_t D, OutT* o) {
    for (uint32_t d = 0; d < D; ++d) put(o + d, acc[d]);
  }

  // After a task's last non-temporal store (none on this path).
  static inline void stream_fence() {}
};

}  // namespace shark
