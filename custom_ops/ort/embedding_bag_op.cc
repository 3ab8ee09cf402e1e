// RowwiseDequantEmbeddingBag(payload, row_meta, default_row, indices, [offsets], [per_sample_weights])
//   -> output [B, dim]  (CPU)
#include <memory>
#include <vector>

#include "../kernels/embedding_bag_cpu.h"
#include "custom_op.h"
#include "ops.h"
#include "table_kernel.h"

namespace shark_ort {
namespace {

constexpr size_t kInOffsets = 4, kInWeights = 5;

shark::OutType out_type_of(ONNXTensorElementDataType t) {
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? shark::OutType::kFloat16 : shark::OutType::kFloat32;
}

class BagKernel : public TableKernel {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<BagKernel>* out) {
    auto k = std::make_unique<BagKernel>();
    SHARK_RETURN_IF_STATUS(k->init(spec.name, info, out_type_of(spec.output)));
    SHARK_RETURN_IF_STATUS(k->int_attr(info, "mode", false, 0, &k->mode_));
    SHARK_RETURN_IF_STATUS(k->int_attr(info, "include_last_offset", false, 0, &k->include_last_offset_));
    SHARK_RETURN_IF_STATUS(k->int_attr(info, "padding_idx", false, -1, &k->padding_idx_));
    if (k->mode_ != 0 && k->mode_ != 1) {
      return k->error("mode " + std::to_string(k->mode_) + " is not supported (0 = sum, 1 = mean)");
    }
    if (k->include_last_offset_ != 0 && k->include_last_offset_ != 1) {
      return k->error("include_last_offset " + std::to_string(k->include_last_offset_) + " must be 0 or 1");
    }
    if (k->padding_idx_ != -1 && (k->padding_idx_ < 0 || k->padding_idx_ >= k->attrs_.num_rows)) {
      return k->error("padding_idx " + std::to_string(k->padding_idx_) + " must be -1 (none) or a row in [0, " +
                      std::to_string(k->attrs_.num_rows) + ")");
    }
    SHARK_RETURN_IF_STATUS(k->check_index_type(info, kInIndices, "indices"));
    SHARK_RETURN_IF_STATUS(k->check_index_type(info, kInOffsets, "offsets"));
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    shark::TableView t;
    SHARK_RETURN_IF_STATUS(table(ctx, &t));
    Input idx, offs, wts;
    shark::IndexType it = shark::IndexType::kInt64, ot = shark::IndexType::kInt64;
    SHARK_RETURN_IF_STATUS(index_input(ctx, kInIndices, "indices", true, &idx, &it));
    SHARK_RETURN_IF_STATUS(index_input(ctx, kInOffsets, "offsets", false, &offs, &ot));
    SHARK_RETURN_IF_STATUS(get_input(ctx, kInWeights, &wts));

    std::vector<uint64_t> bounds;
    if (idx.shape.size() == 2) {
      if (offs.present) {
        return error("offsets must not be given with 2-D indices " + shape_to_string(idx.shape) +
                     " (each row is one bag)");
      }
      shark::bag_bounds_fixed(static_cast<uint64_t>(idx.shape[0]), static_cast<uint64_t>(idx.shape[1]), &bounds);
    } else if (idx.shape.size() == 1) {
      if (!offs.present) return error("1-D indices " + shape_to_string(idx.shape) + " need offsets");
      if (offs.shape.size() != 1) return error("offsets must be 1-D, got shape " + shape_to_string(offs.shape));
      const std::string bad = shark::bag_bounds_from_offsets(offs.data, ot, offs.count, include_last_offset_ != 0,
                                                             idx.count, &bounds);
      if (!bad.empty()) return error(bad);
    } else {
      return error("indices must be 1-D (with offsets) or 2-D [B, L], got shape " + shape_to_string(idx.shape));
    }
    if (wts.present) {
      if (wts.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        return error(std::string("per_sample_weights must be float32, got ") + element_type_name(wts.type));
      }
      if (wts.shape != idx.shape) {
        return error("per_sample_weights shape " + shape_to_string(wts.shape) + " must equal the indices shape " +
                     shape_to_string(idx.shape));
      }
      if (mode_ != 0) return error("per_sample_weights is only supported with mode=0 (sum), got mode=1 (mean)");
    }
    const uint64_t n_bags = bounds.size() - 1;
    void* out = nullptr;
    SHARK_RETURN_IF_STATUS(get_output(ctx, 0, {static_cast<int64_t>(n_bags), attrs_.dim}, &out));
    shark::BagArgs a;
    a.indices = idx.data;
    a.index_type = it;
    a.n_indices = idx.count;
    a.bounds = bounds.data();
    a.n_bags = n_bags;
    a.weights = wts.present ? static_cast<const float*>(wts.data) : nullptr;
    a.mode = mode_ == 1 ? shark::BagMode::kMean : shark::BagMode::kSum;
    a.padding_idx = padding_idx_;
    a.out = out;
    a.out_type = out_type_;
    OrtParallelFor pf(ctx);
    const shark::LookupError e = shark::embedding_bag_cpu(t, a, pf);
    if (!e.ok()) return index_error(e);
    return nullptr;
  }

  // output: [B, dim] with B = indices.shape[0] (2-D) or len(offsets) (- 1 with include_last_offset),
  // a fresh symbolic dim when unknown; element type from output_dtype (always set: ORT would
  // otherwise default to the first overload's float32).
  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx) {
    int64_t dim = 0, include_last = 0;
    if (!infer_int_attr(ctx, "dim", &dim) || dim < 1) return nullptr;
    infer_int_attr(ctx, "include_last_offset", &include_last);
    const InferredInput in = infer_input(ctx, kInIndices);
    int64_t b = -1;
    std::string b_sym;
    if (in.known && in.dims.size() == 2) {
      b = in.dims[0];
      b_sym = in.symbols[0];
    } else if (in.known && in.dims.size() == 1) {
      const InferredInput off = infer_input(ctx, kInOffsets);
      if (off.known && off.dims.size() == 1) {
        if (off.dims[0] >= 0) {
          b = include_last ? (off.dims[0] > 0 ? off.dims[0] - 1 : -1) : off.dims[0];
        } else if (!include_last) {
          b_sym = off.symbols[0];
        }
      }
    }
    return infer_set_output(ctx, infer_output_type(ctx), {b, dim}, {b_sym, std::string()});
  }

 private:
  int64_t mode_ = 0, include_last_offset_ = 0, padding_idx_ = -1;
};

OpSpec bag_spec(ONNXTensorElementDataType out, const char* provider) {
  OpSpec s;
  s.name = kBagOp;
  s.provider = provider;
  s.inputs = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
              ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
              ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
  s.input_kinds = {INPUT_OUTPUT_REQUIRED, INPUT_OUTPUT_REQUIRED, INPUT_OUTPUT_REQUIRED,
                   INPUT_OUTPUT_REQUIRED, INPUT_OUTPUT_OPTIONAL, INPUT_OUTPUT_OPTIONAL};
  s.output = out;
  return s;
}

}  // namespace

void add_embedding_bag_cpu_ops(OpList* ops, uint32_t api_version) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<BagKernel>>(bag_spec(out, nullptr), api_version));
  }
}

}  // namespace shark_ort
