// Host launcher of GEMM2 (kernels/sm90_gemm2.cuh): tensor map of w2, smem size, persistent grid,
// optional PDL.
#include "launch/grouped_gemm.h"

#include "heuristics.h"
#include "kernels/sm90_gemm2.cuh"
#include "launch/tensor_map.h"

namespace fusedmoe::detail {

cudaError_t launch_gemm2(const GroupedRows& rows, const __nv_bfloat16* act,
                         int64_t intermediate_size, int64_t hidden_size,
                         const __nv_bfloat16* w2, __nv_bfloat16* y, bool enable_pdl,
                         cudaStream_t stream) {
  using Config = device::GroupedGemmConfig;
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute

  CUtensorMap tmap_w2;
  // [E_loc, H, I], boxes of (64 of I, 128 rows, 1 expert)
  cudaError_t err = make_tensor_map_3d_bf16_sw128(&tmap_w2, w2, intermediate_size, hidden_size,
                                                  rows.num_experts, Config::kBlockK,
                                                  Config::kHalfN);
  if (err != cudaSuccess) return err;

  kernels::Gemm2Params params;
  params.operands.expert_offsets = rows.expert_offsets;
  params.operands.num_experts = rows.num_experts;
  params.operands.num_n_blocks = static_cast<int32_t>(heuristics::gemm2_num_n_blocks(hidden_size));
  params.operands.num_k_blocks = static_cast<int32_t>(heuristics::grouped_num_k_blocks(intermediate_size));
  params.operands.k = intermediate_size;
  params.operands.a = act;
  params.operands.gather_rows = nullptr;
  params.operands.b_block_stride = 2 * Config::kHalfN;
  params.operands.b_box_stride = Config::kHalfN;
  params.hidden_size = hidden_size;
  params.y = y;

  int device = 0, num_sms = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
    return err;
  const size_t smem_bytes = sizeof(device::SharedStorage) + 1024;  // + realignment to 1024
  if ((err = cudaFuncSetAttribute(kernels::sm90_gemm2_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem_bytes))) != cudaSuccess)
    return err;

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(heuristics::grouped_gemm_grid_size(
      num_sms, rows.max_rows, rows.num_experts, params.operands.num_n_blocks));
  config.blockDim = dim3(Config::kNumThreads);
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = enable_pdl ? 1 : 0;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernels::sm90_gemm2_kernel, tmap_w2, params);
}

}  // namespace fusedmoe::detail
