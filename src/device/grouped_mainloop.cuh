// The warp-specialised mainloop shared by both grouped GEMMs (sm90_gemm1_swiglu.cuh and
// sm90_gemm2.cuh differ only in their operands and epilogues).
//
// Tile: 128 permuted rows (A) x two B boxes of 128 rows, K in blocks of 64 (one 128-byte swizzle
// row). Warp roles (384 threads, one CTA per SM):
//   warpgroup 0  producer, 40 registers: all 128 threads gather A rows with 16-byte cp.async into
//                the swizzled layout (zero fill past K or past the expert); thread 0 also loads
//                both B boxes by TMA. Each stage completes on its "full" mbarrier
//                (128 cp.async .noinc arrivals + 1 expect_tx arrival).
//   warpgroups 1, 2  consumers, 232 registers: rows [64c, 64c+64) of the tile; per k16 step one
//                wgmma m64n256k16 over both B boxes (back to back in smem) into acc[128], so a
//                thread holds column n of box 0 (acc[4 i ..]) and of box 1 (acc[64 + 4 i ..])
//                together. One wgmma group stays in flight; a stage is released (8 warp
//                arrivals on "empty") once the group reading it has retired.
// Shared memory (per stage 48 KiB, 4 stages = 192 KiB, + 32 KiB epilogue staging + barriers):
//   a  (BLOCK_M=128, BLOCK_K=64) bf16, 16 KiB, 128B swizzle: row r at r*128, 16-byte chunk c at
//      ((c ^ (r % 8)) * 16)
//   b  (2, HALF_N=128, BLOCK_K=64) bf16, 2 x 16 KiB, the same swizzle (written by TMA)
//   staging  (8 consumer warps, 16 rows x 256 bytes): device/epilogue.cuh
// Expected limiter: tensor cores at >= ~256 rows per expert (ncu: 84 % busy at 4096 rows, the
// rest is the serial drain + epilogue per tile); weight bandwidth from HBM at fewer rows.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>

#include "device/epilogue.cuh"
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
  static constexpr uint32_t kEmptyArrivals = 4 * kNumConsumerWarpgroups;  // lane 0 of each warp
  // Tile indices go from producer thread 0 to every warp through a ring of kTileSlots (the
  // producer runs at most kStages K blocks, so at most kStages tiles, ahead: 2 slots would do).
  static constexpr int kTileSlots = 4;
  static constexpr uint32_t kTileReaders = 4 * (1 + kNumConsumerWarpgroups);  // lane 0 of each warp

  static_assert(kBlockK * 2 == 128, "one K block must be exactly one 128-byte swizzle row");
  static_assert(kRowsPerConsumer == 64, "each consumer warpgroup owns one m64 wgmma row block");
  static_assert(2 * kHalfN == 256, "the wgmma wrapper is m64n256k16 over both B boxes");
  static_assert(kRowStridePerProducerThread % 8 == 0,
                "a producer thread's rows must share one swizzle phase (r % 8)");
  // Registers a thread gets at launch (__launch_bounds__(kNumThreads, 1)): 65536 / 384 rounded
  // down to a multiple of 8 = 168. setmaxnreg moves registers only inside the CTA's pool of
  // kLaunchRegs x kNumThreads, so the consumers' increase must be paid by the producer's
  // decrease; asking for more makes setmaxnreg.inc wait forever (65536 is not the bound).
  static constexpr int kLaunchRegs = 65536 / kNumThreads / 8 * 8;
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kNumConsumerWarpgroups <=
                    kLaunchRegs * kNumThreads,
                "register budgets exceed the CTA's pool: setmaxnreg.inc would never return");
  static_assert(kABytes % 1024 == 0 && kBBoxBytes % 1024 == 0,
                "swizzle atoms need 1024-byte aligned buffers");
};

enum class WarpRole : int { kProducer = 0, kConsumer = 1 };

struct SharedStorage {
  using Config = GroupedGemmConfig;
  // (stages, BLOCK_M, BLOCK_K), 128-byte swizzle
  alignas(1024) __nv_bfloat16 a[Config::kStages][Config::kBlockM * Config::kBlockK];
  // (stages, 2 boxes, HALF_N, BLOCK_K), 128-byte swizzle
  alignas(1024) __nv_bfloat16 b[Config::kStages][2][Config::kHalfN * Config::kBlockK];
  // (consumer warps, 16 rows x 256 bytes), XOR-swizzled 16-byte chunks (device/epilogue.cuh)
  alignas(128) uint8_t staging[4 * Config::kNumConsumerWarpgroups][kStagingBytesPerWarp];
  alignas(8) uint64_t full[Config::kStages];   // stage loaded: A (cp.async) + B (TMA)
  alignas(8) uint64_t empty[Config::kStages];  // stage consumed by both consumer warpgroups
  int32_t tile_index[Config::kTileSlots];              // the CTA's next tiles, in order
  alignas(8) uint64_t tile_full[Config::kTileSlots];   // index written (producer thread 0)
  alignas(8) uint64_t tile_empty[Config::kTileSlots];  // index read by every warp
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
  // With kClaimTiles: two zeroed int32 {next, done}; after its first tile (blockIdx.x) a CTA
  // claims tile G + atomicAdd(next, 1) whenever it starts one, so tiles start in tile order; the
  // last CTA to finish claiming sets both back to zero. Unused (nullptr) without.
  int32_t* tile_counters;
};

// Stage index and phase parity of a ring of kStages buffers.
template <int kStages = GroupedGemmConfig::kStages>
struct PipelineStateOf {
  int32_t stage = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};
using PipelineState = PipelineStateOf<>;

__device__ inline void init_barriers(SharedStorage& smem) {
  using Config = GroupedGemmConfig;
  for (int s = 0; s < Config::kStages; ++s) {
    ptx::mbarrier_init(&smem.full[s], Config::kFullArrivals);
    ptx::mbarrier_init(&smem.empty[s], Config::kEmptyArrivals);
  }
  for (int s = 0; s < Config::kTileSlots; ++s) {
    ptx::mbarrier_init(&smem.tile_full[s], 1);
    ptx::mbarrier_init(&smem.tile_empty[s], Config::kTileReaders);
  }
  ptx::fence_barrier_init();
}

// ---- the CTA's sequence of tiles ---------------------------------------------------------------
// Static (kClaimTiles false): CTA c takes tiles c, c + G, c + 2 G, ..., each warp computing the
// index itself. Dynamic (kClaimTiles true, GroupedOperands::tile_counters set): producer thread 0
// claims each next tile index from a global counter and writes it to a ring (publish_tile);
// every warp, the producer's included, reads the indices in order (read_tile). Each kernel is
// compiled both ways, so the static one carries none of the ring's cost (measured +1-5 % GEMM
// time with claims where they do not pay: heuristics::grouped_claim_tiles).
// Why dynamic: tiles that run at the same time share their B block through L2 only while they
// stay neighbours in tile order (M blocks of one N block); with a static stride the CTAs drift
// apart when tile times differ, and each B block is read from HBM more than once (ncu,
// deepseek-v3 T = 4096 GEMM2: 10.9 GB from HBM with the stride, 7.7 GB claimed, for 7.5 GB of
// weights; bench/NOTES.md step 9). Outputs do not depend on which CTA computes a tile.

// Producer thread 0: publishes the index of the CTA's tile in round `round` (rounds in order).
// A dynamic claim waits for its atomic here, while the consumers still have up to kStages loaded
// K blocks to work on. (Claiming earlier measured slower: the CTAs then run tiles claimed a tile
// before, fewer neighbours are in flight together; step 9.)
template <class Storage>
__device__ inline void publish_tile(Storage& smem, int32_t* counters, uint32_t round) {
  using Config = GroupedGemmConfig;
  const int32_t index = round == 0 ? static_cast<int32_t>(blockIdx.x)
                                   : static_cast<int32_t>(gridDim.x) + atomicAdd(&counters[0], 1);
  const int slot = round % Config::kTileSlots;
  ptx::mbarrier_wait(&smem.tile_empty[slot], ((round / Config::kTileSlots) & 1) ^ 1);
  smem.tile_index[slot] = index;
  ptx::mbarrier_arrive(&smem.tile_full[slot]);
}

// Every lane of a warp together: the CTA's tile index number `count` (0, 1, ... in order).
template <class Storage>
__device__ inline int32_t read_tile(Storage& smem, uint32_t count) {
  using Config = GroupedGemmConfig;
  const int slot = count % Config::kTileSlots;
  ptx::mbarrier_wait(&smem.tile_full[slot], (count / Config::kTileSlots) & 1);
  // Lane 0 alone reads the slot, before its own arrive frees it for the next write (racecheck
  // flagged the other lanes' reads, which no arrive of theirs ordered before that write).
  const bool lane0 = threadIdx.x % 32 == 0;
  int32_t index = 0;
  if (lane0) index = smem.tile_index[slot];
  index = __shfl_sync(0xFFFFFFFFu, index, 0);  // warp-uniform
  if (lane0) ptx::mbarrier_arrive(&smem.tile_empty[slot]);
  return index;
}

// Every lane of a warp together: the CTA's tile number `count` (0, 1, ... in order).
template <bool kClaimTiles, class Storage>
__device__ __forceinline__ int32_t cta_tile(Storage& smem, uint32_t count) {
  if constexpr (kClaimTiles) {
    return read_tile(smem, count);
  } else {
    return static_cast<int32_t>(count * gridDim.x + blockIdx.x);
  }
}

// Producer thread 0, after publishing an index past the last tile: the last CTA to get here (all
// claims of all CTAs done) zeroes the counters for the next launch.
__device__ inline void finish_tiles(int32_t* counters) {
  __threadfence();
  if (atomicAdd(&counters[1], 1) == static_cast<int32_t>(gridDim.x) - 1) {
    counters[0] = 0;
    counters[1] = 0;
    __threadfence();
  }
}

// ---- producer warpgroup -----------------------------------------------------------------------
// One K block of the producer's B: waits until the stage is free, then thread 0 (issuer) arms
// the stage's full barrier for the two B boxes and loads them by TMA (weight rows b_row and
// b_row + box_stride of `expert`, K from k0). Returns the full barrier, on which the caller's A
// copies then arrive. Shared by the BF16 and FP8 producers (grouped_mainloop_fp8.cuh).
template <class Storage, class Pipe>
__device__ __forceinline__ uint64_t* producer_load_b(Storage& smem, const Pipe& pipe,
                                                     const CUtensorMap* tmap_b, uint32_t box_bytes,
                                                     int32_t k0, int32_t b_row, int32_t box_stride,
                                                     int32_t expert, bool issuer) {
  ptx::mbarrier_wait(&smem.empty[pipe.stage], pipe.phase ^ 1);
  uint64_t* full = &smem.full[pipe.stage];
  if (issuer) {
    ptx::mbarrier_arrive_expect_tx(full, 2 * box_bytes);
    ptx::tma_load_3d(smem.b[pipe.stage][0], tmap_b, full, k0, b_row, expert);
    ptx::tma_load_3d(smem.b[pipe.stage][1], tmap_b, full, k0, b_row + box_stride, expert);
  }
  return full;
}

template <bool kClaimTiles>
__device__ inline void run_producer(SharedStorage& smem, const GroupedOperands& op,
                                    const CUtensorMap* tmap_b) {
  using Config = GroupedGemmConfig;
  const int thread_idx = threadIdx.x % 128;
  const int chunk = thread_idx % Config::kChunksPerRow;
  const int first_row = thread_idx / Config::kChunksPerRow;  // rows first_row + 16 i
  const int swizzled_chunk_bytes = (chunk ^ (first_row % 8)) * 16;

  GroupedTileScheduler<Config::kBlockM> scheduler(op.expert_offsets, op.num_experts,
                                                  op.num_n_blocks);
  PipelineState pipe;
  GroupedTile tile;
  for (uint32_t round = 0;; ++round) {
    if (kClaimTiles && thread_idx == 0) publish_tile(smem, op.tile_counters, round);
    if (!scheduler.get(cta_tile<kClaimTiles>(smem, round), &tile)) break;
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
      const int32_t k0 = k_block * Config::kBlockK;
      uint64_t* full = producer_load_b(smem, pipe, tmap_b, Config::kBBoxBytes, k0, b_row,
                                       op.b_box_stride, tile.expert, thread_idx == 0);
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
  if (kClaimTiles && thread_idx == 0) finish_tiles(op.tile_counters);
}

// ---- consumer warpgroups: mainloop of one tile -------------------------------------------------
// Accumulates the tile's rows [64 c, 64 c + 64) x 256 B rows over all K. The two B boxes lie back
// to back in smem, so one m64n256k16 covers both: acc[0, 64) is box 0, acc[64, 128) box 1.
__device__ inline void consume_tile(SharedStorage& smem, const GroupedOperands& op,
                                    int consumer_idx, PipelineState& pipe, float (&acc)[128]) {
  using Config = GroupedGemmConfig;
  const bool release_lane = threadIdx.x % 32 == 0;
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
    if (previous_stage >= 0 && release_lane) ptx::mbarrier_arrive(&smem.empty[previous_stage]);
    previous_stage = pipe.stage;
    pipe.advance();
  }
  ptx::wgmma_wait_group<0>();
  ptx::fence_operands(acc);
  if (previous_stage >= 0 && release_lane) ptx::mbarrier_arrive(&smem.empty[previous_stage]);
}

// The 16-row block of the tile that a consumer warp's accumulators cover, and its staging buffer.
struct WarpBlock {
  int warp_idx;  // 0 .. 4 * kNumConsumerWarpgroups - 1
  int row0;      // tile row of the warp's first accumulator row
  __device__ explicit WarpBlock(int consumer_idx) {
    warp_idx = (threadIdx.x % 128) / 32 + 4 * consumer_idx;
    row0 = consumer_idx * GroupedGemmConfig::kRowsPerConsumer + ((threadIdx.x % 128) / 32) * 16;
  }
};

}  // namespace fusedmoe::device
