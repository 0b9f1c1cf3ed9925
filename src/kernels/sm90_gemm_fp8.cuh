// The FP8 block-scale grouped GEMMs of the MoE layer (sm_90a, docs/fp8.md), on the mainloop of
// device/grouped_mainloop_fp8.cuh:
//   kGated true  (GEMM1 + a gated activation): a = e4m3 x [T, H] gathered by gather_rows, scales
//     [H / 128, T]; w = w1 [E_loc, 2I, H]; a tile is 128 rows x one 128-column scale group of
//     the activation, run as two halves of 64 columns j0 = 64 (2 n + s) one after the other:
//     box 0 = up rows [j0, j0 + 64), box 1 = gate rows [I + j0, I + j0 + 64) (so
//     b_block_stride 64, b_box_stride I); the first half's bf16 values wait in smem, and the
//     second half's epilogue quantises the group (device/epilogue.cuh, store_warp_block_e4m3):
//     out = act as GEMM2 reads it, e4m3 codes [max_rows, I] with scales [I / 128, scale_stride].
//     (It wrote bf16 act for a separate quantiser before, which read it back: 4 bytes of traffic
//     per value where 1 is left.)
//   kGated false (GEMM2, and GEMM1 of a non-gated activation): a = e4m3 act [max_rows, I] (or x
//     gathered), w = w2 [E_loc, H, I] (or w1 [E_loc, I, H]); a tile is 128 rows x 128 columns
//     n0 = 128 n: boxes [n0, n0 + 64) and [n0 + 64, n0 + 128); out = y [max_rows, H] bf16 (or
//     act).
// Epilogue: the expert's bias and the activation of `epilogue` (plain SwiGLU / nothing when it
// is plain), rounded to bf16, staged through smem, masked 16-byte stores (device/epilogue.cuh).
// The plain epilogue is written apart from the general one, as straight-line code: with the
// general one's branches and activations inlined at every value, the consumers ran through
// ~90 KB of code per tile and waited on instruction fetch (bench/NOTES.md, "The FP8 grouped
// GEMMs' epilogue: instruction fetch").
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_mainloop_fp8.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct GemmFp8Params {
  device::Fp8Operands operands;
  int64_t out_cols;  // row length of out: I (GEMM1) or H (GEMM2)
  __nv_bfloat16* out = nullptr;  // kGated false
  detail::GemmEpilogue epilogue;
  uint8_t* out_codes = nullptr;  // kGated true: [max_rows, I] e4m3
  float* out_scales = nullptr;   // kGated true: [I / 128, out_scale_stride]
  int64_t out_scale_stride = 0;
};

// The N blocks of one scheduler tile (device::run_producer_fp8): both halves of a scale group when
// gated, so that one CTA quantises it.
template <bool kGated>
constexpr int kFp8SubTiles = kGated ? 2 : 1;
constexpr int64_t kFp8GroupCols = kFp8SubTiles<true> * device::Fp8GemmConfig::kBoxRows;
static_assert(kFp8GroupCols == 128, "a gated tile is one 128-column scale group");


// kTmaA (A not gathered): A by TMA through tmap_a (unused otherwise).
template <bool kClaimTiles, bool kGated, bool kTmaA>
__global__ void __launch_bounds__(device::Fp8GemmConfig::kNumThreads, 1)
    sm90_gemm_fp8_kernel(const __grid_constant__ CUtensorMap tmap_b,
                         const __grid_constant__ CUtensorMap tmap_a, const GemmFp8Params params) {
  using Config = device::Fp8GemmConfig;
  using device::WarpRole;

  extern __shared__ uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<device::Fp8SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const auto role = threadIdx.x < 128 ? WarpRole::kProducer : WarpRole::kConsumer;
  if (threadIdx.x == 0) {
    ptx::tma_prefetch_descriptor(&tmap_b);
    if constexpr (kTmaA) ptx::tma_prefetch_descriptor(&tmap_a);
    device::init_barriers_fp8<kTmaA>(smem);
  }
  __syncthreads();
  ptx::griddepcontrol_wait();  // expert_offsets, gather_rows and the quantised A come earlier
  const device::Fp8Operands& op = params.operands;

  if (role == WarpRole::kProducer) {
    ptx::setmaxnreg_dec<Config::kProducerRegs>();
    device::run_producer_fp8<kClaimTiles, kTmaA, kFp8SubTiles<kGated>>(smem, op, &tmap_b,
                                                                       &tmap_a);
  } else {
    ptx::setmaxnreg_inc<Config::kConsumerRegs>();
    const int consumer_idx = threadIdx.x / 128 - 1;
    const device::WarpBlock block(consumer_idx);
    const bool out_aligned = reinterpret_cast<uintptr_t>(params.out) % 16 == 0;
    const detail::GemmEpilogue& epi = params.epilogue;
    const bool plain = epi.is_plain();
    device::GroupedTileScheduler<Config::kBlockM> scheduler(op.expert_offsets, op.num_experts,
                                                            op.num_n_blocks);
    device::Fp8PipelineState pipe;
    device::GroupedTile tile;
    for (uint32_t count = 0; scheduler.get(device::cta_tile<kClaimTiles>(smem, count), &tile);
         ++count) {
#pragma unroll 1
      for (int sub = 0; sub < kFp8SubTiles<kGated>; ++sub) {
        device::GroupedTile part = tile;
        part.n_block = tile.n_block * kFp8SubTiles<kGated> + sub;
        float acc[64];
        device::consume_tile_fp8<kTmaA>(smem, op, part, consumer_idx, pipe, acc);
        const int64_t lane_col = 2 * (threadIdx.x % 4);
        if constexpr (kGated) {
          // up = acc[4 i + ..] (i < 8), gate = acc[4 (i + 8) + ..]: act columns j0 + 8 i + ...
          const int64_t inter = params.out_cols;
          const int64_t j0 = int64_t(part.n_block) * Config::kBoxRows;
          const activation::ExpertParams expert_params = epi.params(tile.expert);
          uint32_t packed[8][2];
          // kGeneral false: the plain SwiGLU, no bias; true: biases and any gated activation.
          const auto fill = [&](auto general) {
            constexpr bool kGeneral = decltype(general)::value;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              float a[2][2];
#pragma unroll
              for (int v = 0; v < 2; ++v) {
                const int64_t j = j0 + lane_col + 8 * i + v;
                const bool in_range = j < inter;
                float up_bias = 0.0f, gate_bias = 0.0f;
                if constexpr (kGeneral) {
                  up_bias = in_range ? epi.bias_at(tile.expert, j) : 0.0f;
                  gate_bias = in_range ? epi.bias_at(tile.expert, inter + j) : 0.0f;
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const float up = acc[4 * i + 2 * h + v] + up_bias;
                  const float gate = acc[4 * (i + 8) + 2 * h + v] + gate_bias;
                  if constexpr (kGeneral) {
                    a[h][v] = activation::gated(epi.activation, gate, up, expert_params);
                  } else {
                    a[h][v] = device::silu_fast(gate) * up;
                  }
                }
              }
#pragma unroll
              for (int h = 0; h < 2; ++h) packed[i][h] = device::pack_bf16x2(a[h][0], a[h][1]);
            }
          };
          if (plain) {
            fill(std::false_type{});
          } else {
            fill(std::true_type{});
          }
          if (sub == 0) {
            device::hold_half_block(smem.staging[block.warp_idx], packed);
          } else {
            uint32_t first[8][2];
            device::load_half_block(smem.staging[block.warp_idx], first);
            device::store_warp_block_e4m3(
                smem.staging[block.warp_idx], first, packed, params.out_codes, params.out_cols,
                params.out_scales + int64_t(tile.n_block) * params.out_scale_stride,
                tile.row_begin + block.row0, tile.row_end, j0 - Config::kBoxRows);
          }
        } else {
          const int64_t n0 = int64_t(tile.n_block) * Config::kBlockN;
          uint32_t packed[16][2];
          // kGeneral false: the values as they are (no bias, no activation); true: the bias and
          // the activation of a non-gated GEMM1.
          const auto fill = [&](auto general) {
            constexpr bool kGeneral = decltype(general)::value;
#pragma unroll
            for (int i = 0; i < 16; ++i) {
              float out[2][2];
#pragma unroll
              for (int v = 0; v < 2; ++v) {
                float bias = 0.0f;
                if constexpr (kGeneral) {
                  const int64_t n = n0 + lane_col + 8 * i + v;
                  bias = n < params.out_cols ? epi.bias_at(tile.expert, n) : 0.0f;
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const float g = acc[4 * i + 2 * h + v] + bias;
                  if constexpr (kGeneral) {
                    out[h][v] = epi.has_activation ? activation::plain(epi.activation, g) : g;
                  } else {
                    out[h][v] = g;
                  }
                }
              }
#pragma unroll
              for (int h = 0; h < 2; ++h) packed[i][h] = device::pack_bf16x2(out[h][0], out[h][1]);
            }
          };
          if (plain) {
            fill(std::false_type{});
          } else {
            fill(std::true_type{});
          }
          device::store_warp_block(smem.staging[block.warp_idx], packed, params.out,
                                          params.out_cols, tile.row_begin + block.row0,
                                          tile.row_end, n0, params.out_cols, out_aligned);
        }
      }
    }
  }
  ptx::griddepcontrol_launch_dependents();
}

}  // namespace fusedmoe::kernels
