// Host side of the finalize kernel (kernels/sm90_finalize.cuh).
#include <cstdint>

#include "decode_heuristics.h"
#include "kernels/sm90_finalize.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_finalize(const __nv_bfloat16* y, const float* slot_weight,
                            const int32_t* permuted_idx, int64_t num_tokens, int32_t top_k,
                            int32_t num_experts, int32_t local_num_experts, int64_t hidden_size,
                            __nv_bfloat16* output, bool enable_pdl, cudaStream_t stream) {
  // 16-byte columns when both row bases allow it (H % 8 == 0 keeps every row aligned alike).
  const bool aligned = (reinterpret_cast<uintptr_t>(y) % 16 == 0) &&
                       (reinterpret_cast<uintptr_t>(output) % 16 == 0);
  const int vec = aligned ? 8 : 1;
  const int64_t columns_per_block = static_cast<int64_t>(FinalizeConfig::kThreads) * vec;
  const dim3 grid(static_cast<unsigned>(num_tokens),
                  static_cast<unsigned>((hidden_size + columns_per_block - 1) / columns_per_block));
  int num_sms = 0;
  const cudaError_t err = current_num_sms(&num_sms);
  if (err != cudaSuccess) return err;
  const int batch = heuristics::finalize_load_batch(static_cast<int64_t>(grid.x) * grid.y, num_sms,
                                                    top_k, num_experts, local_num_experts);
  using Kernel = void (*)(const __nv_bfloat16*, const float*, const int32_t*, int32_t, int64_t,
                          __nv_bfloat16*);
  // [aligned][weighted][batched]
  constexpr Kernel kKernels[2][2][2] = {
      {{finalize_kernel<1, false, 1>, finalize_kernel<1, false, heuristics::kFinalizeLoadBatch>},
       {finalize_kernel<1, true, 1>, finalize_kernel<1, true, heuristics::kFinalizeLoadBatch>}},
      {{finalize_kernel<8, false, 1>, finalize_kernel<8, false, heuristics::kFinalizeLoadBatch>},
       {finalize_kernel<8, true, 1>, finalize_kernel<8, true, heuristics::kFinalizeLoadBatch>}}};
  const Kernel kernel = kKernels[aligned][slot_weight != nullptr][batch > 1];
  LaunchConfig launch(grid, dim3(FinalizeConfig::kThreads), 0, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, kernel, y, slot_weight, permuted_idx, top_k,
                            hidden_size, output);
}

}  // namespace fusedmoe::detail
