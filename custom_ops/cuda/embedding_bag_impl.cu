// RowwiseDequantEmbeddingBag on the GPU: one group of G lanes per bag (see lookup_body.h). The same
// launch validates 1-D offsets and range-checks the indices after the last bag (grid-stride loops over
// all threads), so a bag op is one memset and one kernel.
#include "launch_common.cuh"
#include "lookup_cuda.h"

namespace shark_cuda {
namespace {

template <int TIER, typename IdxT, typename OutT>
__global__ void __launch_bounds__(kBlockThreads)
    bag_kernel(const DeviceTable t, const BagParams p, ErrorSlot* err, uint32_t G) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t threads = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  if (p.offsets) {
    for (uint64_t i = tid; i < p.n_offsets; i += threads) bag_check_offset(p, i, err);
    for (uint64_t k = bag_tail_start(p) + tid; k < p.n_indices; k += threads) bag_check_index(t, p, k, err);
  }
  const uint32_t lane = threadIdx.x & (G - 1);
  const uint64_t step = threads / G;
  for (uint64_t b = tid / G; b < p.n_bags; b += step) bag_group<TIER, IdxT, OutT>(t, p, b, lane, G, err);
}

template <typename IdxT, typename OutT>
struct BagLaunch {
  const DeviceTable& t;
  const BagParams& p;
  ErrorSlot* err;
  cudaStream_t stream;
  template <int TIER>
  cudaError_t run() {
    const uint32_t G = group_size(t.dim);
    bag_kernel<TIER, IdxT, OutT><<<blocks_for(p.n_bags, G), kBlockThreads, 0, stream>>>(t, p, err, G);
    return cudaGetLastError();
  }
};

template <typename IdxT>
cudaError_t bag_idx(const DeviceTable& t, const BagParams& p, ErrorSlot* err, cudaStream_t s) {
  if (p.out_kind == OutKind::kFloat16) return dispatch_tier(t.uniform_tier, BagLaunch<IdxT, uint16_t>{t, p, err, s});
  return dispatch_tier(t.uniform_tier, BagLaunch<IdxT, float>{t, p, err, s});
}

}  // namespace

cudaError_t embedding_bag(const DeviceTable& t, const BagParams& p, ErrorSlot* err, cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(err, 0xff, sizeof(ErrorSlot), stream);
  if (e != cudaSuccess) return e;
  const bool checks = p.offsets != nullptr && (p.n_offsets > 0 || p.n_indices > 0);
  if (p.n_bags == 0 && !checks) return cudaSuccess;
  if (!bag_layout_ok(p, t.dim) || !groups_ok(t)) return cudaErrorInvalidValue;
  if (!table_aligned(t) || !aligned(p.indices, index_align(p.index_kind)) ||
      !aligned(p.offsets, index_align(p.offsets_kind)) || !aligned(p.weights, 4) || !aligned(p.out, out_align(p.out_kind))) {
    return cudaErrorMisalignedAddress;
  }
  if (p.index_kind == IndexKind::kInt64) return bag_idx<int64_t>(t, p, err, stream);
  return bag_idx<int32_t>(t, p, err, stream);
}

}  // namespace shark_cuda
