// shark_cuda_selftest: the CUDA launchers against their host emulation (the same per-group code run on
// the CPU, itself checked against shark_export.reference by tests/test_cuda.py), bit for bit, on random
// valid tables of every tier (uniform and mixed; format v1, v2 and v3 with scale groups of 1, 64 or 256
// rows), odd and even dims, int32/int64 indices, float32/float16 outputs, gathers and bags (sum, mean,
// weights, padding_idx, empty bags, 1-D offsets with and without include_last_offset, 2-D), out-of-range
// indices and bad offsets (error slot positions must match).
// No torch, no ORT: small enough to run under compute-sanitizer (benchmarks/gpu/run_on_device.sh).
//
// Usage: shark_cuda_selftest [--quick]     exit status 0 when every case passed.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../cuda/lookup_cuda.h"
#include "../kernels/half.h"
#include "testlib_api.h"

namespace {

int g_failures = 0, g_cases = 0;

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #x); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

struct HostTable {
  uint32_t dim = 0;
  uint64_t rows = 0;
  int uniform_tier = -1;
  int version = 2;  // storage format version: the row strides
  int64_t group_rows = 0;  // v3: scale_group_rows (the group section ends the payload)
  std::vector<uint8_t> payload;
  std::vector<uint64_t> meta;
  std::vector<float> dflt;
};

uint32_t stride_of(int tier, uint32_t d, int version) {
  uint32_t s[8];
  shark_cuda::fill_strides(d, s, version);
  return s[tier];
}

uint16_t finite_half(std::mt19937_64& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  return shark::float_to_half(u(rng));
}

HostTable make_table(uint64_t rows, uint32_t d, int uniform_tier, int version, int64_t group_rows,
                     std::mt19937_64& rng) {
  HostTable t;
  t.version = version;
  t.group_rows = version >= 3 ? group_rows : 0;
  t.dim = d;
  t.rows = rows;
  t.uniform_tier = uniform_tier;
  std::uniform_int_distribution<int> tier_dist(0, 5);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<int> tiers(rows);
  for (uint64_t r = 0; r < rows; ++r) tiers[r] = uniform_tier >= 0 ? uniform_tier : tier_dist(rng);
  if (uniform_tier < 0) {
    for (int k = 0; k < 6 && k < static_cast<int>(rows); ++k) tiers[k] = k;
  }
  t.dflt.resize(d);
  for (auto& x : t.dflt) x = nd(rng);
  const uint64_t blocks = (rows + 63) / 64;
  if (uniform_tier < 0) t.meta.assign(blocks * 4, 0);
  for (uint64_t r = 0; r < rows; ++r) {
    const int tier = tiers[r];
    if (uniform_tier < 0) {
      uint64_t* m = &t.meta[(r / 64) * 4];
      if (r % 64 == 0) m[0] = t.payload.size();
      for (int k = 0; k < 3; ++k)
        if ((tier >> k) & 1) m[1 + k] |= uint64_t{1} << (r % 64);
    }
    const size_t start = t.payload.size();
    t.payload.resize(start + stride_of(tier, d, version), 0);
    uint8_t* p = t.payload.data() + start;
    if (tier == 0) {
      for (uint32_t j = 0; j < d; ++j) {
        const float x = nd(rng);
        std::memcpy(p + 4 * j, &x, 4);
      }
    } else if (tier == 1) {
      for (uint32_t j = 0; j < d; ++j) {
        const uint16_t h = finite_half(rng, -100.f, 100.f);
        std::memcpy(p + 2 * j, &h, 2);
      }
    } else if (tier >= 2 && tier <= 4) {
      const uint32_t head = version >= 3 ? 0 : 4;  // v3: codes only, scale and bias in the group section
      if (head) {
        const uint16_t sb[2] = {finite_half(rng, 0.f, 0.5f), finite_half(rng, -3.f, 3.f)};
        std::memcpy(p, sb, 4);
      }
      const uint32_t bits = tier == 2 ? 8 : tier == 3 ? 4 : 2;
      const uint32_t per = 8 / bits;
      for (uint32_t j = 0; j < d; ++j) {
        const uint32_t q = static_cast<uint32_t>(rng() & ((1u << bits) - 1));
        p[head + j / per] |= static_cast<uint8_t>(q << (bits * (j % per)));
      }
    }
  }
  if (version >= 3) {  // every slot random (also those no row reads: a kernel must not care)
    const uint64_t groups = (rows + t.group_rows - 1) / t.group_rows;
    for (uint64_t g = 0; g < groups * 3; ++g) {
      const uint16_t sb[2] = {finite_half(rng, 0.f, 0.5f), finite_half(rng, -3.f, 3.f)};
      const size_t at = t.payload.size();
      t.payload.resize(at + 4);
      std::memcpy(t.payload.data() + at, sb, 4);
    }
  }
  return t;
}

template <typename T>
T* to_device(const std::vector<T>& v) {
  T* d = nullptr;
  const size_t bytes = v.size() * sizeof(T);
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), bytes ? bytes : 4));
  if (bytes) CHECK_CUDA(cudaMemcpy(d, v.data(), bytes, cudaMemcpyHostToDevice));
  return d;
}

void report(bool ok, const std::string& what) {
  ++g_cases;
  if (!ok) {
    ++g_failures;
    std::printf("FAILED %s\n", what.c_str());
  }
}

std::string describe(const HostTable& t, const char* op, int idx64, int half) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s v%d G=%lld rows=%llu dim=%u tier=%d idx%s out=%s", op, t.version,
                static_cast<long long>(t.group_rows), static_cast<unsigned long long>(t.rows), t.dim, t.uniform_tier,
                idx64 ? "64" : "32", half ? "f16" : "f32");
  return buf;
}

// Index values (with a few out of range when `bad`) as int32 or int64 bytes.
std::vector<uint8_t> make_indices(uint64_t n, uint64_t rows, bool bad, int idx64, std::mt19937_64& rng,
                                  std::vector<int64_t>* values) {
  values->resize(n);
  std::uniform_int_distribution<uint64_t> u(0, rows - 1);
  for (auto& v : *values) v = static_cast<int64_t>(u(rng));
  if (bad && n > 10) {
    (*values)[n / 2] = static_cast<int64_t>(rows);
    (*values)[n - 3] = -1;
    (*values)[n / 3 + 1] = static_cast<int64_t>(rows) + 1000;
  }
  std::vector<uint8_t> bytes(n * (idx64 ? 8 : 4));
  for (uint64_t i = 0; i < n; ++i) {
    if (idx64) {
      std::memcpy(&bytes[8 * i], &(*values)[i], 8);
    } else {
      const int32_t v = static_cast<int32_t>((*values)[i]);
      std::memcpy(&bytes[4 * i], &v, 4);
    }
  }
  return bytes;
}

void run_gather(const HostTable& t, int idx64, int half, bool bad, std::mt19937_64& rng) {
  const uint64_t n = 777;
  std::vector<int64_t> vals;
  const std::vector<uint8_t> idx = make_indices(n, t.rows, bad, idx64, rng, &vals);
  const size_t out_bytes = n * t.dim * (half ? 2 : 4);
  std::vector<uint8_t> want(out_bytes, 0xAB), got(out_bytes, 0xCD);
  uint64_t err_want[2];
  shark_emu_gather_ex(t.payload.data(), t.meta.empty() ? nullptr : t.meta.data(), t.dflt.data(), t.rows, t.dim,
                      t.uniform_tier, t.version, t.payload.size(), t.group_rows, idx.data(), idx64, n, want.data(),
                      half, 1, 0, err_want);
  uint8_t* d_payload = to_device(t.payload);
  uint64_t* d_meta = t.meta.empty() ? nullptr : to_device(t.meta);
  float* d_dflt = to_device(t.dflt);
  uint8_t* d_idx = to_device(idx);
  void* d_out = nullptr;
  shark_cuda::ErrorSlot* d_err = nullptr;
  CHECK_CUDA(cudaMalloc(&d_out, out_bytes));
  CHECK_CUDA(cudaMemset(d_out, 0x5A, out_bytes));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_err), sizeof(shark_cuda::ErrorSlot)));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK_CUDA(static_cast<cudaError_t>(shark_cuda_gather_ex(d_payload, d_meta, d_dflt, t.rows, t.dim, t.uniform_tier,
                                                           t.version, t.payload.size(), t.group_rows, d_idx, idx64, n,
                                                           d_out, half, 1, 0, d_err, s)));
  shark_cuda::ErrorSlot err{};
  CHECK_CUDA(cudaMemcpyAsync(got.data(), d_out, out_bytes, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaMemcpyAsync(&err, d_err, sizeof err, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  const std::string what = describe(t, "gather", idx64, half) + (bad ? " bad-indices" : "");
  report(got == want, what + ": output");
  report(err.index_pos == err_want[0] && err.offset_pos == err_want[1], what + ": error slot");
  if (bad) report(err.index_pos != shark_cuda::kNoError, what + ": bad index reported");
  CHECK_CUDA(cudaStreamDestroy(s));
  cudaFree(d_payload);
  cudaFree(d_meta);
  cudaFree(d_dflt);
  cudaFree(d_idx);
  cudaFree(d_out);
  cudaFree(d_err);
}

// kind: 0 = 1-D offsets, 1 = 1-D offsets + include_last_offset, 2 = 2-D, 3 = bad offsets
void run_bag(const HostTable& t, int idx64, int half, int kind, int mode, bool weighted, int64_t pad, bool bad,
             std::mt19937_64& rng) {
  uint64_t n_bags = 301, bag_len = 0, n_off = 0;
  std::vector<int64_t> offsets;
  uint64_t n = 0;
  if (kind == 2) {
    bag_len = 7;
    n = n_bags * bag_len;
  } else {
    std::uniform_int_distribution<int> sz(0, 40);
    offsets.push_back(0);
    for (uint64_t b = 1; b < n_bags; ++b) offsets.push_back(offsets.back() + (b % 5 == 0 ? 0 : sz(rng)));
    n = static_cast<uint64_t>(offsets.back()) + 13;
    if (kind == 1) {
      offsets.push_back(static_cast<int64_t>(n) - 5);  // 5 trailing indices in no bag
    }
    if (kind == 3) {
      offsets[17] = offsets[16] - 1;          // decreasing
      offsets[200] = static_cast<int64_t>(n) + 9;  // past the end
    }
    n_off = offsets.size();
    n_bags = kind == 1 ? n_off - 1 : n_off;
  }
  std::vector<int64_t> vals;
  std::vector<uint8_t> idx = make_indices(n, t.rows, bad, idx64, rng, &vals);
  if (pad >= 0) {  // some padding entries
    for (uint64_t k = 0; k < n; k += 9) {
      if (idx64) {
        std::memcpy(&idx[8 * k], &pad, 8);
      } else {
        const int32_t p = static_cast<int32_t>(pad);
        std::memcpy(&idx[4 * k], &p, 4);
      }
    }
  }
  std::vector<uint8_t> off(n_off * (idx64 ? 8 : 4));
  for (uint64_t i = 0; i < n_off; ++i) {
    if (idx64) {
      std::memcpy(&off[8 * i], &offsets[i], 8);
    } else {
      const int32_t v = static_cast<int32_t>(offsets[i]);
      std::memcpy(&off[4 * i], &v, 4);
    }
  }
  std::vector<float> w(n);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : w) x = nd(rng);
  const size_t out_bytes = n_bags * t.dim * (half ? 2 : 4);
  std::vector<uint8_t> want(out_bytes, 0xAB), got(out_bytes, 0xCD);
  uint64_t err_want[2];
  const bool offs = kind != 2;
  shark_emu_bag_ex(t.payload.data(), t.meta.empty() ? nullptr : t.meta.data(), t.dflt.data(), t.rows, t.dim,
                   t.uniform_tier, t.version, t.payload.size(), t.group_rows, idx.data(), idx64, n,
                   offs ? off.data() : nullptr, idx64, n_off, kind == 1, bag_len, n_bags, weighted ? w.data() : nullptr,
                   mode, pad, want.data(), half, 0, err_want);
  uint8_t* d_payload = to_device(t.payload);
  uint64_t* d_meta = t.meta.empty() ? nullptr : to_device(t.meta);
  float* d_dflt = to_device(t.dflt);
  uint8_t* d_idx = to_device(idx);
  uint8_t* d_off = to_device(off);
  float* d_w = to_device(w);
  void* d_out = nullptr;
  shark_cuda::ErrorSlot* d_err = nullptr;
  CHECK_CUDA(cudaMalloc(&d_out, out_bytes ? out_bytes : 4));
  CHECK_CUDA(cudaMemset(d_out, 0x5A, out_bytes ? out_bytes : 4));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d_err), sizeof(shark_cuda::ErrorSlot)));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK_CUDA(static_cast<cudaError_t>(shark_cuda_bag_ex(d_payload, d_meta, d_dflt, t.rows, t.dim, t.uniform_tier,
                                                        t.version, t.payload.size(), t.group_rows, d_idx, idx64, n,
                                                        offs ? d_off : nullptr, idx64, n_off, kind == 1, bag_len,
                                                        n_bags, weighted ? d_w : nullptr, mode, pad, d_out, half, 0,
                                                        d_err, s)));
  shark_cuda::ErrorSlot err{};
  CHECK_CUDA(cudaMemcpyAsync(got.data(), d_out, out_bytes, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaMemcpyAsync(&err, d_err, sizeof err, cudaMemcpyDeviceToHost, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  char buf[120];
  std::snprintf(buf, sizeof buf, " kind=%d mode=%d weighted=%d pad=%lld%s", kind, mode, weighted ? 1 : 0,
                static_cast<long long>(pad), bad ? " bad-indices" : "");
  const std::string what = describe(t, "bag", idx64, half) + buf;
  report(got == want, what + ": output");
  report(err.index_pos == err_want[0] && err.offset_pos == err_want[1], what + ": error slot");
  if (kind == 3) report(err.offset_pos == 17, what + ": bad offsets reported at 17");
  CHECK_CUDA(cudaStreamDestroy(s));
  cudaFree(d_payload);
  cudaFree(d_meta);
  cudaFree(d_dflt);
  cudaFree(d_idx);
  cudaFree(d_off);
  cudaFree(d_w);
  cudaFree(d_out);
  cudaFree(d_err);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int dev = 0;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("device %d: %s (sm_%d%d), runtime %d, driver %d\n", dev, prop.name, prop.major, prop.minor,
              shark_cuda_runtime_version(), shark_cuda_driver_version());
  std::mt19937_64 rng(1234);
  const uint32_t dims[] = {1, 2, 3, 5, 7, 8, 13, 16, 20, 32, 64, 100, 128, 130, 257, 600};
  const int tiers[] = {0, 1, 2, 3, 4, 5, -1};
  for (uint32_t d : dims) {
    for (int tier : tiers) {
      const uint64_t rows = tier < 0 ? 1000 : 333;
      for (int version = 1; version <= 3; ++version) {
      const int64_t group_rows = int64_t{1} << (d % 3 == 0 ? 0 : d % 3 == 1 ? 6 : 8);  // v3: G = 1, 64 or 256
      const HostTable t = make_table(rows, d, tier, version, group_rows, rng);
      for (int idx64 = 0; idx64 < 2; ++idx64) {
        for (int half = 0; half < 2; ++half) {
          run_gather(t, idx64, half, false, rng);
          if (quick && (idx64 || half)) continue;
          run_gather(t, idx64, half, true, rng);
          run_bag(t, idx64, half, 0, 0, false, -1, false, rng);
          run_bag(t, idx64, half, 1, 1, false, 3, false, rng);
          run_bag(t, idx64, half, 2, 0, true, -1, false, rng);
          run_bag(t, idx64, half, 0, 0, true, 5, true, rng);
          run_bag(t, idx64, half, 3, 0, false, -1, false, rng);
        }
      }
      }
    }
  }
  std::printf("%s: %d of %d checks passed\n", g_failures ? "FAILED" : "PASSED", g_cases - g_failures, g_cases);
  return g_failures ? 1 : 0;
}
