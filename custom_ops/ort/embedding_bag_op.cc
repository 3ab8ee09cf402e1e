// RowwiseDequantEmbeddingBag(payload, row_meta, default_row, indices, [offsets], [per_sample_weights])
//   -> output [B, dim]  (CPU; the attribute/input checks are shared with the CUDA variant)
#include <cstring>
#include <memory>
#include <vector>

#include "../kernels/embedding_bag_cpu.h"
#include "custom_op.h"
#include "lookup_ops.h"
#include "ops.h"
#include "table_kernel.h"

#ifdef SHARK_WITH_CUDA
#include "cuda_adapter.h"
#endif

namespace shark_ort {

std::string bag_attrs_error(const BagAttrs& a, int64_t num_rows) {
  if (a.mode != 0 && a.mode != 1) return "mode " + std::to_string(a.mode) + " is not supported (0 = sum, 1 = mean)";
  if (a.include_last_offset != 0 && a.include_last_offset != 1) {
    return "include_last_offset " + std::to_string(a.include_last_offset) + " must be 0 or 1";
  }
  if (a.padding_idx != -1 && (a.padding_idx < 0 || a.padding_idx >= num_rows)) {
    return "padding_idx " + std::to_string(a.padding_idx) + " must be -1 (none) or a row in [0, " +
           std::to_string(num_rows) + ")";
  }
  return std::string();
}

OrtStatus* read_bag_attrs(const TableKernel& k, const OrtKernelInfo* info, BagAttrs* a) {
  SHARK_RETURN_IF_STATUS(k.int_attr(info, "mode", false, 0, &a->mode));
  SHARK_RETURN_IF_STATUS(k.int_attr(info, "include_last_offset", false, 0, &a->include_last_offset));
  SHARK_RETURN_IF_STATUS(k.int_attr(info, "padding_idx", false, -1, &a->padding_idx));
  const std::string bad = bag_attrs_error(*a, k.attrs().num_rows);
  if (!bad.empty()) return k.error(bad);
  SHARK_RETURN_IF_STATUS(k.check_index_type(info, kInIndices, "indices"));
  return k.check_index_type(info, kInOffsets, "offsets");
}

OrtStatus* read_bag_inputs(const TableKernel& k, const BagAttrs& a, OrtKernelContext* ctx, BagInputs* in) {
  SHARK_RETURN_IF_STATUS(k.index_input(ctx, kInIndices, "indices", true, &in->idx, &in->index_type));
  SHARK_RETURN_IF_STATUS(k.index_input(ctx, kInOffsets, "offsets", false, &in->offs, &in->offsets_type));
  SHARK_RETURN_IF_STATUS(get_input(ctx, kInWeights, &in->wts));
  const Input& idx = in->idx;
  if (idx.shape.size() == 2) {
    if (in->offs.present) {
      return k.error("offsets must not be given with 2-D indices " + shape_to_string(idx.shape) +
                     " (each row is one bag)");
    }
    in->fixed = true;
    in->n_bags = static_cast<uint64_t>(idx.shape[0]);
    in->bag_len = static_cast<uint64_t>(idx.shape[1]);
  } else if (idx.shape.size() == 1) {
    if (!in->offs.present) return k.error("1-D indices " + shape_to_string(idx.shape) + " need offsets");
    if (in->offs.shape.size() != 1) return k.error("offsets must be 1-D, got shape " + shape_to_string(in->offs.shape));
    if (a.include_last_offset && in->offs.count == 0) {
      return k.error("offsets is empty but include_last_offset=1 needs at least one offset (B + 1 entries)");
    }
    in->fixed = false;
    in->n_bags = a.include_last_offset ? in->offs.count - 1 : in->offs.count;
  } else {
    return k.error("indices must be 1-D (with offsets) or 2-D [B, L], got shape " + shape_to_string(idx.shape));
  }
  return nullptr;
}

OrtStatus* check_bag_weights(const TableKernel& k, const BagAttrs& a, const BagInputs& in) {
  const Input& wts = in.wts;
  if (!wts.present) return nullptr;
  if (wts.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    return k.error(std::string("per_sample_weights must be float32, got ") + element_type_name(wts.type));
  }
  if (wts.shape != in.idx.shape) {
    return k.error("per_sample_weights shape " + shape_to_string(wts.shape) + " must equal the indices shape " +
                   shape_to_string(in.idx.shape));
  }
  if (a.mode != 0) return k.error("per_sample_weights is only supported with mode=0 (sum), got mode=1 (mean)");
  return nullptr;
}

namespace {

class BagKernel : public CpuTableKernel {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<BagKernel>* out) {
    auto k = std::make_unique<BagKernel>();
    SHARK_RETURN_IF_STATUS(k->init(spec, info));
    SHARK_RETURN_IF_STATUS(read_bag_attrs(*k, info, &k->bag_));
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    shark::TableView t;
    SHARK_RETURN_IF_STATUS(table(ctx, &t));
    BagInputs in;
    SHARK_RETURN_IF_STATUS(read_bag_inputs(*this, bag_, ctx, &in));
    SHARK_RETURN_IF_STATUS(check_bag_weights(*this, bag_, in));
    // The output first: it is what the op must produce, and the allocation that can fail. Nothing else
    // is sized by a claimed shape the input bytes do not back (2-D indices [B, 0] hold no bytes).
    const uint64_t n_bags = in.n_bags;
    void* out = nullptr;
    SHARK_RETURN_IF_STATUS(get_output(ctx, 0, {static_cast<int64_t>(n_bags), attrs_.dim}, &out));
    if (in.fixed && in.bag_len == 0) {  // every bag empty: zeros, and no index to check
      if (n_bags) std::memset(out, 0, n_bags * attrs_.dim * (out_type_ == shark::OutType::kFloat16 ? 2 : 4));
      return nullptr;
    }
    std::vector<uint64_t> bounds;  // n_bags + 1 entries: backed by the indices (2-D) or offsets (1-D)
    if (in.fixed) {
      shark::bag_bounds_fixed(in.n_bags, in.bag_len, &bounds);
    } else {
      const std::string bad = shark::bag_bounds_from_offsets(in.offs.data, in.offsets_type, in.offs.count,
                                                             bag_.include_last_offset != 0, in.idx.count, &bounds);
      if (!bad.empty()) return error(bad);
    }
    shark::BagArgs a;
    a.indices = in.idx.data;
    a.index_type = in.index_type;
    a.n_indices = in.idx.count;
    a.bounds = bounds.data();
    a.n_bags = n_bags;
    a.weights = in.wts.present ? static_cast<const float*>(in.wts.data) : nullptr;
    a.mode = bag_.mode == 1 ? shark::BagMode::kMean : shark::BagMode::kSum;
    a.padding_idx = bag_.padding_idx;
    a.out = out;
    a.out_type = out_type_;
    a.generic_only = config_.generic_only;
    OrtParallelFor pf(ctx);
    const shark::LookupError e = shark::embedding_bag_cpu(t, a, pf);
    SHARK_RETURN_IF_STATUS(pf.take_status());
    if (!e.ok()) return index_error(e);
    return nullptr;
  }

  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx) { return bag_infer_shape(ctx); }

 private:
  BagAttrs bag_;
};

}  // namespace

// output: [B, dim] with B = indices.shape[0] (2-D) or len(offsets) (- 1 with include_last_offset),
// a fresh symbolic dim when unknown; element type from output_dtype (always set: ORT would
// otherwise default to the first overload's float32).
OrtStatus* bag_infer_shape(OrtShapeInferContext* ctx) {
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

OpSpec bag_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config) {
  OpSpec s;
  s.config = config;
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

void add_embedding_bag_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<BagKernel>>(bag_spec(out, nullptr, config), api_version));
  }
}

#ifdef SHARK_WITH_CUDA
// ---- CUDA variant (CUDAExecutionProvider; shared adapter: cuda_adapter.h) ----------------------------
namespace {

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
    shark_cuda::DeviceTable t;
    SHARK_RETURN_IF_STATUS(device_table(ctx, &stream, &t));
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

}  // namespace

void add_embedding_bag_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<BagCudaKernel>>(bag_spec(out, kCudaEp, config), api_version));
  }
}
#endif  // SHARK_WITH_CUDA

}  // namespace shark_ort
