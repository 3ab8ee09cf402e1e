// Standalone timing of the CPU kernels (no ONNX Runtime): int8/mixed gather and bags on a synthetic
// table with Zipf lookups. Built with -DSHARK_BUILD_BENCH=ON; for tuning only.
//   bench_kernels [rows=2000000] [dim=64] [lookups=106496] [reps=50] [tier=2 | -1 for mixed]
#include <algorithm>
#include <functional>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include <sys/mman.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "kernels/cpu_features.h"
#include "kernels/embedding_bag_cpu.h"
#include "kernels/gather_cpu.h"
#include "kernels/half.h"
#include "kernels/memory_hints.h"
#include "kernels/table.h"

using namespace shark;

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2"))) static void nt_fill(float* p, size_t n) {
  const __m256 z = _mm256_set1_ps(1.f);
  size_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(p + i) & 31)) p[i++] = 1.f;
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(p + i, z);
  _mm_sfence();
}
#else
static void nt_fill(float* p, size_t n) { std::fill(p, p + n, 1.f); }  // no x86 streaming stores here
#endif

int main(int argc, char** argv) {
  const uint64_t R = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2000000;
  const uint32_t D = argc > 2 ? std::atoi(argv[2]) : 64;
  const uint64_t N = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 106496;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 50;
  const int tier = argc > 5 ? std::atoi(argv[5]) : kInt8;

  std::mt19937_64 rng(0);
  TableAttrs a;
  a.format_version = 2;  // a header per row (v3 would need a group section this bench does not build)
  a.num_rows = static_cast<int64_t>(R);
  a.dim = D;
  a.uniform_tier = tier;
  TableView t = make_table_view(a);
  std::vector<int> tiers(R, tier);
  if (tier == kMixed) {
    std::discrete_distribution<int> pick({0.05, 0.15, 0.4, 0.25, 0.1, 0.05});
    const char* only = std::getenv("BENCH_MIXED_ONLY_TIER");  // a "mixed" table whose rows share one tier
    for (auto& x : tiers) x = only ? std::atoi(only) : pick(rng);
  }
  std::vector<uint64_t> offs(R + 1, 0);
  for (uint64_t r = 0; r < R; ++r) offs[r + 1] = offs[r] + t.stride[tiers[r]];
  std::vector<uint8_t> payload_vec;
  struct Buf { uint8_t* p; size_t n; uint8_t* data() { return p; } size_t size() const { return n; } uint8_t* begin() { return p; } uint8_t* end() { return p + n; } uint8_t& operator[](size_t i) { return p[i]; } };
  Buf payload{nullptr, offs[R]};
  if (std::getenv("BENCH_HUGE")) {
    const size_t sz = (offs[R] + (2u << 20) - 1) & ~size_t((2u << 20) - 1);
    payload.p = static_cast<uint8_t*>(std::aligned_alloc(2u << 20, sz));
    madvise(payload.p, sz, MADV_HUGEPAGE);
  } else {
    payload_vec.resize(offs[R]);
    payload.p = payload_vec.data();
  }
  for (auto& b : payload) b = static_cast<uint8_t>(rng());
  for (uint64_t r = 0; r < R; ++r) {
    if (tiers[r] >= kInt8 && tiers[r] <= kInt2) {
      uint16_t sb[2] = {float_to_half(0.01f), float_to_half(-0.5f)};
      std::memcpy(&payload[offs[r]], sb, 4);
    } else if (tiers[r] == kFp32) {
      for (uint32_t j = 0; j < D; ++j) {
        float v = 0.25f;
        std::memcpy(&payload[offs[r] + 4 * j], &v, 4);
      }
    }
  }
  std::vector<uint64_t> meta;
  if (tier == kMixed) {
    const uint64_t blocks = (R + 63) / 64;
    meta.assign(blocks * 4, 0);
    for (uint64_t r = 0; r < R; ++r) {
      uint64_t* m = &meta[(r / 64) * 4];
      if (r % 64 == 0) m[0] = offs[r];
      for (int k = 0; k < 3; ++k)
        if ((tiers[r] >> k) & 1) m[1 + k] |= uint64_t{1} << (r % 64);
    }
    t.meta = meta.data();
    t.meta_blocks = blocks;
  }
  std::vector<float> dflt(D, 0.f);
  t.payload = payload.data();
  t.payload_bytes = payload.size();
  if (!std::getenv("BENCH_NO_HUGE")) advise_huge_pages(payload.data(), payload.size());
  t.default_row = dflt.data();
  TableShapes shapes{{static_cast<int64_t>(payload.size())}, {static_cast<int64_t>(meta.size() / 4), 4}, {D}};
  const std::string bad = validate_table(t, shapes);
  if (!bad.empty()) {
    std::fprintf(stderr, "invalid table: %s\n", bad.c_str());
    return 1;
  }

  // Zipf(1.1) over permuted row ids
  std::vector<double> cdf(R);
  double acc = 0;
  for (uint64_t k = 0; k < R; ++k) cdf[k] = (acc += std::pow(double(k + 1), -1.1));
  std::vector<uint64_t> perm(R);
  for (uint64_t i = 0; i < R; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_real_distribution<double> u(0, acc);
  std::vector<int64_t> idx(N);
  for (auto& x : idx) x = static_cast<int64_t>(perm[std::min<uint64_t>(R - 1, std::upper_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin())]);

  float* out = static_cast<float*>(std::aligned_alloc(64, N * D * 4));
  uint16_t* out16 = static_cast<uint16_t*>(std::aligned_alloc(64, N * D * 2));
  std::memset(out, 0, N * D * 4);
  std::memset(out16, 0, N * D * 2);
  SerialFor serial;
  std::vector<int64_t> hot(N);
  for (uint64_t i = 0; i < N; ++i) hot[i] = static_cast<int64_t>((i * 7919) % 4096);
  const uint64_t L = 20, B = N / L;
  std::vector<uint64_t> bounds;
  bag_bounds_fixed(B, L, &bounds);

  struct Case {
    const char* name;
    std::function<void()> fn;
    std::vector<double> ts;
  };
  auto gather = [&](const int64_t* ix, bool f16, int stream) {
    GatherArgs g;
    g.indices = ix;
    g.count = N;
    g.out = f16 ? static_cast<void*>(out16) : static_cast<void*>(out);
    g.out_type = f16 ? OutType::kFloat16 : OutType::kFloat32;
    g.stream = stream;
    return [&t, g, &serial] { gather_cpu(t, g, serial); };
  };
  std::vector<Case> cases;
  cases.push_back({"memset output f32 (write floor)", [&] { std::memset(out, 0, N * D * 4); }, {}});
  cases.push_back({"nt-store fill f32 (NT write floor)", [&] { nt_fill(out, N * D); }, {}});
  cases.push_back({"gather zipf -> f32", gather(idx.data(), false, 0), {}});
  cases.push_back({"gather zipf -> f32 stream", gather(idx.data(), false, 1), {}});
  cases.push_back({"gather zipf -> f16", gather(idx.data(), true, 0), {}});
  cases.push_back({"gather zipf -> f16 stream", gather(idx.data(), true, 1), {}});
  cases.push_back({"gather 4096 hot rows -> f32", gather(hot.data(), false, 0), {}});
  cases.push_back({"gather 4096 hot rows -> f32 stream", gather(hot.data(), false, 1), {}});
  cases.push_back({"bags of 20 -> f32", [&] {
    BagArgs b;
    b.indices = idx.data();
    b.n_indices = B * L;
    b.bounds = bounds.data();
    b.n_bags = B;
    b.out = out;
    embedding_bag_cpu(t, b, serial);
  }, {}});
  std::printf("isa=%s R=%llu D=%u N=%llu tier=%d\n", cpu_isa_name(cpu_isa()), (unsigned long long)R, D,
              (unsigned long long)N, tier);
  for (int rep = 0; rep < reps + 2; ++rep) {
    for (auto& c : cases) {
      auto t0 = std::chrono::steady_clock::now();
      c.fn();
      auto t1 = std::chrono::steady_clock::now();
      if (rep >= 2) c.ts.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  }
  for (auto& c : cases) {
    std::sort(c.ts.begin(), c.ts.end());
    std::printf("%-38s min %7.3f ms  median %7.3f ms\n", c.name, c.ts.front(), c.ts[c.ts.size() / 2]);
  }
  return 0;
}
