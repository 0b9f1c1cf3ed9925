// Decode GEMM2: the few-rows-per-expert form of sm90_gemm2.cuh, same math:
//   y[p, n] = bf16( E( act[row(p), :] . w2[e][n, :] ) )      fp32 accumulation
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])),
// row(p) = gather_rows[p] (or p without them), E = identity or (kGeneral) the bias and an
// optional non-gated activation (launch/gemm_epilogue.h): also the non-gated GEMM1 (act = x,
// gathered; w2 = w1 [E_loc, I, H]; y = act).
// Shapes: act [*, I] bf16; w2 [E_loc, H, I] bf16 (I contiguous); y [max_rows, H] bf16.
// H, I multiples of 8; pointers 16-byte aligned.
//
// Grid (ceil(H / 32), min(E_loc, max_rows)): CTA (x, y) takes output columns [32 x, 32 x + 32)
// (w2 rows) of the y-th non-empty expert (y past the last one: exits at once); m16 tile m holds
// w2 rows n0 + 16 m .. +16. Warps: 4 (8 when the grid is small), all alike, splitting K = I
// (sm90_decode_mainloop.cuh); rows loop in chunks of 16 (the weights are re-read per chunk:
// meant for few rows per expert). Registers <= 128 (16 warps per SM), dynamic smem 48 / 96
// KiB (the warps' cp.async rings, sm90_decode_mainloop.cuh). Epilogue: warp 0, 2-byte stores.
// Expected limiter: HBM; at T = 1 the fixed cost of a launch (expert lookup, first loads, tail: ~10
// us) weighs as much as the bytes.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "device/ptx.cuh"
#include "kernels/sm90_decode_mainloop.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct DecodeGemm2Params {
  const int32_t* expert_offsets;  // [E_loc + 1]
  int32_t num_experts;            // E_loc
  const __nv_bfloat16* act;       // [*, I]: A rows
  const __nv_bfloat16* w2;        // [E_loc, H, I]
  __nv_bfloat16* y;               // [max_rows, H]
  int64_t hidden_size;            // H: y row length (N)
  int64_t intermediate_size;      // I: the reduction (K)
  // Given (up to kDecodeEarlyMaxSlots slots, a small grid: use_decode_gemm2_early_lookup), the
  // CTA finds its expert and rows from the routing's slot keys before griddepcontrol.wait
  // (decode_cta_expert_from_keys) and issues its first weights before it too; nullptr: from
  // expert_offsets after the wait.
  const int32_t* slot_key;  // [num_slots]
  int32_t num_slots;
  int32_t top_k;
};
// The general build's parameters, a type of their own so that the plain build's code stays as
// it was (with the new fields in one struct, nvcc allocated the plain kernel's registers
// differently; see also Gemm2GeneralParams in sm90_gemm2.cuh).
struct DecodeGemm2GeneralParams : DecodeGemm2Params {
  const int32_t* gather_rows;  // [max_rows]: A row of permuted row p, or nullptr (p itself)
  detail::GemmEpilogue epilogue;
};
template <bool kGeneral>
using DecodeGemm2ParamsOf =
    std::conditional_t<kGeneral, DecodeGemm2GeneralParams, DecodeGemm2Params>;

// Output columns (w2 rows) per CTA.
constexpr int kDecodeGemm2ColsPerCta = DecodeTile::kRowsM;

// kGeneral: the general epilogue (bias, a non-gated activation) instead of plain rounding.
template <int kWarps, bool kGeneral>
__global__ void __launch_bounds__(DecodeGemmConfig<kWarps>::kThreads,
                                  DecodeGemmConfig<kWarps>::kMinCtasPerSm)
    sm90_decode_gemm2_kernel(const DecodeGemm2ParamsOf<kGeneral> params) {
  using Config = DecodeGemmConfig<kWarps>;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  auto& smem = *reinterpret_cast<DecodeSharedStorage<Config>*>(smem_bytes);

  // ---- prologue: which expert, which rows -----------------------------------------------------
  // With the slot keys (up to kDecodeEarlyMaxSlots slots), the expert and rows are known before
  // the PDL wait, and so are the first chunk's weights: their first kStages - 1 ring slots start
  // loading before the wait (decode_warp_issue_weights), while GEMM1 drains, and the activations
  // follow after it.
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t h = params.hidden_size, inter = params.intermediate_size;
  const int64_t n0 = int64_t(blockIdx.x) * kDecodeGemm2ColsPerCta;
  // This lane's weight rows of an expert: tile m, half hf = w2 row n0 + 16 m + 8 hf + g.
  const __nv_bfloat16* w_row[Config::kTilesM][2];
  bool w_ok[Config::kTilesM][2];
  auto set_weight_rows = [&](int32_t expert) {
    const __nv_bfloat16* w2_expert = params.w2 + int64_t(expert) * h * inter;
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t n = n0 + 16 * m + 8 * hf + g;
        w_ok[m][hf] = n < h;
        w_row[m][hf] = w2_expert + n * inter;
      }
    }
  };
  DecodeExpertRows rows;
  const bool early = params.slot_key != nullptr;
  if (early) {  // before the wait: what the sort's outputs would say
    const bool found = decode_cta_expert_from_keys<Config, false>(
        params.slot_key, params.num_slots, params.top_k, params.num_experts, smem, rows);
    if (!found && decode_empty_cta_leaves_now()) return;
    if (found) {
      set_weight_rows(rows.expert);
      decode_warp_issue_weights<Config>(w_row, w_ok, params.w2, inter, smem.ring[threadIdx.x / 32]);
    } else {
      ptx::griddepcontrol_launch_dependents();  // CTA (0, 0) has nothing to do but wait
    }
    ptx::griddepcontrol_wait();  // act (and gathered x) come from earlier kernels
    ptx::griddepcontrol_launch_dependents();
    if (!found) return;
  } else if (!decode_cta_expert(params.expert_offsets, params.num_experts, smem, rows)) {
    return;
  } else {
    set_weight_rows(rows.expert);
  }
  const int32_t expert = rows.expert, row_begin = rows.begin, row_end = rows.end;

  // ---- mainloop over chunks of rows -------------------------------------------------------------
  for (int32_t chunk = row_begin; chunk < row_end; chunk += Config::kChunkRows) {
    const int n_active = (min(Config::kChunkRows, row_end - chunk) + 7) / 8;
    const __nv_bfloat16* b_row[Config::kNTiles];  // act row of token 8 n + g of the chunk
    bool b_ok[Config::kNTiles];
#pragma unroll
    for (int n = 0; n < Config::kNTiles; ++n) {
      const int32_t p = chunk + 8 * n + g;
      b_ok[n] = p < row_end;
      // Gathered rows exist only in the general build (the non-gated GEMM1 always has its
      // activation).
      if constexpr (kGeneral) {
        const int64_t row = !b_ok[n] ? 0 : params.gather_rows ? params.gather_rows[p] : p;
        b_row[n] = params.act + row * inter;
      } else {
        b_row[n] = params.act + (b_ok[n] ? int64_t(p) * inter : 0);
      }
    }
    float acc[Config::kTilesM][Config::kNTiles][4] = {};
    if (early && chunk == row_begin) {  // its weights' first slots were issued before the wait
      decode_warp_mainloop<Config, true>(w_row, w_ok, b_row, b_ok, params.act, n_active, inter,
                                         smem.ring[threadIdx.x / 32], acc);
    } else {
      decode_warp_mainloop<Config>(w_row, w_ok, b_row, b_ok, params.act, n_active, inter,
                                   smem.ring[threadIdx.x / 32], acc);
    }
    decode_reduce_warps(acc, smem);

    // ---- epilogue: bf16, masked stores (warp 0) -----------------------------------------------
    if (threadIdx.x >= 32) continue;
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t n = n0 + 16 * m + 8 * hf + g;
        if (n >= h) continue;
        float bias = 0.0f;
        if constexpr (kGeneral) bias = params.epilogue.bias_at(expert, n);
#pragma unroll
        for (int nt = 0; nt < Config::kNTiles; ++nt) {
#pragma unroll
          for (int v = 0; v < 2; ++v) {
            const int32_t p = chunk + 8 * nt + 2 * t + v;
            if (p >= row_end) continue;
            float out = acc[m][nt][2 * hf + v];
            if constexpr (kGeneral) {  // few rows: a run-time switch costs nothing measurable
              out += bias;
              if (params.epilogue.has_activation) {
                out = activation::plain(params.epilogue.activation, out);
              }
            }
            params.y[int64_t(p) * h + n] = __float2bfloat16_rn(out);
          }
        }
      }
    }
  }
}

}  // namespace fusedmoe::kernels
