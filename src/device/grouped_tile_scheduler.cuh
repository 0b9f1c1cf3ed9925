// Device-side tile scheduler of the grouped GEMMs. The linear tile index runs over experts in
// order; inside expert e (rows [offsets[e], offsets[e+1])) over N blocks, and inside an N block
// over M blocks (M fastest, so CTAs working at the same time share the B tile through L2).
// A persistent CTA visits its tiles in ascending order (a static stride or dynamic claims:
// device/grouped_mainloop.cuh's publish_tile), so the scheduler walks the experts forward once,
// the same sequence in every warp of the CTA. The walk is warp-cooperative: 32 experts per step
// (two coalesced loads, a warp scan of their tile counts and a ballot), so E_loc = 1024 costs 32
// dependent L2 round trips per CTA (~15 us) instead of 1024 (~400 us), which matters when few
// rows make each GEMM short.
#pragma once

#include <cstdint>

namespace fusedmoe::device {

struct GroupedTile {
  int32_t expert;     // local expert index
  int32_t row_begin;  // first permuted row of the tile
  int32_t row_end;    // end of the expert's rows (rows >= row_end are not the tile's)
  int32_t n_block;
};

// Every method must be called by all 32 lanes of a warp together, with the same arguments.
template <int kBlockM>
class GroupedTileScheduler {
 public:
  __device__ GroupedTileScheduler(const int32_t* expert_offsets, int32_t num_experts,
                                  int32_t num_n_blocks)
      : offsets_(expert_offsets), num_experts_(num_experts), num_n_blocks_(num_n_blocks) {}

  // The tile at `tile_idx` (not below any index asked for before); false once past the last.
  __device__ bool get(int32_t tile_idx, GroupedTile* tile) {
    const int lane = threadIdx.x % 32;
    while (tile_idx >= tile_base_ + num_tiles_) {
      // Experts first .. first + 31, one per lane, after the current one.
      const int32_t first = expert_ + 1;
      if (first >= num_experts_) return false;
      const int32_t e = first + lane;
      int32_t begin = 0, end = 0;
      if (e < num_experts_) {
        begin = offsets_[e];
        end = offsets_[e + 1];
      }
      const int32_t tiles = (end - begin + kBlockM - 1) / kBlockM * num_n_blocks_;
      int32_t inclusive = tiles;  // tiles of experts first .. e
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const int32_t v = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      const int32_t base = tile_base_ + num_tiles_;  // first tile of expert `first`
      const uint32_t hit = __ballot_sync(0xFFFFFFFFu, base + inclusive > tile_idx);
      const int src = hit != 0 ? __ffs(hit) - 1 : 31;  // the expert holding tile_idx, or the last
      expert_ = first + src;
      tile_base_ = base + __shfl_sync(0xFFFFFFFFu, inclusive - tiles, src);
      num_tiles_ = __shfl_sync(0xFFFFFFFFu, tiles, src);
      expert_begin_ = __shfl_sync(0xFFFFFFFFu, begin, src);
      expert_end_ = __shfl_sync(0xFFFFFFFFu, end, src);
    }
    const int32_t num_m_blocks = num_tiles_ / num_n_blocks_;
    const int32_t local = tile_idx - tile_base_;
    tile->expert = expert_;
    tile->n_block = local / num_m_blocks;
    tile->row_begin = expert_begin_ + (local % num_m_blocks) * kBlockM;
    tile->row_end = expert_end_;
    return true;
  }

 private:
  const int32_t* offsets_;
  int32_t num_experts_;
  int32_t num_n_blocks_;
  int32_t expert_ = -1;    // current expert (-1: none yet)
  int32_t tile_base_ = 0;  // linear index of expert_'s first tile
  int32_t num_tiles_ = 0;  // tiles of expert_
  int32_t expert_begin_ = 0;
  int32_t expert_end_ = 0;
};

}  // namespace fusedmoe::device
