// GEMM2 of the MoE layer, grouped by expert (sm_90a).
//
//   y[p, h] = bf16( act[p, :] . w2[e][h, :] )      fp32 accumulation
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])).
// Shapes: act [max_rows, I] bf16 (contiguous rows, read with cp.async like GEMM1's gather, with
// the identity map); w2 [E_loc, H, I] bf16 (I contiguous) read through a 3-D tensor map;
// y [max_rows, H] bf16.
//
// Tile: 128 rows x 256 output columns n0 = 256 n: B box 0 = w2 rows [n0, n0+128), box 1 = rows
// [n0+128, n0+256); rows past H are zero-filled by TMA and never stored. K = I, tail zero-filled.
// Warp roles, registers, smem and pipeline: device/grouped_mainloop.cuh (1 producer warpgroup at
// 40 registers, 2 consumer warpgroups at 232, 4 stages x 48 KiB).
// Epilogue: per warp, 16 rows x 128 columns at a time through a 4 KiB smem staging buffer
// (stmatrix), then row-contiguous 16-byte stores masked to rows < expert end, columns < H.
// Expected limiter: tensor cores at large rows per expert; weight bandwidth at few rows.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_mainloop.cuh"

namespace fusedmoe::kernels {

struct Gemm2Params {
  device::GroupedOperands operands;  // A = act (identity rows), B = w2 by tensor map
  int64_t hidden_size;               // H: y row length
  __nv_bfloat16* y;                  // [max_rows, H]
};

// kClaimTiles: tiles claimed dynamically (device/grouped_mainloop.cuh, "the CTA's sequence").
template <bool kClaimTiles>
__global__ void __launch_bounds__(device::GroupedGemmConfig::kNumThreads, 1)
    sm90_gemm2_kernel(const __grid_constant__ CUtensorMap tmap_w2, const Gemm2Params params) {
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
#pragma unroll
        for (int i = 0; i < 16; ++i) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float* v = &acc[4 * (16 * half + i) + 2 * h];
            packed[i][h] = device::pack_bf16x2(v[0], v[1]);
          }
        }
        device::store_warp_block_16x128(smem.staging[block.warp_idx], packed, params.y,
                                        params.hidden_size, tile.row_begin + block.row0,
                                        tile.row_end, n0 + half * Config::kHalfN,
                                        params.hidden_size, y_aligned);
      }
    }
  }
  ptx::griddepcontrol_launch_dependents();
}

}  // namespace fusedmoe::kernels
