// The FP8 quantiser's division (scale = amax / 448, e4m3 = cvt.rn.satfinite(v / scale)) without
// an IEEE division per value, shared by the quantiser kernel (kernels/sm90_quantize_fp8.cuh) and
// the grouped GEMM1's epilogue (device/epilogue.cuh, store_warp_block_e4m3); and one warp's group
// of the rule, shared by the quantiser kernel and the routing kernels that quantise x
// (kernels/sm90_route.cuh, kernels/sm90_decode_topk.cuh).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "device/ptx.cuh"

namespace fusedmoe::device {

// e4m3 codes of a bf16 pair divided by one row's scale, bitwise the rule's
// cvt.rn.satfinite(scale > 0 ? __fdiv_rn(v, scale) : v), without an IEEE division per value, whose
// inlined checks and slow-path branches made the quantisation a fifth of GEMM1's time when it
// first moved into its epilogue (bench/NOTES.md, "The activation quantised in GEMM1's epilogue").
// Markstein's division by a correctly rounded reciprocal: with r = RN(1 / s), q0 = RN(v r) within
// an ulp of v / s, the residual v - q0 s exact in one FMA, RN(q0 + (v - q0 s) r) is RN(v / s).
// Four instructions a value and no branch, for every scale a row can have:
//   s <= 2^50: v and s scaled by 2^64 (exactly), so that the residual cannot underflow for any
//     bf16 v (|v| >= 2^-133 becomes >= 2^-69) and nothing overflows (|v| <= 448 s);
//   s > 2^50: unscaled; a residual that underflows then belongs to |v| < 2^-101, whose quotient
//     is below 2^-151 either way;
//   s = 0 (the group is zeros and NaNs): divided by 1, so v itself; s = inf: by 1 with r = 0, so
//     +-0 for finite v and NaN for inf or NaN, as the division gives.
// The residual is formed negated so that -0 stays -0. Checked against the division for every
// bf16 amax from 0 to inf and every bf16 v with |v| <= amax, both signs, and NaNs (1.07 G pairs,
// on the CPU; and on the GPU by tests/test_gpu_fp8.cu): bitwise equal, but for quotients below
// 2^-126, which are e4m3 0 either way, the sign kept.
struct E4m3Divisor {
  float pre, scaled, neg_recip;  // 2^64 or 1; s pre (1 when s is 0 or inf); -RN(1 / (s pre))
  __device__ __forceinline__ explicit E4m3Divisor(float s) {
    pre = s > 0x1p50f ? 1.0f : 0x1p64f;
    const float s_pre = s * pre;
    const bool special = s == 0.0f || isinf(s);
    scaled = special ? 1.0f : s_pre;
    neg_recip = s == 0.0f ? -1.0f : -__frcp_rn(s_pre);  // inf: -0
  }
  __device__ __forceinline__ float quotient(float v) const {
    const float v2 = v * pre;
    const float q0 = v2 * -neg_recip;
    const float residual_neg = fmaf(q0, scaled, -v2);  // q0 s - v, exactly
    return fmaf(residual_neg, neg_recip, q0);
  }
  __device__ __forceinline__ uint16_t codes(uint32_t bf16_pair) const {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bf16_pair));
    return ptx::cvt_e4m3x2(quotient(v.x), quotient(v.y));
  }
  // The rule's own arithmetic, what codes() must equal (tests/test_gpu_fp8.cu).
  __device__ static uint16_t codes_by_division(uint32_t bf16_pair, float s) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bf16_pair));
    return ptx::cvt_e4m3x2(s > 0.0f ? __fdiv_rn(v.x, s) : v.x, s > 0.0f ? __fdiv_rn(v.y, s) : v.y);
  }
};

// One warp's (row, 128-column group) of the quantiser's rule (kernels/sm90_quantize_fp8.cuh): raw
// holds lane l's values 4 l .. 4 l + 3 (bf16), whose codes go to codes[4 l ..] (codes: the group's
// first byte); lane 0 writes the group's scale.
__device__ __forceinline__ void warp_quantize_fp8_group(uint2 raw, uint8_t* codes, float* scale_out,
                                                        int lane) {
  const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&raw);
  float v[4];
  const float2 lo = __bfloat1622float2(pair[0]), hi = __bfloat1622float2(pair[1]);
  v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i]));  // fmaxf skips NaN
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  }
  const float scale = __fdiv_rn(amax, 448.0f);
  const E4m3Divisor divisor(scale);  // v / scale by the reciprocal, bitwise the division
  const uint32_t packed = uint32_t(divisor.codes(raw.x)) | (uint32_t(divisor.codes(raw.y)) << 16);
  *reinterpret_cast<uint32_t*>(codes + 4 * lane) = packed;
  if (lane == 0) *scale_out = scale;
}

// The same from the group's 128 bf16 values in memory (values: the group's first; 8-byte aligned),
// lane l loading its own four.
__device__ __forceinline__ void warp_quantize_fp8_group(const __nv_bfloat16* values, uint8_t* codes,
                                                        float* scale_out, int lane) {
  warp_quantize_fp8_group(*reinterpret_cast<const uint2*>(values + 4 * lane), codes, scale_out,
                          lane);
}

}  // namespace fusedmoe::device
