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
// At small T, route_block_kernel below (one block per token) does the same faster.
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>

#include "device/e4m3_divisor.cuh"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct RouteConfig {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMaxExperts = kMaxNumExperts;
  static_assert(kMaxTopK <= 32, "lane k holds the k-th pick: K must fit in one warp");
  static_assert(kMaxExperts <= 0xFFFF, "the expert index must fit the low half of the argmax key");
  static_assert(kWarps * 2 * kMaxExperts * 4 <= 48 * 1024,
                "per-warp key arrays must fit the default 48 KB of dynamic shared memory");

  static size_t smem_bytes(int num_experts) {
    return static_cast<size_t>(kWarps) * 2 * num_experts * sizeof(uint32_t);
  }
};

struct RouteParams {
  const void* logits;  // [T, E]
  DType logits_dtype;
  const void* bias;  // [E] or nullptr
  DType bias_dtype;
  RoutingMethod method;
  int32_t n_group;     // resolved: >= 1
  int32_t topk_group;  // resolved: in [1, n_group]
  float routed_scaling_factor;
  int64_t num_tokens;
  int32_t num_experts;
  int32_t top_k;
  int32_t local_offset;
  int32_t num_local;
  int32_t* slot_key;     // [T * K]
  float* slot_weight;    // [T * K]
  void* expert_weights;  // [T, K] or nullptr
  DType expert_weights_dtype;
  int16_t* routing_replay_out;  // [T, K] or nullptr
  // route_block_kernel only (launch/pipeline.h, RoutingOutputs): the token's x quantised to e4m3
  // too, or x8 == nullptr.
  const __nv_bfloat16* x;  // [T, hidden_size]
  int64_t hidden_size;
  uint8_t* x8;             // [T, hidden_size]
  float* x_scale;          // [hidden_size / 128, T]
};

namespace route {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr uint32_t kTakenKey = 0;  // below every score, NaN included
constexpr uint32_t kNanKey = 1;    // below -inf

__device__ __forceinline__ float load_as_float(const void* ptr, DType dtype, int64_t idx) {
  return dtype == DType::kFP32 ? static_cast<const float*>(ptr)[idx]
                               : __bfloat162float(static_cast<const __nv_bfloat16*>(ptr)[idx]);
}

// Monotone map of fp32 onto uint32: -0 and +0 map alike, NaN maps just above kTakenKey.
__device__ __forceinline__ uint32_t order_key(float value) {
  if (isnan(value)) return kNanKey;
  if (value == 0.0f) value = 0.0f;
  const uint32_t bits = __float_as_uint(value);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Inverse of order_key for number keys (a NaN key gives back a NaN).
__device__ __forceinline__ float key_value(uint32_t key) {
  if (key <= kNanKey) return __uint_as_float(0x7FC00000u);
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// exp rounded from fp64: agrees with the host's correctly rounded expf but in rare halfway cases.
__device__ __forceinline__ float exp_fp32(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + exp_fp32(-x)); }

__device__ __forceinline__ float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(kFullMask, value, offset));
  }
  return value;
}

// Sum of the first `count` lanes' values in ascending lane order (the reference's order).
__device__ __forceinline__ float sum_in_lane_order(float value, int count) {
  float sum = 0.0f;
  for (int lane = 0; lane < count; ++lane) sum += __shfl_sync(kFullMask, value, lane);
  return sum;
}

// Index of the largest key among keys[0, n) (ties: lower index); n > 0 and some key nonzero.
__device__ __forceinline__ int warp_argmax(const uint32_t* keys, int n, int lane) {
  uint64_t best = 0;
  for (int i = lane; i < n; i += 32) {
    const uint64_t candidate = (static_cast<uint64_t>(keys[i]) << 32) | (0xFFFFu - i);
    if (keys[i] != kTakenKey && candidate > best) best = candidate;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const uint64_t other = __shfl_xor_sync(kFullMask, best, offset);
    best = other > best ? other : best;
  }
  return 0xFFFF - static_cast<int>(best & 0xFFFFu);
}

// The weight of lane k's pick (x = its logit; lanes k >= K pass holds_pick = false and get 0),
// by the method's formula; max_logit and sum_exp: the softmax over all E (Default,
// RenormalizeNaive only). All 32 lanes of the warp call it (warp shuffles).
__device__ __forceinline__ float pick_weight(const RouteParams& params, float x, bool holds_pick,
                                             float max_logit, float sum_exp) {
  const int top_k = params.top_k;
  auto softmax_prob = [&](float v) { return exp_fp32(v - max_logit) / sum_exp; };
  switch (params.method) {
    case RoutingMethod::kDefault:
      return softmax_prob(x);
    case RoutingMethod::kRenormalize: {
      const float max_pick = warp_max(holds_pick ? x : -INFINITY);
      const float e = holds_pick ? exp_fp32(x - max_pick) : 0.0f;
      return e / sum_in_lane_order(e, top_k);
    }
    case RoutingMethod::kDeepSeekV3:
    case RoutingMethod::kMiniMax2: {
      const float s = holds_pick ? sigmoid(x) : 0.0f;
      const float s_sum = sum_in_lane_order(s, top_k);
      return __fmul_rn(s, params.routed_scaling_factor) / (s_sum + 1e-20f);
    }
    case RoutingMethod::kLlama4:
    case RoutingMethod::kSigmoid:
    case RoutingMethod::kTopKSigmoid:
      return sigmoid(x);
    case RoutingMethod::kRenormalizeNaive: {
      const float p = holds_pick ? softmax_prob(x) : 0.0f;
      return p / sum_in_lane_order(p, top_k);
    }
    case RoutingMethod::kTopK:
      return x;
    case RoutingMethod::kSigmoidRenorm: {
      const float s = holds_pick ? sigmoid(x) : 0.0f;
      return s / sum_in_lane_order(s, top_k);
    }
  }
  return 0.0f;
}

// Writes slot token * K + k's outputs for pick k (global expert id) with its weight.
__device__ __forceinline__ void write_pick(const RouteParams& params, int64_t token, int k,
                                           int expert, float weight) {
  const int64_t slot = token * params.top_k + k;
  const bool bf16_weights = params.expert_weights_dtype == DType::kBF16;
  const __nv_bfloat16 weight_bf16 = __float2bfloat16_rn(weight);
  if (bf16_weights) weight = __bfloat162float(weight_bf16);
  const int32_t local = expert - params.local_offset;
  params.slot_key[slot] = (local >= 0 && local < params.num_local) ? local : params.num_local;
  params.slot_weight[slot] = weight;
  if (params.expert_weights) {
    if (bf16_weights) {
      static_cast<__nv_bfloat16*>(params.expert_weights)[slot] = weight_bf16;
    } else {
      static_cast<float*>(params.expert_weights)[slot] = weight;
    }
  }
  if (params.routing_replay_out) params.routing_replay_out[slot] = static_cast<int16_t>(expert);
}

// The score of expert e whose logit is x, as an order key. exp_term: exp(x - max logit), used by
// the softmax methods only (sum_exp their sum).
__device__ __forceinline__ uint32_t score_key(RoutingMethod method, float x, float exp_term,
                                              float sum_exp, float bias) {
  float score;
  switch (method) {
    case RoutingMethod::kDefault:
    case RoutingMethod::kRenormalizeNaive:
      score = exp_term / sum_exp;
      break;
    case RoutingMethod::kSigmoidRenorm:
    case RoutingMethod::kSigmoid:
      score = sigmoid(x);
      break;
    case RoutingMethod::kDeepSeekV3:
    case RoutingMethod::kMiniMax2:
      score = sigmoid(x) + bias;
      break;
    default:
      score = x;
      break;  // Renormalize, Llama4, TopK, TopKSigmoid rank the logits
  }
  return order_key(score);
}

// DeepSeekV3's group score: the sum of the group's top-2 keys' values (its top-1 alone when a
// group has one expert).
__device__ __forceinline__ uint32_t group_key(const uint32_t* keys, int group, int group_size) {
  uint32_t top1 = kTakenKey;
  uint32_t top2 = kTakenKey;
  for (int i = 0; i < group_size; ++i) {
    const uint32_t key = keys[group * group_size + i];
    if (key > top1) {
      top2 = top1;
      top1 = key;
    } else if (key > top2) {
      top2 = key;
    }
  }
  return order_key(group_size == 1 ? key_value(top1) : key_value(top1) + key_value(top2));
}

}  // namespace route

__global__ void __launch_bounds__(RouteConfig::kThreads) route_kernel(const RouteParams params) {
  using namespace route;
  extern __shared__ uint32_t smem_keys[];  // (kWarps, 2, E): expert keys, then group keys

  // PDL: the logits may come from the kernel before us.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  const int warp_idx = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * RouteConfig::kWarps + warp_idx;
  if (token >= params.num_tokens) return;

  const int num_experts = params.num_experts;
  const RoutingMethod method = params.method;
  uint32_t* keys = smem_keys + static_cast<size_t>(warp_idx) * 2 * num_experts;  // (E)
  uint32_t* group_keys = keys + num_experts;                                     // (n_group)
  const int64_t row = token * num_experts;
  auto logit = [&](int e) { return load_as_float(params.logits, params.logits_dtype, row + e); };
  auto bias = [&](int e) {
    return params.bias ? load_as_float(params.bias, params.bias_dtype, e) : 0.0f;
  };

  // ---- scores as order keys ------------------------------------------------------------------
  const bool softmax_all =
      method == RoutingMethod::kDefault || method == RoutingMethod::kRenormalizeNaive;
  float max_logit = 0.0f;
  float sum_exp = 0.0f;
  if (softmax_all) {
    max_logit = -INFINITY;
    for (int e = lane; e < num_experts; e += 32) max_logit = fmaxf(max_logit, logit(e));
    max_logit = warp_max(max_logit);
    // exp terms parked in the key array; lane 0 sums them in ascending e, as the reference does
    // (~2.5 us at E = 1024; a tree sum would differ in the last bits).
    for (int e = lane; e < num_experts; e += 32) {
      keys[e] = __float_as_uint(exp_fp32(logit(e) - max_logit));
    }
    __syncwarp();
    if (lane == 0) {
#pragma unroll 16
      for (int e = 0; e < num_experts; ++e) sum_exp += __uint_as_float(keys[e]);
    }
    sum_exp = __shfl_sync(kFullMask, sum_exp, 0);
  }
  const bool biased = method == RoutingMethod::kDeepSeekV3 || method == RoutingMethod::kMiniMax2;
  for (int e = lane; e < num_experts; e += 32) {
    const float exp_term = softmax_all ? __uint_as_float(keys[e]) : 0.0f;
    keys[e] = score_key(method, logit(e), exp_term, sum_exp, biased ? bias(e) : 0.0f);
  }
  __syncwarp();

  // ---- DeepSeekV3: keep the topk_group best groups ---------------------------------------------
  if (method == RoutingMethod::kDeepSeekV3 && params.n_group > 1) {
    const int num_groups = params.n_group;
    const int group_size = num_experts / num_groups;
    for (int g = lane; g < num_groups; g += 32) group_keys[g] = group_key(keys, g, group_size);
    __syncwarp();
    for (int round = 0; round < params.topk_group; ++round) {
      const int best = warp_argmax(group_keys, num_groups, lane);
      __syncwarp();
      if (lane == 0) group_keys[best] = kTakenKey;  // taken = kept
      __syncwarp();
    }
    for (int e = lane; e < num_experts; e += 32) {
      // An excluded group's experts score -inf, as in the reference (a NaN still ranks lower).
      if (group_keys[e / group_size] != kTakenKey) keys[e] = order_key(-INFINITY);
    }
    __syncwarp();
  }

  // ---- top-K: lane k holds the k-th pick -------------------------------------------------------
  const int top_k = params.top_k;
  int expert = 0;
  for (int k = 0; k < top_k; ++k) {
    const int best = warp_argmax(keys, num_experts, lane);
    if (lane == k) expert = best;
    __syncwarp();
    if (lane == 0) keys[best] = kTakenKey;
    __syncwarp();
  }

  // ---- weights of the picks, outputs -----------------------------------------------------------
  const bool holds_pick = lane < top_k;
  const float x = holds_pick ? logit(expert) : 0.0f;
  const float weight = pick_weight(params, x, holds_pick, max_logit, sum_exp);
  if (holds_pick) write_pick(params, token, lane, expert, weight);
}

// ---- small T: one block per token ---------------------------------------------------------------
// The same outputs as route_kernel, bitwise, with a thread per expert: the scores in parallel,
// DeepSeekV3's kept groups and the top-K by rank (an expert's rank = the experts with a larger
// key, or an equal key and a lower index: exactly the order of route_kernel's repeated argmax),
// then warp 0 computes the weights as route_kernel's warp does. At T = 1 the warp form walks
// E / 32 keys per lane in each of K rounds (H200: ~12 us of a DeepSeekV3 call at E = 256, K = 8,
// bench/NOTES.md); here each thread reads the E keys once. Launched by launch_route when
// decode_heuristics.h's use_block_route(T) holds. Threads: E rounded up to a warp (<= 1024), and
// with x quantised (params.x8), at least a warp per 128-column group of x up to 1024;
// smem: (E + n_group) x 4 bytes.
struct RouteBlockConfig {
  static int threads(int num_experts, int64_t x_groups = 0) {
    const int64_t quantising = std::min<int64_t>(32 * x_groups, 1024);
    return static_cast<int>(std::max<int64_t>((num_experts + 31) / 32 * 32, quantising));
  }
  static size_t smem_bytes(int num_experts, int n_group) {
    return static_cast<size_t>(num_experts + n_group) * sizeof(uint32_t);
  }
};

__global__ void __launch_bounds__(1024) route_block_kernel(const RouteParams params) {
  using namespace route;
  extern __shared__ uint32_t smem_keys[];  // keys (E), then kept-group flags (n_group)
  __shared__ float warp_partial[32];
  __shared__ float block_max, block_sum;
  __shared__ int picks[32];

  cudaGridDependencySynchronize();  // PDL, as route_kernel
  cudaTriggerProgrammaticLaunchCompletion();

  const int num_experts = params.num_experts;
  const RoutingMethod method = params.method;
  const int e = threadIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool is_expert = e < num_experts;
  const int64_t token = blockIdx.x;
  uint32_t* keys = smem_keys;
  uint32_t* kept = smem_keys + num_experts;
  const int64_t row = token * num_experts;
  const float x = is_expert ? load_as_float(params.logits, params.logits_dtype, row + e) : 0.0f;
  // FP8 (params.x8): warp w also quantises the token's x groups w, w + warps, ... by the
  // quantiser's rule (warp_quantize_fp8_group), once it has routed: warp 0 after the picks, the
  // others at once. The first group's values are loaded here, under the logits' latency.
  const int64_t h = params.hidden_size, x_groups = params.x8 != nullptr ? h / 128 : 0;
  const int warps = blockDim.x / 32;
  uint2 x_first = {};
  if (warp < x_groups) {
    x_first = *reinterpret_cast<const uint2*>(params.x + token * h + warp * 128 + 4 * lane);
  }
  const auto quantize_x = [&] {
    for (int64_t group = warp; group < x_groups; group += warps) {
      const int64_t at = token * h + group * 128;
      const uint2 raw = group == warp ? x_first
                                      : *reinterpret_cast<const uint2*>(params.x + at + 4 * lane);
      device::warp_quantize_fp8_group(raw, params.x8 + at,
                                      &params.x_scale[group * params.num_tokens + token], lane);
    }
  };

  // ---- scores as order keys ------------------------------------------------------------------
  const bool softmax_all =
      method == RoutingMethod::kDefault || method == RoutingMethod::kRenormalizeNaive;
  float max_logit = 0.0f, sum_exp = 0.0f, exp_term = 0.0f;
  if (softmax_all) {
    const float m = warp_max(is_expert ? x : -INFINITY);
    if (lane == 0) warp_partial[warp] = m;
    __syncthreads();
    if (warp == 0) {
      const float all = warp_max(lane < int(blockDim.x / 32) ? warp_partial[lane] : -INFINITY);
      if (lane == 0) block_max = all;
    }
    __syncthreads();
    max_logit = block_max;
    exp_term = is_expert ? exp_fp32(x - max_logit) : 0.0f;
    if (is_expert) keys[e] = __float_as_uint(exp_term);
    __syncthreads();
    if (threadIdx.x == 0) {  // ascending e, as the reference and route_kernel
      float sum = 0.0f;
#pragma unroll 16
      for (int i = 0; i < num_experts; ++i) sum += __uint_as_float(keys[i]);
      block_sum = sum;
    }
    __syncthreads();
    sum_exp = block_sum;
  }
  const bool biased = method == RoutingMethod::kDeepSeekV3 || method == RoutingMethod::kMiniMax2;
  if (is_expert) {
    const float b = biased && params.bias ? load_as_float(params.bias, params.bias_dtype, e) : 0.0f;
    keys[e] = score_key(method, x, exp_term, sum_exp, b);
  }
  __syncthreads();

  // ---- DeepSeekV3: keep the topk_group best groups (by rank among the group keys) -----------
  if (method == RoutingMethod::kDeepSeekV3 && params.n_group > 1) {
    const int num_groups = params.n_group;
    const int group_size = num_experts / num_groups;
    uint32_t mine = 0;
    if (threadIdx.x < num_groups) mine = group_key(keys, threadIdx.x, group_size);
    __syncthreads();  // every group read the keys; reuse kept[] for the group keys
    if (threadIdx.x < num_groups) kept[threadIdx.x] = mine;
    __syncthreads();
    int rank = 0;
    if (threadIdx.x < num_groups) {
      for (int g = 0; g < num_groups; ++g) {
        rank += kept[g] > mine || (kept[g] == mine && g < int(threadIdx.x));
      }
    }
    __syncthreads();
    if (threadIdx.x < num_groups) kept[threadIdx.x] = rank < params.topk_group;
    __syncthreads();
    // An excluded group's experts score -inf, as in the reference (a NaN still ranks lower).
    if (is_expert && !kept[e / group_size]) keys[e] = order_key(-INFINITY);
    __syncthreads();
  }

  // ---- top-K by rank: picks[k] = the expert of rank k ------------------------------------------
  if (is_expert) {
    const uint32_t mine = keys[e];
    int rank = 0;
#pragma unroll 8
    for (int i = 0; i < num_experts; ++i) {
      const uint32_t other = keys[i];
      rank += other > mine || (other == mine && i < e);
    }
    if (rank < params.top_k) picks[rank] = e;
  }
  __syncthreads();

  // ---- weights of the picks, outputs (warp 0, lane k = pick k) -------------------------------
  if (warp != 0) {
    quantize_x();
    return;
  }
  const bool holds_pick = lane < params.top_k;
  const int expert = holds_pick ? picks[lane] : 0;
  const float pick_x =
      holds_pick ? load_as_float(params.logits, params.logits_dtype, row + expert) : 0.0f;
  const float weight = pick_weight(params, pick_x, holds_pick, max_logit, sum_exp);
  if (holds_pick) write_pick(params, token, lane, expert, weight);
  quantize_x();
}

}  // namespace fusedmoe::detail
