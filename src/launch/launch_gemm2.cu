// Host launcher of GEMM2 and of a non-gated GEMM1 (kernels/sm90_gemm2.cuh): tensor map of the
// weights and parameters; grid, smem and PDL in launch/grouped_gemm_launch.h.
#include "launch/grouped_gemm.h"

#include "heuristics.h"
#include "kernels/sm90_gemm2.cuh"
#include "launch/grouped_gemm_launch.h"
#include "launch/tensor_map.h"

namespace fusedmoe::detail {

cudaError_t launch_gemm2(const GroupedRows& rows, const __nv_bfloat16* act,
                         int64_t intermediate_size, int64_t hidden_size,
                         const __nv_bfloat16* w2, __nv_bfloat16* y, bool enable_pdl,
                         cudaStream_t stream, const GemmEpilogue& epilogue,
                         const int32_t* gather_rows) {
  using Config = device::GroupedGemmConfig;
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute
  // A rows are copied 16 bytes at a time (cp.async); weights need 16-byte aligned tensor maps.
  if (reinterpret_cast<uintptr_t>(act) % 16 != 0) return cudaErrorMisalignedAddress;

  CUtensorMap tmap;
  // [E_loc, H, I], boxes of (64 of I, 128 rows, 1 expert)
  cudaError_t err = make_tensor_map_3d_bf16_sw128(&tmap, w2, intermediate_size, hidden_size,
                                                  rows.num_experts, Config::kBlockK,
                                                  Config::kHalfN);
  if (err != cudaSuccess) return err;

  kernels::Gemm2GeneralParams params;
  params.operands.expert_offsets = rows.expert_offsets;
  params.operands.num_experts = rows.num_experts;
  params.operands.tile_counters = rows.tile_counters;
  params.operands.num_n_blocks =
      static_cast<int32_t>(heuristics::gemm2_num_n_blocks(hidden_size));
  params.operands.num_k_blocks =
      static_cast<int32_t>(heuristics::grouped_num_k_blocks(intermediate_size));
  params.operands.k = intermediate_size;
  params.operands.a = act;
  params.operands.gather_rows = gather_rows;
  params.operands.b_block_stride = 2 * Config::kHalfN;
  params.operands.b_box_stride = Config::kHalfN;
  params.hidden_size = hidden_size;
  params.y = y;
  params.epilogue = epilogue;  // the plain builds take the base part only

  const kernels::Gemm2Params& plain = params;
  const bool claim = rows.tile_counters != nullptr;
  if (!epilogue.is_plain()) {
    return launch_grouped_gemm(claim ? kernels::sm90_gemm2_kernel<true, true>
                                     : kernels::sm90_gemm2_kernel<false, true>,
                               tmap, params, rows.max_rows, rows.num_experts, enable_pdl, stream);
  }
  return launch_grouped_gemm(claim ? kernels::sm90_gemm2_kernel<true, false>
                                   : kernels::sm90_gemm2_kernel<false, false>,
                             tmap, plain, rows.max_rows, rows.num_experts, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
