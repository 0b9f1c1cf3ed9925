// GEMM1 + SwiGLU of the MoE layer, grouped by expert, rows gathered from x on the fly (sm_90a).
//
//   g[p, :]   = x[gather_rows[p], :] . w1[e]^T           fp32 accumulation, g is [2I]
//   act[p, j] = bf16( silu(g[p, I + j]) * g[p, j] )      silu(v) = v / (1 + exp(-v)) in fp32
// for every permuted row p of local expert e (p in [expert_offsets[e], expert_offsets[e+1])).
// Shapes: x [T, H] bf16; gather_rows [max_rows] int32; w1 [E_loc, 2I, H] bf16 (H contiguous, rows
// [0, I) up, [I, 2I) gate) read through a 3-D tensor map; act [max_rows, I] bf16.
//
// Tile: 128 rows x 128 act columns j0 = 128 n: B box 0 = up rows [j0, j0+128), box 1 = gate rows
// [I+j0, I+j0+128); one wgmma n256 covers both, so a thread holds up[j] and gate[j] (64
// accumulators apart) and applies SwiGLU in registers. Up rows past I read gate rows and gate rows past 2I read zeros:
// both only reach columns j >= I, which are never stored.
// Warp roles, registers, smem and pipeline: device/grouped_mainloop.cuh (1 producer warpgroup at
// 40 registers, 2 consumer warpgroups at 232, 4 stages x 48 KiB).
// Epilogue: masked bf16x2 stores straight from the fragments (rows < expert end, columns < I).
// Expected limiter: tensor cores at large rows per expert; weight bandwidth at few rows.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_mainloop.cuh"

namespace fusedmoe::kernels {

struct Gemm1SwigluParams {
  device::GroupedOperands operands;  // A = x (gathered), B = w1 by tensor map
  int64_t intermediate_size;         // I: act row length
  __nv_bfloat16* act;                // [max_rows, I]
};

// silu(v) = v / (1 + exp(-v)) with the fast exp and divide: 4 instructions instead of ~40 for
// expf and IEEE division, which cost ~2 us of issue per 128 x 256 tile (~4 % at H = 4096); the
// difference (a few fp32 ulp) vanishes in the bf16 rounding of act. v < -88: exp = inf, result -0.
__device__ __forceinline__ float silu(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

// kClusterM: 1, or 2 CTAs on adjacent M blocks sharing B by multicast (launched as a cluster).
template <int kClusterM>
__global__ void __launch_bounds__(device::GroupedGemmConfig::kNumThreads, 1)
    sm90_gemm1_swiglu_kernel(const __grid_constant__ CUtensorMap tmap_w1,
                             const Gemm1SwigluParams params) {
  using Config = device::GroupedGemmConfig;
  using device::WarpRole;

  // ---- prologue -------------------------------------------------------------------------------
  extern __shared__ uint8_t smem_raw[];
  auto& smem = *reinterpret_cast<device::SharedStorage*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const auto role = threadIdx.x < 128 ? WarpRole::kProducer : WarpRole::kConsumer;
  if (threadIdx.x == 0) {
    ptx::tma_prefetch_descriptor(&tmap_w1);
    device::init_barriers<kClusterM>(smem);
  }
  if constexpr (kClusterM == 1) {
    __syncthreads();
  } else {
    ptx::cluster_sync();  // the peer's barriers are ready before any multicast lands in them
  }
  ptx::griddepcontrol_wait();  // expert_offsets, gather_rows and x come from earlier kernels
  const device::GroupedOperands& op = params.operands;

  if (role == WarpRole::kProducer) {
    // ---- producer ---------------------------------------------------------------------------
    ptx::setmaxnreg_dec<Config::kProducerRegs>();
    device::run_producer<kClusterM>(smem, op, &tmap_w1);
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
      float acc[128];  // [0, 64): up columns of the tile, [64, 128): gate, same fragment layout
      device::consume_tile<kClusterM>(smem, op, consumer_idx, pipe, acc);

      // ---- epilogue: SwiGLU, bf16, masked stores --------------------------------------------
      const int64_t j0 = int64_t(tile.n_block) * Config::kHalfN;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int32_t p = tile.row_begin + coords.row0 + 8 * h;
        if (p >= tile.row_end) continue;
        __nv_bfloat16* act_row = params.act + int64_t(p) * params.intermediate_size + j0;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const int col = coords.col0 + 8 * i;
          if (j0 + col >= params.intermediate_size) continue;  // I % 8 == 0: pairs never straddle
          const float* up = &acc[4 * i + 2 * h];
          const float* gate = &acc[64 + 4 * i + 2 * h];
          const float a0 = silu(gate[0]) * up[0];
          const float a1 = silu(gate[1]) * up[1];
          *reinterpret_cast<__nv_bfloat162*>(act_row + col) = __floats2bfloat162_rn(a0, a1);
        }
      }
    }
  }
  ptx::griddepcontrol_launch_dependents();
  // No CTA leaves while its peer may still multicast into its smem or arrive on its barriers.
  if constexpr (kClusterM > 1) ptx::cluster_sync();
}

}  // namespace fusedmoe::kernels
