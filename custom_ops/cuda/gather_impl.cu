// RowwiseDequantGather on the GPU (and a gather field of RowwiseDequantMultiLookup, writing its column block
// of the wider output through GatherParams' layout): one group of G lanes per output row (see lookup_body.h).
#include "launch_common.cuh"
#include "lookup_cuda.h"

namespace shark_cuda {
namespace {

template <int TIER, typename IdxT, typename OutT>
__global__ void __launch_bounds__(kBlockThreads)
    gather_kernel(const DeviceTable t, const IdxT* __restrict__ idx, uint64_t count, const GatherOut<OutT> out,
                  ErrorSlot* err, uint32_t G) {
  const uint64_t tid = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint32_t lane = threadIdx.x & (G - 1);
  const uint64_t step = static_cast<uint64_t>(gridDim.x) * blockDim.x / G;
  for (uint64_t i = tid / G; i < count; i += step) gather_group<TIER, IdxT, OutT>(t, idx, i, out, lane, G, err);
}

template <typename IdxT, typename OutT>
struct GatherLaunch {
  const DeviceTable& t;
  const GatherParams& p;
  ErrorSlot* err;
  cudaStream_t stream;
  template <int TIER>
  cudaError_t run() {
    const uint32_t G = group_size(t.dim);
    gather_kernel<TIER, IdxT, OutT><<<blocks_for(p.count, G), kBlockThreads, 0, stream>>>(
        t, static_cast<const IdxT*>(p.indices), p.count, gather_out<OutT>(p, t.dim), err, G);
    return cudaGetLastError();
  }
};

template <typename IdxT>
cudaError_t gather_idx(const DeviceTable& t, const GatherParams& p, ErrorSlot* err, cudaStream_t s) {
  if (p.out_kind == OutKind::kFloat16) return dispatch_tier(t.uniform_tier, GatherLaunch<IdxT, uint16_t>{t, p, err, s});
  return dispatch_tier(t.uniform_tier, GatherLaunch<IdxT, float>{t, p, err, s});
}

}  // namespace

cudaError_t gather(const DeviceTable& t, const GatherParams& p, ErrorSlot* err, cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(err, 0xff, sizeof(ErrorSlot), stream);
  if (e != cudaSuccess || p.count == 0) return e;
  if (!gather_layout_ok(p, t.dim) || !groups_ok(t)) return cudaErrorInvalidValue;
  if (!table_aligned(t) || !aligned(p.indices, index_align(p.index_kind)) || !aligned(p.out, out_align(p.out_kind))) {
    return cudaErrorMisalignedAddress;
  }
  if (p.index_kind == IndexKind::kInt64) return gather_idx<int64_t>(t, p, err, stream);
  return gather_idx<int32_t>(t, p, err, stream);
}

}  // namespace shark_cuda
