// CUDA variants of RowwiseDequantGather / RowwiseDequantEmbeddingBag / RowwiseDequantMultiLookup
// (CUDAExecutionProvider), next to the CPU ones in the same domain. ORT adapter only: the kernels are the
// ORT-free launchers in custom_ops/cuda/ (lookup_cuda.h). The multi-lookup variant shares its attribute
// parsing, input checks and messages with the CPU op (multi_lookup.h) and launches the gather / bag
// kernels once per field into the field's column block of the one output (GatherParams / BagParams
// out_stride), one error slot per field, all read back with one copy after the last launch.
//
// Streams. Every CUDA call of a run goes on ORT's compute stream (KernelContext_GetGPUComputeStream;
// microsoft/onnxruntime #6952, #17412). No default-stream work, no device-wide synchronization in a run.
//
// Table validation. The three table tensors are ordinary (device-memory) inputs: the kernels need
// row_meta and default_row on the device. validate_table() reads the tensors' shapes and, for a mixed
// table, row_meta's content (0.5 byte per row: 5 MB for 10M rows) -- never the payload. When the table
// tensors are constant initializers (the exported models' case) that happens once, at session creation
// (one synchronous copy of row_meta to the host after a device synchronize -- session creation only),
// and is then cached by the tensors' device pointers and sizes, exactly as the CPU kernels cache it.
// Tables fed as graph inputs are validated on every run: a copy of row_meta on the compute stream and a
// stream synchronize (the slow path, as on the CPU where it is a full pass over row_meta).
//
// Errors. The kernels never read outside the table: an out-of-range index gives a zero row (gather) or
// is skipped (bag), bad offsets are clamped, and the lowest bad position goes to a 16-byte device
// ErrorSlot (atomicMin; a multi lookup has one per field). After the launches the kernel copies the
// slots into pinned host memory on the compute stream and synchronizes that stream (cudaStreamSynchronize,
// never the device): the run then fails with the same message as the CPU kernel (node, field, value,
// position, R; a multi lookup reports bad offsets of any field before out-of-range indices, as the CPU op). Cost: one 16-byte memset and
// one 16-byte copy on the stream, and the host waits for the stream to drain (a few microseconds plus the
// queued GPU work: ORT cannot enqueue the nodes after this one while it runs). The readback is skipped
// only while the stream is being captured into a CUDA graph, where a synchronize is illegal (bad indices
// then read as zero rows / skipped entries: validate inputs before replaying a captured graph). No switch
// turns the check off.
//
// Runtime. The CUDA runtime is linked statically (it loads libcuda.so.1 itself on first use), so the
// library loads and runs its CPU kernels on hosts without a GPU or CUDA libraries. The CUDA variants are
// registered only when the driver supports this library's CUDA runtime version (else the nodes stay on
// the CPU EP, and a line on stderr says why when a driver was found); the session config entry
// shark_export.cuda=0 never registers them, =force always does (for tests).
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
#include "multi_lookup.h"
#include "ops.h"

namespace shark_ort {
namespace {

constexpr const char* kCudaEp = "CUDAExecutionProvider";

std::string cuda_message(cudaError_t e) {
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

shark_cuda::IndexKind index_kind(shark::IndexType t) {
  return t == shark::IndexType::kInt64 ? shark_cuda::IndexKind::kInt64 : shark_cuda::IndexKind::kInt32;
}

shark_cuda::OutKind out_kind(shark::OutType t) {
  return t == shark::OutType::kFloat16 ? shark_cuda::OutKind::kFloat16 : shark_cuda::OutKind::kFloat32;
}

OrtStatus* get_stream(OrtKernelContext* ctx, cudaStream_t* stream) {
  void* s = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetGPUComputeStream(ctx, &s));
  *stream = static_cast<cudaStream_t>(s);
  return nullptr;
}

// Allocates output 0 with `shape`; its data pointer and the id of the device it lives on.
OrtStatus* get_device_output(OrtKernelContext* ctx, const std::vector<int64_t>& shape, void** data, int* device) {
  OrtValue* v = nullptr;
  SHARK_RETURN_IF_STATUS(api().KernelContext_GetOutput(ctx, 0, shape.data(), shape.size(), &v));
  if (!v) return make_status(ORT_FAIL, "could not allocate output 0");
  SHARK_RETURN_IF_STATUS(api().GetTensorMutableData(v, data));
  const OrtMemoryInfo* mi = nullptr;
  SHARK_RETURN_IF_STATUS(api().GetTensorMemoryInfo(v, &mi));
  return api().MemoryInfoGetId(mi, device);
}

int64_t index_at(const void* host_word, shark::IndexType t) {
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
OrtStatus* read_word(const TableKernel& k, const void* base, shark::IndexType t, uint64_t pos, cudaStream_t stream,
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
OrtStatus* offsets_error(const TableKernel& k, uint64_t i, const ErrorSources& src, cudaStream_t stream) {
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
OrtStatus* slots_error(const TableKernel& k, const shark_cuda::ErrorSlot* got, const std::vector<ErrorSources>& sources,
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

  OrtStatus* device_table(OrtKernelContext* ctx, cudaStream_t stream, shark_cuda::DeviceTable* t) {
    return table_.view(*this, ctx, t, stream);
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

class GatherCudaKernel : public CudaTableKernel {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<GatherCudaKernel>* out) {
    auto k = std::make_unique<GatherCudaKernel>();
    SHARK_RETURN_IF_STATUS(k->init_cuda(spec, info));
    SHARK_RETURN_IF_STATUS(k->check_index_type(info, kInIndices, "indices"));
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    cudaStream_t stream = nullptr;
    SHARK_RETURN_IF_STATUS(get_stream(ctx, &stream));
    shark_cuda::DeviceTable t;
    SHARK_RETURN_IF_STATUS(device_table(ctx, stream, &t));
    Input idx;
    shark::IndexType it = shark::IndexType::kInt64;
    SHARK_RETURN_IF_STATUS(index_input(ctx, kInIndices, "indices", true, &idx, &it));
    std::vector<int64_t> shape = idx.shape;
    shape.push_back(attrs_.dim);
    void* out = nullptr;
    int device = 0;
    SHARK_RETURN_IF_STATUS(get_device_output(ctx, shape, &out, &device));
    if (idx.count == 0) return nullptr;
    const shark_cuda::GatherParams p{idx.data, index_kind(it), idx.count, out, out_kind(out_type_)};
    ErrorSources src;
    src.indices = idx.data;
    src.index_type = it;
    src.n_indices = idx.count;
    return run_checked(
        device, stream, [&](shark_cuda::ErrorSlot* err) { return shark_cuda::gather(t, p, err, stream); }, src);
  }

  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx) { return gather_infer_shape(ctx); }
};

class BagCudaKernel : public CudaTableKernel {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<BagCudaKernel>* out) {
    auto k = std::make_unique<BagCudaKernel>();
    SHARK_RETURN_IF_STATUS(k->init_cuda(spec, info));
    SHARK_RETURN_IF_STATUS(read_bag_attrs(*k, info, &k->bag_));
    *out = std::move(k);
    return nullptr;
  }

  // As the CPU kernel, except that the offsets' values are checked by the kernel on the device (so a
  // bad per_sample_weights input is reported before bad offset values, the CPU kernel does the reverse).
  OrtStatus* Compute(OrtKernelContext* ctx) {
    cudaStream_t stream = nullptr;
    SHARK_RETURN_IF_STATUS(get_stream(ctx, &stream));
    shark_cuda::DeviceTable t;
    SHARK_RETURN_IF_STATUS(device_table(ctx, stream, &t));
    BagInputs in;
    SHARK_RETURN_IF_STATUS(read_bag_inputs(*this, bag_, ctx, &in));
    SHARK_RETURN_IF_STATUS(check_bag_weights(*this, bag_, in));
    void* out = nullptr;
    int device = 0;
    SHARK_RETURN_IF_STATUS(get_device_output(ctx, {static_cast<int64_t>(in.n_bags), attrs_.dim}, &out, &device));
    shark_cuda::BagParams p{};
    p.indices = in.idx.data;
    p.index_kind = index_kind(in.index_type);
    p.n_indices = in.idx.count;
    p.offsets = in.fixed ? nullptr : in.offs.data;
    p.offsets_kind = index_kind(in.offsets_type);
    p.n_offsets = in.fixed ? 0 : in.offs.count;
    p.include_last_offset = static_cast<int32_t>(bag_.include_last_offset);
    p.bag_len = in.bag_len;
    p.n_bags = in.n_bags;
    p.weights = in.wts.present ? static_cast<const float*>(in.wts.data) : nullptr;
    p.mode = static_cast<int32_t>(bag_.mode);
    p.padding_idx = bag_.padding_idx;
    p.out = out;
    p.out_kind = out_kind(out_type_);
    if (in.n_bags == 0 && (in.fixed || (in.offs.count == 0 && in.idx.count == 0))) return nullptr;
    ErrorSources src;
    src.indices = in.idx.data;
    src.index_type = in.index_type;
    src.offsets = p.offsets;
    src.offsets_type = in.offsets_type;
    src.n_indices = in.idx.count;
    return run_checked(
        device, stream, [&](shark_cuda::ErrorSlot* err) { return shark_cuda::embedding_bag(t, p, err, stream); }, src);
  }

  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx) { return bag_infer_shape(ctx); }

 private:
  BagAttrs bag_;
};

// RowwiseDequantMultiLookup on the CUDA EP: the CPU op's checks and messages (MultiLookupBase), then one
// gather / bag launch per field on the compute stream, each writing its column block of every output row
// (out = the block's first column, out_stride = W) and reporting into its own error slot; one readback.
class MultiLookupCudaKernel : public MultiLookupBase {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<MultiLookupCudaKernel>* out) {
    auto k = std::make_unique<MultiLookupCudaKernel>();
    MultiLookupCudaKernel& kernel = *k;
    SHARK_RETURN_IF_STATUS(k->init_fields(spec, info, [&](size_t f) -> OrtStatus* {
      kernel.tables_.push_back(std::make_unique<CudaTableSlot>());
      const MultiField& field = kernel.fields_[f];
      return kernel.tables_.back()->init(kernel, field.table, field.first, field.label, info);
    }));
    k->runner_.set_slots_per_run(k->fields_.size());
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    cudaStream_t stream = nullptr;
    SHARK_RETURN_IF_STATUS(get_stream(ctx, &stream));
    const size_t n = fields_.size();
    std::vector<shark_cuda::DeviceTable> tables(n);
    std::vector<FieldInputs> inputs(n);
    std::vector<uint64_t> column(n);
    uint64_t n_samples = 0, width = 0;
    for (size_t k = 0; k < n; ++k) {  // the CPU op's order: field by field, table then inputs
      SHARK_RETURN_IF_STATUS(tables_[k]->view(*this, ctx, &tables[k], stream));
      SHARK_RETURN_IF_STATUS(field_inputs(ctx, k, &inputs[k]));
      column[k] = width;
      SHARK_RETURN_IF_STATUS(add_columns(k, inputs[k], &width));
      SHARK_RETURN_IF_STATUS(check_samples(k, inputs[k].samples, &n_samples));
    }
    SHARK_RETURN_IF_STATUS(check_output_size(n_samples, width));
    void* out = nullptr;
    int device = 0;
    SHARK_RETURN_IF_STATUS(
        get_device_output(ctx, {static_cast<int64_t>(n_samples), static_cast<int64_t>(width)}, &out, &device));
    const uint64_t elem_bytes = out_type_ == shark::OutType::kFloat16 ? 2 : 4;
    std::vector<shark_cuda::GatherParams> gathers(n);
    std::vector<shark_cuda::BagParams> bags(n);
    std::vector<ErrorSources> sources(n);
    for (size_t k = 0; k < n; ++k) {
      const MultiField& f = fields_[k];
      const FieldInputs& in = inputs[k];
      void* block = out ? static_cast<char*>(out) + column[k] * elem_bytes : nullptr;
      ErrorSources& src = sources[k];
      src.label = f.label;
      src.num_rows = f.table.num_rows;
      src.indices = in.idx.data;
      src.index_type = in.index_type;
      src.n_indices = in.idx.count;
      if (f.kind == kGatherField) {
        shark_cuda::GatherParams& p = gathers[k];
        p = shark_cuda::GatherParams{in.idx.data, index_kind(in.index_type), in.idx.count, block, out_kind(out_type_)};
        p.rows_per_sample = in.rows_per_sample ? in.rows_per_sample : 1;  // 0 only with no lookups at all
        p.out_stride = width;
        continue;
      }
      shark_cuda::BagParams& p = bags[k];
      p = shark_cuda::BagParams{};
      p.indices = in.idx.data;
      p.index_kind = index_kind(in.index_type);
      p.n_indices = in.idx.count;
      if (f.kind == kBagOffsets) {
        p.offsets = in.offs.data;
        p.offsets_kind = index_kind(in.offsets_type);
        p.n_offsets = in.offs.count;
        p.include_last_offset = static_cast<int32_t>(f.bag.include_last_offset);
      } else {
        p.bag_len = n_samples ? in.idx.count / n_samples : 0;
      }
      p.n_bags = n_samples;
      p.weights = in.weights;
      p.mode = static_cast<int32_t>(f.bag.mode);
      p.padding_idx = f.bag.padding_idx;
      p.out = block;
      p.out_kind = out_kind(out_type_);
      p.out_stride = width;
      src.offsets = p.offsets;
      src.offsets_type = in.offsets_type;
    }
    // Every field is launched (a launcher with nothing to do only resets its slot): each slot is then fresh.
    auto launch = [&](shark_cuda::ErrorSlot* slots) {
      for (size_t k = 0; k < n; ++k) {
        const cudaError_t e = fields_[k].kind == kGatherField
                                  ? shark_cuda::gather(tables[k], gathers[k], slots + k, stream)
                                  : shark_cuda::embedding_bag(tables[k], bags[k], slots + k, stream);
        if (e != cudaSuccess) return e;
      }
      return cudaSuccess;
    };
    return runner_.run(*this, device, stream, launch, sources);
  }

 private:
  std::vector<std::unique_ptr<CudaTableSlot>> tables_;  // one per field (not movable: holds a mutex)
  CheckedRunner runner_;
};

}  // namespace

bool cuda_ops_enabled(const shark::KernelConfig& config) {
  if (config.cuda < 0) return false;
  if (config.cuda > 0) return true;
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) return false;  // no NVIDIA driver: CPU-only host
  if (driver < CUDART_VERSION) {
    std::fprintf(stderr,
                 "shark_export: the NVIDIA driver supports CUDA %d.%d, the library's CUDA kernels need %d.%d or newer: "
                 "RowwiseDequantGather/RowwiseDequantEmbeddingBag/RowwiseDequantMultiLookup run on the CPU execution provider\n",
                 driver / 1000, (driver % 1000) / 10, CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10);
    return false;
  }
  return true;
}

void add_gather_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<GatherCudaKernel>>(gather_spec(out, kCudaEp, config), api_version));
  }
}

void add_embedding_bag_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<BagCudaKernel>>(bag_spec(out, kCudaEp, config), api_version));
  }
}

void add_multi_lookup_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<MultiLookupCudaKernel>>(multi_spec(out, kCudaEp, config), api_version));
  }
}

}  // namespace shark_ort
