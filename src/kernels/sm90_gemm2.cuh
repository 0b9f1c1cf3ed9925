// GEMM2 of the MoE layer, grouped by expert (sm_90a); also GEMM1 of a non-gated activation.
//
//   out[p, n] = bf16( E( a[row(p), :] . w[e][n, :] ) )      fp32 accumulation
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])),
// row(p) = gather_rows[p] (or p without gather rows). GEMM2: a = act [max_rows, I], w = w2
// [E_loc, H, I], out = y [max_rows, H], E = identity (kGeneral false) or + gemm2_bias (true).
// Non-gated GEMM1: a = x [T, H] gathered, w = w1 [E_loc, I, H], out = act [max_rows, I], E =
// + gemm1_bias then the activation (kGeneral true; launch/gemm_epilogue.h).
// a is read with cp.async like GEMM1's gather; w through a 3-D tensor map.
//
// Tile: 128 rows x 256 output columns n0 = 256 n: B box 0 = w rows [n0, n0+128), box 1 = rows
// [n0+128, n0+256); rows past N are zero-filled by TMA and never stored. K tail zero-filled.
// Warp roles, registers, smem and pipeline: device/grouped_mainloop.cuh (1 producer warpgroup at
// 40 registers, 2 consumer warpgroups at 232, 4 stages x 48 KiB).
// Epilogue: per warp, 16 rows x 128 columns at a time through a 4 KiB smem staging buffer
// (stmatrix), then row-contiguous 16-byte stores masked to rows < expert end, columns < N.
// Expected limiter: tensor cores at large rows per expert; weight bandwidth at few rows.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_mainloop.cuh"
#include "launch/gemm_epilogue.h"

namespace fusedmoe::kernels {

struct Gemm2Params {
  device::GroupedOperands operands;  // A = act or x (rows maybe gathered), B = w by tensor map
  int64_t hidden_size;               // N: out row length (H for GEMM2, I for non-gated GEMM1)
  __nv_bfloat16* y;                  // out [max_rows, N]
};
// The general build's parameters. (A separate type: with the epilogue in the plain build's
// parameters too, nvcc scheduled the plain kernel differently, 1720 -> 1480 instructions; apart,
// the plain build's SASS is byte-identical to what it was before the general epilogue existed.)
struct Gemm2GeneralParams : Gemm2Params {
  detail::GemmEpilogue epilogue;
};
template <bool kGeneral>
using Gemm2ParamsOf = std::conditional_t<kGeneral, Gemm2GeneralParams, Gemm2Params>;

// The general epilogue of 128 of the tile's columns (col0 = n0 + 128 half) for one fixed kAct
// (kNone: bias only): packed[i][h] = bf16 pair of columns col0 + 8 i + 2 (lane % 4) + {0, 1}.
constexpr int kNoActivation = -1;
template <int kAct>
__device__ __forceinline__ void plain_epilogue(const float (&acc)[128], int half,
                                               const detail::GemmEpilogue& epilogue,
                                               int32_t expert, int64_t col0, int64_t num_cols,
                                               uint32_t (&packed)[16][2]) {
  const int64_t lane_col0 = col0 + 2 * (threadIdx.x % 4);
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    float bias[2];
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int64_t n = lane_col0 + 8 * i + v;
      bias[v] = n < num_cols ? epilogue.bias_at(expert, n) : 0.0f;  // past N: never stored
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float out[2];
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const float g = acc[4 * (16 * half + i) + 2 * h + v] + bias[v];
        if constexpr (kAct == kNoActivation) {
          out[v] = g;
        } else {
          out[v] = activation::plain(static_cast<Activation>(kAct), g);
        }
      }
      packed[i][h] = device::pack_bf16x2(out[0], out[1]);
    }
  }
}

// kClaimTiles: tiles claimed dynamically (device/grouped_mainloop.cuh, "the CTA's sequence").
// kGeneral: the general epilogue (bias, a non-gated activation) instead of plain rounding.
template <bool kClaimTiles, bool kGeneral>
__global__ void __launch_bounds__(device::GroupedGemmConfig::kNumThreads, 1)
    sm90_gemm2_kernel(const __grid_constant__ CUtensorMap tmap_w2,
                      const Gemm2ParamsOf<kGeneral> params) {
  using Config = device::GroupedGemmConfig;
  using device::WarpRole;

  // ---- prologue -------------------------------------------------------------------------------
  extern __shared__ uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<device::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const auto role = threadIdx.x < 128 ? WarpRole::kProducer : WarpRole::kConsumer;
  if (threadIdx.x == 0) {
    ptx::tma_prefetch_descriptor(&tmap_w2);
    device::init_barriers(smem);
  }
  __syncthreads();
  ptx::griddepcontrol_wait();  // expert_offsets and act come from earlier kernels
  const device::GroupedOperands& op = params.operands;

  if (role == WarpRole::kProducer) {
    // ---- producer ---------------------------------------------------------------------------
    ptx::setmaxnreg_dec<Config::kProducerRegs>();
    device::run_producer<kClaimTiles>(smem, op, &tmap_w2);
  } else {
    // ---- consumers' mainloop ------------------------------------------------------------------
    ptx::setmaxnreg_inc<Config::kConsumerRegs>();
    const int consumer_idx = threadIdx.x / 128 - 1;
    const device::WarpBlock block(consumer_idx);
    const bool y_aligned = reinterpret_cast<uintptr_t>(params.y) % 16 == 0;
    device::GroupedTileScheduler<Config::kBlockM> scheduler(op.expert_offsets, op.num_experts,
                                                            op.num_n_blocks);
    device::PipelineState pipe;
    device::GroupedTile tile;
    for (uint32_t count = 0; scheduler.get(device::cta_tile<kClaimTiles>(smem, count), &tile);
         ++count) {
      float acc[128];  // fragment order: acc[4 i + 2 h + v] is column n0 + col0 + 8 i + v
      device::consume_tile(smem, op, consumer_idx, pipe, acc);

      // ---- epilogue: bf16, staged through smem, masked 16-byte stores --------------------
      const int64_t n0 = int64_t(tile.n_block) * 2 * Config::kHalfN;
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // 128 of the tile's 256 columns at a time
        uint32_t packed[16][2];
        if constexpr (kGeneral) {
          const detail::GemmEpilogue& epi = params.epilogue;
          const int64_t col0 = n0 + half * Config::kHalfN;
          const int act = epi.has_activation ? static_cast<int>(epi.activation) : kNoActivation;
          switch (act) {
            case static_cast<int>(Activation::kGelu):
              plain_epilogue<static_cast<int>(Activation::kGelu)>(
                  acc, half, epi, tile.expert, col0, params.hidden_size, packed);
              break;
            case static_cast<int>(Activation::kRelu):
              plain_epilogue<static_cast<int>(Activation::kRelu)>(
                  acc, half, epi, tile.expert, col0, params.hidden_size, packed);
              break;
            case static_cast<int>(Activation::kSilu):
              plain_epilogue<static_cast<int>(Activation::kSilu)>(
                  acc, half, epi, tile.expert, col0, params.hidden_size, packed);
              break;
            case static_cast<int>(Activation::kRelu2):
              plain_epilogue<static_cast<int>(Activation::kRelu2)>(
                  acc, half, epi, tile.expert, col0, params.hidden_size, packed);
              break;
            default:  // no activation: GEMM2 with its bias
              plain_epilogue<kNoActivation>(acc, half, epi, tile.expert, col0,
                                            params.hidden_size, packed);
              break;
          }
        } else {
#pragma unroll
          for (int i = 0; i < 16; ++i) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float* v = &acc[4 * (16 * half + i) + 2 * h];
              packed[i][h] = device::pack_bf16x2(v[0], v[1]);
            }
          }
        }
        device::store_warp_block(smem.staging[block.warp_idx], packed, params.y,
                                        params.hidden_size, tile.row_begin + block.row0,
                                        tile.row_end, n0 + half * Config::kHalfN,
                                        params.hidden_size, y_aligned);
      }
    }
  }
  ptx::griddepcontrol_launch_dependents();
}

}  // namespace fusedmoe::kernels
