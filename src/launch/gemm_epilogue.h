// What a GEMM's epilogue does to its fp32 accumulators beyond rounding them to bf16: the
// expert's bias and, for GEMM1, the activation (docs/SPEC.md "The math"). One plain struct,
// filled on the host from MoeArguments (src/moe.cu) and passed by value to the kernels.
//
//   GEMM1, gated:     act[p, j] = bf16( A( gate = g[I + j] + b[I + j], up = g[j] + b[j] ) )
//   GEMM1, non-gated: act[p, j] = bf16( A( g[j] + b[j] ) )
//   GEMM2:            y[p, n]   = bf16( acc[n] + b[n] )
// with b = bias + e * bias_stride for the tile's local expert e (absent: 0).
//
// The kernels keep the epilogue they had for the plain case (plain SwiGLU for GEMM1, nothing
// for GEMM2: is_plain()), compiled apart from the general one, so that the common path carries
// none of the general one's loads and branches.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "activation.h"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct GemmEpilogue {
  bool has_activation = false;                  // GEMM1: true; GEMM2: false
  Activation activation = Activation::kSwiglu;  // read when has_activation
  const float* alpha = nullptr;                 // [E_loc] or nullptr (activation.h defaults)
  const float* beta = nullptr;
  const float* clamp_limit = nullptr;
  const void* bias = nullptr;  // [E_loc, bias_stride], bf16 or fp32; nullptr: no bias
  bool bias_fp32 = false;
  int64_t bias_stride = 0;  // 2I (gated GEMM1), I (non-gated GEMM1), H (GEMM2)

  // The kernels' fast case: no bias, and either no activation (GEMM2) or SwiGLU without
  // parameters (GEMM1 gated).
  FUSEDMOE_HOST_DEVICE bool is_plain() const {
    if (bias != nullptr) return false;
    if (!has_activation) return true;
    return activation == Activation::kSwiglu && alpha == nullptr && beta == nullptr &&
           clamp_limit == nullptr;
  }

#if defined(__CUDACC__)
  // Bias of local expert e at column n (0 without a bias).
  __device__ __forceinline__ float bias_at(int32_t e, int64_t n) const {
    if (bias == nullptr) return 0.0f;
    const int64_t index = int64_t(e) * bias_stride + n;
    return bias_fp32 ? static_cast<const float*>(bias)[index]
                     : __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[index]);
  }
  __device__ __forceinline__ activation::ExpertParams params(int32_t e) const {
    return activation::expert_params(activation, alpha, beta, clamp_limit, e);
  }
#endif
};

}  // namespace fusedmoe::detail
