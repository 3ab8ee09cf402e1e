// The per-group bodies of the lookup kernels, shared (like row_decode.h) by the CUDA kernels and the
// host emulation in the test library. A *group* of G lanes (G = 1, 2, .., 32, a power of two, so a
// group never straddles a warp) handles one output row: a gathered row or a bag. Lane `lane` owns the
// units u ≡ lane (mod G) of the row. Lanes never communicate (no shuffles, no shared memory), so running
// the lanes of a group one after the other on the host computes exactly what the GPU computes.
#pragma once

#include "row_decode.h"

namespace shark_cuda {

// Lanes per group for a row of `dim` elements: units = ceil(dim / 4) rounded up to a power of two, at
// most 32 (D = 64: 16 lanes, two rows per warp).
inline uint32_t group_size(uint32_t dim) {
  const uint32_t units = (dim + 3) / 4;
  uint32_t g = 1;
  while (g < units && g < 32) g *= 2;
  return g;
}

// ---- gather --------------------------------------------------------------------------------------
template <int TIER, typename OutT>
SHARK_HD void emit_row(const RowRef& row, const float* dflt, uint32_t D, OutT* o, uint32_t lane, uint32_t G) {
  float s = 0.f, b = 0.f;
  if constexpr (shark_format::TierTraits<TIER>::kQuantized) scale_bias(row.sb, &s, &b);
  const uint32_t units = (D + 3) / 4;
  for (uint32_t u = lane; u < units; u += G) {
    const uint32_t n = D - 4 * u < 4 ? D - 4 * u : 4;
    const Raw r = load_unit<TIER>(row.data, dflt, u, D);
    if constexpr (TIER == kFp16 && sizeof(OutT) == 2) {
      store_f16_bits(o + 4 * u, r.w, n);  // fp16 row to fp16 output: the stored bits
    } else {
      float x[4];
      decode_unit<TIER>(r, s, b, x);
      store_unit(o + 4 * u, x, n);
    }
  }
}

// The per-tier calls of a mixed table's rows, as structs with force-inlined members (as on the CPU,
// kernels/gather_loops.h: a lambda's call is not always inlined into the tier switch).
template <typename OutT>
struct EmitRowAny {
  const RowRef& row;
  const float* dflt;
  uint32_t D;
  OutT* o;
  uint32_t lane, G;
  template <class T>
  SHARK_HD void operator()(T) const { emit_row<T::value>(row, dflt, D, o, lane, G); }
};

template <typename OutT>
SHARK_HD void emit_row_any(int tier, const RowRef& row, const float* dflt, uint32_t D, OutT* o, uint32_t lane,
                           uint32_t G) {
  shark_format::visit_tier(tier, EmitRowAny<OutT>{row, dflt, D, o, lane, G});
}

template <typename OutT>
SHARK_HD void emit_zeros(uint32_t D, OutT* o, uint32_t lane, uint32_t G) {
  const float z[4] = {0.f, 0.f, 0.f, 0.f};
  for (uint32_t u = lane; u < (D + 3) / 4; u += G) store_unit(o + 4 * u, z, D - 4 * u < 4 ? D - 4 * u : 4);
}

// Where gathered row i goes: GatherParams' layout with its defaults resolved (see device_table.h).
template <typename OutT>
struct GatherOut {
  OutT* out;
  uint64_t rows_per_sample;  // >= 1
  uint64_t out_stride;       // elements, >= rows_per_sample * dim
  SHARK_HD OutT* row(uint64_t i, uint32_t D) const {
    if (rows_per_sample == 1) return out + i * out_stride;  // no 64-bit division for the common case
    return out + (i / rows_per_sample) * out_stride + (i % rows_per_sample) * D;
  }
};

template <typename OutT>
inline GatherOut<OutT> gather_out(const GatherParams& p, uint32_t dim) {
  return GatherOut<OutT>{static_cast<OutT*>(p.out), p.rows_per_sample, gather_out_stride(p, dim)};
}

// Output row i (out.row(i)) = row(indices[i]). An index outside [0, R) is never read: its output row is
// zeros and the lowest such i goes to err->index_pos. Nothing outside the row's D elements is written.
template <int TIER, typename IdxT, typename OutT>
SHARK_HD void gather_group(const DeviceTable& t, const IdxT* idx, uint64_t i, const GatherOut<OutT>& out,
                           uint32_t lane, uint32_t G, ErrorSlot* err) {
  const uint32_t D = t.dim;
  OutT* o = out.row(i, D);
  const int64_t r = ld_index(idx, i);
  if (static_cast<uint64_t>(r) >= t.num_rows) {
    if (lane == 0) record_min(&err->index_pos, i);
    emit_zeros(D, o, lane, G);
    return;
  }
  const RowRef rr = locate_row<TIER>(t, static_cast<uint64_t>(r));
  if constexpr (TIER == kMixed) {
    emit_row_any(rr.tier, rr, t.default_row, D, o, lane, G);
  } else {
    emit_row<TIER>(rr, t.default_row, D, o, lane, G);
  }
}

// ---- embedding bag ---------------------------------------------------------------------------------
constexpr uint32_t kBagUnitsPerLane = 1;  // accumulators per lane per column tile: 1 unit = 4 floats
constexpr uint32_t kBagBatch = 8;         // lookups whose loads are issued before the first is summed

SHARK_HD int64_t clamp_i64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Indices [*s, *e) of bag b. From offsets, clamped into [0, n_indices] and e >= s, so that bad offsets
// (reported separately, see bag_check_offset) can never make a bag read outside `indices`.
SHARK_HD void bag_range(const BagParams& p, uint64_t b, uint64_t* s, uint64_t* e) {
  if (!p.offsets) {
    *s = b * p.bag_len;
    *e = *s + p.bag_len;
    return;
  }
  const int64_t n = static_cast<int64_t>(p.n_indices);
  const int64_t o0 = ld_index_kind(p.offsets, p.offsets_kind, b);
  const int64_t o1 = b + 1 < p.n_offsets ? ld_index_kind(p.offsets, p.offsets_kind, b + 1) : n;
  const int64_t lo = clamp_i64(o0, 0, n);
  *s = static_cast<uint64_t>(lo);
  *e = static_cast<uint64_t>(clamp_i64(o1, lo, n));
}

// offsets[i] is bad (the CPU kernel's checks, in its order): i == 0 and != 0, less than offsets[i-1],
// or greater than n_indices. The lowest bad i goes to err->offset_pos.
SHARK_HD void bag_check_offset(const BagParams& p, uint64_t i, ErrorSlot* err) {
  const int64_t o = ld_index_kind(p.offsets, p.offsets_kind, i);
  bool bad = o > static_cast<int64_t>(p.n_indices) || (i == 0 && o != 0);
  if (!bad && i > 0) bad = o < ld_index_kind(p.offsets, p.offsets_kind, i - 1);
  if (bad) record_min(&err->offset_pos, i);
}

// First index after the last bag (include_last_offset with offsets[-1] < n_indices, or no bags at
// all): those indices belong to no bag but are range-checked like every other index.
SHARK_HD uint64_t bag_tail_start(const BagParams& p) {
  if (p.n_bags == 0) return 0;
  uint64_t s, e;
  bag_range(p, p.n_bags - 1, &s, &e);
  return e;
}

SHARK_HD void bag_check_index(const DeviceTable& t, const BagParams& p, uint64_t k, ErrorSlot* err) {
  if (static_cast<uint64_t>(ld_index_kind(p.indices, p.index_kind, k)) >= t.num_rows) record_min(&err->index_pos, k);
}

// Adds unit u of a row (tier TIER) times w into acc (unweighted: w is not used, acc + x exactly as
// the CPU's unweighted sum).
template <int TIER>
SHARK_HD void accum_unit(const Raw& r, float s, float b, bool weighted, float w, float acc[4]) {
  float x[4];
  decode_unit<TIER>(r, s, b, x);
  for (int i = 0; i < 4; ++i) acc[i] = add_rn(acc[i], weighted ? mul_rn(w, x[i]) : x[i]);
}

// Per-tier dispatch of a mixed table's row (TIER == kMixed) or the table's one tier.
// load_unit / accum_unit for a row whose tier is known at run time only (see EmitRowAny).
struct LoadUnit {
  const uint8_t* row;
  const float* dflt;
  uint32_t u, D;
  template <class T>
  SHARK_HD Raw operator()(T) const { return load_unit<T::value>(row, dflt, u, D); }
};
struct AccumUnit {
  const Raw& r;
  float s, b;
  bool weighted;
  float w;
  float* acc;
  template <class T>
  SHARK_HD void operator()(T) const { accum_unit<T::value>(r, s, b, weighted, w, acc); }
};

template <int TIER>
SHARK_HD Raw load_unit_tier(int tier, const uint8_t* row, const float* dflt, uint32_t u, uint32_t D) {
  if constexpr (TIER != kMixed) {
    return load_unit<TIER>(row, dflt, u, D);
  } else {
    return shark_format::visit_tier(tier, LoadUnit{row, dflt, u, D});
  }
}

template <int TIER>
SHARK_HD void accum_unit_tier(int tier, const Raw& r, float s, float b, bool weighted, float w, float acc[4]) {
  if constexpr (TIER != kMixed) {
    accum_unit<TIER>(r, s, b, weighted, w, acc);
  } else {
    shark_format::visit_tier(tier, AccumUnit{r, s, b, weighted, w, acc});
  }
}

// Bag b: sum (mean) of its rows in float32, in index order, per element exactly as the CPU kernel
// (so results agree bit for bit). Columns are done in tiles of G * kBagUnitsPerLane units; each tile
// walks the bag's indices in batches of kBagBatch whose index, row-location and row loads are all
// issued before the first of them is added. Out-of-range indices are skipped (not read, not counted)
// and reported in err->index_pos; padding entries neither add nor count; empty bags give zeros.
template <int TIER, typename IdxT, typename OutT>
SHARK_HD void bag_group(const DeviceTable& t, const BagParams& p, uint64_t bag, uint32_t lane, uint32_t G,
                        ErrorSlot* err) {
  const uint32_t D = t.dim;
  const uint32_t units = (D + 3) / 4;
  const IdxT* idx = static_cast<const IdxT*>(p.indices);
  const bool weighted = p.weights != nullptr;
  uint64_t s, e;
  bag_range(p, bag, &s, &e);
  OutT* o = static_cast<OutT*>(p.out) + bag * (p.out_stride ? p.out_stride : D);
  for (uint32_t tile = 0; tile < units; tile += G * kBagUnitsPerLane) {
    float acc[kBagUnitsPerLane][4];
    for (uint32_t q = 0; q < kBagUnitsPerLane; ++q)
      for (int i = 0; i < 4; ++i) acc[q][i] = 0.f;
    uint64_t count = 0;
    for (uint64_t k0 = s; k0 < e; k0 += kBagBatch) {
      RowRef rr[kBagBatch];
      float w[kBagBatch];
      bool use[kBagBatch];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (uint32_t j = 0; j < kBagBatch; ++j) {
        const uint64_t k = k0 + j;
        use[j] = false;
        rr[j] = RowRef{nullptr, nullptr, 0};
        w[j] = 1.f;
        if (k < e) {
          const int64_t r = ld_index(idx, k);
          if (static_cast<uint64_t>(r) >= t.num_rows) {
            if (tile == 0 && lane == 0) record_min(&err->index_pos, k);
          } else if (r != p.padding_idx) {
            use[j] = true;
            rr[j] = locate_row<TIER>(t, static_cast<uint64_t>(r));
            if (weighted) w[j] = ld_f32(p.weights + k);
          }
        }
      }
      Raw raw[kBagBatch][kBagUnitsPerLane];
      float sc[kBagBatch], bi[kBagBatch];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (uint32_t j = 0; j < kBagBatch; ++j) {
        sc[j] = 0.f;
        bi[j] = 0.f;
        for (uint32_t q = 0; q < kBagUnitsPerLane; ++q) raw[j][q] = Raw{{0u, 0u, 0u, 0u}};
        if (!use[j]) continue;
        const int tier = TIER == kMixed ? rr[j].tier : TIER;
        if (is_quantized(tier)) scale_bias(rr[j].sb, &sc[j], &bi[j]);
        for (uint32_t q = 0; q < kBagUnitsPerLane; ++q) {
          const uint32_t u = tile + lane + q * G;
          if (u < units) raw[j][q] = load_unit_tier<TIER>(tier, rr[j].data, t.default_row, u, D);
        }
      }
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (uint32_t j = 0; j < kBagBatch; ++j) {
        if (!use[j]) continue;
        const int tier = TIER == kMixed ? rr[j].tier : TIER;
        for (uint32_t q = 0; q < kBagUnitsPerLane; ++q) accum_unit_tier<TIER>(tier, raw[j][q], sc[j], bi[j], weighted, w[j], acc[q]);
        ++count;
      }
    }
    if (p.mode == 1 && count > 1) {
      const float c = static_cast<float>(count);
      for (uint32_t q = 0; q < kBagUnitsPerLane; ++q)
        for (int i = 0; i < 4; ++i) acc[q][i] = div_rn(acc[q][i], c);
    }
    for (uint32_t q = 0; q < kBagUnitsPerLane; ++q) {
      const uint32_t u = tile + lane + q * G;
      if (u < units) store_unit(o + 4 * u, acc[q], D - 4 * u < 4 ? D - 4 * u : 4);
    }
  }
}

}  // namespace shark_cuda
