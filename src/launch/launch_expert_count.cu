// Host side of the counting sort's histogram kernel (kernels/sm90_expert_count.cuh).
#include "kernels/sm90_expert_count.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_expert_count(const int32_t* slot_key, int64_t num_slots, int32_t num_local,
                                int32_t* chunk_prefix, bool enable_pdl, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(num_permute_chunks(num_slots)));
  LaunchConfig launch(grid, dim3(ExpertCountConfig::kThreads), 0, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, expert_count_kernel, slot_key, num_slots, num_local,
                            chunk_prefix);
}

}  // namespace fusedmoe::detail
