// Host side of the counting sort's scatter kernel (kernels/sm90_permute.cuh).
#include "kernels/sm90_permute.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_permute(const int32_t* slot_key, int64_t num_slots, int32_t top_k,
                           int32_t num_local, const int32_t* chunk_prefix,
                           const int32_t* expert_offsets, int32_t* gather_rows,
                           int32_t* permuted_idx, bool enable_pdl, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(num_permute_chunks(num_slots)));
  LaunchConfig launch(grid, dim3(PermuteConfig::kThreads), 0, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, permute_kernel, slot_key, num_slots, top_k, num_local,
                            chunk_prefix, expert_offsets, gather_rows, permuted_idx);
}

}  // namespace fusedmoe::detail
