// The embedding-bag loop, once for every instruction set: a template over the row class (PortableRows
// or Avx2Rows), instantiated by isa_portable.cc and isa_avx2.cc. No ORT header.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "isa_kernels.h"
#include "lookahead.h"

namespace shark {

// Mixed tables: acc.add<T> for a tier known at run time only (a struct for the reason EmitRow is one).
template <class Acc>
struct AddRow {
  Acc& acc;
  RowRef row;
  const float* dflt;
  float w;
  template <class T>
  SHARK_ALWAYS_INLINE void operator()(T) const {
    acc.template add<T::value>(row, dflt, w);
  }
};

template <class Acc>
static inline void add_any(Acc& acc, int tier, RowRef row, const float* dflt, float w) {
  shark_format::visit_tier(tier, AddRow<Acc>{acc, row, dflt, w});
}

// The bag loop: walk each bag's indices (prefetch ahead, range-check, locate mixed rows, skip padding)
// and hand every row to an accumulator, which holds the sum and writes the bag's output row:
//   MemoryAcc                 - the sum in float32 memory (the output row itself for float32 output), any dim;
//   Rows::RegisterAcc<NV,...> - (AVX2) dim = 8 * NV, the sum in NV vector registers, one store per row.
// Returns kNoError or the first position whose index is out of range.
template <int TIER, typename IdxT, class Acc>
static uint64_t bag_range(const BagJob& j, uint64_t b0, uint64_t b1, Acc& acc) {
  const TableView& t = *j.t;
  const uint64_t R = t.num_rows;
  const IdxT* idx = static_cast<const IdxT*>(j.indices);
  const uint64_t* bounds = j.bounds;
  const float* w = j.weights;
  const int64_t pad = j.padding_idx;
  const uint8_t* payload = t.payload;
  const uint8_t* gs = group_scales(t);
  const uintptr_t base = reinterpret_cast<uintptr_t>(payload);
  const uint64_t stride = TIER >= 0 ? t.stride[TIER >= 0 ? TIER : 0] : 0;
  const float* dflt = t.default_row;
  const uint64_t k_first = bounds[b0], k_end = bounds[b1];
  RowLoc ring[kBagAhead];
  (void)k_first;
  (void)ring;

  for (uint64_t b = b0; b < b1; ++b) {
    acc.start(b);
    uint64_t count = 0;
    for (uint64_t k = bounds[b], e = bounds[b + 1]; k < e; ++k) {
      if constexpr (TIER != kMixed && TIER != kDropped) uniform_ahead<kBagAhead>(idx, k, k_end, base, stride);
      const int64_t r = static_cast<int64_t>(idx[k]);
      if (static_cast<uint64_t>(r) >= R) return k;
      const uint64_t ru = static_cast<uint64_t>(r);
      RowLoc l{0, 0};
      if constexpr (TIER == kMixed) l = mixed_step<kBagAhead>(t, idx, k, k_first, k_end, ru, ring);
      if (r == pad) continue;
      const float wk = Acc::kWeighted ? w[k] : 1.0f;
      if constexpr (TIER == kMixed) {
        add_any(acc, l.tier, row_ref_any(t, gs, l.tier, l.offset, ru), dflt, wk);
      } else {
        acc.template add<TIER>(row_ref<TIER>(t, gs, ru * stride, ru), dflt, wk);
      }
      ++count;
    }
    acc.finish(b, count, j.mean);
  }
  return kNoError;
}

// float32 sums in memory: the output row (float32 output) or a scratch row (float16 output, converted at the end).
template <class Rows, typename OutT, bool WEIGHTED>
struct MemoryAcc {
  static constexpr bool kWeighted = WEIGHTED;
  OutT* out;
  uint64_t out_stride;
  float* scratch;
  uint32_t D;
  float* acc = nullptr;

  void start(uint64_t b) {
    if constexpr (std::is_same<OutT, float>::value) {
      acc = out + b * out_stride;
    } else {
      acc = scratch;
    }
    std::memset(acc, 0, sizeof(float) * D);
  }
  template <int TIER>
  void add(RowRef row, const float* dflt, float w) {
    Rows::template accum_row<TIER, WEIGHTED>(row, D, dflt, w, acc);
  }
  void finish(uint64_t b, uint64_t count, bool mean) {
    if (mean && count > 1) {
      const float c = static_cast<float>(count);
      for (uint32_t d = 0; d < D; ++d) acc[d] = acc[d] / c;
    }
    if constexpr (!std::is_same<OutT, float>::value) Rows::store_row(acc, D, out + b * out_stride);
  }
};

template <class Rows, int TIER, typename IdxT, typename OutT, bool WEIGHTED>
static void bag_task(void* p, size_t task) {
  const BagJob& j = *static_cast<const BagJob*>(p);
  const uint64_t b0 = j.task_bags[task], b1 = j.task_bags[task + 1];
  alignas(32) float local[std::is_same<OutT, float>::value ? 1 : kBagStackAcc];
  float* scratch = std::is_same<OutT, float>::value ? nullptr  // sums straight into the output rows
                   : j.dim <= kBagStackAcc ? local : j.heap_scratch + static_cast<uint64_t>(task) * j.dim;
  MemoryAcc<Rows, OutT, WEIGHTED> acc{static_cast<OutT*>(j.out), j.out_stride, scratch, j.dim};
  const uint64_t bad = bag_range<TIER, IdxT>(j, b0, b1, acc);
  if (bad != kNoError) record_error(j.first_error, bad);
}

template <class Rows, int TIER, int NV, typename IdxT, typename OutT, bool WEIGHTED>
static void bag_task_regs(void* p, size_t task) {
  const BagJob& j = *static_cast<const BagJob*>(p);
  typename Rows::template RegisterAcc<NV, OutT, WEIGHTED> acc{static_cast<OutT*>(j.out), j.out_stride, {}};
  const uint64_t bad = bag_range<TIER, IdxT>(j, j.task_bags[task], j.task_bags[task + 1], acc);
  if (bad != kNoError) record_error(j.first_error, bad);
}

template <class Rows, int TIER, typename IdxT, typename OutT, bool WEIGHTED>
static TaskFn bag_task_for_dim(uint32_t dim) {
  if constexpr (Rows::kRegisterAcc) {
    switch (dim) {
      case 16: return &bag_task_regs<Rows, TIER, 2, IdxT, OutT, WEIGHTED>;
      case 32: return &bag_task_regs<Rows, TIER, 4, IdxT, OutT, WEIGHTED>;
      case 64: return &bag_task_regs<Rows, TIER, 8, IdxT, OutT, WEIGHTED>;
      default: break;
    }
  }
  (void)dim;
  return &bag_task<Rows, TIER, IdxT, OutT, WEIGHTED>;
}

template <class Rows, typename IdxT, typename OutT, bool WEIGHTED>
static TaskFn bag_task_for_tier(int tier, uint32_t dim) {
  return shark_format::visit_layout(tier, [dim](auto t) {
    return bag_task_for_dim<Rows, decltype(t)::value, IdxT, OutT, WEIGHTED>(dim);
  });
}

template <class Rows, typename IdxT, typename OutT>
static TaskFn bag_task_for_types(int tier, uint32_t dim, bool weighted) {
  return weighted ? bag_task_for_tier<Rows, IdxT, OutT, true>(tier, dim)
                  : bag_task_for_tier<Rows, IdxT, OutT, false>(tier, dim);
}

template <class Rows>
static TaskFn bag_task_for(int tier, uint32_t dim, IndexType it, OutType ot, bool weighted) {
  if (it == IndexType::kInt32) {
    return ot == OutType::kFloat32 ? bag_task_for_types<Rows, int32_t, float>(tier, dim, weighted)
                                   : bag_task_for_types<Rows, int32_t, uint16_t>(tier, dim, weighted);
  }
  return ot == OutType::kFloat32 ? bag_task_for_types<Rows, int64_t, float>(tier, dim, weighted)
                                 : bag_task_for_types<Rows, int64_t, uint16_t>(tier, dim, weighted);
}

}  // namespace shark
