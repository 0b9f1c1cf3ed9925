// The per-expert column scan shared by the permutation's kernels.
#pragma once

#include <cstdint>

namespace fusedmoe::device {

// Turns column `expert` of a row-major [rows, num_local] table of counts (one row per chunk or
// segment of slots) into its exclusive prefix sums down the rows, in place, and returns the
// column's total: where each chunk's rows of that expert start, relative to the expert's first.
// One thread per expert: the expert offsets kernel's scan of per-chunk counts
// (kernels/sm90_expert_offsets.cuh) and the small sort's of per-segment counts
// (kernels/sm90_expert_sort_small.cuh).
template <typename Index>
__device__ __forceinline__ int32_t scan_expert_counts(int32_t* table, Index rows,
                                                      int32_t num_local, int expert) {
  int32_t total = 0;
  for (Index row = 0; row < rows; ++row) {
    int32_t* entry = table + row * num_local + expert;
    const int32_t count = *entry;
    *entry = total;
    total += count;
  }
  return total;
}

}  // namespace fusedmoe::device
