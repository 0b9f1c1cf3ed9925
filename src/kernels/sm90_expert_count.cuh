// Counting sort, step 1 of 3: per chunk of slots, how many slots go to each local expert.
//
//   slot_key [T * K] (local expert id, or E_loc for a non-local slot)
//   ->  chunk_prefix [chunks, E_loc]: the counts (sm90_expert_offsets.cuh turns them into starts)
//
// One block per chunk of kPermuteChunk slots, one thread per slot. The histogram lives in shared
// memory (E_loc * 4 bytes, 4 KB at most); shared atomics on integers are order-independent, so
// the counts are deterministic. Limiter: launch latency.
#pragma once

#include <cstdint>

#include "fusedmoe/fusedmoe.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

struct ExpertCountConfig {
  static constexpr int kThreads = kPermuteChunk;
  static constexpr int kMaxLocalExperts = kMaxNumExperts;
  static_assert(kThreads <= 1024, "one thread per slot of a chunk");
};

__global__ void __launch_bounds__(ExpertCountConfig::kThreads)
    expert_count_kernel(const int32_t* slot_key, int64_t num_slots, int32_t num_local,
                        int32_t* chunk_prefix) {
  __shared__ int32_t smem_count[ExpertCountConfig::kMaxLocalExperts];  // (E_loc)

  for (int e = threadIdx.x; e < num_local; e += blockDim.x) smem_count[e] = 0;
  __syncthreads();

  // PDL: slot_key comes from the routing kernel.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kPermuteChunk + threadIdx.x;
  if (slot < num_slots) {
    const int32_t key = slot_key[slot];
    if (key < num_local) atomicAdd(&smem_count[key], 1);
  }
  __syncthreads();

  int32_t* g_counts = chunk_prefix + static_cast<int64_t>(blockIdx.x) * num_local;  // (E_loc)
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) g_counts[e] = smem_count[e];
}

}  // namespace fusedmoe::detail
