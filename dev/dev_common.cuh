// Shared pieces of the timing experiments in dev/ (never linked into the library): the error
// check, a hash-based bf16 fill, the median, the six bench/README.md models, normal logits, one
// call's inputs and arguments (DevCall) and its stages as separate launches (pipeline_stages).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "decode_heuristics.h"
#include "fusedmoe/fusedmoe.h"
#include "heuristics.h"
#include "launch/decode_gemm.h"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"

#include "dev/check.cuh"

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

// The six model shapes of bench/README.md.
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

// Random expert weights of a model for e_loc local experts (w1 [e_loc, 2I, H], w2 [e_loc, H, I],
// uniform in +-0.03), filled on `stream`; freed with the object.
struct DevWeights {
  __nv_bfloat16* w1 = nullptr;
  __nv_bfloat16* w2 = nullptr;

  DevWeights(const Model& m, int32_t e_loc, cudaStream_t stream) {
    const size_t w1_elems = size_t(e_loc) * 2 * m.I * m.H, w2_elems = size_t(e_loc) * m.H * m.I;
    CHECK(cudaMalloc(&w1, w1_elems * 2));
    CHECK(cudaMalloc(&w2, w2_elems * 2));
    fill_random<<<1024, 256, 0, stream>>>(w1, w1_elems, 1, 0.03f);
    fill_random<<<1024, 256, 0, stream>>>(w2, w2_elems, 2, 0.03f);
  }
  ~DevWeights() {
    cudaFree(w1);
    cudaFree(w2);
  }
  DevWeights(const DevWeights&) = delete;
  DevWeights& operator=(const DevWeights&) = delete;
};

// The inputs and arguments of one run() call of a model at T tokens, shard E_loc (local experts
// [0, E_loc)), weights supplied by the caller (shared across T): x random in [-1, 1), logits
// normal, bias zero; DeepSeekV3 with the bench's groups and scale. Frees its buffers.
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
    // On `stream`, and all finished (the caller's weight fills too) before returning: `stream` is
    // non-blocking, and a cudaMemcpy from pageable memory or a cudaMemset on the legacy stream
    // may still be landing when run() starts there (a call then routed stale logits).
    const std::vector<float> host_logits = normal_logits(size_t(tokens) * m.E);
    CHECK(cudaMemcpyAsync(logits, host_logits.data(), host_logits.size() * 4,
                          cudaMemcpyHostToDevice, stream));
    CHECK(cudaMemsetAsync(bias, 0, m.E * 4, stream));
    CHECK(cudaMemsetAsync(ws, 0, ws_bytes, stream));  // the GEMMs' tile counters start at zero
    CHECK(cudaDeviceSynchronize());
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

// The stages of one run() as separate launches, on the paths run() takes for the call's shape
// (the single-CTA sort or count + offsets + permute; decode or prefill GEMMs): route | sort |
// GEMM1 | GEMM2 | finalize, each a callable that enqueues its kernels on `stream`, PDL on or off.
// They work in the call's workspace.
struct Stages {
  static constexpr const char* kNames[5] = {"route", "sort", "gemm1", "gemm2", "finalize"};
  bool small_sort = false, decode1 = false, decode2 = false;
  std::vector<std::function<void()>> launch;
};

inline Stages pipeline_stages(const DevCall& call, const Model& m, const void* w1, const void* w2,
                              bool pdl, cudaStream_t stream) {
  const MoeShape shape = call.shape;
  const int64_t T = shape.num_tokens, slots = T * m.K;
  const int32_t e_loc = shape.local_num_experts;
  int device = 0, num_sms = 0;
  CHECK(cudaGetDevice(&device));
  CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  Stages s;
  s.small_sort = heuristics::use_small_sort(slots);
  s.decode1 = heuristics::use_decode_gemm1(T, m.K, m.E, e_loc, m.I, num_sms);
  s.decode2 = heuristics::use_decode_gemm2(T, m.K, m.E, e_loc, m.H, num_sms);
  const detail::Workspace w = detail::carve_workspace(shape, call.ws, /*fp8=*/false);
  detail::RoutingOutputs routing;
  routing.slot_key = w.slot_key;
  routing.slot_weight = w.slot_weight;
  detail::GroupedRows rows;
  rows.expert_offsets = w.expert_offsets;
  rows.num_experts = e_loc;
  rows.max_rows = slots;
  const LogitsRouting logits = call.args.logits;
  const auto* x = static_cast<const __nv_bfloat16*>(call.x);
  const auto* w1b = static_cast<const __nv_bfloat16*>(w1);
  const auto* w2b = static_cast<const __nv_bfloat16*>(w2);
  auto* out = static_cast<__nv_bfloat16*>(call.out);
  const auto gemm1 = s.decode1 ? detail::launch_decode_gemm1_swiglu : detail::launch_gemm1_swiglu;
  const auto gemm2 = s.decode2 ? detail::launch_decode_gemm2 : detail::launch_gemm2;
  const bool small_sort = s.small_sort;
  // Tile claims as run() decides (the counters were zeroed with the workspace, and every launch
  // leaves them so).
  detail::GroupedRows rows1 = rows, rows2 = rows;
  if (!s.decode1 && heuristics::grouped_claim_tiles(T, m.K, m.E, m.H)) {
    rows1.tile_counters = w.tile_counters;
  }
  if (!s.decode2 && heuristics::grouped_claim_tiles(T, m.K, m.E, m.I)) {
    rows2.tile_counters = w.tile_counters;
  }
  s.launch = {
      [=] { CHECK(detail::launch_route(shape, logits, routing, pdl, stream)); },
      [=] {
        if (small_sort) {
          CHECK(detail::launch_expert_sort_small(w.slot_key, slots, m.K, e_loc, w.expert_offsets,
                                                 w.gather_rows, w.permuted_idx, pdl, stream));
          return;
        }
        CHECK(detail::launch_expert_count(w.slot_key, slots, e_loc, w.chunk_prefix, pdl, stream));
        CHECK(detail::launch_expert_offsets(slots, e_loc, w.chunk_prefix, w.expert_offsets, pdl,
                                            stream));
        CHECK(detail::launch_permute(w.slot_key, slots, m.K, e_loc, w.chunk_prefix,
                                     w.expert_offsets, w.gather_rows, w.permuted_idx, pdl, stream));
      },
      // Plain SwiGLU, no biases: the plain epilogues (a function pointer drops the defaults).
      [=] { CHECK(gemm1(rows1, x, w.gather_rows, m.H, m.I, w1b, w.act, pdl, stream, {})); },
      [=] { CHECK(gemm2(rows2, w.act, m.I, m.H, w2b, w.y, pdl, stream, {}, nullptr)); },
      [=] {
        CHECK(detail::launch_finalize(w.y, w.slot_weight, w.permuted_idx, T, m.K, m.E, e_loc, m.H,
                                      out, pdl, stream));
      },
  };
  return s;
}

}  // namespace fusedmoe::dev
