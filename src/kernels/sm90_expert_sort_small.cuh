// Counting sort at decode sizes in ONE CTA: what count -> offsets -> permute (sm90_expert_*.cuh,
// sm90_permute.cuh) do in three launches. Same outputs, bitwise (a stable sort's result is unique):
//
//   slot_key [T * K] (local expert id, or E_loc for a non-local slot)
//   ->  expert_offsets [E_loc + 1], gather_rows [T * K] (rows past expert_offsets[E_loc] are not
//       written), permuted_idx [T * K] (row of slot t*K+k, or -1 when non-local)
//
// For T * K <= 4096 slots, E_loc <= 1024 (decode_heuristics.h: use_small_sort). 1024 threads.
// Warp s owns the contiguous slots [s L, (s + 1) L), L = ceil(T K / S), S = min(32, 8192 / E_loc,
// ceil(T K / 32)) segments (decode_heuristics.h), and a count array counts[s][E_loc] in shared
// memory:
//   count    warp s walks its slots 32 at a time: __match_any_sync groups lanes by key, the last
//            lane of a group adds the group size (one writer per key and step: no atomics)
//   scan     thread e: exclusive prefix of counts[.][e] over segments, a block scan of the
//            experts' totals -> expert_offsets; counts[s][e] += start of e = first row of (s, e)
//   permute  warp s walks its slots again: row = counts[s][key] + rank among lower lanes
// Rows follow (local expert, segment, position) = (local expert, slot): stable, deterministic.
// Shared memory: S x E_loc x 4 bytes dynamic (<= 32 KB) + the block scan's 4 KB. Barriers: 3,
// against the permute kernel's 32 per chunk. Limiter: latency (one CTA, two passes of
// ceil(L / 32) warp steps: 2 at T * K = 2048).
//
// Routing stays in its own kernel (route_kernel / decode_topk_kernel): routing the logits of
// T <= 32 tokens inside this CTA (a warp per token, 5d3a322) measured 3-7 us SLOWER at T = 4-16
// and 4-6 us slower at T = 1 before the decode GEMMs than a separate route_kernel (H200,
// bench/NOTES.md "Decode latency"); likely cause at T >= 4: route is issue-bound and the
// tokens' warps then share one SM instead of one SM per 4 tokens (not profiled).
#pragma once

#include <cstdint>

#include <cub/block/block_scan.cuh>

#include "device/expert_scan.cuh"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct ExpertSortSmallConfig {
  static constexpr int kThreads = 1024;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxSlots = 4096;
  static_assert(kThreads >= kMaxNumExperts, "the scan gives thread e the local expert e");
};

struct ExpertSortSmallParams {
  const int32_t* slot_key;   // [T * K]
  int64_t num_slots;         // T * K <= kMaxSlots
  int32_t top_k;
  int32_t num_local;         // E_loc <= 1024
  int32_t num_segments;      // S in [1, kWarps], S * E_loc * 4 bytes of dynamic smem
  int32_t* expert_offsets;   // [E_loc + 1]
  int32_t* gather_rows;      // [T * K]
  int32_t* permuted_idx;     // [T * K]
};

__global__ void __launch_bounds__(ExpertSortSmallConfig::kThreads, 1)
    expert_sort_small_kernel(const ExpertSortSmallParams params) {
  using Config = ExpertSortSmallConfig;
  using BlockScan = cub::BlockScan<int32_t, Config::kThreads>;
  __shared__ typename BlockScan::TempStorage smem_scan;
  extern __shared__ int32_t smem_counts[];  // (S, E_loc)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t num_local = params.num_local;
  const int64_t num_slots = params.num_slots;
  const int num_segments = params.num_segments;

  // ---- prologue (reads nothing a predecessor writes): zero the counts --------------------------
  for (int i = threadIdx.x; i < num_segments * num_local; i += Config::kThreads) {
    smem_counts[i] = 0;
  }
  __syncthreads();

  // PDL: slot_key comes from the routing kernel.
  cudaGridDependencySynchronize();
  // The next kernel may start its prologue now; its own wait covers all our writes. The trigger
  // stays after the wait: the decode GEMM1's early start (use_decode_early_start) reads slot_key
  // and x (x' of launch_scale_rows) before its own wait, so that everything before this kernel
  // must be complete when the GEMM1 launches.
  cudaTriggerProgrammaticLaunchCompletion();

  // ---- count: per segment, per expert -----------------------------------------------------------
  const int64_t seg_len = (num_slots + num_segments - 1) / num_segments;
  const int64_t seg_begin = static_cast<int64_t>(warp) * seg_len;
  const int64_t seg_end = warp < num_segments ? min(num_slots, seg_begin + seg_len) : 0;
  int32_t* my_counts = smem_counts + static_cast<size_t>(warp) * num_local;  // (E_loc), warp < S
  const unsigned lower_lanes = (1u << lane) - 1u;
  for (int64_t base = seg_begin; base < seg_end; base += 32) {  // warp-uniform bounds
    const int64_t slot = base + lane;
    const int32_t key = slot < seg_end ? params.slot_key[slot] : num_local;
    const unsigned peers = __match_any_sync(0xFFFFFFFFu, key);
    if (key < num_local && (peers >> lane) == 1u) my_counts[key] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  // ---- scan: segment starts and expert offsets --------------------------------------------------
  const int expert = threadIdx.x;
  const int32_t total =
      expert < num_local ? device::scan_expert_counts(smem_counts, num_segments, num_local, expert) : 0;
  int32_t start = 0, all_rows = 0;
  BlockScan(smem_scan).ExclusiveSum(total, start, all_rows);
  if (expert < num_local) {
    for (int s = 0; s < num_segments; ++s) smem_counts[s * num_local + expert] += start;
    params.expert_offsets[expert] = start;
  }
  if (expert == 0) params.expert_offsets[num_local] = all_rows;
  __syncthreads();

  // ---- permute: stable rows ---------------------------------------------------------------------
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
