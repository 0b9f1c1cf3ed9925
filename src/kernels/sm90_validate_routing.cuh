// validate_routing's scan: the first slot whose expert id lies outside [0, E).
//
//   topk_ids [T * K] int32 (packed words or plain ids)  ->  first_bad_slot (atomicMin; starts
//   at UINT64_MAX, which means "none"). One thread per slot, grid-stride. The minimum is
//   order-independent, so the answer is deterministic. Limiter: HBM (4 bytes per slot).
#pragma once

#include <cstdint>

namespace fusedmoe::detail {

struct ValidateRoutingConfig {
  static constexpr int kThreads = 256;
  static_assert(kThreads % 32 == 0, "whole warps");
};

__global__ void __launch_bounds__(ValidateRoutingConfig::kThreads)
    validate_routing_kernel(const int32_t* topk_ids, int64_t num_slots, int32_t num_experts,
                            bool packed, unsigned long long* first_bad_slot) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       slot < num_slots; slot += stride) {
    const int32_t word = topk_ids[slot];
    const int32_t id = packed ? static_cast<int16_t>(static_cast<uint32_t>(word) >> 16) : word;
    if (id < 0 || id >= num_experts) {
      atomicMin(first_bad_slot, static_cast<unsigned long long>(slot));
    }
  }
}

}  // namespace fusedmoe::detail
