// Routing from pre-computed top-k ids (SPEC routing inputs 2 and 3): decode, never normalise.
//
//   packed   topk_ids [T, K] int32: id = int16 of bits 31..16, weight = bf16 bits 15..0
//   unpacked topk_ids [T, K] int32 plus topk_weights [T, K] bf16|fp32
//   ->  per slot: slot_key (local expert id, E_loc when non-local, also for ids outside [0, E)),
//       slot_weight (fp32 value of the given weight), and optionally expert_weights [T, K]
//       (the given weight bits, unchanged) and routing_replay_out [T, K] (int16 id).
//
// One thread per slot; grid-stride loop. Limiter: launch latency (reads 4-8 bytes per slot).
// FP8 with bf16 hidden states (x8 given): x quantised too, per token and 128-column group, one
// warp per group by the quantiser's own warp code (device::warp_quantize_fp8_group), so that no
// kernel of its own stands between the routing and the sort.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "device/e4m3_divisor.cuh"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct DecodeTopKConfig {
  static constexpr int kThreads = 256;
  static_assert(kThreads % 32 == 0, "whole warps");
};

struct DecodeTopKParams {
  const int32_t* topk_ids;  // [T * K]
  const void* topk_weights;  // [T * K] or nullptr (packed)
  DType weights_dtype;       // of topk_weights, and of expert_weights
  int64_t num_slots;
  int32_t local_offset;
  int32_t num_local;
  int32_t* slot_key;            // [T * K]
  float* slot_weight;           // [T * K]
  void* expert_weights;         // [T * K] or nullptr
  int16_t* routing_replay_out;  // [T * K] or nullptr
  // x quantised (launch/pipeline.h, RoutingOutputs::x8), or x8 == nullptr
  const __nv_bfloat16* x;  // [T, hidden_size]
  int64_t num_tokens, hidden_size;
  uint8_t* x8;     // [T, hidden_size]
  float* x_scale;  // [hidden_size / 128, T]
};

__global__ void __launch_bounds__(DecodeTopKConfig::kThreads)
    decode_topk_kernel(const DecodeTopKParams params) {
  // PDL: the ids may come from the kernel before us.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t slot = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       slot < params.num_slots; slot += stride) {
    const int32_t word = params.topk_ids[slot];
    int32_t expert;
    float weight;
    if (params.topk_weights == nullptr) {
      expert = static_cast<int16_t>(static_cast<uint32_t>(word) >> 16);
      const __nv_bfloat16 weight_bf16 =
          __ushort_as_bfloat16(static_cast<unsigned short>(word & 0xFFFF));
      weight = __bfloat162float(weight_bf16);
      if (params.expert_weights) {
        static_cast<__nv_bfloat16*>(params.expert_weights)[slot] = weight_bf16;
      }
    } else {
      expert = word;
      if (params.weights_dtype == DType::kFP32) {
        weight = static_cast<const float*>(params.topk_weights)[slot];
        if (params.expert_weights) static_cast<float*>(params.expert_weights)[slot] = weight;
      } else {
        const __nv_bfloat16 weight_bf16 =
            static_cast<const __nv_bfloat16*>(params.topk_weights)[slot];
        weight = __bfloat162float(weight_bf16);
        if (params.expert_weights) {
          static_cast<__nv_bfloat16*>(params.expert_weights)[slot] = weight_bf16;
        }
      }
    }
    // 64-bit difference: an id far outside [0, E) must not wrap into the local range.
    const int64_t local = static_cast<int64_t>(expert) - params.local_offset;
    params.slot_key[slot] = (local >= 0 && local < params.num_local) ? static_cast<int32_t>(local)
                                                                     : params.num_local;
    params.slot_weight[slot] = weight;
    if (params.routing_replay_out) {
      params.routing_replay_out[slot] = static_cast<int16_t>(expert);
    }
  }
  if (params.x8 == nullptr) return;
  // x: warp w of the grid takes the (token, group) items w, w + warps, ... (warp-uniform)
  const int64_t h = params.hidden_size, groups = h / 128, items = params.num_tokens * groups;
  const int lane = threadIdx.x % 32;
  for (int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
       item < items; item += stride / 32) {
    const int64_t token = item / groups, group = item % groups, at = token * h + group * 128;
    device::warp_quantize_fp8_group(params.x + at, params.x8 + at,
                                    &params.x_scale[group * params.num_tokens + token], lane);
  }
}

}  // namespace fusedmoe::detail
