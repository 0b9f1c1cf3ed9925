// The warp-specialised mainloop of the FP8 block-scale grouped GEMMs (docs/fp8.md), the FP8
// sibling of device/grouped_mainloop.cuh: same roles, registers, tile scheduler and tile ring.
//
// Tile: 128 permuted rows (A, e4m3) x two B boxes of 64 rows (e4m3), K in blocks of 128: a
// 128-byte swizzle row holds 128 e4m3 values, so one K block is exactly one scale block.
//   producer warpgroup: all 128 threads gather A rows with 16-byte cp.async (the BF16 gather's
//     byte geometry); thread 0 loads both B boxes by TMA.
//   consumer warpgroups 1, 2: rows [64 c, 64 c + 64); per K block four wgmma m64n128k32 (both
//     boxes back to back) into a temporary, then, once they retired, the promotion
//       acc = fma(a_scale[row] * b_scale[box], tmp, acc)
//     (the reference's block-promoted sum, src/reference/moe.cc fp8_dot), in ascending K
//     blocks. Two temporaries alternate: block k + 1's wgmmas are issued before block k's
//     promotion (wgmma wait_group 1), so the tensor pipe has work while the promotion runs.
//     Both scales are loaded from global memory by the consumer itself (a_scale group-major
//     [K / 128, scale_stride]), two K blocks before the block's promotion, which alone uses
//     them. Staging them in smem would need every reading lane to arrive on the empty barrier
//     before the producer may overwrite them. The accumulators and the two temporaries take 192
//     of the consumers' 232 registers, hence N = 128 per tile instead of the BF16 path's 256.
// Shared memory per stage: A 16 KiB + B 2 x 8 KiB; 5 stages.
#pragma once

#include <cstdint>

#include <cuda.h>

#include "device/epilogue.cuh"
#include "device/grouped_mainloop.cuh"
#include "device/grouped_tile_scheduler.cuh"
#include "device/ptx.cuh"

namespace fusedmoe::device {

struct Fp8GemmConfig {
  static constexpr int kBlockM = GroupedGemmConfig::kBlockM;  // 128
  static constexpr int kBlockK = 128;                          // e4m3 values = bytes per row
  static constexpr int kBoxRows = 64;
  static constexpr int kBlockN = 2 * kBoxRows;
  static constexpr int kStages = 5;
  static constexpr int kNumConsumerWarpgroups = GroupedGemmConfig::kNumConsumerWarpgroups;
  static constexpr int kNumThreads = GroupedGemmConfig::kNumThreads;
  static constexpr int kProducerRegs = GroupedGemmConfig::kProducerRegs;
  static constexpr int kConsumerRegs = GroupedGemmConfig::kConsumerRegs;
  static constexpr int kChunksPerRow = kBlockK / 16;
  static constexpr int kRowsPerProducerThread = kBlockM * kChunksPerRow / 128;
  static constexpr int kRowStridePerProducerThread = 128 / kChunksPerRow;
  static constexpr uint32_t kABytes = kBlockM * kBlockK;
  static constexpr uint32_t kBBoxBytes = kBoxRows * kBlockK;
  static constexpr uint32_t kFullArrivals = 128 + 1;  // gathered A: cp.async by 128 threads
  static constexpr uint32_t kFullArrivalsTmaA = 1;    // contiguous A: by TMA, like B
  static constexpr uint32_t kEmptyArrivals = 4 * kNumConsumerWarpgroups;

  static_assert(kBlockK == 128, "one K block must be one 128-byte swizzle row and one scale block");
  static_assert(kBlockN == 128, "the wgmma wrapper is m64n128k32 over both B boxes");
  static_assert(kRowStridePerProducerThread % 8 == 0,
                "a producer thread's rows must share one swizzle phase (r % 8)");
  static_assert(kABytes % 1024 == 0 && kBBoxBytes % 1024 == 0,
                "swizzle atoms need 1024-byte aligned buffers");
};

struct Fp8SharedStorage {
  using Config = Fp8GemmConfig;
  alignas(1024) uint8_t a[Config::kStages][Config::kBlockM * Config::kBlockK];
  alignas(1024) uint8_t b[Config::kStages][2][Config::kBoxRows * Config::kBlockK];
  alignas(128) uint8_t staging[4 * Config::kNumConsumerWarpgroups][kStagingBytesPerWarp];
  alignas(8) uint64_t full[Config::kStages];
  alignas(8) uint64_t empty[Config::kStages];
  int32_t tile_index[GroupedGemmConfig::kTileSlots];
  alignas(8) uint64_t tile_full[GroupedGemmConfig::kTileSlots];
  alignas(8) uint64_t tile_empty[GroupedGemmConfig::kTileSlots];
};

// What the FP8 mainloop reads. A is [*, k] e4m3 row-major (row p of the tile is a[gather(p)])
// with scales a_scale[k_block * scale_stride + gather(p)]; B is the 3-D uint8 tensor map
// [E_loc, rows, k] with block scales b_scale [E_loc, rows / 128, k / 128]; box h of N block n
// starts at B row n * b_block_stride + h * b_box_stride.
struct Fp8Operands {
  const int32_t* expert_offsets;
  int32_t num_experts;
  int32_t num_n_blocks;
  int32_t num_k_blocks;
  int64_t k;
  const uint8_t* a;
  const float* a_scale;
  int64_t scale_stride;
  const int32_t* gather_rows;  // nullptr: row p of A is p
  const float* b_scale;
  int32_t b_scale_rows;  // rows / 128 of B per expert
  int32_t b_block_stride;
  int32_t b_box_stride;
  int32_t* tile_counters;  // as GroupedOperands::tile_counters
};

using Fp8PipelineState = PipelineStateOf<Fp8GemmConfig::kStages>;

template <bool kTmaA>
__device__ inline void init_barriers_fp8(Fp8SharedStorage& smem) {
  using Config = Fp8GemmConfig;
  for (int s = 0; s < Config::kStages; ++s) {
    ptx::mbarrier_init(&smem.full[s], kTmaA ? Config::kFullArrivalsTmaA : Config::kFullArrivals);
    ptx::mbarrier_init(&smem.empty[s], Config::kEmptyArrivals);
  }
  for (int s = 0; s < GroupedGemmConfig::kTileSlots; ++s) {
    ptx::mbarrier_init(&smem.tile_full[s], 1);
    ptx::mbarrier_init(&smem.tile_empty[s], GroupedGemmConfig::kTileReaders);
  }
  ptx::fence_barrier_init();
}

// ---- producer warpgroup -----------------------------------------------------------------------
// kTmaA (A not gathered: row p of A is p): thread 0 also loads the tile's 128 A rows by TMA
// (tmap_a: [1, rows, k] bytes, rows past the tensor read as zero), and the other threads only
// follow the tile sequence.
// kSubTiles: a scheduler tile is that many N blocks, n_block * kSubTiles + sub, run one after the
// other on the same rows (the gated GEMM1's two 64-column halves of a 128-column scale group).
template <bool kClaimTiles, bool kTmaA, int kSubTiles>
__device__ inline void run_producer_fp8(Fp8SharedStorage& smem, const Fp8Operands& op,
                                        const CUtensorMap* tmap_b, const CUtensorMap* tmap_a) {
  using Config = Fp8GemmConfig;
  const int thread_idx = threadIdx.x % 128;
  const int chunk = thread_idx % Config::kChunksPerRow;
  const int first_row = thread_idx / Config::kChunksPerRow;  // rows first_row + 16 i
  const int swizzled_chunk_bytes = (chunk ^ (first_row % 8)) * 16;

  GroupedTileScheduler<Config::kBlockM> scheduler(op.expert_offsets, op.num_experts,
                                                  op.num_n_blocks);
  Fp8PipelineState pipe;
  GroupedTile tile;
  for (uint32_t round = 0;; ++round) {
    if (kClaimTiles && thread_idx == 0) publish_tile(smem, op.tile_counters, round);
    if (!scheduler.get(cta_tile<kClaimTiles>(smem, round), &tile)) break;
    if constexpr (kTmaA) {
      if (thread_idx >= 32) continue;  // warp 0 alone walks the ring, thread 0 issues
#pragma unroll 1
      for (int sub = 0; sub < kSubTiles; ++sub) {
        const int32_t b_row = (tile.n_block * kSubTiles + sub) * op.b_block_stride;
        for (int32_t k_block = 0; k_block < op.num_k_blocks; ++k_block) {
          ptx::mbarrier_wait(&smem.empty[pipe.stage], pipe.phase ^ 1);
          if (thread_idx == 0) {
            uint64_t* full = &smem.full[pipe.stage];
            const int32_t k0 = k_block * Config::kBlockK;
            ptx::mbarrier_arrive_expect_tx(full, Config::kABytes + 2 * Config::kBBoxBytes);
            ptx::tma_load_3d(smem.a[pipe.stage], tmap_a, full, k0, tile.row_begin, 0);
            ptx::tma_load_3d(smem.b[pipe.stage][0], tmap_b, full, k0, b_row, tile.expert);
            ptx::tma_load_3d(smem.b[pipe.stage][1], tmap_b, full, k0, b_row + op.b_box_stride,
                             tile.expert);
          }
          pipe.advance();
        }
      }
      continue;
    }
    const uint8_t* src[Config::kRowsPerProducerThread];  // row pointers at byte chunk * 16
    uint32_t row_valid = 0;
#pragma unroll
    for (int i = 0; i < Config::kRowsPerProducerThread; ++i) {
      const int32_t p = tile.row_begin + first_row + i * Config::kRowStridePerProducerThread;
      src[i] = op.a;
      if (p < tile.row_end) {
        const int64_t row = op.gather_rows != nullptr ? op.gather_rows[p] : p;
        src[i] = op.a + row * op.k + chunk * 16;
        row_valid |= 1u << i;
      }
    }
#pragma unroll 1
    for (int sub = 0; sub < kSubTiles; ++sub) {
      const int32_t b_row = (tile.n_block * kSubTiles + sub) * op.b_block_stride;
      for (int32_t k_block = 0; k_block < op.num_k_blocks; ++k_block) {
        const int32_t k0 = k_block * Config::kBlockK;
        uint64_t* full = producer_load_b(smem, pipe, tmap_b, Config::kBBoxBytes, k0, b_row,
                                         op.b_box_stride, tile.expert, thread_idx == 0);
        uint8_t* a_stage = smem.a[pipe.stage];
#pragma unroll
        for (int i = 0; i < Config::kRowsPerProducerThread; ++i) {
          const int r = first_row + i * Config::kRowStridePerProducerThread;
          const bool valid = (row_valid >> i) & 1u;  // K is a multiple of 128: no K tail
          ptx::cp_async_16_zfill(a_stage + r * 128 + swizzled_chunk_bytes,
                                 valid ? src[i] + k0 : op.a, valid);
        }
        ptx::cp_async_mbarrier_arrive_noinc(full);
        pipe.advance();
      }
    }
  }
  if (kClaimTiles && thread_idx == 0) finish_tiles(op.tile_counters);
}

// ---- consumer warpgroups: mainloop of one tile -------------------------------------------------
// acc[4 i + 2 h + v]: row 64 c + 16 warp + lane / 4 + 8 h of the tile, column 8 i + 2 (lane % 4)
// + v (box 0 for i < 8, box 1 for i >= 8), promoted K block by K block.
// The consumers are the critical path here (ncu: their wgmmas have retired before they wait for
// them; bench/NOTES.md, "What the tensor pipe sustains, and who waits in the FP8 grouped GEMMs"),
// so a K block's own work is kept short: no scale load stands between a promotion and the next
// wgmmas, the scale pointers advance instead of being recomputed from k_block, and the wgmma
// descriptors change only in their low word.
template <bool kTmaA>
__device__ inline void consume_tile_fp8(Fp8SharedStorage& smem, const Fp8Operands& op,
                                        const GroupedTile& tile, int consumer_idx,
                                        Fp8PipelineState& pipe, float (&acc)[64]) {
  using Config = Fp8GemmConfig;
  const bool release_lane = threadIdx.x % 32 == 0;
  const int row0 = consumer_idx * 64 + ((threadIdx.x % 128) / 32) * 16 + (threadIdx.x % 32) / 4;
  // Each box lies in one 128-row scale block of B.
  const int32_t b_row = tile.n_block * op.b_block_stride;
  const float* scale_b0 = op.b_scale + (int64_t(tile.expert) * op.b_scale_rows + b_row / 128) *
                                           op.num_k_blocks;
  const float* scale_b1 =
      op.b_scale + (int64_t(tile.expert) * op.b_scale_rows + (b_row + op.b_box_stride) / 128) *
                       op.num_k_blocks;
  // This thread's two rows' scales, K block by K block (rows past the tile's end: 0; their outputs
  // are not stored).
  const float* scale_a[2];
  bool row_ok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int32_t p = tile.row_begin + row0 + 8 * h;
    row_ok[h] = p < tile.row_end;
    scale_a[h] = op.a_scale + (row_ok[h] ? (op.gather_rows != nullptr ? op.gather_rows[p] : p) : 0);
  }
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  // Descriptor words of stage 0 (this consumer's 64 A rows, both B boxes); a stage adds its size,
  // a k step of 32 values 32 bytes (2 in the encoded address, which stays below 2^14: no carry).
  const uint32_t desc_a0 =
      ptx::smem_desc_lo_k_major_sw128(smem.a[0]) + consumer_idx * (64 * 128 >> 4);
  const uint32_t desc_b0 = ptx::smem_desc_lo_k_major_sw128(smem.b[0][0]);
  constexpr uint32_t kAStage = sizeof(smem.a[0]) >> 4, kBStage = sizeof(smem.b[0]) >> 4;
  // Two temporaries: K block k's wgmmas run into one while block k - 1's, retired, is promoted
  // from the other (wait_group<1>), so the tensor pipe does not idle during the promotion.
  float tmp0[64], tmp1[64];
  // Raw scales (rows h, boxes) of block k in set k % 2, loaded two blocks ahead: when block k is
  // promoted, the loads of block k + 2 go into its set, and only block k + 2's promotion forms
  // their products. (Loaded one block ahead, the products still waited for them: ptxas moves the
  // products up to the loads' side of the next wgmmas.)
  float sa0[2], sb0[2], sa1[2], sb1[2];
  int32_t stage0 = 0, stage1 = 0;
  const int32_t n = op.num_k_blocks;  // >= 1
  int32_t next_load = 0;  // the block whose scales are loaded next, in ascending order
  // The B scales are loaded under row_ok[0], a per-thread predicate, though every lane of a warp
  // reads the same two values: loaded unconditionally, they are warp-uniform, and ptxas moved them
  // into uniform registers right after their loads (R2UR), which waited for the loads before the
  // tile's first wgmma. A thread whose row 0 is past the tile's end has no row in it (row 1 = row
  // 0 + 8), its a scales are 0 and so are its products, whatever its b scales.
  auto load_scales = [&](float (&sa)[2], float (&sb)[2]) {
    if (next_load < n) {
      sb[0] = row_ok[0] ? *scale_b0 : 0.0f;
      sb[1] = row_ok[0] ? *scale_b1 : 0.0f;
      ++scale_b0;
      ++scale_b1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        sa[h] = row_ok[h] ? *scale_a[h] : 0.0f;
        scale_a[h] += op.scale_stride;
      }
    }
    ++next_load;
  };
  // Waits for the next stage and issues its four wgmmas into tmp.
  auto issue = [&](float (&tmp)[64], int32_t& stage) {
    ptx::mbarrier_wait(&smem.full[pipe.stage], pipe.phase);
    // A arrived by cp.async (generic proxy), and wgmma reads async; TMA writes are async already
    if constexpr (!kTmaA) ptx::fence_proxy_async_smem();
    const uint32_t a_lo = desc_a0 + pipe.stage * kAStage;
    const uint32_t b_lo = desc_b0 + pipe.stage * kBStage;
    ptx::fence_operands(tmp);
    ptx::wgmma_fence();
#pragma unroll
    for (int k = 0; k < Config::kBlockK / 32; ++k) {
      ptx::wgmma_m64n128k32_e4m3(tmp, ptx::smem_desc_k_major_sw128(a_lo + 2 * k),
                                 ptx::smem_desc_k_major_sw128(b_lo + 2 * k), k > 0 ? 1u : 0u);
    }
    ptx::wgmma_commit_group();
    stage = pipe.stage;
    pipe.advance();
  };
  // Releases a retired block's stage, adds its temporary into acc and loads the scales of the
  // block two ahead into its set.
  auto promote = [&](float (&tmp)[64], float (&sa)[2], float (&sb)[2], int32_t stage) {
    ptx::fence_operands(tmp);
    __syncwarp();
    if (release_lane) ptx::mbarrier_arrive(&smem.empty[stage]);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float s = sa[h] * sb[i / 8];  // a_scale[row h] * b_scale[box]
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          acc[4 * i + 2 * h + v] = fmaf(s, tmp[4 * i + 2 * h + v], acc[4 * i + 2 * h + v]);
        }
      }
    }
    load_scales(sa, sb);
  };
  // Block k runs into tmp0 for even k, tmp1 for odd k.
  load_scales(sa0, sb0);
  load_scales(sa1, sb1);
  issue(tmp0, stage0);
  int32_t k_block = 1;
  for (; k_block + 1 < n; k_block += 2) {
    issue(tmp1, stage1);
    ptx::wgmma_wait_group<1>();
    promote(tmp0, sa0, sb0, stage0);
    issue(tmp0, stage0);
    ptx::wgmma_wait_group<1>();
    promote(tmp1, sa1, sb1, stage1);
  }
  if (k_block < n) {  // n even: block n - 1 (odd) into tmp1
    issue(tmp1, stage1);
    ptx::wgmma_wait_group<1>();
    promote(tmp0, sa0, sb0, stage0);
    ptx::wgmma_wait_group<0>();
    promote(tmp1, sa1, sb1, stage1);
  } else {
    ptx::wgmma_wait_group<0>();
    promote(tmp0, sa0, sb0, stage0);
  }
}

}  // namespace fusedmoe::device
