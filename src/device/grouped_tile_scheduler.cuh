// Device-side tile scheduler of the grouped GEMMs. The linear tile index runs over experts in
// order; inside expert e (rows [offsets[e], offsets[e+1])) over N blocks, and inside an N block
// over M blocks (M fastest, so CTAs working at the same time share the B tile through L2).
// A persistent CTA visits its tiles in ascending order (a static stride or dynamic claims:
// device/grouped_mainloop.cuh's publish_tile), so the scheduler walks the experts forward once,
// the same sequence in every warp of the CTA. The walk is warp-cooperative: a window of 32
// experts at a time (two coalesced loads and a warp scan of their tile counts, kept in
// registers, a lane per expert), so E_loc = 1024 costs 32 dependent L2 round trips per CTA
// (~15 us) instead of 1024 (~400 us), which matters when few rows make each GEMM short. A tile
// inside the loaded window costs a ballot and three shuffles: a CTA's stride of ~132 tiles
// crosses a few experts at a time, and reloading from the next expert at every tile put an L2
// round trip before each tile's first wgmma (bench/NOTES.md, "The tile scheduler's window").
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
    while (tile_idx >= window_end_) {
      // The next window: experts first .. first + 31, one per lane.
      const int32_t first = window_first_ + 32;
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
      window_first_ = first;
      window_base_ = window_end_;  // first tile of expert `first`
      window_end_ = window_base_ + __shfl_sync(0xFFFFFFFFu, inclusive, 31);
      lane_inclusive_ = inclusive;
      lane_begin_ = begin;
      lane_end_ = end;
    }
    // The window's expert holding tile_idx: the first whose tiles end past it.
    const uint32_t hit = __ballot_sync(0xFFFFFFFFu, window_base_ + lane_inclusive_ > tile_idx);
    const int src = __ffs(hit) - 1;  // hit != 0: tile_idx < window_end_
    const int32_t inclusive = __shfl_sync(0xFFFFFFFFu, lane_inclusive_, src);
    const int32_t begin = __shfl_sync(0xFFFFFFFFu, lane_begin_, src);
    const int32_t end = __shfl_sync(0xFFFFFFFFu, lane_end_, src);
    const int32_t num_m_blocks = (end - begin + kBlockM - 1) / kBlockM;
    const int32_t local = tile_idx - (window_base_ + inclusive - num_m_blocks * num_n_blocks_);
    tile->expert = window_first_ + src;
    tile->n_block = local / num_m_blocks;
    tile->row_begin = begin + (local % num_m_blocks) * kBlockM;
    tile->row_end = end;
    return true;
  }

 private:
  const int32_t* offsets_;
  int32_t num_experts_;
  int32_t num_n_blocks_;
  int32_t window_first_ = -32;  // first expert of the loaded window (-32: none yet)
  int32_t window_base_ = 0;     // linear index of the window's first tile
  int32_t window_end_ = 0;      // one past the window's last tile
  int32_t lane_inclusive_ = 0;  // this lane's expert (window_first_ + lane): tiles of the window
  int32_t lane_begin_ = 0;      //   up to and including it, and its rows [begin, end)
  int32_t lane_end_ = 0;
};

}  // namespace fusedmoe::device
