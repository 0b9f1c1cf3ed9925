// Host launch shared by launch_gemm1_swiglu.cu, launch_gemm2.cu and launch_fp8.cu: persistent
// grid sized by heuristics.h, dynamic smem limit, optional PDL attribute. Include only from .cu
// files.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_runtime.h>

#include "device/grouped_mainloop.cuh"
#include "heuristics.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

template <typename Params>
using GroupedGemmKernel = void (*)(CUtensorMap, Params);

// Bytes of dynamic smem: the storage plus room to realign it to 1024 bytes.
constexpr size_t kGroupedGemmSmemBytes = sizeof(device::SharedStorage) + 1024;
static_assert(kGroupedGemmSmemBytes <= 227 * 1024, "more smem than an sm_90 CTA may have");

// Launches kernel(maps..., params) on the persistent grid; smem_bytes: the kernel's dynamic smem
// (the FP8 GEMMs' storage differs from the BF16 one's).
template <typename Kernel, typename Params, typename... Maps>
cudaError_t launch_persistent_gemm(Kernel kernel, const Params& params, int64_t max_rows,
                                   int32_t num_experts, bool enable_pdl, cudaStream_t stream,
                                   size_t smem_bytes, const Maps&... maps) {
  int num_sms = 0;
  cudaError_t err = current_num_sms(&num_sms);
  if (err != cudaSuccess) return err;
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem_bytes))) != cudaSuccess)
    return err;

  const dim3 grid(heuristics::grouped_gemm_grid_size(num_sms, max_rows, num_experts,
                                                     params.operands.num_n_blocks));
  LaunchConfig launch(grid, dim3(device::GroupedGemmConfig::kNumThreads), smem_bytes, enable_pdl,
                      stream);
  return cudaLaunchKernelEx(&launch.config, kernel, maps..., params);
}

template <typename Params>
cudaError_t launch_grouped_gemm(GroupedGemmKernel<Params> kernel, const CUtensorMap& tmap,
                                const Params& params, int64_t max_rows, int32_t num_experts,
                                bool enable_pdl, cudaStream_t stream,
                                size_t smem_bytes = kGroupedGemmSmemBytes) {
  return launch_persistent_gemm(kernel, params, max_rows, num_experts, enable_pdl, stream,
                                smem_bytes, tmap);
}

}  // namespace fusedmoe::detail
