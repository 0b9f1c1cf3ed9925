// Which configuration the grouped GEMMs use for a shape: pure host functions, tested on the CPU
// (tests/test_heuristics.cc). The kernels static_assert that their config matches these tiles.
//
// Both GEMMs share one tile: 128 permuted rows x 256 B rows (two boxes of 128), K in steps of 64.
//   GEMM1 + SwiGLU: the two boxes are up rows [j0, j0+128) and gate rows [I+j0, I+j0+128) of
//                   w1[e], so a tile yields 128 act columns; N blocks = ceil(I / 128).
//   GEMM2:          the two boxes are rows [n0, n0+128) and [n0+128, n0+256) of w2[e]; N blocks
//                   = ceil(H / 256).
// Tiles are enumerated expert by expert, N block outer, M block inner, and a persistent grid
// strides over them.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fusedmoe::heuristics {

constexpr int kGroupedBlockM = 128;      // permuted rows per tile (64 per consumer warpgroup)
constexpr int kGroupedHalfN = 128;       // rows of one B box
constexpr int kGroupedBlockK = 64;       // one 128-byte swizzle row of bf16
constexpr int kGroupedStages = 4;        // 48 KiB per stage -> 192 KiB of the 227 KiB

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// N blocks of GEMM1 (+SwiGLU): each tile produces kGroupedHalfN act columns.
constexpr int64_t gemm1_num_n_blocks(int64_t intermediate_size) {
  return ceil_div(intermediate_size, kGroupedHalfN);
}

// N blocks of GEMM2: each tile produces 2 * kGroupedHalfN output columns.
constexpr int64_t gemm2_num_n_blocks(int64_t hidden_size) {
  return ceil_div(hidden_size, 2 * kGroupedHalfN);
}

// K blocks of either GEMM (the K tail is zero-filled on load).
constexpr int64_t grouped_num_k_blocks(int64_t k) { return ceil_div(k, kGroupedBlockK); }

// Upper bound on the M blocks of all experts together when they hold at most max_rows rows:
// sum_e ceil(r_e / M) <= max_rows / M + (number of non-empty experts).
constexpr int64_t max_grouped_m_blocks(int64_t max_rows, int64_t num_experts) {
  return ceil_div(max_rows, kGroupedBlockM) + std::min(num_experts, max_rows);
}

// Whether a prefill GEMM claims its tiles dynamically (GroupedRows::tile_counters), from the
// mean rows per expert m = T K / E (uniform routing) and the GEMM's reduction length k (GEMM1: H,
// GEMM2: I). At m below the card's flop/byte balance (PEAK / BW = 790 / 4.25 ~ 186 on an H200) a
// GEMM streams its weights from HBM, and only neighbouring tiles (the M blocks of one N block)
// running together read each weight block once; claiming keeps them together where a static
// stride drifts apart. Measured (H200, bench/NOTES.md step 9): deepseek-v3 T = 4096 (m = 128)
// GEMM2 10.9 -> 7.7 GB from HBM (7.5 GB of weights), 2817 -> 2333 us, the call -13 %; at larger m
// and at short k a claim's latency (an atomic per tile) costs 1-5 %: qwen3-30b GEMM2 (k = 768)
// +5 % at m = 64.
constexpr int64_t kClaimTilesMaxMeanRows = 192;
constexpr int64_t kClaimTilesMinK = 1024;
constexpr bool grouped_claim_tiles(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                                   int64_t k) {
  return num_experts > 0 && k >= kClaimTilesMinK &&
         num_tokens * top_k <= kClaimTilesMaxMeanRows * num_experts;
}

// Persistent grid: one CTA per SM, fewer when the whole problem has fewer tiles.
constexpr int grouped_gemm_grid_size(int num_sms, int64_t max_rows, int64_t num_experts,
                                     int64_t num_n_blocks) {
  const int64_t max_tiles = max_grouped_m_blocks(max_rows, num_experts) * num_n_blocks;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_sms, max_tiles)));
}

}  // namespace fusedmoe::heuristics
