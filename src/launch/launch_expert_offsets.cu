// Host side of the counting sort's scan kernel (kernels/sm90_expert_offsets.cuh).
#include "kernels/sm90_expert_offsets.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_expert_offsets(int64_t num_slots, int32_t num_local, int32_t* chunk_prefix,
                                  int32_t* expert_offsets, bool enable_pdl, cudaStream_t stream) {
  LaunchConfig launch(dim3(1), dim3(ExpertOffsetsConfig::kThreads), 0, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, expert_offsets_kernel, num_permute_chunks(num_slots),
                            num_local, chunk_prefix, expert_offsets);
}

}  // namespace fusedmoe::detail
