// The CUDA side of the ORT adapter that every op's CUDA variant shares (the ops themselves are in their own
// files, next to their CPU variants): device scope, the error slots and their checked readback, the
// device table slot (CudaTables), the single ops' base. See cuda_adapter.cc for the design notes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "../cuda/lookup_cuda.h"
#include "lookup_ops.h"
#include "ops.h"

namespace shark_ort {

inline constexpr const char* kCudaEp = "CUDAExecutionProvider";

inline std::string cuda_message(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

// Makes `device` current for the scope (ORT normally has it current already) and restores the previous one.
class DeviceGuard {
 public:
  cudaError_t enter(int device) {
    cudaError_t e = cudaGetDevice(&prev_);
    if (e != cudaSuccess) return e;
    if (prev_ == device) return cudaSuccess;
    e = cudaSetDevice(device);
    switched_ = e == cudaSuccess;
    return e;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = -1;
  bool switched_ = false;
};

// The device ErrorSlots of one run (one per launch: 1 for the single ops, one per field for a multi
// lookup) and their pinned host mirror. Pooled per kernel (one array per concurrent run).
struct Slot {
  int device = -1;
  shark_cuda::ErrorSlot* dev = nullptr;
  shark_cuda::ErrorSlot* host = nullptr;
};

class SlotPool {
 public:
  ~SlotPool() {
    for (const Slot& s : all_) {
      DeviceGuard g;
      if (g.enter(s.device) == cudaSuccess) {
        cudaFree(s.dev);
        cudaFreeHost(s.host);
      }
    }
  }
  // ErrorSlots per run; set once, before the first run.
  void set_slots_per_run(size_t n) { per_run_ = n ? n : 1; }
  size_t bytes() const { return per_run_ * sizeof(shark_cuda::ErrorSlot); }

  // The device must be current.
  cudaError_t acquire(int device, Slot* out) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].device == device) {
          *out = free_[i];
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return cudaSuccess;
        }
      }
    }
    Slot s;
    s.device = device;
    cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&s.dev), bytes());
    if (e != cudaSuccess) return e;
    e = cudaHostAlloc(reinterpret_cast<void**>(&s.host), bytes(), cudaHostAllocDefault);
    if (e != cudaSuccess) {
      cudaFree(s.dev);
      return e;
    }
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(s);
    *out = s;
    return cudaSuccess;
  }
  void release(const Slot& s) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(s);
  }
  // Slots for launches whose errors cannot be read (CUDA graph capture):
  // one array per device, never handed to a checked run, so a replayed graph cannot touch a checked run's slots.
  cudaError_t unchecked(int device, Slot* out) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const Slot& s : unchecked_) {
        if (s.device == device) {
          *out = s;
          return cudaSuccess;
        }
      }
    }
    Slot s;
    cudaError_t e = acquire(device, &s);
    if (e != cudaSuccess) return e;
    std::lock_guard<std::mutex> lock(mu_);
    unchecked_.push_back(s);
    *out = s;
    return cudaSuccess;
  }

 private:
  size_t per_run_ = 1;
  std::mutex mu_;
  std::vector<Slot> free_, all_, unchecked_;
};

// What the error messages of one launch need to read back from the device after a failed run.
struct ErrorSources {
  std::string label;  // "" for the single ops, "field 'x': " for a field of a multi lookup
  int64_t num_rows = 0;
  const void* indices = nullptr;
  shark::IndexType index_type = shark::IndexType::kInt64;
  const void* offsets = nullptr;
  shark::IndexType offsets_type = shark::IndexType::kInt64;
  uint64_t n_indices = 0;
};

inline shark_cuda::IndexKind index_kind(shark::IndexType t) {
  return t == shark::IndexType::kInt64 ? shark_cuda::IndexKind::kInt64 : shark_cuda::IndexKind::kInt32;
}

inline shark_cuda::OutKind out_kind(shark::OutType t) {
  return t == shark::OutType::kFloat16 ? shark_cuda::OutKind::kFloat16 : shark_cuda::OutKind::kFloat32;
}

inline OrtStatus* get_stream(OrtKernelContext* ctx, cudaStream_t* stream) {
  void* s = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetGPUComputeStream(ctx, &s));
  *stream = static_cast<cudaStream_t>(s);
  return nullptr;
}

// Allocates output 0 with `shape`; its data pointer and the id of the device it lives on.
inline OrtStatus* get_device_output(OrtKernelContext* ctx, const std::vector<int64_t>& shape, void** data, int* device) {
  OrtValue* v = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetOutput(ctx, 0, shape.data(), shape.size(), &v));
  if (!v) return make_status(ORT_FAIL, "could not allocate output 0");
  SHARK_RETURN_IF_STATUS(api().GetTensorMutableData(v, data));
  const OrtMemoryInfo* mi = nullptr;
  SHARK_RETURN_IF_STATUS(api().GetTensorMemoryInfo(v, &mi));
  return api().MemoryInfoGetId(mi, device);
}

inline int64_t index_at(const void* host_word, shark::IndexType t) {
  if (t == shark::IndexType::kInt64) {
    int64_t v;
    std::memcpy(&v, host_word, 8);
    return v;
  }
  int32_t v;
  std::memcpy(&v, host_word, 4);
  return v;
}

// One index/offset word of a device (or host) tensor, copied on the stream.
inline OrtStatus* read_word(const TableKernel& k, const void* base, shark::IndexType t, uint64_t pos, cudaStream_t stream,
                     int64_t* v) {
  const size_t size = t == shark::IndexType::kInt64 ? 8 : 4;
  unsigned char word[8] = {0};
  cudaError_t e = cudaMemcpyAsync(word, static_cast<const unsigned char*>(base) + pos * size, size, cudaMemcpyDefault,
                                  stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return k.error("could not read back a bad index: " + cuda_message(e), ORT_FAIL);
  *v = index_at(word, t);
  return nullptr;
}

// The CPU kernel's message for the first bad offsets[i] (bag_bounds_from_offsets).
inline OrtStatus* offsets_error(const TableKernel& k, uint64_t i, const ErrorSources& src, cudaStream_t stream) {
  int64_t o = 0, prev = 0;
  SHARK_RETURN_IF_STATUS(read_word(k, src.offsets, src.offsets_type, i, stream, &o));
  if (i > 0) SHARK_RETURN_IF_STATUS(read_word(k, src.offsets, src.offsets_type, i - 1, stream, &prev));
  std::ostringstream m;
  m << src.label;
  if (i == 0 && o != 0) {
    m << "offsets[0] is " << o << ", must be 0";
  } else if (o < prev) {
    m << "offsets[" << i << "] = " << o << " is less than offsets[" << i - 1 << "] = " << prev
      << " (offsets must be non-decreasing)";
  } else {
    m << "offsets[" << i << "] = " << o << " is greater than the number of indices " << src.n_indices;
  }
  return k.error(m.str());
}

// The run's error from the read-back slots (slot j of the launch that read sources[j]), in the CPU ops'
// order: bad offsets of any launch first (the CPU ops check every offsets input before any lookup), then
// the first launch, in order, with an out-of-range index.
inline OrtStatus* slots_error(const TableKernel& k, const shark_cuda::ErrorSlot* got, const std::vector<ErrorSources>& sources,
                       cudaStream_t stream) {
  for (size_t j = 0; j < sources.size(); ++j) {
    if (got[j].offset_pos != shark_cuda::kNoError) return offsets_error(k, got[j].offset_pos, sources[j], stream);
  }
  for (size_t j = 0; j < sources.size(); ++j) {
    if (got[j].index_pos == shark_cuda::kNoError) continue;
    shark::LookupError le;
    le.position = got[j].index_pos;
    SHARK_RETURN_IF_STATUS(read_word(k, sources[j].indices, sources[j].index_type, le.position, stream, &le.value));
    return k.index_error(le, sources[j].label, sources[j].num_rows);
  }
  return nullptr;
}

// Runs `launch(ErrorSlot* slots)` (which enqueues the kernels on `stream`, launch j reporting into
// slots[j]), then reads all slots back with one copy and one stream synchronize and returns
// slots_error(). Under CUDA graph capture the launches go to the unchecked slots and nothing is read.
class CheckedRunner {
 public:
  void set_slots_per_run(size_t n) { slots_.set_slots_per_run(n); }

  template <class Launch>
  OrtStatus* run(const TableKernel& k, int device, cudaStream_t stream, Launch&& launch,
                 const std::vector<ErrorSources>& sources) {
    DeviceGuard guard;
    cudaError_t e = guard.enter(device);
    if (e != cudaSuccess) return k.error("cudaSetDevice(" + std::to_string(device) + ") failed: " + cuda_message(e), ORT_FAIL);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) capture = cudaStreamCaptureStatusNone;
    // No synchronize inside a CUDA graph capture (illegal there): errors cannot be reported then.
    if (capture != cudaStreamCaptureStatusNone) {
      Slot slot;
      e = slots_.unchecked(device, &slot);
      if (e == cudaSuccess) e = launch(slot.dev);
      if (e != cudaSuccess) return k.error("CUDA kernel launch failed: " + cuda_message(e), ORT_FAIL);
      return nullptr;
    }
    Slot slot;
    e = slots_.acquire(device, &slot);
    if (e != cudaSuccess) return k.error("could not allocate the error slot: " + cuda_message(e), ORT_FAIL);
    struct Release {
      SlotPool& pool;
      const Slot& slot;
      ~Release() { pool.release(slot); }
    } release{slots_, slot};

    e = launch(slot.dev);
    if (e != cudaSuccess) return k.error("CUDA kernel launch failed: " + cuda_message(e), ORT_FAIL);
    e = cudaMemcpyAsync(slot.host, slot.dev, slots_.bytes(), cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) return k.error("CUDA error after the lookup kernel: " + cuda_message(e), ORT_FAIL);
    return slots_error(k, slot.host, sources, stream);
  }

 private:
  SlotPool slots_;
};

// How a table slot reads its three tensors on the CUDA EP: device memory, the view is a DeviceTable of device
// pointers, validation reads shapes and (for a mixed table) a host copy of row_meta -- never the payload.
struct CudaTables {
  using View = shark_cuda::DeviceTable;
  using Stream = cudaStream_t;

  static void fill(const shark::TableView&, const shark::TableAttrs& attrs, const Input (&in)[3], View* t) {
    *t = shark_cuda::DeviceTable{};
    t->payload = static_cast<const uint8_t*>(in[0].data);
    t->meta = in[1].count ? static_cast<const uint64_t*>(in[1].data) : nullptr;
    t->default_row = in[2].count ? static_cast<const float*>(in[2].data) : nullptr;
    t->num_rows = static_cast<uint64_t>(attrs.num_rows);
    t->dim = static_cast<uint32_t>(attrs.dim);
    t->uniform_tier = static_cast<int32_t>(attrs.uniform_tier);
    // Strides, and in v3 the group section: the last bytes of payload (validate_table checks its size).
    shark_cuda::fill_layout(t, in[0].count, attrs.format_version, attrs.scale_group_rows);
  }

  // shark::validate_table on the sizes and a host copy of row_meta.
  static OrtStatus* validate(const TableKernel& k, const std::string& label, const shark::TableView& proto,
                             const Input (&in)[3], const View&, Stream stream, Validation when, std::string* bad) {
    const Input& meta = in[1];
    shark::TableView host = proto;  // validate_table reads sizes and row_meta, never payload or default_row
    host.payload_bytes = in[0].count;
    host.meta_blocks = meta.shape.size() == 2 ? static_cast<uint64_t>(meta.shape[0]) : 0;
    std::vector<uint64_t> meta_host;
    // Only a well-shaped mixed table's row_meta is read (the shape checks come first in validate_table).
    const bool need_meta = !host.uniform() && meta.count > 0 && meta.shape.size() == 2 && meta.shape[1] == 4 &&
                           meta.count == (host.num_rows + 63) / 64 * 4;
    if (need_meta) {
      meta_host.resize(meta.count);
      SHARK_RETURN_IF_STATUS(copy_to_host(k, label, meta_host.data(), meta.data, meta.count * sizeof(uint64_t), stream,
                                          when == Validation::kAtCreation));
      host.meta = meta_host.data();
    }
    *bad = shark::validate_table(host, shark::TableShapes{in[0].shape, meta.shape, in[2].shape});
    return nullptr;
  }

  static void remembered(const TableKernel&, const View&, Validation) {}

  // Device (or host) memory to the host. At kernel creation: synchronous, after a device synchronize so that
  // ORT's upload of the initializers has finished (session creation only); in a run: on the stream.
  static OrtStatus* copy_to_host(const TableKernel& k, const std::string& label, void* dst, const void* src,
                                 size_t bytes, cudaStream_t stream, bool at_creation) {
    cudaPointerAttributes pa{};
    cudaError_t e = cudaPointerGetAttributes(&pa, src);
    if (e != cudaSuccess) {
      cudaGetLastError();  // a plain host pointer on an old runtime: not an error
      pa.type = cudaMemoryTypeUnregistered;
    }
    if (pa.type != cudaMemoryTypeDevice && pa.type != cudaMemoryTypeManaged) {
      std::memcpy(dst, src, bytes);
      return nullptr;
    }
    DeviceGuard guard;
    e = guard.enter(pa.device);
    if (e == cudaSuccess) {
      if (at_creation) {
        e = cudaDeviceSynchronize();
        if (e == cudaSuccess) e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
      } else {
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture != cudaStreamCaptureStatusNone) {
          return k.error(label + "a mixed table fed at run time (not a constant initializer) cannot be validated "
                         "inside a CUDA graph capture");
        }
        e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
      }
    }
    if (e != cudaSuccess) {
      return k.error(label + "could not copy row_meta to the host for validation: " + cuda_message(e), ORT_FAIL);
    }
    return nullptr;
  }
};
using CudaTableSlot = TableSlot<CudaTables>;

// The single ops' one table and checked launch.
class CudaTableKernel : public TableKernel {
 protected:
  OrtStatus* init_cuda(const OpSpec& spec, const OrtKernelInfo* info) {
    SHARK_RETURN_IF_STATUS(init_attrs(spec, info));
    return table_.init(*this, attrs_, kInPayload, std::string(), info);
  }

  // The run's compute stream and the validated table on it: what every single op's run starts with.
  OrtStatus* device_table(OrtKernelContext* ctx, cudaStream_t* stream, shark_cuda::DeviceTable* t) {
    SHARK_RETURN_IF_STATUS(get_stream(ctx, stream));
    return table_.view(*this, ctx, t, *stream);
  }

  template <class Launch>
  OrtStatus* run_checked(int device, cudaStream_t stream, Launch&& launch, ErrorSources src) {
    src.num_rows = attrs_.num_rows;
    return runner_.run(*this, device, stream, launch, std::vector<ErrorSources>{src});
  }

 private:
  CudaTableSlot table_;
  CheckedRunner runner_;
};

}  // namespace shark_ort
