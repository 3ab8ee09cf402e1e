// The lookup loops as compiled for each instruction set, and the jobs they run. gather_loops.h and
// bag_loops.h define the loops once, as templates over a row class; isa_portable.cc instantiates them
// with PortableRows and isa_avx2.cc (x86-64 only, its own compiler flags) with Avx2Rows.
// gather_cpu.cc and embedding_bag_cpu.cc pick one set at run time (cpu_isa()). No ORT header.
#pragma once

#include <atomic>
#include <cstdint>

#include "lookup.h"
#include "table.h"

// CMake defines SHARK_X86_AVX2_PATH=1 where it compiles isa_avx2.cc (x86-64 with GCC or Clang, unless
// -DSHARK_CPU_AVX2=OFF); elsewhere only the portable loops exist.
#ifndef SHARK_X86_AVX2_PATH
#define SHARK_X86_AVX2_PATH 0
#endif

namespace shark {

// Lookup i (of `count`) is row i % per_sample of sample i / per_sample: it is written at
// out + (i / per_sample) * out_stride + (i % per_sample) * dim (elements). A plain gather has
// per_sample = 1 and out_stride = dim; a field of a lookup group writes its block of every output row.
struct GatherJob {
  const TableView* t;
  const void* indices;
  uint64_t count;
  void* out;
  const void* dflt_out;  // default_row in the output type
  uint64_t chunk;        // lookups per task
  uint64_t per_sample;   // rows per sample (>= 1)
  uint64_t out_stride;   // elements from one sample's output to the next (>= per_sample * dim)
  std::atomic<uint64_t>* first_error;
};

constexpr uint32_t kBagStackAcc = 2048;  // fp16 output: float accumulator on the stack up to this dim

struct BagJob {
  const TableView* t;
  const void* indices;
  const uint64_t* bounds;
  const float* weights;
  int64_t padding_idx;
  bool mean;
  void* out;             // bag b is written at out + b * out_stride (elements)
  uint64_t out_stride;   // >= dim
  uint32_t dim;
  const uint64_t* task_bags;  // task i covers bags [task_bags[i], task_bags[i + 1])
  float* heap_scratch;        // fp16 output with dim > kBagStackAcc: dim floats per task
  std::atomic<uint64_t>* first_error;
};

// The task function for a table (its uniform tier, or kMixed), index and output types. A task runs
// fn(&job, i) over lookups [i * chunk, (i + 1) * chunk) of a GatherJob, or bags
// [task_bags[i], task_bags[i + 1]) of a BagJob.
namespace portable {
TaskFn select_gather(int tier, IndexType it, OutType ot, bool stream);
TaskFn select_bag(int tier, uint32_t dim, IndexType it, OutType ot, bool weighted);
}  // namespace portable

#if SHARK_X86_AVX2_PATH
namespace avx2 {
// stream: non-temporal output stores (needs dim % 8 == 0 and 16-byte aligned output rows).
TaskFn select_gather(int tier, IndexType it, OutType ot, bool stream);
TaskFn select_bag(int tier, uint32_t dim, IndexType it, OutType ot, bool weighted);
}  // namespace avx2
#endif

}  // namespace shark
