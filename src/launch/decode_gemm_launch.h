// Host launch shared by launch_decode_gemm1_swiglu.cu and launch_decode_gemm2.cu: a grid of
// (column slices of cols_per_cta, expert slots), 4- or 8-warp CTAs by decode_heuristics.h,
// optional PDL. Include only from .cu files.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "decode_heuristics.h"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

template <typename Params>
using DecodeGemmKernel = void (*)(Params);

// num_cols: the output columns the grid's x dimension covers (I for GEMM1, H for GEMM2).
template <typename Params>
cudaError_t launch_decode_gemm(DecodeGemmKernel<Params> kernel_8_warps,
                               DecodeGemmKernel<Params> kernel_4_warps, const Params& params,
                               const GroupedRows& rows, int64_t num_cols, int64_t cols_per_cta,
                               bool enable_pdl, cudaStream_t stream) {
  const int64_t slots = heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  if (slots > 65535) return cudaErrorInvalidConfiguration;  // E_loc <= 1024 by validation
  const int64_t col_slices = heuristics::ceil_div_decode(num_cols, cols_per_cta);
  if (col_slices > INT32_MAX) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(col_slices), static_cast<unsigned>(slots));
  int device = 0, num_sms = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
      err != cudaSuccess) {
    return err;
  }
  const int warps = heuristics::decode_warps_per_cta(col_slices * slots, num_sms);

  LaunchConfig launch(grid, dim3(32 * warps), 0, enable_pdl, stream);
  return warps == 8 ? cudaLaunchKernelEx(&launch.config, kernel_8_warps, params)
                    : cudaLaunchKernelEx(&launch.config, kernel_4_warps, params);
}

}  // namespace fusedmoe::detail
