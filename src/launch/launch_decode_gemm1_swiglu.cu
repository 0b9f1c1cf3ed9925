// Host launcher of the decode GEMM1 + SwiGLU (kernels/sm90_decode_gemm1_swiglu.cuh): a grid of
// (act column slices, expert slots) of 4- or 8-warp CTAs, optional PDL.
#include <algorithm>
#include <cstdint>

#include "decode_heuristics.h"
#include "kernels/sm90_decode_gemm1_swiglu.cuh"
#include "launch/decode_gemm.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                       const int32_t* gather_rows, int64_t hidden_size,
                                       int64_t intermediate_size, const __nv_bfloat16* w1,
                                       __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream) {
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute
  // 16-byte loads of x and w1; act is written with 2-byte stores (any bf16 alignment).
  if (!heuristics::decode_aligned_16(x) || !heuristics::decode_aligned_16(w1)) {
    return cudaErrorMisalignedAddress;
  }
  const int64_t slots = heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  if (slots > 65535) return cudaErrorInvalidConfiguration;  // E_loc <= 1024 by validation
  const int64_t col_slices =
      heuristics::ceil_div_decode(intermediate_size, kernels::kDecodeGemm1ColsPerCta);
  if (col_slices > INT32_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(col_slices), static_cast<unsigned>(slots));
  int device = 0, num_sms = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
      err != cudaSuccess) {
    return err;
  }
  const int warps = heuristics::decode_warps_per_cta(col_slices * slots, num_sms);

  kernels::DecodeGemm1Params params;
  params.expert_offsets = rows.expert_offsets;
  params.num_experts = rows.num_experts;
  params.x = x;
  params.gather_rows = gather_rows;
  params.w1 = w1;
  params.act = act;
  params.hidden_size = hidden_size;
  params.intermediate_size = intermediate_size;
  LaunchConfig launch(grid, dim3(32 * warps), 0, enable_pdl, stream);
  return warps == 8 ? cudaLaunchKernelEx(&launch.config,
                                         kernels::sm90_decode_gemm1_swiglu_kernel<8>, params)
                    : cudaLaunchKernelEx(&launch.config,
                                         kernels::sm90_decode_gemm1_swiglu_kernel<4>, params);
}

}  // namespace fusedmoe::detail
