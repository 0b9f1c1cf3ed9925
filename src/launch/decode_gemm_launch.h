// Host launch shared by launch_decode_gemm1_swiglu.cu and launch_decode_gemm2.cu: the grid of
// (column slices, expert slots), the warps per CTA (decode_heuristics.h), the dynamic smem of the
// warps' rings and optional PDL. Include only from .cu files.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "decode_heuristics.h"
#include "kernels/sm90_decode_mainloop.cuh"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

template <typename Params>
using DecodeGemmKernel = void (*)(Params);

template <int kWarps>
constexpr size_t kDecodeSmemBytes =
    sizeof(kernels::DecodeSharedStorage<kernels::DecodeGemmConfig<kWarps>>);
static_assert(kDecodeSmemBytes<8> <= 227 * 1024, "more smem than an sm_90 CTA may have");

// Launches kernel4 (4 warps) or kernel8 (8 warps) over `col_slices` column slices of each of the
// min(E_loc, max_rows) expert slots that can hold a row. Nothing is launched without rows.
template <typename Params>
cudaError_t launch_decode_gemm(DecodeGemmKernel<Params> kernel4, DecodeGemmKernel<Params> kernel8,
                               const Params& params, const GroupedRows& rows, int64_t col_slices,
                               bool enable_pdl, cudaStream_t stream) {
  const int64_t slots = heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  if (slots > 65535) return cudaErrorInvalidConfiguration;  // E_loc <= 1024 by validation
  if (col_slices > INT32_MAX) return cudaErrorInvalidConfiguration;
  int device = 0, num_sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device)) !=
      cudaSuccess) {
    return err;
  }
  const int warps = heuristics::decode_warps_per_cta(col_slices * slots, num_sms);
  const DecodeGemmKernel<Params> kernel = warps == 8 ? kernel8 : kernel4;
  const size_t smem_bytes = warps == 8 ? kDecodeSmemBytes<8> : kDecodeSmemBytes<4>;
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem_bytes))) != cudaSuccess) {
    return err;
  }
  const dim3 grid(static_cast<unsigned>(col_slices), static_cast<unsigned>(slots));
  LaunchConfig launch(grid, dim3(32 * warps), smem_bytes, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, kernel, params);
}

}  // namespace fusedmoe::detail
