// Host launch shared by the decode GEMMs' launchers (BF16 and FP8): the grid of
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

// The kernels of one decode GEMM by warps per CTA; `two` is null where the GEMM has no 2-warp
// form (the BF16 decode GEMMs).
template <typename Params>
struct DecodeGemmKernels {
  DecodeGemmKernel<Params> two, four, eight;
};

// Launches the kernel of `warps` warps (decode_heuristics.h: decode_warps_per_cta, or
// decode_fp8_warps_per_cta) over `col_slices` column slices of each of the min(E_loc, max_rows)
// expert slots that can hold a row. Nothing is launched without rows.
template <typename Params>
cudaError_t launch_decode_gemm(const DecodeGemmKernels<Params>& kernels, const Params& params,
                               const GroupedRows& rows, int64_t col_slices, int64_t k,
                               bool enable_pdl, cudaStream_t stream) {
  const int64_t slots = heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  if (slots > 65535) return cudaErrorInvalidConfiguration;  // E_loc <= 1024 by validation
  if (col_slices > INT32_MAX) return cudaErrorInvalidConfiguration;
  int num_sms = 0;
  cudaError_t err = current_num_sms(&num_sms);
  if (err != cudaSuccess) return err;
  const int64_t ctas = col_slices * slots;
  const int warps = kernels.two != nullptr ? heuristics::decode_fp8_warps_per_cta(ctas, num_sms, k)
                                           : heuristics::decode_warps_per_cta(ctas, num_sms);
  const DecodeGemmKernel<Params> kernel = warps == 2   ? kernels.two
                                          : warps == 4 ? kernels.four
                                                       : kernels.eight;
  const size_t smem_bytes = warps == 2   ? kDecodeSmemBytes<2>
                            : warps == 4 ? kDecodeSmemBytes<4>
                                         : kDecodeSmemBytes<8>;
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem_bytes))) != cudaSuccess) {
    return err;
  }
  const dim3 grid(static_cast<unsigned>(col_slices), static_cast<unsigned>(slots));
  LaunchConfig launch(grid, dim3(32 * warps), smem_bytes, enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, kernel, params);
}

}  // namespace fusedmoe::detail
