// The warp-specialised mainloop shared by both grouped GEMMs (sm90_gemm1_swiglu.cuh and
// sm90_gemm2.cuh differ only in their operands and epilogues).
//
// Tile: 128 permuted rows (A) x two B boxes of 128 rows, K in blocks of 64 (one 128-byte swizzle
// row). Warp roles (384 threads, one CTA per SM):
//   warpgroup 0  producer, 40 registers: all 128 threads gather A rows with 16-byte cp.async into
//                the swizzled layout (zero fill past K or past the expert); thread 0 also loads
//                the B boxes by TMA: both when alone, or, in a cluster of 2 CTAs (adjacent M
//                blocks, same expert and N block), box r only, multicast to both CTAs, which
//                halves the B traffic from L2. Each stage completes on its "full" mbarrier
//                (128 cp.async .noinc arrivals + 1 expect_tx arrival for both boxes).
//   warpgroups 1, 2  consumers, 232 registers: rows [64c, 64c+64) of the tile; per k16 step one
//                wgmma m64n256k16 over both B boxes (back to back in smem) into acc[128], so a
//                thread holds column n of box 0 (acc[4 i ..]) and of box 1 (acc[64 + 4 i ..])
//                together. One wgmma group stays in flight; a stage is released once the group
//                reading it has retired: lane r of each consumer warp arrives on "empty" of
//                CTA r of the cluster (8 * cluster arrivals), since B of both came from both.
// Shared memory (per stage 48 KiB, 4 stages = 192 KiB + barriers):
//   a  (BLOCK_M=128, BLOCK_K=64) bf16, 16 KiB, 128B swizzle: row r at r*128, 16-byte chunk c at
//      ((c ^ (r % 8)) * 16)
//   b  (2, HALF_N=128, BLOCK_K=64) bf16, 2 x 16 KiB, the same swizzle (written by TMA)
// Expected limiter: tensor cores for >= a few hundred rows per expert, B bandwidth below.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/grouped_tile_scheduler.cuh"
#include "device/ptx.cuh"
#include "heuristics.h"

namespace fusedmoe::device {

struct GroupedGemmConfig {
  static constexpr int kBlockM = heuristics::kGroupedBlockM;
  static constexpr int kHalfN = heuristics::kGroupedHalfN;
  static constexpr int kBlockK = heuristics::kGroupedBlockK;
  static constexpr int kStages = heuristics::kGroupedStages;
  static constexpr int kNumConsumerWarpgroups = 2;
  static constexpr int kNumThreads = 128 * (1 + kNumConsumerWarpgroups);
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static constexpr int kRowsPerConsumer = kBlockM / kNumConsumerWarpgroups;
  static constexpr int kChunksPerRow = kBlockK * 2 / 16;  // 16-byte chunks in a 128-byte row
  static constexpr int kRowsPerProducerThread = kBlockM * kChunksPerRow / 128;
  static constexpr int kRowStridePerProducerThread = 128 / kChunksPerRow;
  static constexpr uint32_t kABytes = kBlockM * kBlockK * 2;
  static constexpr uint32_t kBBoxBytes = kHalfN * kBlockK * 2;
  static constexpr uint32_t kFullArrivals = 128 + 1;  // cp.async .noinc per thread + expect_tx
  static constexpr int kMaxClusterM = 2;  // CTAs sharing B by multicast (one B box each)
  static constexpr uint32_t kEmptyArrivalsPerCta = 4 * kNumConsumerWarpgroups;  // lane 0 per warp

  static_assert(kBlockK * 2 == 128, "one K block must be exactly one 128-byte swizzle row");
  static_assert(kRowsPerConsumer == 64, "each consumer warpgroup owns one m64 wgmma row block");
  static_assert(2 * kHalfN == 256, "the wgmma wrapper is m64n256k16 over both B boxes");
  static_assert(kRowStridePerProducerThread % 8 == 0,
                "a producer thread's rows must share one swizzle phase (r % 8)");
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kNumConsumerWarpgroups <= 65536,
                "register budgets exceed the register file");
  static_assert(kABytes % 1024 == 0 && kBBoxBytes % 1024 == 0,
                "swizzle atoms need 1024-byte aligned buffers");
  static_assert(kMaxClusterM == 2, "a cluster splits the two B boxes one per CTA");
};

// Where this CTA stands in its cluster of kClusterM CTAs along M, and which tiles it visits.
template <int kClusterM>
struct ClusterCoords {
  static_assert(kClusterM == 1 || kClusterM == GroupedGemmConfig::kMaxClusterM,
                "clusters of 1 or 2 CTAs");
  int32_t rank;
  int32_t first_tile;  // cluster index
  int32_t tile_stride;  // number of clusters
  __device__ ClusterCoords()
      : rank(kClusterM == 1 ? 0 : static_cast<int32_t>(ptx::cluster_cta_rank())),
        first_tile(blockIdx.x / kClusterM),
        tile_stride(gridDim.x / kClusterM) {}
};

enum class WarpRole : int { kProducer = 0, kConsumer = 1 };

struct SharedStorage {
  using Config = GroupedGemmConfig;
  alignas(1024) __nv_bfloat16 a[Config::kStages][Config::kBlockM * Config::kBlockK];  // (M, K) x stages
  alignas(1024) __nv_bfloat16 b[Config::kStages][2][Config::kHalfN * Config::kBlockK];  // (2, N/2, K) x stages
  alignas(8) uint64_t full[Config::kStages];
  alignas(8) uint64_t empty[Config::kStages];
};

// What the mainloop reads. A is [*, k] bf16 row-major (row p of the tile is a[gather(p)]), B is
// the 3-D tensor map [E_loc, rows, k]; box h of N block n starts at B row
// n * b_block_stride + h * b_box_stride.
struct GroupedOperands {
  const int32_t* expert_offsets;
  int32_t num_experts;
  int32_t num_n_blocks;
  int32_t num_k_blocks;
  int64_t k;
  const __nv_bfloat16* a;
  const int32_t* gather_rows;  // nullptr: row p of A is p
  int32_t b_block_stride;
  int32_t b_box_stride;
};

// Stage index and phase parity of a ring of kStages buffers.
struct PipelineState {
  int32_t stage = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++stage == GroupedGemmConfig::kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

template <int kClusterM>
__device__ void init_barriers(SharedStorage& smem) {
  using Config = GroupedGemmConfig;
  for (int s = 0; s < Config::kStages; ++s) {
    ptx::mbarrier_init(&smem.full[s], Config::kFullArrivals);
    ptx::mbarrier_init(&smem.empty[s], Config::kEmptyArrivalsPerCta * kClusterM);
  }
  ptx::fence_barrier_init();
}

// ---- producer warpgroup -----------------------------------------------------------------------
template <int kClusterM>
__device__ void run_producer(SharedStorage& smem, const GroupedOperands& op,
                             const CUtensorMap* tmap_b) {
  using Config = GroupedGemmConfig;
  const int thread_idx = threadIdx.x % 128;
  const int chunk = thread_idx % Config::kChunksPerRow;
  const int first_row = thread_idx / Config::kChunksPerRow;  // rows first_row + 16 i
  const int swizzled_chunk_bytes = (chunk ^ (first_row % 8)) * 16;

  const ClusterCoords<kClusterM> cluster;
  GroupedTileScheduler<Config::kBlockM, kClusterM> scheduler(op.expert_offsets, op.num_experts,
                                                             op.num_n_blocks, cluster.rank);
  PipelineState pipe;
  GroupedTile tile;
  for (int32_t tile_idx = cluster.first_tile; scheduler.get(tile_idx, &tile);
       tile_idx += cluster.tile_stride) {
    // This thread's A rows of the tile, gathered once per tile.
    const __nv_bfloat16* src[Config::kRowsPerProducerThread];  // row pointers at column chunk*8
    uint32_t row_valid = 0;
#pragma unroll
    for (int i = 0; i < Config::kRowsPerProducerThread; ++i) {
      const int32_t p = tile.row_begin + first_row + i * Config::kRowStridePerProducerThread;
      src[i] = op.a;
      if (p < tile.row_end) {
        const int64_t row = op.gather_rows != nullptr ? op.gather_rows[p] : p;
        src[i] = op.a + row * op.k + chunk * 8;
        row_valid |= 1u << i;
      }
    }
    const int32_t b_row = tile.n_block * op.b_block_stride;

    for (int32_t k_block = 0; k_block < op.num_k_blocks; ++k_block) {
      ptx::mbarrier_wait(&smem.empty[pipe.stage], pipe.phase ^ 1);
      uint64_t* full = &smem.full[pipe.stage];
      const int32_t k0 = k_block * Config::kBlockK;
      if (thread_idx == 0) {
        ptx::mbarrier_arrive_expect_tx(full, 2 * Config::kBBoxBytes);  // both boxes land here
        if constexpr (kClusterM == 1) {
          ptx::tma_load_3d(smem.b[pipe.stage][0], tmap_b, full, k0, b_row, tile.expert);
          ptx::tma_load_3d(smem.b[pipe.stage][1], tmap_b, full, k0, b_row + op.b_box_stride,
                           tile.expert);
        } else {
          ptx::tma_load_3d_multicast(smem.b[pipe.stage][cluster.rank], tmap_b, full,
                                     (1u << kClusterM) - 1, k0,
                                     b_row + cluster.rank * op.b_box_stride, tile.expert);
        }
      }
      const bool k_valid = k0 + chunk * 8 < op.k;
      uint8_t* a_stage = reinterpret_cast<uint8_t*>(smem.a[pipe.stage]);
#pragma unroll
      for (int i = 0; i < Config::kRowsPerProducerThread; ++i) {
        const int r = first_row + i * Config::kRowStridePerProducerThread;
        const bool valid = k_valid && ((row_valid >> i) & 1u);
        ptx::cp_async_16_zfill(a_stage + r * 128 + swizzled_chunk_bytes,
                               valid ? src[i] + k0 : op.a, valid);
      }
      ptx::cp_async_mbarrier_arrive_noinc(full);
      pipe.advance();
    }
  }
}

// ---- consumer warpgroups: mainloop of one tile -------------------------------------------------
// Accumulates the tile's rows [64 c, 64 c + 64) x 256 B rows over all K. The two B boxes lie back
// to back in smem, so one m64n256k16 covers both: acc[0, 64) is box 0, acc[64, 128) box 1.
template <int kClusterM>
__device__ void consume_tile(SharedStorage& smem, const GroupedOperands& op, int consumer_idx,
                             PipelineState& pipe, float (&acc)[128]) {
  using Config = GroupedGemmConfig;
  const int lane = threadIdx.x % 32;
  // The stage's B came into every CTA of the cluster from every CTA: free it everywhere, lane r
  // of each consumer warp arriving at CTA r.
  auto release = [&](int32_t stage) {
    if constexpr (kClusterM == 1) {
      if (lane == 0) ptx::mbarrier_arrive(&smem.empty[stage]);
    } else {
      if (lane < kClusterM) ptx::mbarrier_arrive_cluster(&smem.empty[stage], lane);
    }
  };
  int32_t previous_stage = -1;
  for (int32_t k_block = 0; k_block < op.num_k_blocks; ++k_block) {
    ptx::mbarrier_wait(&smem.full[pipe.stage], pipe.phase);
    ptx::fence_proxy_async_smem();  // A arrived by cp.async (generic proxy); wgmma reads async
    const uint64_t desc_a = ptx::make_smem_desc_k_major_sw128(
        smem.a[pipe.stage] + consumer_idx * Config::kRowsPerConsumer * Config::kBlockK);
    const uint64_t desc_b = ptx::make_smem_desc_k_major_sw128(smem.b[pipe.stage][0]);
    ptx::fence_operands(acc);
    ptx::wgmma_fence();
#pragma unroll
    for (int k = 0; k < Config::kBlockK / 16; ++k) {
      const uint32_t accumulate = (k_block > 0 || k > 0) ? 1u : 0u;
      ptx::wgmma_m64n256k16_bf16(acc, desc_a + 2 * k, desc_b + 2 * k, accumulate);
    }
    ptx::wgmma_commit_group();
    ptx::fence_operands(acc);
    // Keep this stage's group in flight; the previous one has retired, so its stage is free.
    ptx::wgmma_wait_group<1>();
    if (previous_stage >= 0) release(previous_stage);
    previous_stage = pipe.stage;
    pipe.advance();
  }
  ptx::wgmma_wait_group<0>();
  ptx::fence_operands(acc);
  if (previous_stage >= 0) release(previous_stage);
}

// Where a consumer thread's accumulators land: acc[4 i + 2 h + v] is tile row row0 + 8 h and
// column col0 + 8 i + v of the 256 B rows (i < 16: box 0, i >= 16: box 1).
struct FragmentCoords {
  int row0;  // tile row of h = 0 (h = 1 is row0 + 8)
  int col0;  // column of i = 0, v = 0 (i adds 8 i)
  __device__ explicit FragmentCoords(int consumer_idx) {
    const int thread_idx = threadIdx.x % 128;
    const int warp = thread_idx / 32;
    const int lane = thread_idx % 32;
    row0 = consumer_idx * GroupedGemmConfig::kRowsPerConsumer + warp * 16 + lane / 4;
    col0 = 2 * (lane % 4);
  }
};

}  // namespace fusedmoe::device
