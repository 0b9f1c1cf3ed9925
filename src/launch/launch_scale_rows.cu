// Host side of the input scaling kernel (kernels/sm90_scale_rows.cuh).
#include <cstdint>

#include "kernels/sm90_scale_rows.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_scale_rows(const __nv_bfloat16* x, const float* slot_weight,
                              int64_t num_tokens, int64_t hidden_size, __nv_bfloat16* scaled,
                              bool enable_pdl, cudaStream_t stream) {
  // 16-byte columns when both row bases allow it (H % 8 == 0 keeps every row aligned alike).
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) &&
                       (reinterpret_cast<uintptr_t>(scaled) % 16 == 0);
  const int vec = aligned ? 8 : 1;
  const int64_t columns_per_block = static_cast<int64_t>(ScaleRowsConfig::kThreads) * vec;
  const dim3 grid(static_cast<unsigned>(num_tokens),
                  static_cast<unsigned>((hidden_size + columns_per_block - 1) / columns_per_block));
  LaunchConfig launch(grid, dim3(ScaleRowsConfig::kThreads), 0, enable_pdl, stream);
  if (aligned) {
    return cudaLaunchKernelEx(&launch.config, scale_rows_kernel<8>, x, slot_weight, hidden_size,
                              scaled);
  }
  return cudaLaunchKernelEx(&launch.config, scale_rows_kernel<1>, x, slot_weight, hidden_size,
                            scaled);
}

}  // namespace fusedmoe::detail
