// Decode GEMM1 + a gated activation: the few-rows-per-expert form of sm90_gemm1_swiglu.cuh,
// same math:
//   g[p, :]   = x[gather_rows[p], :] . w1[e]^T           fp32 accumulation, g is [2I]
//   act[p, j] = bf16( silu(g[p, I + j]) * g[p, j] )      silu(v) = v / (1 + exp(-v)) in fp32
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])),
// or with kGeneral the bias and any gated activation (launch/gemm_epilogue.h).
// Shapes: x [T, H] bf16; gather_rows [max_rows] int32; w1 [E_loc, 2I, H] bf16 (H contiguous,
// rows [0, I) up, [I, 2I) gate); act [max_rows, I] bf16. H, I multiples of 8; pointers 16-byte
// aligned.
//
// Grid (ceil(I / 16), min(E_loc, max_rows)): CTA (x, y) takes act columns [16 x, 16 x + 16) of
// the y-th non-empty expert (y past the last one: exits at once). Its m16 tile m holds up rows
// j0 + 8m .. +8 as fragment rows 0..7 and the matching gate rows I + j0 + 8m .. as rows 8..15,
// so a lane's accumulators hold up[j] and gate[j] of the same tokens: SwiGLU in registers.
// Warps: 4 (8 when the grid is small), all alike, splitting K = H (sm90_decode_mainloop.cuh);
// rows loop in chunks of 16 (the weights are re-read per chunk: meant for few rows per expert).
// Registers <= 128 (16 warps per SM), dynamic smem 48 / 96 KiB (the warps' cp.async rings,
// sm90_decode_mainloop.cuh). Epilogue: warp 0, 2-byte stores (act is < 1 % of the bytes at decode). Expected limiter: HBM; at T = 1 the
// fixed cost of a launch (expert lookup, first loads, tail: ~10 us) weighs as much as the bytes.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "device/epilogue.cuh"
#include "device/ptx.cuh"
#include "kernels/sm90_decode_mainloop.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct DecodeGemm1Params {
  const int32_t* expert_offsets;  // [E_loc + 1]
  int32_t num_experts;            // E_loc
  const __nv_bfloat16* x;         // [T, H]
  const int32_t* gather_rows;     // [max_rows]
  const __nv_bfloat16* w1;        // [E_loc, 2I, H]
  __nv_bfloat16* act;             // [max_rows, I]
  int64_t hidden_size;            // H
  int64_t intermediate_size;      // I
  detail::GemmEpilogue epilogue;  // read by the kGeneral build only
  // The early start (decode_heuristics.h: use_decode_early_start): the CTA's expert, rows and
  // tokens from the routing's slot keys (decode_cta_expert_from_keys), the mainloop before
  // griddepcontrol.wait, so that it runs while the sort does; nullptr: expert_offsets and
  // gather_rows after the wait.
  const int32_t* slot_key;  // [num_slots]
  int32_t num_slots;        // <= kDecodeEarlyMaxSlots
  int32_t top_k;
};

// Act columns per CTA: a tile's 16 rows are 8 up + 8 gate rows.
constexpr int kDecodeGemm1ColsPerCta = 8 * DecodeTile::kTilesM;


// kGeneral: the general epilogue (bias, any gated activation) instead of the plain SwiGLU.
template <int kWarps, bool kGeneral>
__global__ void __launch_bounds__(DecodeGemmConfig<kWarps>::kThreads,
                                  DecodeGemmConfig<kWarps>::kMinCtasPerSm)
    sm90_decode_gemm1_swiglu_kernel(const DecodeGemm1Params params) {
  using Config = DecodeGemmConfig<kWarps>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  auto& smem = *reinterpret_cast<DecodeSharedStorage<Config>*>(smem_bytes);

  // ---- prologue: which expert, which rows -----------------------------------------------------
  // Early start: from the slot keys, the next kernel allowed to launch at once, and this CTA's
  // own griddepcontrol.wait at its end, so that this grid completes after the sort: the kernels
  // after it read the sort's outputs once they have waited for this one (a CTA without an
  // expert: decode_empty_cta_leaves_now).
  DecodeExpertRows rows;
  const bool early = params.slot_key != nullptr;
  if (early) {
    ptx::griddepcontrol_launch_dependents();
    if (!decode_cta_expert_from_keys(params.slot_key, params.num_slots, params.top_k,
                                     params.num_experts, smem, rows)) {
      if (!decode_empty_cta_leaves_now()) ptx::griddepcontrol_wait();
      return;
    }
  } else if (!decode_cta_expert(params.expert_offsets, params.num_experts, smem, rows)) {
    return;
  }
  const int32_t expert = rows.expert, row_begin = rows.begin, row_end = rows.end;
  const int64_t h = params.hidden_size, inter = params.intermediate_size;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t j0 = int64_t(blockIdx.x) * kDecodeGemm1ColsPerCta;

  // This lane's weight rows: tile m, half 0 = up row j, half 1 = gate row I + j.
  const __nv_bfloat16* w_row[Config::kTilesM][2];
  bool w_ok[Config::kTilesM][2];
  const __nv_bfloat16* w1_expert = params.w1 + int64_t(expert) * 2 * inter * h;
#pragma unroll
  for (int m = 0; m < Config::kTilesM; ++m) {
    const int64_t j = j0 + 8 * m + g;
    w_ok[m][0] = w_ok[m][1] = j < inter;
    w_row[m][0] = w1_expert + j * h;
    w_row[m][1] = w1_expert + (inter + j) * h;
  }

  // ---- mainloop over chunks of rows -------------------------------------------------------------
  for (int32_t chunk = row_begin; chunk < row_end; chunk += Config::kChunkRows) {
    const int n_active = (min(Config::kChunkRows, row_end - chunk) + 7) / 8;
    const __nv_bfloat16* b_row[Config::kNTiles];  // x row of token 8 n + g of the chunk
    bool b_ok[Config::kNTiles];
#pragma unroll
    for (int n = 0; n < Config::kNTiles; ++n) {
      const int32_t p = chunk + 8 * n + g;
      b_ok[n] = p < row_end;
      const int32_t token =
          !b_ok[n] ? 0 : early ? smem.early_tokens[p - row_begin] : params.gather_rows[p];
      b_row[n] = params.x + int64_t(token) * h;
    }
    float acc[Config::kTilesM][Config::kNTiles][4] = {};
    decode_warp_mainloop<Config>(w_row, w_ok, b_row, b_ok, params.x, n_active, h,
                                 smem.ring[threadIdx.x / 32], acc);
    decode_reduce_warps(acc, smem);

    // ---- epilogue: the activation, bf16, masked stores (warp 0) ------------------------------
    if (threadIdx.x >= 32) continue;
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
      const int64_t j = j0 + 8 * m + g;
      if (j >= inter) continue;
      float up_bias = 0.0f, gate_bias = 0.0f;
      activation::ExpertParams act_params;
      if constexpr (kGeneral) {
        up_bias = params.epilogue.bias_at(expert, j);
        gate_bias = params.epilogue.bias_at(expert, inter + j);
        act_params = params.epilogue.params(expert);
      }
#pragma unroll
      for (int n = 0; n < Config::kNTiles; ++n) {
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int32_t p = chunk + 8 * n + 2 * t + v;
          if (p >= row_end) continue;
          float a;
          if constexpr (kGeneral) {  // few rows: a run-time switch costs nothing measurable
            a = activation::gated(params.epilogue.activation, acc[m][n][2 + v] + gate_bias,
                                  acc[m][n][v] + up_bias, act_params);
          } else {
            a = device::silu_fast(acc[m][n][2 + v]) * acc[m][n][v];
          }
          params.act[int64_t(p) * inter + j] = __float2bfloat16_rn(a);
        }
      }
    }
  }
  if (early) ptx::griddepcontrol_wait();  // see the prologue
}

}  // namespace fusedmoe::kernels
