// Device-side tile scheduler of the grouped GEMMs. The linear tile index runs over experts in
// order; inside expert e (rows [offsets[e], offsets[e+1])) over N blocks, and inside an N block
// over M blocks (M fastest, so CTAs working at the same time share the B tile through L2).
// A persistent CTA visits tiles blockIdx.x, blockIdx.x + gridDim.x, ... in ascending order, so
// the scheduler walks the experts forward once: O(E_loc + tiles) global reads per CTA, the same
// sequence in every warp role (deterministic, no atomics).
#pragma once

#include <cstdint>

namespace fusedmoe::device {

struct GroupedTile {
  int32_t expert;     // local expert index
  int32_t row_begin;  // first permuted row of the tile
  int32_t row_end;    // end of the expert's rows (rows >= row_end are not the tile's)
  int32_t n_block;
};

template <int kBlockM>
class GroupedTileScheduler {
 public:
  __device__ GroupedTileScheduler(const int32_t* expert_offsets, int32_t num_experts,
                                  int32_t num_n_blocks)
      : offsets_(expert_offsets), num_experts_(num_experts), num_n_blocks_(num_n_blocks) {
    load_expert();
  }

  // The tile at `tile_idx` (not below any index asked for before); false once past the last.
  __device__ bool get(int32_t tile_idx, GroupedTile* tile) {
    while (tile_idx >= tile_base_ + num_m_blocks_ * num_n_blocks_) {
      tile_base_ += num_m_blocks_ * num_n_blocks_;
      if (++expert_ >= num_experts_) return false;
      load_expert();
    }
    const int32_t local = tile_idx - tile_base_;
    tile->expert = expert_;
    tile->n_block = local / num_m_blocks_;
    tile->row_begin = expert_begin_ + (local % num_m_blocks_) * kBlockM;
    tile->row_end = expert_end_;
    return true;
  }

 private:
  __device__ void load_expert() {
    expert_begin_ = offsets_[expert_];
    expert_end_ = offsets_[expert_ + 1];
    num_m_blocks_ = (expert_end_ - expert_begin_ + kBlockM - 1) / kBlockM;
  }

  const int32_t* offsets_;
  int32_t num_experts_;
  int32_t num_n_blocks_;
  int32_t expert_ = 0;
  int32_t tile_base_ = 0;  // linear index of expert_'s first tile
  int32_t expert_begin_ = 0;
  int32_t expert_end_ = 0;
  int32_t num_m_blocks_ = 0;
};

}  // namespace fusedmoe::device
