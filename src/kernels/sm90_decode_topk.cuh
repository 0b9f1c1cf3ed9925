// Routing from pre-computed top-k ids (SPEC routing inputs 2 and 3): decode, never normalise.
//
//   packed   topk_ids [T, K] int32: id = int16 of bits 31..16, weight = bf16 bits 15..0
//   unpacked topk_ids [T, K] int32 plus topk_weights [T, K] bf16|fp32
//   ->  per slot: slot_key (local expert id, E_loc when non-local, also for ids outside [0, E)),
//       slot_weight (fp32 value of the given weight), and optionally expert_weights [T, K]
//       (the given weight bits, unchanged) and routing_replay_out [T, K] (int16 id).
//
// One thread per slot; grid-stride loop. Limiter: launch latency (reads 4-8 bytes per slot).
#pragma once

#include <cstdint>

#include "kernels/sm90_decode_topk_slot.cuh"

namespace fusedmoe::detail {

__global__ void __launch_bounds__(DecodeTopKConfig::kThreads)
    decode_topk_kernel(const DecodeTopKParams params) {
  // PDL: the ids may come from the kernel before us.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       slot < params.num_slots; slot += stride) {
    decode_topk_slot(params, slot);
  }
}

}  // namespace fusedmoe::detail
