// Host side of the finalize kernel (kernels/sm90_finalize.cuh).
#include <cstdint>

#include "kernels/sm90_finalize.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_finalize(const __nv_bfloat16* y, const float* slot_weight,
                            const int32_t* permuted_idx, int64_t num_tokens, int32_t top_k,
                            int64_t hidden_size, __nv_bfloat16* output, bool enable_pdl,
                            cudaStream_t stream) {
  // 16-byte columns when both row bases allow it (H % 8 == 0 keeps every row aligned alike).
  const bool aligned = (reinterpret_cast<uintptr_t>(y) % 16 == 0) &&
                       (reinterpret_cast<uintptr_t>(output) % 16 == 0);
  const int vec = aligned ? 8 : 1;
  const int64_t columns_per_block = static_cast<int64_t>(FinalizeConfig::kThreads) * vec;
  const dim3 grid(static_cast<unsigned>(num_tokens),
                  static_cast<unsigned>((hidden_size + columns_per_block - 1) / columns_per_block));
  LaunchConfig launch(grid, dim3(FinalizeConfig::kThreads), 0, enable_pdl, stream);
  const auto kernel = aligned ? (slot_weight != nullptr ? finalize_kernel<8, true>
                                                        : finalize_kernel<8, false>)
                              : (slot_weight != nullptr ? finalize_kernel<1, true>
                                                        : finalize_kernel<1, false>);
  return cudaLaunchKernelEx(&launch.config, kernel, y, slot_weight, permuted_idx, top_k,
                            hidden_size, output);
}

}  // namespace fusedmoe::detail
