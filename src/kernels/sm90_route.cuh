// Routing from logits: scores, top-K and weights of each token (SPEC "Routing methods").
//
//   logits [T, E] fp32|bf16, bias [E] fp32|bf16 (optional)  ->  per slot t*K+k:
//   slot_key (local expert id, E_loc when non-local), slot_weight (fp32 value of the rounded
//   weight), and optionally expert_weights [T, K] and routing_replay_out [T, K].
//
// One warp per token, kWarps tokens per block. Each warp keeps its token's E scores in shared
// memory as 32-bit order keys (order_key below): a larger key is a higher score, NaN ranks below
// -inf, and key 0 marks an expert that is taken or excluded. Top-K is K rounds of a warp argmax
// over (key, -expert) packed into 64 bits, so equal scores go to the lower expert index and the
// result is sorted by descending score; lane k ends up holding the k-th pick. DeepSeekV3 first
// keeps the topk_group best groups (group score = sum of its top-2 biased scores) and excludes
// every expert of the others (their scores become -inf).
//
// Numerics mirror the CPU reference (src/reference/): scores in fp32, exp computed in fp64 and
// rounded (within rounding of the host's expf), sums over the K picks in ascending k, no FMA
// contraction in the weight formulas. Shared memory: kWarps * 2 * E * 4 bytes (32 KB at E=1024).
// Limiter: issue slots (every lane walks E/32 keys in each of the K rounds). Measured on H200:
// 2 us (Mixtral, E=8) to 10 us (DeepSeekV3 groups, E=256) at T=1; 106 us at E=1024, K=32, T=4096.
// TODO(issue 6): a block per token with per-lane candidate lists for large E * K at small T.
#pragma once

#include <cstdint>

#include "kernels/sm90_route_token.cuh"

namespace fusedmoe::detail {

__global__ void __launch_bounds__(RouteConfig::kThreads)
    route_kernel(const RouteParams params) {
  extern __shared__ uint32_t smem_keys[];  // (kWarps, 2, E): expert keys, then group keys

  // PDL: the logits may come from the kernel before us.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int warp_idx = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * RouteConfig::kWarps + warp_idx;
  if (token >= params.num_tokens) return;
  uint32_t* keys = smem_keys + static_cast<size_t>(warp_idx) * 2 * params.num_experts;  // (2, E)
  route::route_token(params, keys, token, lane);
}

}  // namespace fusedmoe::detail
