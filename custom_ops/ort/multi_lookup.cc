// RowwiseDequantMultiLookup(field inputs...) -> output [B, W]  (its attributes, input checks and shape inference)
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
// This file holds what the CPU and CUDA variants share (multi_lookup.h): the attribute parsing, the input
// checks and their messages, and the shape inference. The kernels are in multi_lookup_op.cc.
#include "multi_lookup.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "lookup_ops.h"
#include "ops.h"

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
      const std::string bad_bag = bag_attrs_error(f.bag, attrs.num_rows);
      if (!bad_bag.empty()) return error(f.label + bad_bag);
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

}  // namespace shark_ort
