// The kernel variants this library registers in the `shark_export` domain.
#pragma once

#include <memory>
#include <vector>

#include "../kernels/config.h"
#include "ort_api.h"

namespace shark_ort {

constexpr const char* kDomain = "shark_export";
constexpr const char* kGatherOp = "RowwiseDequantGather";
constexpr const char* kBagOp = "RowwiseDequantEmbeddingBag";
constexpr const char* kMultiOp = "RowwiseDequantMultiLookup";

using OpList = std::vector<std::shared_ptr<OrtCustomOp>>;

// CPU variants: each op once per output element type (float32, float16), with the session's settings.
void add_gather_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);
void add_embedding_bag_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);
void add_multi_lookup_cpu_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);

#ifdef SHARK_WITH_CUDA
// CUDA variants (CUDAExecutionProvider), added next to the CPU ones in the same domain (each in its op's file),
// when cuda_ops_enabled(): the driver can run this library's CUDA runtime (session config entry
// shark_export.cuda = 0 never registers them, = force always does).
bool cuda_ops_enabled(const shark::KernelConfig& config);
void add_gather_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);
void add_embedding_bag_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);
void add_multi_lookup_cuda_ops(OpList* ops, uint32_t api_version, const shark::KernelConfig& config);
#endif

}  // namespace shark_ort
