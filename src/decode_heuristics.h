// When the pipeline takes the decode GEMMs (launch/decode_gemm.h) instead of the prefill ones
// (launch/grouped_gemm.h), and the decode launchers' grid arithmetic: pure host functions of
// host-known values, tested on the CPU (tests/test_decode_heuristics.cc).
//
// The decode kernels stream each hit expert's weights once per chunk of 16 rows, on every SM
// (a CTA per 32 weight rows); the prefill kernels run one 128-row x 256-weight-row tile per SM
// at a time. Measured in bench/NOTES.md ("Decode GEMMs (issue 6)"), which sets the thresholds.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fusedmoe::heuristics {

// Rows of one expert that the decode kernels keep in registers per pass over its weights.
constexpr int64_t kDecodeRowChunk = 16;

constexpr int64_t ceil_div_decode(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Expert slots of the decode grid: at most min(E_loc, rows) experts can hold a row.
constexpr int64_t decode_expert_slots(int64_t max_rows, int64_t num_experts) {
  return std::min(max_rows, num_experts);
}

inline bool decode_aligned_16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Warps per CTA of the decode kernels (they split K): 8 when the grid at 4 warps would place
// fewer than 2.5 CTAs per SM, else 4. H200: llama4-scout GEMM2 at T = 1 (160 CTAs) 51.8 -> 36.9
// us with 8; qwen3-30b GEMM1 at T = 1 (384 CTAs) 25.6 -> 27.3 us, so 4 there.
constexpr int decode_warps_per_cta(int64_t num_ctas, int num_sms) {
  return 2 * num_ctas < 5 * int64_t(num_sms) ? 8 : 4;
}

// Warps per CTA of the FP8 decode kernels (kernels/sm90_decode_gemm_fp8.cuh): 2 (8 CTAs per SM)
// on grids of many waves, where a CTA's fixed cost (its lookup, the ring's ramp, the reduction
// and the epilogue) weighs most: from kDecodeFp8TwoWarpMinCtasPerSm CTAs per SM, or from
// kDecodeFp8TwoWarpShortKMinCtasPerSm when K is at most kDecodeFp8TwoWarpShortK e4m3 (<= 8
// iterations per warp at 4 warps); else decode_warps_per_cta. Measured on an H200 (bench/NOTES.md,
// "Finalize loads, the FP8 quantiser's trigger and 2-warp FP8 decode CTAs"), 2 warps against 4:
// qwen3-30b T = 16 1.144x (GEMM1 46 and GEMM2 62 CTAs per SM), T = 4 1.095x (12 and 16 per SM,
// K = 2048 and 768); llama4-scout T = 4 0.986x with its GEMM1 on 2 warps (16 per SM, K = 5120).
// The BF16 decode kernels lost with 2 warps (0.97-0.98x at llama4-scout and deepseek-v3) and keep
// 4 and 8.
constexpr int64_t kDecodeFp8TwoWarpMinCtasPerSm = 24;
constexpr int64_t kDecodeFp8TwoWarpShortKMinCtasPerSm = 8;
constexpr int64_t kDecodeFp8TwoWarpShortK = 2048;

constexpr int decode_fp8_warps_per_cta(int64_t num_ctas, int num_sms, int64_t k) {
  const int64_t sms = num_sms;
  const bool many_waves =
      num_ctas >= kDecodeFp8TwoWarpMinCtasPerSm * sms ||
      (k <= kDecodeFp8TwoWarpShortK && num_ctas >= kDecodeFp8TwoWarpShortKMinCtasPerSm * sms);
  return many_waves ? 2 : decode_warps_per_cta(num_ctas, num_sms);
}

// Experts hit on average when `slots` slots pick uniformly among `num_experts`:
// E (1 - (1 - 1/E)^slots).
inline double expected_hit_experts(int64_t slots, int num_experts) {
  if (slots <= 0 || num_experts <= 0) return 0.0;
  const double e = num_experts;
  return e * -std::expm1(double(slots) * std::log1p(-1.0 / e));
}

// Under expert parallelism (uniform routing over all E experts, E_loc of them local): local
// experts hit, E_loc / E of the experts hit, and slots landing on a local expert, E_loc / E of
// all. With E_loc = E both are the full-grid values.
inline double expected_local_hit_experts(int64_t slots, int num_experts, int local_num_experts) {
  if (num_experts <= 0) return 0.0;
  return expected_hit_experts(slots, num_experts) * local_num_experts / num_experts;
}
inline double expected_local_slots(int64_t slots, int num_experts, int local_num_experts) {
  if (num_experts <= 0) return 0.0;
  return double(slots) * local_num_experts / num_experts;
}

// Prefill GEMM tiles (launch/grouped_gemm.h, heuristics.h: 128 rows x 128 act columns for
// GEMM1, x 256 output columns for GEMM2) over the expected local hit experts, one M block each.
inline double expected_prefill_tiles(int64_t num_tokens, int top_k, int num_experts,
                                     int local_num_experts, int64_t n_columns, int64_t tile_n) {
  return expected_local_hit_experts(num_tokens * top_k, num_experts, local_num_experts) *
         double(ceil_div_decode(n_columns, tile_n));
}

// The pipeline's choice for one GEMM: true = its decode kernel (launch_decode_gemm1_swiglu or
// launch_decode_gemm2), false = its prefill kernel; each GEMM is chosen on its own (both kinds
// read and write the same act layout). Both kernels stream the hit experts' weights; the rule
// compares the share of the streaming rate each reaches:
//   decode:  1 / passes, where passes = the times it reads an expert's weights, once per chunk
//            of kDecodeRowChunk rows, estimated at the mean rows per hit expert m under uniform
//            routing plus 3 sqrt(m): the busier experts set the time, and real routing is
//            skewed (the benchmark's deepseek-v3 with its bias hits 165 of 256 experts at
//            T = 256, 12.4 rows each where uniform routing gives 8; with m + 2 sqrt(m) that point
//            took the decode kernels at 4701 us against 3356 for the prefill ones);
//   prefill: min(1, tiles / (num_sms / 2)), its tiles (128 rows x tile_n columns per hit expert)
//            filling the SMs.
// Decode when 1 / passes >= the prefill share (ties to decode: at one pass it streams 2-5 %
// faster). n_columns / tile_n: the prefill kernel's N and tile (GEMM1: I act columns in tiles
// of 128; GEMM2: H in tiles of 256). num_experts: E (routed ids span all E); local_num_experts:
// E_loc (a shard sees E_loc / E of the slots and hits).
// Measured (H200, test_gpu_decode DecodeGemmBench, decode vs prefill kernel us per GEMM,
// bench/NOTES.md "Decode, session 3"): one pass, decode as fast or faster at every model for
// T <= 64 (qwen3-235b T=16 GEMM1 526 vs 567, deepseek-v3 T=64 2925 vs 3045, llama4-scout T=64
// GEMM2 324 vs 358; gpt-oss T=1 GEMM1 52.0 vs 50.9 the one loss, 2 %) and at T = 256 where m = 8
// under uniform routing (gpt-oss 1502 vs 1525 us the pair: 1.5 % given up to the skew margin
// below); two passes lose by 30-50 % once
// the prefill tiles fill the SMs (qwen3-30b T=256, m = 16: 416 vs 309 us the pair; mixtral T=64:
// 1001 vs 679) but win where they do not (the mixtral shard, E_loc = 1, T = 64: GEMM2 16 tiles).
// So decode up to m ~ 5 rows per hit expert (T <= 64 on the full grid of every bench model
// but mixtral, whose 8 experts hold 16 rows each at T = 64).
inline bool use_decode_gemm(int64_t num_tokens, int top_k, int num_experts, int local_num_experts,
                            int64_t n_columns, int64_t tile_n, int num_sms) {
  if (num_tokens <= 0 || top_k <= 0 || local_num_experts <= 0 || num_sms <= 0 ||
      num_experts < local_num_experts || n_columns <= 0 || tile_n <= 0) {
    return false;
  }
  const int64_t slots = num_tokens * top_k;
  const double hits = expected_local_hit_experts(slots, num_experts, local_num_experts);
  const double m = expected_local_slots(slots, num_experts, local_num_experts) / hits;
  const double passes = std::max(1.0, std::ceil((m + 3.0 * std::sqrt(m)) / kDecodeRowChunk));
  const double tiles =
      expected_prefill_tiles(num_tokens, top_k, num_experts, local_num_experts, n_columns, tile_n);
  const double prefill_share = std::min(1.0, tiles / (0.5 * num_sms));
  return passes * prefill_share <= 1.0;
}

// GEMM1 + SwiGLU (prefill tiles: 128 act columns) and GEMM2 (prefill tiles: 256 columns of H).
inline bool use_decode_gemm1(int64_t num_tokens, int top_k, int num_experts, int local_num_experts,
                             int64_t inter, int num_sms) {
  return use_decode_gemm(num_tokens, top_k, num_experts, local_num_experts, inter, 128, num_sms);
}
inline bool use_decode_gemm2(int64_t num_tokens, int top_k, int num_experts, int local_num_experts,
                             int64_t hidden, int num_sms) {
  return use_decode_gemm(num_tokens, top_k, num_experts, local_num_experts, hidden, 256, num_sms);
}

// ---- decode GEMMs that start without the sort's outputs (kernels/sm90_decode_mainloop.cuh) -----
// Up to kDecodeEarlyMaxSlots (kernels/sm90_decode_mainloop.cuh) slots, each decode GEMM CTA reads
// its expert, rows and tokens from the slot keys itself (one warp, 8 keys per lane): GEMM1 streams
// its weights while the sort runs, GEMM2 as soon as its wait returns (bench/NOTES.md, "Decode and
// FP8 variants, measured"). A pure function of T * K: a graph keeps its path.
constexpr int64_t kDecodeEarlyStartMaxSlots = 256;

constexpr bool use_decode_early_start(int64_t num_slots, int top_k) {
  return num_slots > 0 && num_slots <= kDecodeEarlyStartMaxSlots && top_k > 0;
}

// GEMM2 takes the early lookup (and, with it, issues its first weights before its PDL wait) only
// while its grid is small: every CTA of the grid, hit or not, runs the lookup before the wait,
// beside GEMM1's last CTAs, where waiting costs them nothing. H200 (bench/NOTES.md, "Ping-pong
// prefill GEMMs and GEMM2's weights before the wait, measured"): qwen3-30b T = 1 (8 x 64 = 512
// CTAs) 35.8 -> 34.1 us with it; T = 16 (128 x 64 = 8192 CTAs) 208.4 us with it, 203.1 without.
// grid_ctas: column slices x expert slots (launch/decode_gemm_launch.h).
constexpr int64_t kDecodeGemm2EarlyMaxCtas = 4096;

constexpr bool use_decode_gemm2_early_lookup(int64_t num_slots, int top_k, int64_t grid_ctas) {
  return use_decode_early_start(num_slots, top_k) && grid_ctas <= kDecodeGemm2EarlyMaxCtas;
}

// ---- step 4: the finalize's loads (kernels/sm90_finalize.cuh) ----------------------------------
// A finalize thread loads its token's local rows of y (16 bytes of each) and writes one output
// piece. Issued kFinalizeLoadBatch rows at a time (101 registers: 4 CTAs of 128 threads per SM),
// a token's K rows cost one L2 round trip instead of K (H200, bench/NOTES.md "Finalize loads, the
// FP8 quantiser's trigger and 2-warp FP8 decode CTAs": 1.00-1.05x at T = 1-64); one row at a time
// (32 registers, 16 CTAs per SM) four times the threads are in flight. So the batch where the
// grid fits one wave at its occupancy (the decode sizes it was measured at), and where a token
// has more local rows than the occupancy costs, K E_loc / E > 4 under uniform routing (the full
// grid at K = 8); one row at a time elsewhere: at K <= 4, and on an expert-parallel shard (E_loc =
// E / 8), whose finalize mostly writes zero rows, the batch left the DRAM 25-47 % busy at T = 4096
// (ncu) and the EP grid at T >= 1024 0.85-0.97x of its earlier time (bench/NOTES.md, "The
// finalize's occupancy"). Either form sums the same bits. num_ctas: the finalize's grid, T x
// ceil(H / 1024) with 16-byte columns.
constexpr int kFinalizeLoadBatch = 8;
constexpr int64_t kFinalizeBatchedCtasPerSm = 4;
constexpr int64_t kFinalizeBatchedMinLocalRows = 4;

constexpr int finalize_load_batch(int64_t num_ctas, int num_sms, int top_k, int num_experts,
                                  int local_num_experts) {
  const bool one_wave = num_ctas <= kFinalizeBatchedCtasPerSm * int64_t(num_sms);
  const bool many_rows =
      int64_t(top_k) * local_num_experts > kFinalizeBatchedMinLocalRows * int64_t(num_experts);
  return one_wave || many_rows ? kFinalizeLoadBatch : 1;
}

// ---- step 2 at decode sizes: the counting sort in one CTA ---------------------------------------
// (kernels/sm90_expert_sort_small.cuh). At T * K <= kSmallSortMaxSlots one 1024-thread CTA sorts
// all slots instead of count -> offsets -> permute (H200, graph replay: -1 to -13 us at T = 64 and
// 256, bench/NOTES.md "Decode latency"). A pure function of T * K: a captured graph keeps its path.
constexpr int64_t kSmallSortMaxSlots = 4096;
constexpr int kSmallSortThreads = 1024;
constexpr int64_t kSmallSortSmemBytes = 32 * 1024;  // the (S, E_loc) counts; + 4 KB static

constexpr bool use_small_sort(int64_t num_slots) {
  return num_slots > 0 && num_slots <= kSmallSortMaxSlots;
}

// ---- step 1 at decode sizes: routing from logits with a block per token ------------------------
// (kernels/sm90_route.cuh: route_block_kernel, a thread per expert) instead of a warp per token
// (route_kernel), up to kBlockRouteMaxTokens tokens. Same outputs, bitwise; a pure function of T.
constexpr int64_t kBlockRouteMaxTokens = 256;

constexpr bool use_block_route(int64_t num_tokens) {
  return num_tokens > 0 && num_tokens <= kBlockRouteMaxTokens;
}

// Segments of the sort: warp s owns a contiguous run of slots and a (E_loc) count array. As many
// as the smem budget and the warps allow, but no more than ceil(T K / 32), the warp steps the
// slots take (each segment then holds L <= 32 slots, one step): every thread of the scan walks
// all segments' counts of its expert twice,
// so at T K = 8 one segment instead of 32 takes ~60 dependent shared-memory steps off the sort,
// which an expert-parallel shard with nothing local waits for (bench/NOTES.md, "The EP fixed
// cost"). The rows do not depend on S (a stable sort's result is unique).
constexpr int small_sort_segments(int num_local, int64_t num_slots) {
  const int64_t by_smem = kSmallSortSmemBytes / (4 * int64_t(std::max(num_local, 1)));
  const int64_t by_slots = (std::max<int64_t>(num_slots, 1) + 31) / 32;
  return int(std::clamp<int64_t>(std::min(by_smem, by_slots), 1, kSmallSortThreads / 32));
}

// Dynamic shared memory of the sort CTA.
constexpr int64_t small_sort_smem_bytes(int num_local, int64_t num_slots) {
  return int64_t(small_sort_segments(num_local, num_slots)) * 4 * std::max(num_local, 1);
}

}  // namespace fusedmoe::heuristics
