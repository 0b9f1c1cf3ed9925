// Routing weights on the input (use_routing_scales_on_input, K == 1; Llama 4's experts compute
// on the weighted token):
//
//   x [T, H] bf16, slot_weight [T] fp32 (the weight as used)  ->  scaled [T, H] bf16,
//   scaled[t, h] = bf16( float(x[t, h]) * slot_weight[t] )
//
// exactly what the model's bf16 `hidden * score` computes (one product, rounded once). GEMM1 then
// gathers its rows from `scaled` instead of x. Grid: (T, column blocks); each thread owns kVec
// consecutive columns (16-byte accesses when kVec == 8). Limiter: HBM (one read, one write of x).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "kernels/sm90_finalize.cuh"

namespace fusedmoe::detail {

struct ScaleRowsConfig {
  static constexpr int kThreads = 128;
};

template <int kVec>
__global__ void __launch_bounds__(ScaleRowsConfig::kThreads)
    scale_rows_kernel(const __nv_bfloat16* x, const float* slot_weight, int64_t hidden_size,
                      __nv_bfloat16* scaled) {
  using Vec = Bf16Vec<kVec>;
  // PDL: slot_weight comes from the routing kernel.
  cudaGridDependencySynchronize();
  cudaTriggerProgrammaticLaunchCompletion();  // the next kernel's own wait covers our writes

  const int64_t token = blockIdx.x;
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * kVec;
  if (column >= hidden_size) return;
  const float weight = slot_weight[token];
  const Vec in = *reinterpret_cast<const Vec*>(x + token * hidden_size + column);
  Vec out;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    out.value[i] = __float2bfloat16_rn(__fmul_rn(__bfloat162float(in.value[i]), weight));
  }
  *reinterpret_cast<Vec*>(scaled + token * hidden_size + column) = out;
}

}  // namespace fusedmoe::detail
