// Host launcher of the decode GEMM1 + SwiGLU (kernels/sm90_decode_gemm1_swiglu.cuh): a grid of
// (act column slices, expert slots) of 4- or 8-warp CTAs, optional PDL.
#include <cstdint>

#include "decode_heuristics.h"
#include "kernels/sm90_decode_gemm1_swiglu.cuh"
#include "launch/decode_gemm.h"
#include "launch/decode_gemm_launch.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                       const int32_t* gather_rows, int64_t hidden_size,
                                       int64_t intermediate_size, const __nv_bfloat16* w1,
                                       __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream,
                                       const GemmEpilogue& epilogue) {
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;  // no row to compute
  // 16-byte loads of x and w1; act is written with 2-byte stores (any bf16 alignment).
  if (!heuristics::decode_aligned_16(x) || !heuristics::decode_aligned_16(w1)) {
    return cudaErrorMisalignedAddress;
  }
  kernels::DecodeGemm1Params params;
  params.expert_offsets = rows.expert_offsets;
  params.num_experts = rows.num_experts;
  params.x = x;
  params.gather_rows = gather_rows;
  params.w1 = w1;
  params.act = act;
  params.hidden_size = hidden_size;
  params.intermediate_size = intermediate_size;
  params.epilogue = epilogue;
  const bool early = rows.slot_key != nullptr &&
                     heuristics::use_decode_early_start(rows.max_rows, rows.top_k);
  static_assert(heuristics::kDecodeEarlyStartMaxSlots <= kernels::kDecodeEarlyMaxSlots,
                "the early prologue holds at most kDecodeEarlyMaxSlots keys");
  params.slot_key = early ? rows.slot_key : nullptr;
  params.num_slots = static_cast<int32_t>(rows.max_rows);
  params.top_k = rows.top_k;
  const int64_t col_slices =
      heuristics::ceil_div_decode(intermediate_size, kernels::kDecodeGemm1ColsPerCta);
  const int64_t k = hidden_size;
  if (!epilogue.is_plain()) {
    return launch_decode_gemm(
        DecodeGemmKernels<kernels::DecodeGemm1Params>{
            nullptr, kernels::sm90_decode_gemm1_swiglu_kernel<4, true>,
            kernels::sm90_decode_gemm1_swiglu_kernel<8, true>},
        params, rows, col_slices, k, enable_pdl, stream);
  }
  return launch_decode_gemm(
      DecodeGemmKernels<kernels::DecodeGemm1Params>{
          nullptr, kernels::sm90_decode_gemm1_swiglu_kernel<4, false>,
          kernels::sm90_decode_gemm1_swiglu_kernel<8, false>},
      params, rows, col_slices, k, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
