// Internal declarations of the GPU pipeline (src/moe.cu): the workspace layout and one launcher
// per non-GEMM kernel. The grouped GEMMs have their own interface in grouped_gemm.h.
//
// Slots are the T * K (token, k) pairs, numbered slot = t * K + k. Routing turns each slot into a
// key (its local expert id, or E_loc for a non-local slot) and a weight; the permutation sorts the
// local slots by (key, slot) with a stable, deterministic counting sort in three kernels:
//   count    per chunk of kPermuteChunk slots, a key histogram  -> chunk_prefix [chunks, E_loc]
//   offsets  per expert, a scan over chunks, then over experts  -> chunk_prefix, expert_offsets
//   permute  per slot, its stable rank inside its chunk         -> gather_rows, permuted_idx
// At decode sizes (T * K <= 4096) one CTA does the same sort in one launch
// (launch_expert_sort_small); the three kernels serve the larger calls.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

// Slots handled by one block of the count and permute kernels (one thread per slot).
constexpr int kPermuteChunk = 1024;

inline int64_t num_permute_chunks(int64_t num_slots) {
  return (num_slots + kPermuteChunk - 1) / kPermuteChunk;
}

// Device pointers carved from the caller's workspace. Every region starts on a 256-byte boundary.
struct Workspace {
  int32_t* slot_key = nullptr;        // [T * K]: local expert id, or E_loc when non-local
  float* slot_weight = nullptr;       // [T * K]: the weight as used (already rounded to its dtype)
  int32_t* chunk_prefix = nullptr;    // [chunks, E_loc]: counts, then each chunk's start per expert
  int32_t* expert_offsets = nullptr;  // [E_loc + 1]: rows of local expert e are [o[e], o[e + 1])
  int32_t* gather_rows = nullptr;     // [T * K]: token of permuted row p
  int32_t* permuted_idx = nullptr;    // [T * K]: row of slot t*K+k, or -1 (when do_finalize)
  __nv_bfloat16* act = nullptr;       // [T * K, I]: the activation, expert-sorted rows
  __nv_bfloat16* y = nullptr;         // [T * K, H]: GEMM2 output (when do_finalize); before
                                      // GEMM1 runs, the scaled x of use_routing_scales_on_input
  int32_t* tile_counters = nullptr;   // [2]: the grouped GEMMs' dynamic tile claims
  // The FP8 variant's regions (null without FP8 weights): e4m3 codes and group-major scales.
  uint8_t* x8 = nullptr;        // [T, H]
  float* x_scale = nullptr;     // [H / 128, T]
  uint8_t* act8 = nullptr;      // [T * K, I]
  float* act_scale = nullptr;   // [I / 128, T * K]
};

// Bytes of the layout for this shape (shape assumed valid), and the carving of a buffer at least
// that large. Both are pure functions of the shape, monotone in num_tokens.
// fp8: with the FP8 variant's regions (FP8 weights).
size_t workspace_layout_bytes(const MoeShape& shape, bool fp8);
Workspace carve_workspace(const MoeShape& shape, void* base, bool fp8);

// ---- launchers (src/launch/launch_*.cu); each returns the launch's cudaError_t ----------------

// Outputs common to both routing launchers.
struct RoutingOutputs {
  int32_t* slot_key = nullptr;
  float* slot_weight = nullptr;
  void* expert_weights = nullptr;         // optional [T, K] in expert_weights_dtype
  DType expert_weights_dtype = DType::kBF16;
  int16_t* routing_replay_out = nullptr;  // optional [T, K]
  // FP8 with bf16 hidden states: the routing kernel also quantises x per token and 128-column
  // group, bitwise the quantiser kernel (launch_quantize_fp8), so that no kernel of its own stands
  // between the routing and the sort: launch_decode_topk at any T, launch_route at block-route
  // sizes (use_block_route; past them it fails with cudaErrorInvalidValue when x8 is given).
  // x8 == nullptr: x is not quantised here.
  const __nv_bfloat16* x = nullptr;  // [T, H]
  uint8_t* x8 = nullptr;             // [T, H] e4m3
  float* x_scale = nullptr;          // [H / 128, T]
};

// Routing from logits: one block per token up to heuristics::kBlockRouteMaxTokens tokens, else
// one warp per token; top-K by repeated argmax, the same bits either way (sm90_route.cuh).
cudaError_t launch_route(const MoeShape& shape, const LogitsRouting& logits,
                         const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream);

// Routing from packed or unpacked top-k ids: one thread per slot (sm90_decode_topk.cuh).
cudaError_t launch_decode_topk(const MoeShape& shape, const RoutedTopK& routed,
                               const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream);

// The counting sort at decode sizes in one CTA (sm90_expert_sort_small.cuh; decode_heuristics.h
// says when): the same outputs as the three kernels below, without chunk_prefix. Needs
// T * K <= kSmallSortMaxSlots; else cudaErrorInvalidConfiguration and nothing is launched.
cudaError_t launch_expert_sort_small(const int32_t* slot_key, int64_t num_slots, int32_t top_k,
                                     int32_t num_local, int32_t* expert_offsets,
                                     int32_t* gather_rows, int32_t* permuted_idx, bool enable_pdl,
                                     cudaStream_t stream);

// The three kernels of the counting sort (sm90_expert_count.cuh, sm90_expert_offsets.cuh,
// sm90_permute.cuh). permuted_idx is [T * K]; gather_rows is [T * K].
cudaError_t launch_expert_count(const int32_t* slot_key, int64_t num_slots, int32_t num_local,
                                int32_t* chunk_prefix, bool enable_pdl, cudaStream_t stream);
cudaError_t launch_expert_offsets(int64_t num_slots, int32_t num_local, int32_t* chunk_prefix,
                                  int32_t* expert_offsets, bool enable_pdl, cudaStream_t stream);
cudaError_t launch_permute(const int32_t* slot_key, int64_t num_slots, int32_t top_k,
                           int32_t num_local, const int32_t* chunk_prefix,
                           const int32_t* expert_offsets, int32_t* gather_rows,
                           int32_t* permuted_idx, bool enable_pdl, cudaStream_t stream);

// Routing weights on the input (K == 1): scaled[t, :] = bf16(x[t, :] * slot_weight[t]).
cudaError_t launch_scale_rows(const __nv_bfloat16* x, const float* slot_weight,
                              int64_t num_tokens, int64_t hidden_size, __nv_bfloat16* scaled,
                              bool enable_pdl, cudaStream_t stream);

// out[t, :] = bf16(fma chain over local k ascending of slot_weight[t*K+k] * y[permuted_idx[t*K+k]])
// (slot_weight nullptr: weights of 1, when they went into the input instead). num_experts and
// local_num_experts (E, E_loc) choose how the loads are issued (decode_heuristics.h:
// finalize_load_batch), never the bits.
cudaError_t launch_finalize(const __nv_bfloat16* y, const float* slot_weight,
                            const int32_t* permuted_idx, int64_t num_tokens, int32_t top_k,
                            int32_t num_experts, int32_t local_num_experts, int64_t hidden_size,
                            __nv_bfloat16* output, bool enable_pdl, cudaStream_t stream);

// Launch configuration shared by the launchers: optional programmatic dependent launch.
struct LaunchConfig {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute[1]{};

  LaunchConfig(dim3 grid, dim3 block, size_t smem_bytes, bool enable_pdl, cudaStream_t stream) {
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem_bytes;
    config.stream = stream;
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = enable_pdl ? 1 : 0;
    config.attrs = attribute;
    config.numAttrs = 1;
  }
};

// The current device's SM count, which the launchers' grid heuristics take.
inline cudaError_t current_num_sms(int* num_sms) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(num_sms, cudaDevAttrMultiProcessorCount, device);
}

}  // namespace fusedmoe::detail
