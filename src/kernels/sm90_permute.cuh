// Counting sort, step 3 of 3: the row of every local slot, stable in slot order.
//
//   slot_key [T * K], chunk_prefix [chunks, E_loc], expert_offsets [E_loc + 1]
//   ->  permuted_idx [T * K]: row p of slot t*K+k, or -1 when non-local
//       gather_rows [T * K]: token t of row p (rows past expert_offsets[E_loc] are not written)
//
// One block per chunk of kPermuteChunk slots, one thread per slot. A slot's row is
//   expert_offsets[e] + (slots of e in earlier chunks) + (slots of e earlier in this chunk).
// The last term: __match_any_sync groups a warp's lanes by key, a lane's rank is the number of
// lower lanes in its group, and the warps of the block take turns (in warp order) to add their
// group sizes to a shared running count per expert. So rows follow (local expert, slot) order,
// the same on every run. Shared memory: E_loc * 4 bytes. Limiter: latency.
#pragma once

#include <cstdint>

#include "fusedmoe/fusedmoe.h"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

struct PermuteConfig {
  static constexpr int kThreads = kPermuteChunk;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxLocalExperts = kMaxNumExperts;
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, one thread per slot");
};

__global__ void __launch_bounds__(PermuteConfig::kThreads)
    permute_kernel(const int32_t* slot_key, int64_t num_slots, int32_t top_k, int32_t num_local,
                   const int32_t* chunk_prefix, const int32_t* expert_offsets,
                   int32_t* gather_rows, int32_t* permuted_idx) {
  __shared__ int32_t smem_next_row[PermuteConfig::kMaxLocalExperts];  // (E_loc)

  // PDL: all inputs come from the previous two kernels.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int64_t chunk = blockIdx.x;
  const int32_t* g_prefix = chunk_prefix + chunk * num_local;  // (E_loc)
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) {
    smem_next_row[e] = expert_offsets[e] + g_prefix[e];
  }

  const int64_t slot = chunk * kPermuteChunk + threadIdx.x;
  const bool in_range = slot < num_slots;
  const int32_t key = in_range ? slot_key[slot] : num_local;
  const int warp_idx = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const unsigned peers = __match_any_sync(0xFFFFFFFFu, key);
  const int rank = __popc(peers & ((1u << lane) - 1u));
  const bool is_last_peer = (peers >> lane) == 1u;
  const bool is_local = key < num_local;
  int32_t row = -1;
  __syncthreads();

  for (int turn = 0; turn < PermuteConfig::kWarps; ++turn) {
    if (warp_idx == turn && is_local) {
      const int32_t first = smem_next_row[key];
      row = first + rank;
      __syncwarp(peers);
      if (is_last_peer) smem_next_row[key] = first + __popc(peers);
    }
    __syncthreads();
  }

  if (!in_range) return;
  permuted_idx[slot] = row;
  if (is_local) gather_rows[row] = static_cast<int32_t>(slot / top_k);
}

}  // namespace fusedmoe::detail
