// Shared pieces of the timing experiments in dev/ (never linked into the library): the error
// check, a hash-based bf16 fill, the median, the six BENCH.md model shapes and normal logits.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "fusedmoe/fusedmoe.h"

#define CHECK(x)                                                             \
  do {                                                                       \
    cudaError_t e_ = (x);                                                    \
    if (e_ != cudaSuccess) {                                                 \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)

namespace fusedmoe::dev {

// Random bf16 in [-scale, scale) from a hash of the index (weights are too large to fill from the
// host quickly).
__global__ void fill_random(__nv_bfloat16* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed ^ uint32_t(i >> 32) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((h >> 8) * (2.0f / 16777216.0f) * scale - scale);
  }
}

inline float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Model {
  const char* name;
  int64_t H, I;
  int32_t E, K;
  RoutingMethod method;
};

// BENCH.md's six shapes.
inline const std::vector<Model>& bench_models() {
  static const std::vector<Model> models = {
      {"qwen3-30b-a3b", 2048, 768, 128, 8, RoutingMethod::kRenormalize},
      {"qwen3-235b-a22b", 4096, 1536, 128, 8, RoutingMethod::kRenormalize},
      {"deepseek-v3", 7168, 2048, 256, 8, RoutingMethod::kDeepSeekV3},
      {"gpt-oss-120b", 2880, 2880, 128, 4, RoutingMethod::kRenormalize},
      {"mixtral-8x7b", 4096, 14336, 8, 2, RoutingMethod::kRenormalize},
      {"llama4-scout", 5120, 8192, 16, 1, RoutingMethod::kLlama4},
  };
  return models;
}

// n standard normals (Box-Muller over an LCG), the logits of every experiment.
inline std::vector<float> normal_logits(size_t n, uint32_t state = 12345) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i += 2) {
    state = state * 1664525u + 1013904223u;
    const float u1 = ((state >> 8) + 1) * (1.0f / 16777217.0f);
    state = state * 1664525u + 1013904223u;
    const float u2 = (state >> 8) * (1.0f / 16777216.0f);
    const float r = std::sqrt(-2.0f * std::log(u1));
    v[i] = r * std::cos(6.2831853f * u2);
    if (i + 1 < n) v[i + 1] = r * std::sin(6.2831853f * u2);
  }
  return v;
}

// The inputs and arguments of one run() call of a model at T tokens, shard E_loc (local experts
// [0, E_loc)), weights supplied by the caller (shared across T): x random in [-1, 1), logits
// normal, bias zero; DeepSeekV3 with BENCH.md's groups and scale. Frees its buffers.
struct DevCall {
  MoeShape shape;
  MoeArguments args;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  void *x = nullptr, *logits = nullptr, *bias = nullptr, *out = nullptr;

  DevCall(const Model& m, int64_t tokens, int32_t e_loc, const void* w1, const void* w2,
          cudaStream_t stream) {
    shape.num_tokens = tokens;
    shape.hidden_size = m.H;
    shape.intermediate_size = m.I;
    shape.num_experts = m.E;
    shape.top_k = m.K;
    shape.local_num_experts = e_loc;
    shape.local_expert_offset = 0;
    if (!workspace_size(shape, &ws_bytes).ok()) std::exit(1);
    CHECK(cudaMalloc(&ws, ws_bytes));
    CHECK(cudaMalloc(&x, tokens * m.H * 2));
    CHECK(cudaMalloc(&logits, tokens * m.E * 4));
    CHECK(cudaMalloc(&bias, m.E * 4));
    CHECK(cudaMalloc(&out, tokens * m.H * 2));
    fill_random<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(x), tokens * m.H, 3, 1.0f);
    const std::vector<float> host_logits = normal_logits(size_t(tokens) * m.E);
    CHECK(cudaMemcpy(logits, host_logits.data(), host_logits.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(bias, 0, m.E * 4));
    args.shape = shape;
    args.hidden_states = x;
    args.gemm1_weights = w1;
    args.gemm2_weights = w2;
    args.logits.logits = logits;
    args.logits.method = m.method;
    if (m.method == RoutingMethod::kDeepSeekV3) {
      args.logits.bias = bias;
      args.logits.n_group = 8;
      args.logits.topk_group = 4;
      args.logits.routed_scaling_factor = 2.5f;
    }
    args.output = out;
  }
  ~DevCall() {
    for (void* p : {ws, x, logits, bias, out}) cudaFree(p);
  }
  DevCall(const DevCall&) = delete;
  DevCall& operator=(const DevCall&) = delete;
};

}  // namespace fusedmoe::dev
