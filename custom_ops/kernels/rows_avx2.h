// Row code of the AVX2 path (x86-64 with AVX2, FMA, F16C and POPCNT; chosen at run time by cpu_isa()):
// the same interface as PortableRows (rows_portable.h), eight lanes at a time, plus non-temporal output
// stores and register accumulators for bags of dim 16, 32 and 64. Only isa_avx2.cc includes it; CMake
// compiles that file alone with -mavx2 -mfma -mf16c -mpopcnt. No ORT header.
#pragma once

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "rows_avx2.h needs -mavx2 -mfma -mf16c (only isa_avx2.cc, compiled with them, includes it)"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "row_scalar.h"

namespace shark {

struct Avx2Rows {
  static constexpr const char* kName = "avx2";
  static constexpr bool kRegisterAcc = true;  // bag_loops.h sums dim 16/32/64 bags in RegisterAcc

  static inline void put8(float* o, __m256 x) { _mm256_storeu_ps(o, x); }
  static inline void put8(uint16_t* o, __m256 x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  // Non-temporal stores: `o` must be 16-byte aligned (two 128-bit stores for 8 floats when it is not
  // 32-byte aligned, so a 16-byte aligned buffer such as numpy's will do).
  static inline void stream8(float* o, __m256 x) {
    if ((reinterpret_cast<uintptr_t>(o) & 31) == 0) {  // same answer for every row when dim % 8 == 0
      _mm256_stream_ps(o, x);
    } else {
      _mm_stream_ps(o, _mm256_castps256_ps128(x));
      _mm_stream_ps(o + 4, _mm256_extractf128_ps(x, 1));
    }
  }
  static inline void stream8(uint16_t* o, __m256 x) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(o), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static inline void stream_fence() { _mm_sfence(); }

  // A quantized row's scale and bias, broadcast (and as scalars for the tail).
  static inline void scale_bias8(const uint8_t* sbp, float* s, float* b, __m256* vs, __m256* vb) {
    const __m128 sb = _mm_cvtph_ps(_mm_cvtsi32_si128(load_i32(sbp)));
    *s = _mm_cvtss_f32(sb);
    *b = _mm_cvtss_f32(_mm_movehdup_ps(sb));
    *vs = _mm256_broadcastss_ps(sb);
    *vb = _mm256_broadcastss_ps(_mm_movehdup_ps(sb));
  }

  // Codes j..j+7 of a quantized row as 8 int32 lanes (requires j + 8 <= D, j % 8 == 0).
  template <int TIER>
  static inline __m256i codes8(const uint8_t* c, uint32_t j) {
    if constexpr (TIER == kInt8) {
      __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + j));
      return _mm256_cvtepu8_epi32(v);
    } else {  // BITS < 8: the 8 codes are the BITS bytes at j·BITS/8; lane l takes byte l/per, shifted
      constexpr uint32_t kBits = shark_format::TierTraits<TIER>::kBits, kPer = 8 / kBits;
      uint32_t w = 0;
      std::memcpy(&w, c + j / kPer, kBits);
      const __m128i bytes = _mm_shuffle_epi8(
          _mm_cvtsi32_si128(static_cast<int>(w)),
          _mm_setr_epi8(0 / kPer, 1 / kPer, 2 / kPer, 3 / kPer, 4 / kPer, 5 / kPer, 6 / kPer, 7 / kPer, 0, 0, 0, 0, 0, 0, 0, 0));
      __m256i v = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(bytes),
                                    _mm256_setr_epi32(0 % kPer * kBits, 1 % kPer * kBits, 2 % kPer * kBits,
                                                      3 % kPer * kBits, 4 % kPer * kBits, 5 % kPer * kBits,
                                                      6 % kPer * kBits, 7 % kPer * kBits));
      return _mm256_and_si256(v, _mm256_set1_epi32((1 << kBits) - 1));
    }
  }

  // Elements j..j+7 of a row of any stored tier as float32 (`row`: RowRef::data; dropped rows read `dflt`).
  template <int TIER>
  static inline __m256 load8(const uint8_t* row, const float* dflt, uint32_t j, __m256 vs, __m256 vb) {
    if constexpr (TIER == kFp32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + j);
    } else if constexpr (TIER == kFp16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * j)));
    } else if constexpr (TIER == kDropped) {
      return _mm256_loadu_ps(dflt + j);
    } else {
      __m256 q = _mm256_cvtepi32_ps(codes8<TIER>(row, j));
      return _mm256_fmadd_ps(q, vs, vb);  // = mul then add: the product is exact (row_scalar.h)
    }
  }

  // out[0..D) = row. STREAM (D % 8 == 0, `out` 16-byte aligned): non-temporal stores.
  template <int TIER, bool STREAM, typename OutT>
  static inline void emit_row(RowRef rr, uint32_t D, const float* dflt, const OutT* dflt_out, OutT* out) {
    const uint8_t* row = rr.data;
    constexpr bool kF32Out = std::is_same<OutT, float>::value;
    if constexpr (STREAM) {
      if constexpr (TIER == kFp16 && !kF32Out) {  // fp16 row to fp16 output: the bits as they are
        for (uint32_t j = 0; j < D; j += 8)
          _mm_stream_si128(reinterpret_cast<__m128i*>(out + j), _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * j)));
      } else {
        float s, b;
        __m256 vs = _mm256_setzero_ps(), vb = _mm256_setzero_ps();
        if constexpr (kQuantizedTier<TIER>) scale_bias8(rr.sb, &s, &b, &vs, &vb);
        for (uint32_t j = 0; j < D; j += 8) stream8(out + j, load8<TIER>(row, dflt, j, vs, vb));
      }
    } else if constexpr (TIER == kDropped) {
      std::memcpy(out, dflt_out, sizeof(OutT) * D);
    } else if constexpr ((TIER == kFp32 && kF32Out) || (TIER == kFp16 && !kF32Out)) {
      std::memcpy(out, row, sizeof(OutT) * D);
    } else {
      float s = 0.f, b = 0.f;
      __m256 vs = _mm256_setzero_ps(), vb = _mm256_setzero_ps();
      if constexpr (kQuantizedTier<TIER>) scale_bias8(rr.sb, &s, &b, &vs, &vb);
      uint32_t j = 0;
      for (; j + 8 <= D; j += 8) put8(out + j, load8<TIER>(row, dflt, j, vs, vb));
      for (; j < D; ++j) put(out + j, load1<TIER>(row, dflt, j, s, b));
    }
  }

  // acc[0..D) += row (WEIGHTED: acc += w * row, multiply then add, two roundings).
  template <int TIER, bool WEIGHTED>
  static inline void accum_row(RowRef rr, uint32_t D, const float* dflt, float w, float* acc) {
    const uint8_t* row = rr.data;
    float s = 0.f, b = 0.f;
    __m256 vs = _mm256_setzero_ps(), vb = _mm256_setzero_ps();
    if constexpr (kQuantizedTier<TIER>) scale_bias8(rr.sb, &s, &b, &vs, &vb);
    const __m256 vw = _mm256_set1_ps(w);
    uint32_t j = 0;
    for (; j + 8 <= D; j += 8) {
      __m256 x = load8<TIER>(row, dflt, j, vs, vb);
      if constexpr (WEIGHTED) x = _mm256_mul_ps(vw, x);
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), x));
    }
    for (; j < D; ++j) {
      float x = load1<TIER>(row, dflt, j, s, b);
      if constexpr (WEIGHTED) x = w * x;
      acc[j] += x;
    }
  }

  // o[0..D) = acc[0..D) in the output type.
  template <typename OutT>
  static inline void store_row(const float* acc, uint32_t D, OutT* o) {
    uint32_t d = 0;
    for (; d + 8 <= D; d += 8) put8(o + d, _mm256_loadu_ps(acc + d));
    for (; d < D; ++d) put(o + d, acc[d]);
  }

  // A bag's sum for dim == 8 * NV (NV <= 8) in NV ymm registers: one store per output row. The same
  // additions in the same order as accum_row, so the same bits.
  template <int NV, typename OutT, bool WEIGHTED>
  struct RegisterAcc {
    static constexpr bool kWeighted = WEIGHTED;
    OutT* out;
    uint64_t out_stride;  // elements from one bag's output row to the next
    __m256 acc[NV];

    void start(uint64_t) {
      for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
    }
    template <int TIER>
    void add(RowRef rr, const float* dflt, float w) {
      const uint8_t* row = rr.data;
      float s, b;
      __m256 vs = _mm256_setzero_ps(), vb = _mm256_setzero_ps();
      if constexpr (kQuantizedTier<TIER>) scale_bias8(rr.sb, &s, &b, &vs, &vb);
      for (int v = 0; v < NV; ++v) {
        __m256 x = load8<TIER>(row, dflt, static_cast<uint32_t>(8 * v), vs, vb);
        if constexpr (WEIGHTED) x = _mm256_mul_ps(_mm256_set1_ps(w), x);
        acc[v] = _mm256_add_ps(acc[v], x);
      }
    }
    void finish(uint64_t b, uint64_t count, bool mean) {
      if (mean && count > 1) {
        const __m256 c = _mm256_set1_ps(static_cast<float>(count));
        for (int v = 0; v < NV; ++v) acc[v] = _mm256_div_ps(acc[v], c);
      }
      OutT* o = out + b * out_stride;
      for (int v = 0; v < NV; ++v) put8(o + 8 * v, acc[v]);
    }
  };
};

}  // namespace shark
