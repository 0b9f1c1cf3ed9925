// The FP8 decode GEMMs: the few-rows-per-expert form of kernels/sm90_gemm_fp8.cuh, same math
// (docs/fp8.md), on the BF16 decode GEMMs' stream (kernels/sm90_decode_mainloop.cuh):
//   kGated true  (GEMM1 + a gated activation): a = e4m3 x [T, H] gathered by gather_rows, w =
//     w1 [E_loc, 2I, H]; out = act [max_rows, I] bf16. CTA x takes act columns [16 x, 16 x + 16):
//     its m16 tile m holds up rows j0 + 8 m .. +8 as fragment rows 0..7 and the matching gate rows
//     I + j0 + 8 m .. as rows 8..15 (the BF16 decode GEMM1's pairing), so the activation is
//     computed in registers.
//   kGated false (GEMM2, and GEMM1 of a non-gated activation): a = e4m3 act [*, I] (or x
//     gathered), w = w2 [E_loc, H, I] (or w1); out = y [max_rows, H]. CTA x takes output
//     columns [32 x, 32 x + 32).
// K runs in 64-byte units (64 e4m3) interleaved over the warps; each unit is two mma m16n8k32
// e4m3 from zero, promoted at once into the fp32 sums:
//   acc = fma(sa[token] * sw[row block], unit_sum, acc)
// with the scales of the 128-deep block the unit lies in (a unit never straddles one). That is
// the reference's block-promoted sum split in halves; the warps' sums are then added in
// ascending warp order (deterministic). Scales: a_scale group-major [K / 128, scale_stride]
// (row = gather_rows[p] or p); w_scale [E_loc, rows / 128, K / 128]; both L1-cached loads.
// Epilogue (warp 0): the expert's bias and the activation of `epilogue`, 2-byte bf16 stores.
// Grid as the BF16 decode GEMMs (launch/decode_gemm_launch.h); 2, 4 or 8 warps
// (decode_heuristics.h: decode_fp8_warps_per_cta).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "device/decode_ptx.cuh"
#include "device/epilogue.cuh"
#include "device/ptx.cuh"
#include "kernels/sm90_decode_mainloop.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct DecodeGemmFp8Params {
  const int32_t* expert_offsets;  // [E_loc + 1]
  int32_t num_experts;            // E_loc
  const uint8_t* a;               // [*, k] e4m3: the token rows
  const float* a_scale;           // [k / 128, scale_stride]
  int64_t scale_stride;
  const int32_t* gather_rows;  // [max_rows], or nullptr (row p of a is p)
  const uint8_t* w;            // [E_loc, w_rows, k] e4m3
  const float* w_scale;        // [E_loc, w_rows / 128, k / 128]
  int64_t w_rows;              // 2I (gated) or the output columns
  int64_t k;                   // a multiple of 128
  __nv_bfloat16* out;          // [max_rows, out_cols]
  int64_t out_cols;            // I (gated) or the output columns
  detail::GemmEpilogue epilogue;
  // The early start, as the BF16 decode GEMMs do it (decode_heuristics.h): the CTA's expert and
  // rows from the routing's slot keys (decode_cta_expert_from_keys) instead of expert_offsets.
  // With gather_rows (a GEMM1: the a rows are tokens) the tokens come from the keys too, the
  // next kernel may launch at once, and the mainloop runs before this CTA's griddepcontrol.wait,
  // which it calls before it exits (a CTA without an expert: decode_empty_cta_leaves_now);
  // without (a GEMM2) the lookup and the first weight copies come before the wait. nullptr:
  // expert_offsets and gather_rows after the wait.
  const int32_t* slot_key;  // [num_slots]
  int32_t num_slots;        // <= kDecodeEarlyMaxSlots
  int32_t top_k;
};

// Output columns per CTA.
template <bool kGated>
constexpr int kDecodeFp8ColsPerCta = kGated ? 8 * DecodeTile::kTilesM : DecodeTile::kRowsM;

template <int kWarps, bool kGated>
__global__ void __launch_bounds__(DecodeGemmConfig<kWarps>::kThreads,
                                  DecodeGemmConfig<kWarps>::kMinCtasPerSm)
    sm90_decode_gemm_fp8_kernel(const DecodeGemmFp8Params params) {
  using Config = DecodeGemmConfig<kWarps>;
  constexpr int kTilesM = Config::kTilesM, kNTiles = Config::kNTiles;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  auto& smem = *reinterpret_cast<DecodeSharedStorage<Config>*>(smem_bytes);

  // ---- prologue: which expert, which rows -----------------------------------------------------
  const int64_t k = params.k, k_blocks = k / 128, out_cols = params.out_cols;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t col0 = int64_t(blockIdx.x) * kDecodeFp8ColsPerCta<kGated>;

  // This lane's weight rows (tile m, half h = fragment rows g / g + 8). The CTA's columns lie in
  // one 128-row scale block (16 or 32 columns from a multiple of 16), so half h's scale row is the
  // CTA's: up and gate blocks (gated), or the one block twice.
  const uint8_t* w_row[kTilesM][2];
  bool w_ok[kTilesM][2];
  const float* w_scale_row[2];
  auto set_weight_rows = [&](int32_t expert) {
    const uint8_t* w_expert = params.w + int64_t(expert) * params.w_rows * k;
    const float* scale_expert = params.w_scale + int64_t(expert) * (params.w_rows / 128) * k_blocks;
    w_scale_row[0] = scale_expert + (col0 / 128) * k_blocks;
    w_scale_row[1] = scale_expert + ((kGated ? col0 + out_cols : col0) / 128) * k_blocks;
#pragma unroll
    for (int m = 0; m < kTilesM; ++m) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // gated: up row j (h = 0) and gate row I + j (h = 1) of act column j = col0 + 8 m + g;
        // else output column col0 + 16 m + 8 h + g.
        const int64_t col = kGated ? col0 + 8 * m + g : col0 + 16 * m + 8 * h + g;
        const int64_t row = kGated ? col + h * out_cols : col;
        w_ok[m][h] = col < out_cols;
        w_row[m][h] = w_expert + (w_ok[m][h] ? row : 0) * k;
      }
    }
  };
  DecodeExpertRows rows;
  const bool early = params.slot_key != nullptr;
  const bool token_rows = params.gather_rows != nullptr;  // a GEMM1: a rows are tokens
  bool weights_issued = false;  // the first chunk's first weight copies, before the wait
  if (early && token_rows) {    // GEMM1: runs while the sort does; waits at its end
    ptx::griddepcontrol_launch_dependents();
    if (!decode_cta_expert_from_keys(params.slot_key, params.num_slots, params.top_k,
                                     params.num_experts, smem, rows)) {
      if (!decode_empty_cta_leaves_now()) ptx::griddepcontrol_wait();
      return;
    }
    set_weight_rows(rows.expert);
  } else if (early) {  // GEMM2: its first weights stream while the kernel before it drains
    // (The BF16 GEMM2's prologue, line for line. A shared helper changed the SASS of 8 decode
    // kernels (-8 instructions each); merge the two once a device A/B can measure that.)
    const bool found = decode_cta_expert_from_keys<Config, false>(
        params.slot_key, params.num_slots, params.top_k, params.num_experts, smem, rows);
    if (!found && decode_empty_cta_leaves_now()) return;
    if (found) {
      set_weight_rows(rows.expert);
      decode_warp_issue_weights<Config>(w_row, w_ok, params.w, k, smem.ring[threadIdx.x / 32]);
      weights_issued = true;
    } else {
      ptx::griddepcontrol_launch_dependents();  // CTA (0, 0) has nothing to do but wait
    }
    ptx::griddepcontrol_wait();  // a (the quantised act) comes from earlier kernels
    ptx::griddepcontrol_launch_dependents();
    if (!found) return;
  } else if (!decode_cta_expert(params.expert_offsets, params.num_experts, smem, rows)) {
    return;
  } else {
    set_weight_rows(rows.expert);
  }
  const int32_t expert = rows.expert, row_begin = rows.begin, row_end = rows.end;
  const bool plain = params.epilogue.is_plain();

  // ---- mainloop over chunks of rows -------------------------------------------------------------
  for (int32_t chunk = row_begin; chunk < row_end; chunk += Config::kChunkRows) {
    const int n_active = (min(Config::kChunkRows, row_end - chunk) + 7) / 8;
    const auto a_row_of = [&](int32_t p) -> int64_t {
      if (!token_rows) return p;
      return early ? smem.early_tokens[p - row_begin] : params.gather_rows[p];
    };
    const uint8_t* b_row[kNTiles];  // a row of token 8 n + g of the chunk
    bool b_ok[kNTiles];
    // The a rows of the tokens of this lane's accumulator columns, 8 n + 2 t + v (-1: none).
    int32_t token_row[kNTiles][2];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
      const int32_t p = chunk + 8 * n + g;
      b_ok[n] = p < row_end;
      b_row[n] = params.a + (b_ok[n] ? a_row_of(p) * k : 0);
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const int32_t q = chunk + 8 * n + 2 * t + v;
        token_row[n][v] = q < row_end ? static_cast<int32_t>(a_row_of(q)) : -1;
      }
    }
    float acc[kTilesM][kNTiles][4] = {};
    const auto multiply = [&](int64_t k0, const uint4(&a)[kTilesM][2], const uint4(&b)[kNTiles]) {
      const int64_t block = k0 / 128;
      const float weight_scale[2] = {w_scale_row[0][block], w_scale_row[1][block]};
      const float* a_scale_block = params.a_scale + block * params.scale_stride;
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        if (n >= n_active) continue;
        float scale_a[2];
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          scale_a[v] = token_row[n][v] >= 0 ? a_scale_block[token_row[n][v]] : 0.0f;
        }
#pragma unroll
        for (int m = 0; m < kTilesM; ++m) {
          const uint4& lo = a[m][0];
          const uint4& hi = a[m][1];
          float unit[4];
          ptx::mma_m16n8k32_e4m3(unit, lo.x, hi.x, lo.y, hi.y, b[n].x, b[n].y);
          ptx::mma_m16n8k32_e4m3_acc(unit, lo.z, hi.z, lo.w, hi.w, b[n].z, b[n].w);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int v = 0; v < 2; ++v) {
              acc[m][n][2 * h + v] =
                  fmaf(weight_scale[h] * scale_a[v], unit[2 * h + v], acc[m][n][2 * h + v]);
            }
          }
        }
      }
    };
    if (weights_issued && chunk == row_begin) {
      decode_warp_stream<Config, true>(w_row, w_ok, b_row, b_ok, params.a, n_active, k,
                                       smem.ring[threadIdx.x / 32], multiply);
    } else {
      decode_warp_stream<Config>(w_row, w_ok, b_row, b_ok, params.a, n_active, k,
                                 smem.ring[threadIdx.x / 32], multiply);
    }
    decode_reduce_warps(acc, smem);

    // ---- epilogue: bias, activation, bf16, masked stores (warp 0) -----------------------------
    if (threadIdx.x >= 32) continue;
    const detail::GemmEpilogue& epi = params.epilogue;
    // kGeneral false: the plain epilogue (no bias; the plain SwiGLU, or the values as they are),
    // straight-line code apart from the general one's branches (as in kernels/sm90_gemm_fp8.cuh).
    const auto store = [&](auto general) {
      constexpr bool kGeneral = decltype(general)::value;
#pragma unroll
      for (int m = 0; m < kTilesM; ++m) {
#pragma unroll
        for (int h = 0; h < (kGated ? 1 : 2); ++h) {
          if (!w_ok[m][h]) continue;
          const int64_t col = kGated ? col0 + 8 * m + g : col0 + 16 * m + 8 * h + g;
          float bias = 0.0f;
          [[maybe_unused]] float gate_bias = 0.0f;  // read by the gated form only
          if constexpr (kGeneral) {
            bias = epi.bias_at(expert, col);
            if constexpr (kGated) gate_bias = epi.bias_at(expert, out_cols + col);
          }
#pragma unroll
          for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
            for (int v = 0; v < 2; ++v) {
              const int32_t p = chunk + 8 * n + 2 * t + v;
              if (p >= row_end) continue;
              float out;
              if constexpr (kGated) {  // acc[..][v]: up, acc[..][2 + v]: gate
                const float up = acc[m][n][v] + bias, gate = acc[m][n][2 + v] + gate_bias;
                if constexpr (kGeneral) {
                  out = activation::gated(epi.activation, gate, up, epi.params(expert));
                } else {
                  out = device::silu_fast(gate) * up;
                }
              } else {
                out = acc[m][n][2 * h + v] + bias;
                if constexpr (kGeneral) {
                  if (epi.has_activation) out = activation::plain(epi.activation, out);
                }
              }
              params.out[int64_t(p) * out_cols + col] = __float2bfloat16_rn(out);
            }
          }
        }
      }
    };
    if (plain) {
      store(std::false_type{});
    } else {
      store(std::true_type{});
    }
  }
  if (early && token_rows) ptx::griddepcontrol_wait();  // see the prologue
}

}  // namespace fusedmoe::kernels
