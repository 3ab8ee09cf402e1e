// A thin OrtCustomOp filled by hand: CreateKernelV2/KernelComputeV2 so every failure comes back as
// an OrtStatus, never an exception across the C ABI. One CustomOp object is one kernel variant
// (op name + execution provider + output element type); several variants of one op name form the
// op's type overloads (ORT merges their declared types into one schema).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../kernels/config.h"
#include "ort_utils.h"

namespace shark_ort {

struct OpSpec {
  const char* name = nullptr;
  const char* provider = nullptr;  // null: CPUExecutionProvider
  std::vector<ONNXTensorElementDataType> inputs;  // UNDEFINED: any type, checked by the kernel
  std::vector<OrtCustomOpInputOutputCharacteristic> input_kinds;
  ONNXTensorElementDataType output = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  // A variadic last input: its fewest values, and whether they must share one element type.
  int variadic_min_arity = 1;
  bool variadic_homogeneous = true;
  shark::KernelConfig config;  // the session's settings (session config entries shark_export.*)
};

// Kernel must provide:
//   static OrtStatus* Create(const OpSpec&, const OrtKernelInfo*, std::unique_ptr<Kernel>*);
//   OrtStatus* Compute(OrtKernelContext*);
//   static OrtStatus* InferShape(const OpSpec&, OrtShapeInferContext*);
template <class Kernel>
class CustomOp : public OrtCustomOp {
 public:
  CustomOp(OpSpec spec, uint32_t api_version) : OrtCustomOp(), spec_(std::move(spec)) {
    version = api_version;
    CreateKernel = nullptr;  // the V1 entry points cannot return an error: ORT >= 1.17 uses V2 only
    GetName = &GetNameImpl;
    GetExecutionProviderType = &GetProvider;
    GetInputType = &GetInputTypeImpl;
    GetInputTypeCount = &GetInputCount;
    GetOutputType = &GetOutputTypeImpl;
    GetOutputTypeCount = &GetOutputCount;
    KernelCompute = nullptr;
    KernelDestroy = &Destroy;
    GetInputCharacteristic = &GetInputKind;
    GetOutputCharacteristic = &GetOutputKind;
    GetInputMemoryType = &GetInputMemType;
    GetVariadicInputMinArity = &InputMinArity;
    GetVariadicInputHomogeneity = &InputHomogeneous;
    GetVariadicOutputMinArity = &MinArity;
    GetVariadicOutputHomogeneity = &Homogeneous;
    CreateKernelV2 = &CreateKernelV2Impl;
    KernelComputeV2 = &ComputeV2;
    InferOutputShapeFn = &InferShapeImpl;
    // GetStartVersion/GetEndVersion/GetMayInplace/GetAliasMap stay null: since-version 1, no aliasing.
  }

  const OpSpec& spec() const { return spec_; }

 private:
  static const CustomOp& self(const OrtCustomOp* op) { return *static_cast<const CustomOp*>(op); }

  static const char* ORT_API_CALL GetNameImpl(const OrtCustomOp* op) { return self(op).spec_.name; }
  static const char* ORT_API_CALL GetProvider(const OrtCustomOp* op) { return self(op).spec_.provider; }
  static size_t ORT_API_CALL GetInputCount(const OrtCustomOp* op) { return self(op).spec_.inputs.size(); }
  static size_t ORT_API_CALL GetOutputCount(const OrtCustomOp*) { return 1; }
  static ONNXTensorElementDataType ORT_API_CALL GetInputTypeImpl(const OrtCustomOp* op, size_t i) {
    return self(op).spec_.inputs[i];
  }
  static ONNXTensorElementDataType ORT_API_CALL GetOutputTypeImpl(const OrtCustomOp* op, size_t) {
    return self(op).spec_.output;
  }
  static OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetInputKind(const OrtCustomOp* op, size_t i) {
    return self(op).spec_.input_kinds[i];
  }
  static OrtCustomOpInputOutputCharacteristic ORT_API_CALL GetOutputKind(const OrtCustomOp*, size_t) {
    return INPUT_OUTPUT_REQUIRED;
  }
  static OrtMemType ORT_API_CALL GetInputMemType(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
  static int ORT_API_CALL MinArity(const OrtCustomOp*) { return 1; }
  static int ORT_API_CALL Homogeneous(const OrtCustomOp*) { return 1; }
  static int ORT_API_CALL InputMinArity(const OrtCustomOp* op) { return self(op).spec_.variadic_min_arity; }
  static int ORT_API_CALL InputHomogeneous(const OrtCustomOp* op) { return self(op).spec_.variadic_homogeneous ? 1 : 0; }

  static OrtStatusPtr ORT_API_CALL CreateKernelV2Impl(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info,
                                                      void** kernel) noexcept {
    *kernel = nullptr;
    return guarded([&]() -> OrtStatus* {
      std::unique_ptr<Kernel> k;
      SHARK_RETURN_IF_STATUS(Kernel::Create(self(op).spec_, info, &k));
      *kernel = k.release();
      return nullptr;
    });
  }
  static OrtStatusPtr ORT_API_CALL ComputeV2(void* kernel, OrtKernelContext* ctx) noexcept {
    if (!kernel) return api().CreateStatus(ORT_FAIL, "shark_export: kernel was not created");
    return guarded([&]() -> OrtStatus* { return static_cast<Kernel*>(kernel)->Compute(ctx); });
  }
  static OrtStatusPtr ORT_API_CALL InferShapeImpl(const OrtCustomOp* op, OrtShapeInferContext* ctx) noexcept {
    return guarded([&]() -> OrtStatus* { return Kernel::InferShape(self(op).spec_, ctx); });
  }
  static void ORT_API_CALL Destroy(void* kernel) noexcept { delete static_cast<Kernel*>(kernel); }

  OpSpec spec_;
};

}  // namespace shark_ort
