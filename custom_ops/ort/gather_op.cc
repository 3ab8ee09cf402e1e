// RowwiseDequantGather(payload, row_meta, default_row, indices) -> output: the CPU variant and, with
// SHARK_WITH_CUDA, the CUDA one.
#include <memory>
#include <vector>

#include "../kernels/gather_cpu.h"
#include "custom_op.h"
#include "lookup_ops.h"
#include "ops.h"
#include "table_kernel.h"

#ifdef SHARK_WITH_CUDA
#include "cuda_adapter.h"
#endif

namespace shark_ort {
namespace {

class GatherKernel : public CpuTableKernel {
 public:
  static OrtStatus* Create(const OpSpec& spec, const OrtKernelInfo* info, std::unique_ptr<GatherKernel>* out) {
    auto k = std::make_unique<GatherKernel>();
    SHARK_RETURN_IF_STATUS(k->init(spec, info));
    SHARK_RETURN_IF_STATUS(k->check_index_type(info, kInIndices, "indices"));
    *out = std::move(k);
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) {
    shark::TableView t;
    SHARK_RETURN_IF_STATUS(table(ctx, &t));
    Input idx;
    shark::IndexType it = shark::IndexType::kInt64;
    SHARK_RETURN_IF_STATUS(index_input(ctx, kInIndices, "indices", true, &idx, &it));
    std::vector<int64_t> shape = idx.shape;
    shape.push_back(attrs_.dim);
    void* out = nullptr;
    SHARK_RETURN_IF_STATUS(get_output(ctx, 0, shape, &out));
    shark::GatherArgs a;
    a.indices = idx.data;
    a.index_type = it;
    a.count = idx.count;
    a.out = out;
    a.out_type = out_type_;
    a.generic_only = config_.generic_only;
    a.stream_bytes = config_.stream_bytes;
    OrtParallelFor pf(ctx);
    const shark::LookupError e = shark::gather_cpu(t, a, pf);
    SHARK_RETURN_IF_STATUS(pf.take_status());
    if (!e.ok()) return index_error(e);
    return nullptr;
  }

  static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext* ctx) { return gather_infer_shape(ctx); }
};

}  // namespace

OpSpec gather_spec(ONNXTensorElementDataType out, const char* provider, const shark::KernelConfig& config) {
  OpSpec s;
  s.config = config;
  s.name = kGatherOp;
  s.provider = provider;
  s.inputs = {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
              ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED};
  s.input_kinds.assign(4, INPUT_OUTPUT_REQUIRED);
  s.output = out;
  return s;
}

// output: [*indices.shape, dim], element type from output_dtype. ORT takes the element type from
// here (without it the output would default to the first overload's float32), so it is always set
// except in one case: ORT reports an indices input of unknown rank as rank 0, indistinguishable
// from a scalar; for float32 output we then say nothing (ORT's default type is right), for float16
// we must set the type and claim the scalar shape [dim].
OrtStatus* gather_infer_shape(OrtShapeInferContext* ctx) {
  int64_t dim = 0;
  if (!infer_int_attr(ctx, "dim", &dim) || dim < 1) return nullptr;
  InferredInput in = infer_input(ctx, kInIndices);
  if (!in.known) return nullptr;
  const ONNXTensorElementDataType out_type = infer_output_type(ctx);
  if (in.dims.empty() && out_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return nullptr;
  in.dims.push_back(dim);
  in.symbols.emplace_back();
  return infer_set_output(ctx, out_type, in.dims, in.symbols);
}

void add_gather_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<GatherKernel>>(gather_spec(out, nullptr, config), api_version));
  }
}

#ifdef SHARK_WITH_CUDA
// ---- CUDA variant (CUDAExecutionProvider; shared adapter: cuda_adapter.h) ----------------------------
namespace {

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
    shark_cuda::DeviceTable t;
    SHARK_RETURN_IF_STATUS(device_table(ctx, &stream, &t));
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

}  // namespace

void add_gather_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config) {
  for (auto out : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16}) {
    ops->push_back(std::make_shared<CustomOp<GatherCudaKernel>>(gather_spec(out, kCudaEp, config), api_version));
  }
}
#endif  // SHARK_WITH_CUDA

}  // namespace shark_ort
