// Host launcher of GEMM1 + a gated activation (kernels/sm90_gemm1_swiglu.cuh): tensor map of w1 and
// parameters; grid, smem and PDL in launch/grouped_gemm_launch.h.
#include "launch/grouped_gemm.h"

#include "heuristics.h"
#include "kernels/sm90_gemm1_swiglu.cuh"
#include "launch/grouped_gemm_launch.h"
#include "launch/tensor_map.h"

namespace fusedmoe::detail {

cudaError_t launch_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                const int32_t* gather_rows, int64_t hidden_size,
                                int64_t intermediate_size, const __nv_bfloat16* w1,
                                __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream,
                                const GemmEpilogue& epilogue) {
  using Config = device::GroupedGemmConfig;
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute
  // A rows are copied 16 bytes at a time (cp.async); weights need 16-byte aligned tensor maps.
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return cudaErrorMisalignedAddress;

  CUtensorMap tmap;
  // [E_loc, 2I, H], boxes of (64 of H, 128 rows, 1 expert)
  cudaError_t err = make_tensor_map_3d_bf16_sw128(&tmap, w1, hidden_size,
                                                  2 * intermediate_size, rows.num_experts,
                                                  Config::kBlockK, Config::kHalfN);
  if (err != cudaSuccess) return err;

  kernels::Gemm1SwigluGeneralParams params;
  params.operands.expert_offsets = rows.expert_offsets;
  params.operands.num_experts = rows.num_experts;
  params.operands.tile_counters = rows.tile_counters;
  params.operands.num_n_blocks =
      static_cast<int32_t>(heuristics::gemm1_num_n_blocks(intermediate_size));
  params.operands.num_k_blocks =
      static_cast<int32_t>(heuristics::grouped_num_k_blocks(hidden_size));
  params.operands.k = hidden_size;
  params.operands.a = x;
  params.operands.gather_rows = gather_rows;
  params.operands.b_block_stride = Config::kHalfN;
  params.operands.b_box_stride = static_cast<int32_t>(intermediate_size);
  params.intermediate_size = intermediate_size;
  params.act = act;
  params.epilogue = epilogue;  // the plain builds take the base part only

  const kernels::Gemm1SwigluParams& plain = params;
  const bool claim = rows.tile_counters != nullptr;
  if (!epilogue.is_plain()) {
    return launch_grouped_gemm(claim ? kernels::sm90_gemm1_swiglu_kernel<true, true>
                                     : kernels::sm90_gemm1_swiglu_kernel<false, true>,
                               tmap, params, rows.max_rows, rows.num_experts, enable_pdl, stream);
  }
  return launch_grouped_gemm(claim ? kernels::sm90_gemm1_swiglu_kernel<true, false>
                                   : kernels::sm90_gemm1_swiglu_kernel<false, false>,
                             tmap, plain, rows.max_rows, rows.num_experts, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
