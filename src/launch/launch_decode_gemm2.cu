// Host launcher of the decode GEMM2 (kernels/sm90_decode_gemm2.cuh): a grid of (output column
// slices, expert slots) of 4- or 8-warp CTAs, optional PDL.
#include <cstdint>

#include "decode_heuristics.h"
#include "kernels/sm90_decode_gemm2.cuh"
#include "launch/decode_gemm.h"
#include "launch/decode_gemm_launch.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_gemm2(const GroupedRows& rows, const __nv_bfloat16* act,
                                int64_t intermediate_size, int64_t hidden_size,
                                const __nv_bfloat16* w2, __nv_bfloat16* y, bool enable_pdl,
                                cudaStream_t stream, const GemmEpilogue& epilogue,
                                const int32_t* gather_rows) {
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute
  // 16-byte loads of act and w2; y is written with 2-byte stores (any bf16 alignment, so an
  // unaligned caller gemm2_output works).
  if (!heuristics::decode_aligned_16(act) || !heuristics::decode_aligned_16(w2)) {
    return cudaErrorMisalignedAddress;
  }
  // The plain build reads no gather rows (kernels/sm90_decode_gemm2.cuh).
  if (gather_rows != nullptr && epilogue.is_plain()) return cudaErrorInvalidValue;
  kernels::DecodeGemm2GeneralParams params;
  params.expert_offsets = rows.expert_offsets;
  params.num_experts = rows.num_experts;
  params.act = act;
  params.gather_rows = gather_rows;
  params.w2 = w2;
  params.y = y;
  params.hidden_size = hidden_size;
  params.intermediate_size = intermediate_size;
  params.epilogue = epilogue;
  const int64_t col_slices =
      heuristics::ceil_div_decode(hidden_size, kernels::kDecodeGemm2ColsPerCta);
  const int64_t grid_ctas =
      col_slices * heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  const bool early_lookup = rows.slot_key != nullptr && heuristics::use_decode_gemm2_early_lookup(
                                                            rows.max_rows, rows.top_k, grid_ctas);
  params.slot_key = early_lookup ? rows.slot_key : nullptr;
  params.num_slots = static_cast<int32_t>(rows.max_rows);
  params.top_k = rows.top_k;
  const int64_t k = intermediate_size;
  if (!epilogue.is_plain()) {
    return launch_decode_gemm(
        DecodeGemmKernels<kernels::DecodeGemm2GeneralParams>{
            nullptr, kernels::sm90_decode_gemm2_kernel<4, true>,
            kernels::sm90_decode_gemm2_kernel<8, true>},
        params, rows, col_slices, k, enable_pdl, stream);
  }
  const kernels::DecodeGemm2Params& plain = params;  // the plain builds take the base part
  return launch_decode_gemm(
      DecodeGemmKernels<kernels::DecodeGemm2Params>{nullptr,
                                                    kernels::sm90_decode_gemm2_kernel<4, false>,
                                                    kernels::sm90_decode_gemm2_kernel<8, false>},
      plain, rows, col_slices, k, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
