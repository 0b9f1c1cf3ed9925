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
// Epilogue: masked bf16x2 stores straight from the fragments (rows < expert end, columns < H).
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

// kClusterM: 1, or 2 CTAs on adjacent M blocks sharing B by multicast (launched as a cluster).
template <int kClusterM>
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
    device::init_barriers<kClusterM>(smem);
  }
  if constexpr (kClusterM == 1) {
    __syncthreads();
  } else {
    ptx::cluster_sync();  // the peer's barriers are ready before any multicast lands in them
  }
  ptx::griddepcontrol_wait();  // expert_offsets and act come from earlier kernels
  const device::GroupedOperands& op = params.operands;

  if (role == WarpRole::kProducer) {
    // ---- producer ---------------------------------------------------------------------------
    ptx::setmaxnreg_dec<Config::kProducerRegs>();
    device::run_producer<kClusterM>(smem, op, &tmap_w2);
  } else {
    // ---- consumers' mainloop ------------------------------------------------------------------
    ptx::setmaxnreg_inc<Config::kConsumerRegs>();
    const int consumer_idx = threadIdx.x / 128 - 1;
    const device::FragmentCoords coords(consumer_idx);
    const device::ClusterCoords<kClusterM> cluster;
    device::GroupedTileScheduler<Config::kBlockM, kClusterM> scheduler(
        op.expert_offsets, op.num_experts, op.num_n_blocks, cluster.rank);
    device::PipelineState pipe;
    device::GroupedTile tile;
    for (int32_t tile_idx = cluster.first_tile; scheduler.get(tile_idx, &tile);
         tile_idx += cluster.tile_stride) {
      float acc[128];  // fragment order: acc[4 i + 2 h + v] is column n0 + col0 + 8 i + v
      device::consume_tile<kClusterM>(smem, op, consumer_idx, pipe, acc);

      // ---- epilogue: bf16, masked stores ----------------------------------------------------
      const int64_t n0 = int64_t(tile.n_block) * 2 * Config::kHalfN;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int32_t p = tile.row_begin + coords.row0 + 8 * h;
        if (p >= tile.row_end) continue;
        __nv_bfloat16* y_row = params.y + int64_t(p) * params.hidden_size + n0;
#pragma unroll
        for (int i = 0; i < 2 * Config::kHalfN / 8; ++i) {
          const int col = coords.col0 + 8 * i;
          if (n0 + col >= params.hidden_size) continue;  // H % 8 == 0: pairs never straddle
          *reinterpret_cast<__nv_bfloat162*>(y_row + col) =
              __floats2bfloat162_rn(acc[4 * i + 2 * h], acc[4 * i + 2 * h + 1]);
        }
      }
    }
  }
  ptx::griddepcontrol_launch_dependents();
  // No CTA leaves while its peer may still multicast into its smem or arrive on its barriers.
  if constexpr (kClusterM > 1) ptx::cluster_sync();
}

}  // namespace fusedmoe::kernels
