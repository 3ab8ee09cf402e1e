// The one place that includes the ONNX Runtime headers. The library never links against ORT: the
// API table comes from RegisterCustomOps (ORT_API_MANUAL_INIT + Ort::InitApi).
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

namespace shark_ort {

// Oldest ORT C API the ops need (KernelContext_ParallelFor, shape inference, CreateKernelV2).
constexpr uint32_t kMinApiVersion = 17;

inline const OrtApi& api() { return Ort::GetApi(); }

}  // namespace shark_ort
