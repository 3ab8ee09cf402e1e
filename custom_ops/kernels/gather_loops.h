// The gather loop, once for every instruction set: a template over the row class (PortableRows or
// Avx2Rows), instantiated by isa_portable.cc and isa_avx2.cc. No ORT header.
#pragma once

#include <cstdint>

#include "isa_kernels.h"
#include "lookahead.h"

namespace shark {

// Mixed tables: a row's tier is known at run time only. (A struct, not a lambda: its call is always inlined
// into the tier switch, which a lambda's is not, and the mixed gather is bound by this per-row step.)
template <class Rows, bool STREAM, typename OutT>
struct EmitRow {
  RowRef row;
  uint32_t D;
  const float* dflt;
  const OutT* dflt_out;
  OutT* out;
  template <class T>
  SHARK_ALWAYS_INLINE void operator()(T) const {
    Rows::template emit_row<T::value, STREAM>(row, D, dflt, dflt_out, out);
  }
};

template <class Rows, bool STREAM, typename OutT>
static inline void emit_row_any(int tier, RowRef row, uint32_t D, const float* dflt, const OutT* dflt_out,
                                OutT* out) {
  shark_format::visit_tier(tier, EmitRow<Rows, STREAM, OutT>{row, D, dflt, dflt_out, out});
}

namespace {  // internal linkage: each instruction set's translation unit has its own copy

// Where lookup i's row goes (GatherJob): walks the rows of a run of lookups in order.
template <typename OutT>
struct OutCursor {
  OutT* row;       // lookup i's output row
  uint64_t slot;   // i % per_sample
  uint64_t per_sample;
  uint64_t skip;   // out_stride - per_sample * dim: from a sample's last row to the next sample's first
  uint32_t dim;

  OutCursor(OutT* out, uint64_t first, uint64_t per_sample_, uint64_t out_stride, uint32_t dim_)
      : row(out + (first / per_sample_) * out_stride + (first % per_sample_) * dim_),
        slot(first % per_sample_),
        per_sample(per_sample_),
        skip(out_stride - per_sample_ * dim_),
        dim(dim_) {}
  void next() {
    row += dim;
    if (++slot == per_sample) {
      slot = 0;
      row += skip;
    }
  }
};

}  // namespace

// Lookups [begin, end) of a job: row idx[i] to its output row. Returns kNoError or the first position
// whose index is out of range (the rows before it are written). TIER: the table's uniform tier, or kMixed
// (tier and offset from each row's 32-byte block record, see mixed_step).
template <class Rows, int TIER, bool STREAM, typename IdxT, typename OutT>
static uint64_t gather_range(const TableView& t, const IdxT* idx, uint64_t begin, uint64_t end, OutCursor<OutT> out,
                             const OutT* dflt_out) {
  const uint64_t R = t.num_rows;
  const uint32_t D = t.dim;
  const uint8_t* payload = t.payload;
  const uint8_t* gs = group_scales(t);
  const float* dflt = t.default_row;
  if constexpr (TIER == kMixed) {
    RowLoc ring[kGatherAhead];
    // As for uniform tables: the row length a compile-time constant for the common D = 64.
    auto body = [&](uint64_t i, uint32_t dim) -> bool {
      const int64_t r = static_cast<int64_t>(idx[i]);
      if (static_cast<uint64_t>(r) >= R) return false;
      const RowLoc l = mixed_step<kGatherAhead>(t, idx, i, begin, end, static_cast<uint64_t>(r), ring);
      emit_row_any<Rows, STREAM>(l.tier, row_ref_any(t, gs, l.tier, l.offset, static_cast<uint64_t>(r)), dim, dflt,
                                 dflt_out, out.row);
      out.next();
      return true;
    };
    if (D == 64) {
      for (uint64_t i = begin; i < end; ++i)
        if (!body(i, 64)) return i;
    } else {
      for (uint64_t i = begin; i < end; ++i)
        if (!body(i, D)) return i;
    }
  } else {
    const uint64_t stride = t.stride[TIER];
    const uintptr_t base = reinterpret_cast<uintptr_t>(payload);
    // The loop body, with the row length a compile-time constant when the common D = 64 is given.
    auto body = [&](uint64_t i, uint32_t dim) -> bool {
      if constexpr (TIER != kDropped) uniform_ahead<kGatherAhead>(idx, i, end, base, stride);
      const int64_t r = static_cast<int64_t>(idx[i]);
      if (static_cast<uint64_t>(r) >= R) return false;
      const uint64_t ru = static_cast<uint64_t>(r);
      Rows::template emit_row<TIER, STREAM>(row_ref<TIER>(t, gs, ru * stride, ru), dim, dflt, dflt_out, out.row);
      out.next();
      return true;
    };
    if (D == 64) {
      for (uint64_t i = begin; i < end; ++i)
        if (!body(i, 64)) return i;
    } else {
      for (uint64_t i = begin; i < end; ++i)
        if (!body(i, D)) return i;
    }
  }
  return kNoError;
}

template <class Rows, int TIER, bool STREAM, typename IdxT, typename OutT>
static void gather_task(void* p, size_t task) {
  const GatherJob& j = *static_cast<const GatherJob*>(p);
  const uint64_t begin = task * j.chunk;
  const uint64_t end = begin + j.chunk < j.count ? begin + j.chunk : j.count;
  const OutCursor<OutT> out(static_cast<OutT*>(j.out), begin, j.per_sample, j.out_stride, j.t->dim);
  const uint64_t bad = gather_range<Rows, TIER, STREAM>(*j.t, static_cast<const IdxT*>(j.indices), begin, end, out,
                                                        static_cast<const OutT*>(j.dflt_out));
  if constexpr (STREAM) Rows::stream_fence();
  if (bad != kNoError) record_error(j.first_error, bad);
}

template <class Rows, bool STREAM, typename IdxT, typename OutT>
static TaskFn gather_task_for_tier(int tier) {
  return shark_format::visit_layout(tier, [](auto t) -> TaskFn {
    return &gather_task<Rows, decltype(t)::value, STREAM, IdxT, OutT>;
  });
}

template <class Rows, bool STREAM>
static TaskFn gather_task_for(int tier, IndexType it, OutType ot) {
  if (it == IndexType::kInt32) {
    return ot == OutType::kFloat32 ? gather_task_for_tier<Rows, STREAM, int32_t, float>(tier)
                                   : gather_task_for_tier<Rows, STREAM, int32_t, uint16_t>(tier);
  }
  return ot == OutType::kFloat32 ? gather_task_for_tier<Rows, STREAM, int64_t, float>(tier)
                                 : gather_task_for_tier<Rows, STREAM, int64_t, uint16_t>(tier);
}

}  // namespace shark
