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
// This file holds the attribute parsing, input checks and shape inference shared by the two variants
// (multi_lookup.h), the CPU kernel and, with SHARK_WITH_CUDA, the CUDA kernel.
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

std::vector<std::string> split_names(const std::string& joined, size_t n) {
  std::vector<std::string> names;
  size_t start = 0;
  while (start <= joined.size() && !joined.empty()) {
    const size_t end = joined.find('\n', start);
    names.push_back(joined.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  for (size_t k = names.size(); k < n; ++k) names.push_back("#" + std::to_string(k));
  names.resize(n);
  return names;
}

size_t inputs_of(int64_t kind, bool has_weights) { return 4 + (kind == kBagOffsets ? 1 : 0) + (has_weights ? 1 : 0); }

// An output row's width, and its element count, stay below 2^61: times an element size (<= 4) they fit in 64 bits.
constexpr uint64_t kMaxOutputElements = uint64_t{1} << 61;

}  // namespace

OrtStatus* MultiLookupBase::init_fields(const OpSpec& spec, const OrtKernelInfo* info,
                                        const std::function<OrtStatus*(size_t field)>& init_table) {
  op_name_ = spec.name;
  config_ = spec.config;
  node_name_ = node_name(info);
  out_type_ = out_type_of(spec.output);
  std::vector<int64_t> kinds, versions, rows, dims, tiers, modes, lasts, pads, weights, groups;
  SHARK_RETURN_IF_STATUS(ints(info, "kinds", true, &kinds));
  const size_t n = kinds.size();
  if (n == 0) return error("attribute 'kinds' is empty: a group has at least one field");
  SHARK_RETURN_IF_STATUS(ints(info, "format_versions", true, &versions, n));
  SHARK_RETURN_IF_STATUS(ints(info, "num_rows", true, &rows, n));
  SHARK_RETURN_IF_STATUS(ints(info, "dims", true, &dims, n));
  SHARK_RETURN_IF_STATUS(ints(info, "uniform_tiers", true, &tiers, n));
  SHARK_RETURN_IF_STATUS(ints(info, "modes", false, &modes, n, 0));
  SHARK_RETURN_IF_STATUS(ints(info, "include_last_offsets", false, &lasts, n, 0));
  SHARK_RETURN_IF_STATUS(ints(info, "padding_idxs", false, &pads, n, -1));
  SHARK_RETURN_IF_STATUS(ints(info, "has_weights", false, &weights, n, 0));
  SHARK_RETURN_IF_STATUS(ints(info, "scale_group_rows", false, &groups, n, 0));
  int64_t output_dtype = 1;
  SHARK_RETURN_IF_STATUS(int_attr(info, "output_dtype", false, 1, &output_dtype));
  if (output_dtype != static_cast<int64_t>(out_type_)) {
    return error("output_dtype " + std::to_string(output_dtype) + " disagrees with the node's output type " +
                 (out_type_ == shark::OutType::kFloat16 ? "float16" : "float32"));
  }
  std::string joined;
  read_string_attr(info, "field_names", &joined);
  const std::vector<std::string> names = split_names(joined, n);

  size_t n_inputs = 0;
  SHARK_RETURN_IF_STATUS(api().KernelInfo_GetInputCount(info, &n_inputs));
  fields_.resize(n);
  size_t first = 0;
  for (size_t k = 0; k < n; ++k) {
    MultiField& f = fields_[k];
    f.name = names[k];
    f.label = "field '" + f.name + "': ";
    f.kind = kinds[k];
    if (f.kind != kGatherField && f.kind != kBag2D && f.kind != kBagOffsets) {
      return error(f.label + "kind " + std::to_string(f.kind) + " is not 0 (gather), 1 (bag, 2-D indices) or 2 "
                   "(bag with offsets)");
    }
    if (weights[k] != 0 && weights[k] != 1) return error(f.label + "has_weights must be 0 or 1");
    f.has_weights = weights[k] == 1;
    if (f.has_weights && f.kind == kGatherField) return error(f.label + "a gather field takes no per_sample_weights");
    f.first = first;
    f.n_inputs = inputs_of(f.kind, f.has_weights);
    first += f.n_inputs;
    shark::TableAttrs& attrs = f.table;
    attrs.format_version = versions[k];
    attrs.num_rows = rows[k];
    attrs.dim = dims[k];
    attrs.uniform_tier = tiers[k];
    attrs.output_dtype = output_dtype;
    attrs.scale_group_rows = groups[k];
    const std::string bad = shark::validate_attrs(attrs);
    if (!bad.empty()) return error(f.label + bad);
    if (f.kind != kGatherField) {
      f.bag.mode = modes[k];
      f.bag.include_last_offset = lasts[k];
      f.bag.padding_idx = pads[k];
      if (f.bag.mode != 0 && f.bag.mode != 1) {
        return error(f.label + "mode " + std::to_string(f.bag.mode) + " is not supported (0 = sum, 1 = mean)");
      }
      if (f.bag.include_last_offset != 0 && f.bag.include_last_offset != 1) {
        return error(f.label + "include_last_offset " + std::to_string(f.bag.include_last_offset) + " must be 0 or 1");
      }
      if (f.bag.padding_idx != -1 && (f.bag.padding_idx < 0 || f.bag.padding_idx >= attrs.num_rows)) {
        return error(f.label + "padding_idx " + std::to_string(f.bag.padding_idx) + " must be -1 (none) or a row in [0, " +
                     std::to_string(attrs.num_rows) + ")");
      }
      if (f.has_weights && f.bag.mode != 0) {
        return error(f.label + "per_sample_weights is only supported with mode=0 (sum), got mode=1 (mean)");
      }
    }
  }
  if (first != n_inputs) {
    return error("the fields' kinds and has_weights need " + std::to_string(first) + " inputs, the node has " +
                 std::to_string(n_inputs));
  }
  for (size_t k = 0; k < n; ++k) {
    const MultiField& f = fields_[k];
    SHARK_RETURN_IF_STATUS(init_table(k));
    SHARK_RETURN_IF_STATUS(check_index_type(info, f.first + kInIndices, "indices", f.label));
    if (f.kind == kBagOffsets) {
      SHARK_RETURN_IF_STATUS(check_index_type(info, f.first + kInOffsets, "offsets", f.label));
    }
  }
  return nullptr;
}

// An int-list attribute with one entry per field (`n`; 0: any length). Optional ones default to `dflt`.
OrtStatus* MultiLookupBase::ints(const OrtKernelInfo* info, const char* name, bool required, std::vector<int64_t>* out,
                                 size_t n, int64_t dflt) const {
  int64_t single = 0;
  if (read_int_attr(info, name, &single)) {
    return error(std::string("attribute '") + name + "' must be a list of ints, one per field, got the single int " +
                 std::to_string(single));
  }
  if (!read_ints_attr(info, name, out)) {
    if (required) return error(std::string("required int-list attribute '") + name + "' is missing or not ints");
    out->assign(n, dflt);
    return nullptr;
  }
  if (n && out->size() != n) {
    return error(std::string("attribute '") + name + "' has " + std::to_string(out->size()) + " entries, kinds has " +
                 std::to_string(n) + " (one per field)");
  }
  return nullptr;
}

OrtStatus* MultiLookupBase::field_inputs(OrtKernelContext* ctx, size_t k, FieldInputs* in) const {
  const MultiField& f = fields_[k];
  SHARK_RETURN_IF_STATUS(index_input(ctx, f.first + kInIndices, "indices", true, &in->idx, &in->index_type, f.label));
  const Input& idx = in->idx;
  const uint64_t dim = static_cast<uint64_t>(f.table.dim);
  if (f.kind == kGatherField) {
    if (idx.shape.empty()) return error(f.label + "indices must have a batch dimension, got a scalar");
    in->samples = static_cast<uint64_t>(idx.shape[0]);
    in->rows_per_sample = 1;
    for (size_t a = 1; a < idx.shape.size(); ++a) in->rows_per_sample *= static_cast<uint64_t>(idx.shape[a]);
    if (in->rows_per_sample > (uint64_t{1} << 62) / dim) {
      return error(f.label + "indices shape " + shape_to_string(idx.shape) + " gives output rows too wide to allocate");
    }
    in->columns = in->rows_per_sample * dim;
    return nullptr;
  }
  // A bag field: the structural checks of the bag op, named by the field.
  in->columns = dim;
  if (f.kind == kBag2D) {
    if (idx.shape.size() != 2) {
      return error(f.label + "indices of a bag without offsets must be 2-D [B, L], got shape " + shape_to_string(idx.shape));
    }
    in->samples = static_cast<uint64_t>(idx.shape[0]);
  } else {
    if (idx.shape.size() != 1) return error(f.label + "indices with offsets must be 1-D, got shape " + shape_to_string(idx.shape));
    SHARK_RETURN_IF_STATUS(index_input(ctx, f.first + kInOffsets, "offsets", true, &in->offs, &in->offsets_type, f.label));
    if (in->offs.shape.size() != 1) return error(f.label + "offsets must be 1-D, got shape " + shape_to_string(in->offs.shape));
    if (f.bag.include_last_offset && in->offs.count == 0) {
      return error(f.label + "offsets is empty but include_last_offset=1 needs at least one offset (B + 1 entries)");
    }
    in->samples = f.bag.include_last_offset ? in->offs.count - 1 : in->offs.count;
  }
  in->weights = nullptr;
  if (f.has_weights) {
    Input wts;
    const size_t at = f.first + (f.kind == kBagOffsets ? kInWeights : kInOffsets);
    SHARK_RETURN_IF_STATUS(get_input(ctx, at, &wts));
    if (!wts.present) return error(f.label + "input 'per_sample_weights' is missing");
    if (wts.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      return error(f.label + "per_sample_weights must be float32, got " + element_type_name(wts.type));
    }
    if (wts.shape != idx.shape) {
      return error(f.label + "per_sample_weights shape " + shape_to_string(wts.shape) + " must equal the indices shape " +
                   shape_to_string(idx.shape));
    }
    in->weights = static_cast<const float*>(wts.data);
  }
  return nullptr;
}

OrtStatus* MultiLookupBase::check_samples(size_t k, uint64_t samples, uint64_t* n_samples) const {
  if (k == 0) {
    *n_samples = samples;
  } else if (samples != *n_samples) {
    return error(fields_[k].label + "has " + std::to_string(samples) + " samples, field '" + fields_[0].name + "' has " +
                 std::to_string(*n_samples) + ": the fields of a group give one output row per sample");
  }
  return nullptr;
}

// Every element offset (column * element size) must fit in 64 bits: the output row is checked as it grows.
OrtStatus* MultiLookupBase::add_columns(size_t k, const FieldInputs& in, uint64_t* width) const {
  if (in.columns > kMaxOutputElements - *width) {
    return error(fields_[k].label + "adds " + std::to_string(in.columns) + " columns to an output row of " +
                 std::to_string(*width) + ": the row would be wider than 2^61 elements (indices shape " +
                 shape_to_string(in.idx.shape) + ")");
  }
  *width += in.columns;
  return nullptr;
}

OrtStatus* MultiLookupBase::check_output_size(uint64_t n_samples, uint64_t width) const {
  if (width && n_samples > kMaxOutputElements / width) {
    return error("the output [" + std::to_string(n_samples) + ", " + std::to_string(width) + "] has more than 2^61 "
                 "elements: too large to allocate");
  }
  return nullptr;
}

// output [B, W]: B from the first field (indices' first dim, or len(offsets) - include_last_offset), W the
// sum of the fields' widths when every one is known; element type from output_dtype.
OrtStatus* MultiLookupBase::InferShape(const OpSpec&, OrtShapeInferContext* ctx) {
  std::vector<int64_t> kinds, dims, weights, lasts;
  if (!infer_ints_attr(ctx, "kinds", &kinds) || !infer_ints_attr(ctx, "dims", &dims) || kinds.empty() ||
      dims.size() != kinds.size()) {
    return nullptr;  // the kernel names the problem at creation
  }
  if (!infer_ints_attr(ctx, "has_weights", &weights) || weights.size() != kinds.size()) weights.assign(kinds.size(), 0);
  if (!infer_ints_attr(ctx, "include_last_offsets", &lasts) || lasts.size() != kinds.size()) lasts.assign(kinds.size(), 0);
  int64_t b = -1, w = 0;
  std::string b_sym;
  size_t first = 0;
  for (size_t k = 0; k < kinds.size(); ++k) {
    const InferredInput idx = infer_input(ctx, first + kInIndices);
    int64_t samples = -1;
    std::string sym;
    if (kinds[k] == kGatherField) {
      int64_t per_sample = idx.known && !idx.dims.empty() ? 1 : -1;
      for (size_t a = 1; per_sample >= 0 && a < idx.dims.size(); ++a) per_sample = idx.dims[a] < 0 ? -1 : per_sample * idx.dims[a];
      w = (w < 0 || per_sample < 0) ? -1 : w + per_sample * dims[k];
      if (idx.known && !idx.dims.empty()) {
        samples = idx.dims[0];
        sym = idx.symbols[0];
      }
    } else {
      w = w < 0 ? -1 : w + dims[k];
      if (kinds[k] == kBag2D && idx.known && idx.dims.size() == 2) {
        samples = idx.dims[0];
        sym = idx.symbols[0];
      } else if (kinds[k] == kBagOffsets) {
        const InferredInput off = infer_input(ctx, first + kInOffsets);
        if (off.known && off.dims.size() == 1) {
          if (off.dims[0] >= 0) {
            samples = lasts[k] ? (off.dims[0] > 0 ? off.dims[0] - 1 : -1) : off.dims[0];
          } else if (!lasts[k]) {
            sym = off.symbols[0];
          }
        }
      }
    }
    if (b < 0 && b_sym.empty()) {
      b = samples;
      b_sym = samples >= 0 ? std::string() : sym;
    }
    first += inputs_of(kinds[k], weights[k] == 1);
  }
  return infer_set_output(ctx, infer_output_type(ctx), {b, w}, {b_sym, std::string()});
}

OpSpec multi_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config) {
  OpSpec s;
  s.config = config;
  s.name = kMultiOp;
  s.provider = provider;
  s.inputs = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED};
  s.input_kinds = {INPUT_OUTPUT_VARIADIC};
  s.variadic_min_arity = 4;
  s.variadic_homogeneous = false;
  s.output = out;
  return s;
}

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
