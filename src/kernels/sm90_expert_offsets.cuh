// Counting sort, step 2 of 3: where each expert's rows and each chunk's share of them start.
//
//   chunk_prefix [chunks, E_loc] counts  ->  chunk_prefix: slots of expert e in earlier chunks
//   expert_offsets [E_loc + 1]: rows of local expert e are [o[e], o[e + 1]), o[0] = 0
//
// A single block; thread e walks the chunks of expert e in order (coalesced across experts),
// then a block-wide exclusive scan over the experts' totals. Integer sums: deterministic.
// Limiter: latency (chunks = T*K / 1024 serial steps per thread).
#pragma once

#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "device/expert_scan.cuh"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct ExpertOffsetsConfig {
  static constexpr int kThreads = 1024;
  static_assert(kThreads >= kMaxNumExperts, "one thread per local expert");
};

__global__ void __launch_bounds__(ExpertOffsetsConfig::kThreads)
    expert_offsets_kernel(int64_t num_chunks, int32_t num_local, int32_t* chunk_prefix,
                          int32_t* expert_offsets) {
  using BlockScan = cub::BlockScan<int32_t, ExpertOffsetsConfig::kThreads>;
  __shared__ typename BlockScan::TempStorage smem_scan;

  // PDL: the counts come from the count kernel.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int expert = threadIdx.x;
  const int32_t total =
      expert < num_local ? device::scan_expert_counts(chunk_prefix, num_chunks, num_local, expert) : 0;
  int32_t start = 0;
  int32_t all_rows = 0;
  BlockScan(smem_scan).ExclusiveSum(total, start, all_rows);
  if (expert < num_local) expert_offsets[expert] = start;
  if (expert == 0) expert_offsets[num_local] = all_rows;
}

}  // namespace fusedmoe::detail
