// RowwiseDequantMultiLookup(field inputs...) -> output [B, W]  (CPU)
//
// The lookups of several fields in one node, each field on its own table (docs/FORMAT.md), written
// straight into one output row per sample: field k fills W_k columns of every row, in field order
// (W_k = L_k * D_k for a gather whose indices are [B, L_k...], D_k for a bag). This is what the fields'
// single lookups followed by a Concat along axis 1 compute, without the per-field outputs and the copy.
//
// Inputs, field after field: payload, row_meta, default_row, indices, then offsets (kind 2) and
// per_sample_weights (has_weights). Attributes, one entry per field: kinds (0 gather, 1 bag over 2-D
// indices [B, L], 2 bag over 1-D indices with offsets), format_versions, num_rows, dims, uniform_tiers,
// modes, include_last_offsets, padding_idxs, has_weights, scale_group_rows (v3 tables); output_dtype; field_names ("\n"-separated).
//
// This file holds the CPU kernel and, with SHARK_WITH_CUDA, the CUDA one; what they share (attributes, input
// checks, shape inference) is in multi_lookup.cc.
#include <cstring>
#include <memory>
#include <sstream>
#include <vector>

#include "../kernels/embedding_bag_cpu.h"
#include "../kernels/lookup_group_cpu.h"
#include "custom_op.h"
#include "lookup_ops.h"
#include "multi_lookup.h"
#include "ops.h"
#include "table_kernel.h"

#ifdef SHARK_WITH_CUDA
#include "cuda_adapter.h"
#endif

namespace shark_ort {

namespace {

class MultiLookupKernel : public MultiLookupBase {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<MultiLookupKernel>* out) {
    auto k = std::make_unique<MultiLookupKernel>();
    MultiLookupKernel& kernel = *k;
    SHARK_RETURN_IF_STATUS(k->init_fields(spec, info, [&](size_t f) -> OrtStatus* {
      kernel.slots_.push_back(std::make_unique<TableSlot<CpuTables>>());
      const MultiField& field = kernel.fields_[f];
      return kernel.slots_.back()->init(kernel, field.table, field.first, field.label, info);
    }));
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    const size_t n = fields_.size();
    std::vector<shark::TableView> tables(n);
    std::vector<shark::GroupField> group(n);
    std::vector<FieldInputs> inputs(n);
    uint64_t n_samples = 0, width = 0;
    for (size_t k = 0; k < n; ++k) {
      const MultiField& f = fields_[k];
      SHARK_RETURN_IF_STATUS(slots_[k]->view(*this, ctx, &tables[k]));
      FieldInputs& in = inputs[k];
      SHARK_RETURN_IF_STATUS(field_inputs(ctx, k, &in));
      shark::GroupField& g = group[k];
      g.table = &tables[k];
      g.is_bag = f.kind != kGatherField;
      g.column = width;
      if (f.kind == kGatherField) {
        g.per_sample = in.rows_per_sample;
        g.gather.indices = in.idx.data;
        g.gather.index_type = in.index_type;
        g.gather.count = in.idx.count;
      } else {
        shark::BagArgs& b = g.bag;
        b.indices = in.idx.data;
        b.index_type = in.index_type;
        b.n_indices = in.idx.count;
        b.mode = f.bag.mode == 1 ? shark::BagMode::kMean : shark::BagMode::kSum;
        b.padding_idx = f.bag.padding_idx;
        b.weights = in.weights;
      }
      SHARK_RETURN_IF_STATUS(add_columns(k, in, &width));
      SHARK_RETURN_IF_STATUS(check_samples(k, in.samples, &n_samples));
    }
    SHARK_RETURN_IF_STATUS(check_output_size(n_samples, width));
    // The output first: the allocation that can fail, before anything sized by the inputs' claimed shapes.
    void* out = nullptr;
    SHARK_RETURN_IF_STATUS(get_output(ctx, 0, {static_cast<int64_t>(n_samples), static_cast<int64_t>(width)}, &out));
    std::vector<std::vector<uint64_t>> bounds(n);
    for (size_t k = 0; k < n; ++k) {
      const MultiField& f = fields_[k];
      if (f.kind == kGatherField) continue;
      shark::BagArgs& b = group[k].bag;
      if (f.kind == kBag2D) {
        const uint64_t bag_len = n_samples ? b.n_indices / n_samples : 0;
        shark::bag_bounds_fixed(n_samples, bag_len, &bounds[k]);
      } else {
        const Input& offs = inputs[k].offs;
        const std::string bad = shark::bag_bounds_from_offsets(offs.data, inputs[k].offsets_type, offs.count,
                                                               f.bag.include_last_offset != 0, b.n_indices, &bounds[k]);
        if (!bad.empty()) return error(f.label + bad);
      }
      b.bounds = bounds[k].data();
      b.n_bags = n_samples;
      b.generic_only = config_.generic_only;
    }
    shark::GroupArgs a;
    a.n_samples = n_samples;
    a.width = width;
    a.out = out;
    a.out_type = out_type_;
    a.stream_bytes = config_.stream_bytes;
    a.generic_only = config_.generic_only;
    OrtParallelFor pf(ctx);
    const shark::GroupError e = shark::lookup_group_cpu(group, a, pf);
    SHARK_RETURN_IF_STATUS(pf.take_status());
    if (!e.ok()) return field_index_error(e.field, e.error);
    return nullptr;
  }

 private:
  std::vector<std::unique_ptr<TableSlot<CpuTables>>> slots_;  // one per field (a slot holds a mutex: not movable)
};

}  // namespace

void add_multi_lookup_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<MultiLookupKernel>>(multi_spec(out, nullptr, config), api_version));
  }
}

#ifdef SHARK_WITH_CUDA
// ---- CUDA variant (CUDAExecutionProvider; shared adapter: cuda_adapter.h) ----------------------------
namespace {

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

void add_multi_lookup_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<MultiLookupCudaKernel>>(multi_spec(out, kCudaEp, config), api_version));
  }
}
#endif  // SHARK_WITH_CUDA

}  // namespace shark_ort
