// Steps 1-2 of the pipeline at decode sizes in ONE CTA: routing (optional) and the stable counting
// sort that count -> offsets -> permute (sm90_expert_*.cuh, sm90_permute.cuh) do in three
// launches. Same outputs, bitwise, as that path (the result of a stable sort is unique):
//
//   routing   logits [T, E] (a warp per token, route_token) | routed ids [T, K] (a thread per
//             slot, decode_topk_slot) | nothing (slot_key already written by route_kernel)
//             ->  slot_key, slot_weight [T * K] and the optional expert_weights, replay ids
//   sort      slot_key [T * K]  ->  expert_offsets [E_loc + 1], gather_rows [T * K] (rows past
//             expert_offsets[E_loc] unwritten), permuted_idx [T * K] (row, or -1 when non-local)
//
// For T * K <= 4096 slots, E_loc <= 1024 (decode_heuristics.h: use_small_sort). 1024 threads.
// The sort: warp s owns the contiguous slots [s L, (s + 1) L), L = ceil(T K / S), S segments
// (S = min(32, 8192 / E_loc)), and a count array counts[s][E_loc] in shared memory.
//   count    warp s walks its slots 32 at a time: __match_any_sync groups lanes by key, the last
//            lane of a group adds the group size (one writer per key and step: no atomics)
//   scan     thread e: exclusive prefix of counts[.][e] over segments, a block scan of the
//            experts' totals -> expert_offsets; counts[s][e] += start of e = first row of (s, e)
//   permute  warp s walks its slots again: row = counts[s][key] + rank among lower lanes
// Rows follow (local expert, segment, position) = (local expert, slot): stable, deterministic.
// Shared memory (dynamic, the two phases alias): routing keys route_warps x 2 x E x 4 bytes
// (<= 40 KB), counts S x E_loc x 4 bytes (<= 32 KB). Barriers: 4. Limiter: latency (one CTA;
// at T = 1 the routing of one token, ~1-3 us), against ~2-4 us per launch it replaces.
#pragma once

#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "fusedmoe/fusedmoe.h"
#include "kernels/sm90_decode_topk_slot.cuh"
#include "kernels/sm90_route_token.cuh"

namespace fusedmoe::detail {

enum class SmallRouting : int32_t {
  kNone = 0,    // slot_key comes from route_kernel (the launch before)
  kLogits = 1,  // route.* : a warp per token, num_route_warps warps
  kRouted = 2,  // decode.* : a thread per slot
};

struct RouteSortSmallConfig {
  static constexpr int kThreads = 1024;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxSlots = 4096;
  static_assert(kThreads >= kMaxNumExperts, "the scan gives thread e the local expert e");
  static_assert(kMaxSlots < (1 << 30), "rows fit int32");
};

struct RouteSortSmallParams {
  SmallRouting routing;
  RouteParams route;          // when routing == kLogits
  DecodeTopKParams decode;    // when routing == kRouted
  int32_t num_route_warps;    // warps routing tokens (kLogits): route * 8 E bytes of smem
  const int32_t* slot_key;    // [T * K]: written in phase 1 unless kNone
  int64_t num_slots;          // T * K <= kMaxSlots
  int32_t top_k;
  int32_t num_local;          // E_loc <= 1024
  int32_t num_segments;       // S in [1, 32]
  int32_t* expert_offsets;    // [E_loc + 1]
  int32_t* gather_rows;       // [T * K]
  int32_t* permuted_idx;      // [T * K]
};

__global__ void __launch_bounds__(RouteSortSmallConfig::kThreads, 1)
    route_sort_small_kernel(const RouteSortSmallParams params) {
  using Config = RouteSortSmallConfig;
  using BlockScan = cub::BlockScan<int32_t, Config::kThreads>;
  __shared__ typename BlockScan::TempStorage smem_scan;
  // Phase 1: (num_route_warps, 2, E) uint32 routing keys; phase 2: (S, E_loc) int32 counts.
  extern __shared__ int32_t smem_dynamic[];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t num_local = params.num_local;
  const int64_t num_slots = params.num_slots;

  // PDL: the routing input (or slot_key) may come from the kernel before us.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers all our writes.
  cudaTriggerProgrammaticLaunchCompletion();

  // ---- phase 1: routing -------------------------------------------------------------------------
  if (params.routing == SmallRouting::kLogits) {
    if (warp < params.num_route_warps) {
      uint32_t* keys = reinterpret_cast<uint32_t*>(smem_dynamic) +
                       static_cast<size_t>(warp) * 2 * params.route.num_experts;  // (2, E)
      for (int64_t token = warp; token < params.route.num_tokens;
           token += params.num_route_warps) {
        route::route_token(params.route, keys, token, lane);
      }
    }
  } else if (params.routing == SmallRouting::kRouted) {
    for (int64_t slot = threadIdx.x; slot < num_slots; slot += Config::kThreads) {
      decode_topk_slot(params.decode, slot);
    }
  }
  __syncthreads();  // slot_key (global) visible to the block; the routing keys are dead

  // ---- phase 2a: per-segment counts -------------------------------------------------------------
  int32_t* counts = smem_dynamic;  // (S, E_loc)
  const int num_segments = params.num_segments;
  for (int i = threadIdx.x; i < num_segments * num_local; i += Config::kThreads) counts[i] = 0;
  __syncthreads();

  const int64_t seg_len = (num_slots + num_segments - 1) / num_segments;
  const int64_t seg_begin = static_cast<int64_t>(warp) * seg_len;
  const int64_t seg_end = warp < num_segments ? min(num_slots, seg_begin + seg_len) : 0;
  int32_t* my_counts = counts + static_cast<size_t>(warp) * num_local;  // (E_loc), warp < S
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int64_t base = seg_begin; base < seg_end; base += 32) {  // warp-uniform bounds
    const int64_t slot = base + lane;
    const int32_t key = slot < seg_end ? params.slot_key[slot] : num_local;
    const unsigned peers = __match_any_sync(0xFFFFFFFFu, key);
    if (key < num_local && (peers >> lane) == 1u) my_counts[key] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  // ---- phase 2b: segment starts and expert offsets ----------------------------------------------
  const int expert = threadIdx.x;
  int32_t total = 0;
  if (expert < num_local) {
    for (int s = 0; s < num_segments; ++s) {
      int32_t* entry = counts + s * num_local + expert;
      const int32_t count = *entry;
      *entry = total;
      total += count;
    }
  }
  int32_t start = 0, all_rows = 0;
  BlockScan(smem_scan).ExclusiveSum(total, start, all_rows);
  if (expert < num_local) {
    for (int s = 0; s < num_segments; ++s) counts[s * num_local + expert] += start;
    params.expert_offsets[expert] = start;
  }
  if (expert == 0) params.expert_offsets[num_local] = all_rows;
  __syncthreads();

  // ---- phase 2c: stable rows --------------------------------------------------------------------
  for (int64_t base = seg_begin; base < seg_end; base += 32) {
    const int64_t slot = base + lane;
    const bool in_range = slot < seg_end;
    const int32_t key = in_range ? params.slot_key[slot] : num_local;
    const unsigned peers = __match_any_sync(0xFFFFFFFFu, key);
    const bool is_local = key < num_local;
    const int32_t row = is_local ? my_counts[key] + __popc(peers & lower_lanes) : -1;
    __syncwarp();  // every lane read its group's next row before the last lane moves it
    if (is_local && (peers >> lane) == 1u) my_counts[key] += __popc(peers);
    __syncwarp();
    if (!in_range) continue;
    params.permuted_idx[slot] = row;
    if (is_local) params.gather_rows[row] = static_cast<int32_t>(slot / params.top_k);
  }
}

}  // namespace fusedmoe::detail
