// Host launcher of the decode GEMM1 + SwiGLU (kernels/sm90_decode_gemm1_swiglu.cuh): a grid of
// (act column slices, expert slots) of 4- or 8-warp CTAs, optional PDL.
#include <algorithm>
#include <cstdint>

#include "decode_heuristics.h"
#include "kernels/sm90_decode_gemm1_swiglu.cuh"
#include "launch/decode_gemm.h"
#include "launch/decode_gemm_launch.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                       const int32_t* gather_rows, int64_t hidden_size,
                                       int64_t intermediate_size, const __nv_bfloat16* w1,
                                       __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream) {
  return launch_decode_gemm1_swiglu(rows, x, gather_rows, hidden_size, intermediate_size, w1, act,
                                    nullptr, enable_pdl, stream);
}

cudaError_t launch_decode_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                       const int32_t* gather_rows, int64_t hidden_size,
                                       int64_t intermediate_size, const __nv_bfloat16* w1,
                                       __nv_bfloat16* act, const __nv_bfloat16* w2, bool enable_pdl,
                                       cudaStream_t stream) {
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
  const int64_t col_slices =
      heuristics::ceil_div_decode(intermediate_size, kernels::kDecodeGemm1ColsPerCta);
  // Each CTA's even share of its expert's w2 matrix, the total capped at the budget over the
  // expert slots; 16-byte multiples (w2 16-byte aligned: checked by the GEMM2 launcher's rule).
  const int64_t slots = heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  const int64_t slice = (hidden_size * intermediate_size * 2 / col_slices + 15) / 16 * 16;
  const int64_t cap = (int64_t(kernels::DecodeTile::kW2PrefetchMiB) << 20) /
                      std::max<int64_t>(1, slots * col_slices) / 16 * 16;
  const bool prefetch = w2 != nullptr && heuristics::decode_aligned_16(w2) && cap > 0;
  params.w2 = prefetch ? w2 : nullptr;
  params.w2_slice_bytes = slice;
  params.w2_prefetch_bytes = std::min(slice, cap);
  return launch_decode_gemm(
      kernels::sm90_decode_gemm1_swiglu_kernel<4>, kernels::sm90_decode_gemm1_swiglu_kernel<8>,
      params, rows, heuristics::ceil_div_decode(intermediate_size, kernels::kDecodeGemm1ColsPerCta),
      enable_pdl, stream);
}

}  // namespace fusedmoe::detail
