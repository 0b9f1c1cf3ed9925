// GEMM1 + a gated activation of the MoE layer, grouped by expert, rows gathered from x on the fly
// (sm_90a).
//
//   g[p, :]   = x[gather_rows[p], :] . w1[e]^T           fp32 accumulation, g is [2I]
//   act[p, j] = bf16( silu(g[p, I + j]) * g[p, j] )      silu(v) = v / (1 + exp(-v)) in fp32
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])):
// the plain SwiGLU (kGeneral false). kGeneral true: the bias is added to g and the activation is
// any gated one with its per-expert parameters (launch/gemm_epilogue.h, activation.h).
// Shapes: x [T, H] bf16; gather_rows [max_rows] int32; w1 [E_loc, 2I, H] bf16 (H contiguous, rows
// [0, I) up, [I, 2I) gate) read through a 3-D tensor map; act [max_rows, I] bf16.
//
// Tile: 128 rows x 128 act columns j0 = 128 n: B box 0 = up rows [j0, j0+128), box 1 = gate rows
// [I+j0, I+j0+128); one wgmma n256 covers both, so a thread holds up[j] and gate[j] (64
// accumulators apart) and applies SwiGLU in registers. Up rows past I read gate rows and gate
// rows past 2I read zeros: both only reach columns j >= I, which are never stored.
// Warp roles, registers, smem and pipeline: device/grouped_mainloop.cuh (1 producer warpgroup at
// 40 registers, 2 consumer warpgroups at 232, 4 stages x 48 KiB).
// Epilogue: per warp, 16 rows x 128 act columns through a 4 KiB smem staging buffer (stmatrix),
// then row-contiguous 16-byte stores masked to rows < expert end, columns < I.
// Expected limiter: tensor cores at large rows per expert; weight bandwidth at few rows.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_mainloop.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct Gemm1SwigluParams {
  device::GroupedOperands operands;  // A = x (gathered), B = w1 by tensor map
  int64_t intermediate_size;         // I: act row length
  __nv_bfloat16* act;                // [max_rows, I]
};
// The general build's parameters, a type of their own so that the plain build's code stays as
// it was (see Gemm2GeneralParams in sm90_gemm2.cuh).
struct Gemm1SwigluGeneralParams : Gemm1SwigluParams {
  detail::GemmEpilogue epilogue;
};
template <bool kGeneral>
using Gemm1SwigluParamsOf =
    std::conditional_t<kGeneral, Gemm1SwigluGeneralParams, Gemm1SwigluParams>;


// The general epilogue's activation for one fixed kAct (the switch in activation::gated folds):
// packed[i][h] = bf16 pair of act columns j0 + 8 i + 2 (lane % 4) + {0, 1} in fragment row
// lane / 4 + 8 h, from acc (up: [0, 64), gate: [64, 128)) plus the expert's biases.
template <Activation kAct>
__device__ __forceinline__ void gated_epilogue(const float (&acc)[128],
                                               const detail::GemmEpilogue& epilogue,
                                               int32_t expert, int64_t j0, int64_t inter,
                                               uint32_t (&packed)[16][2]) {
  const activation::ExpertParams params = epilogue.params(expert);
  const int64_t col0 = j0 + 2 * (threadIdx.x % 4);
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    float up_bias[2], gate_bias[2];
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int64_t j = col0 + 8 * i + v;
      const bool in_range = j < inter;  // columns past I are computed but never stored
      up_bias[v] = in_range ? epilogue.bias_at(expert, j) : 0.0f;
      gate_bias[v] = in_range ? epilogue.bias_at(expert, inter + j) : 0.0f;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float a[2];
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const float up = acc[4 * i + 2 * h + v] + up_bias[v];
        const float gate = acc[64 + 4 * i + 2 * h + v] + gate_bias[v];
        a[v] = activation::gated(kAct, gate, up, params);
      }
      packed[i][h] = device::pack_bf16x2(a[0], a[1]);
    }
  }
}

// kClaimTiles: tiles claimed dynamically (device/grouped_mainloop.cuh, "the CTA's sequence").
// kGeneral: the general epilogue (bias, any gated activation) instead of the plain SwiGLU.
template <bool kClaimTiles, bool kGeneral>
__global__ void __launch_bounds__(device::GroupedGemmConfig::kNumThreads, 1)
    sm90_gemm1_swiglu_kernel(const __grid_constant__ CUtensorMap tmap_w1,
                             const Gemm1SwigluParamsOf<kGeneral> params) {
  using Config = device::GroupedGemmConfig;
  using device::WarpRole;

  // ---- prologue -------------------------------------------------------------------------------
  extern __shared__ uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<device::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const auto role = threadIdx.x < 128 ? WarpRole::kProducer : WarpRole::kConsumer;
  if (threadIdx.x == 0) {
    ptx::tma_prefetch_descriptor(&tmap_w1);
    device::init_barriers(smem);
  }
  __syncthreads();
  ptx::griddepcontrol_wait();  // expert_offsets, gather_rows and x come from earlier kernels
  const device::GroupedOperands& op = params.operands;

  if (role == WarpRole::kProducer) {
    // ---- producer ---------------------------------------------------------------------------
    ptx::setmaxnreg_dec<Config::kProducerRegs>();
    device::run_producer<kClaimTiles>(smem, op, &tmap_w1);
  } else {
    // ---- consumers' mainloop ------------------------------------------------------------------
    ptx::setmaxnreg_inc<Config::kConsumerRegs>();
    const int consumer_idx = threadIdx.x / 128 - 1;
    const device::WarpBlock block(consumer_idx);
    const bool act_aligned = reinterpret_cast<uintptr_t>(params.act) % 16 == 0;
    device::GroupedTileScheduler<Config::kBlockM> scheduler(op.expert_offsets, op.num_experts,
                                                            op.num_n_blocks);
    device::PipelineState pipe;
    device::GroupedTile tile;
    for (uint32_t count = 0; scheduler.get(device::cta_tile<kClaimTiles>(smem, count), &tile);
         ++count) {
      float acc[128];  // [0, 64): up columns of the tile, [64, 128): gate, same fragment layout
      device::consume_tile(smem, op, consumer_idx, pipe, acc);

      // ---- epilogue: the activation, bf16, staged through smem, masked 16-byte stores -----
      uint32_t packed[16][2];
      if constexpr (kGeneral) {
        const detail::GemmEpilogue& epi = params.epilogue;
        const int64_t j0 = int64_t(tile.n_block) * Config::kHalfN;
        const int64_t inter = params.intermediate_size;
        switch (epi.activation) {
          case Activation::kSwiglu:
            gated_epilogue<Activation::kSwiglu>(acc, epi, tile.expert, j0, inter, packed);
            break;
          case Activation::kGeglu:
            gated_epilogue<Activation::kGeglu>(acc, epi, tile.expert, j0, inter, packed);
            break;
          case Activation::kSwigluStep:
            gated_epilogue<Activation::kSwigluStep>(acc, epi, tile.expert, j0, inter, packed);
            break;
          default:  // GegluTanh: the host launches this kernel for gated activations only
            gated_epilogue<Activation::kGegluTanh>(acc, epi, tile.expert, j0, inter, packed);
            break;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float* up = &acc[4 * i + 2 * h];
            const float* gate = &acc[64 + 4 * i + 2 * h];
            packed[i][h] = device::pack_bf16x2(device::silu_fast(gate[0]) * up[0],
                                                 device::silu_fast(gate[1]) * up[1]);
          }
        }
      }
      device::store_warp_block(smem.staging[block.warp_idx], packed, params.act,
                                      params.intermediate_size, tile.row_begin + block.row0,
                                      tile.row_end, int64_t(tile.n_block) * Config::kHalfN,
                                      params.intermediate_size, act_aligned);
    }
  }
  ptx::griddepcontrol_launch_dependents();
}

}  // namespace fusedmoe::kernels
