// CPU tests of src/heuristics.h: tile counts, the bound on M blocks and the persistent grid size.
#include "heuristics.h"

#include <algorithm>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace fusedmoe::heuristics {
namespace {

TEST(Heuristics, NBlocksCoverEveryColumnWithOneTileOfSlack) {
  for (int64_t n = 8; n <= 20000; n += 8) {
    const int64_t g1 = gemm1_num_n_blocks(n);
    EXPECT_GE(g1 * kGroupedHalfN, n);
    EXPECT_LT((g1 - 1) * kGroupedHalfN, n);
    const int64_t g2 = gemm2_num_n_blocks(n);
    EXPECT_GE(g2 * 2 * kGroupedHalfN, n);
    EXPECT_LT((g2 - 1) * 2 * kGroupedHalfN, n);
    EXPECT_GE(grouped_num_k_blocks(n) * kGroupedBlockK, n);
  }
  EXPECT_EQ(gemm1_num_n_blocks(2880), 23);
  EXPECT_EQ(gemm2_num_n_blocks(2880), 12);
  EXPECT_EQ(grouped_num_k_blocks(2880), 45);
}

TEST(Heuristics, MBlockBoundHoldsForRandomRaggedExperts) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 2000; ++trial) {
    const int num_experts = std::uniform_int_distribution<int>(1, 1024)(rng);
    const int max_per_expert = std::uniform_int_distribution<int>(0, 700)(rng);
    int64_t rows = 0, m_blocks = 0;
    for (int e = 0; e < num_experts; ++e) {
      const int r = std::uniform_int_distribution<int>(0, max_per_expert)(rng);
      rows += r;
      m_blocks += ceil_div(r, kGroupedBlockM);
    }
    const int64_t slack = std::uniform_int_distribution<int>(0, 100)(rng);
    EXPECT_GE(max_grouped_m_blocks(rows + slack, num_experts), m_blocks)
        << "experts " << num_experts << " rows " << rows;
  }
}

TEST(Heuristics, GridIsPersistentAndNeverLargerThanTheWork) {
  EXPECT_EQ(grouped_gemm_grid_size(132, 1 << 20, 8, 112), 132);
  EXPECT_EQ(grouped_gemm_grid_size(132, 1, 256, 12), 24);  // one row: <= 2 M blocks x 12
  EXPECT_EQ(grouped_gemm_grid_size(132, 0, 8, 12), 1);
  for (int sms : {1, 78, 132}) {
    for (int64_t rows : {1, 100, 5000}) {
      const int grid = grouped_gemm_grid_size(sms, rows, 64, 3);
      EXPECT_GE(grid, 1);
      EXPECT_LE(grid, sms);
    }
  }
}

// Tiles are claimed at up to 192 mean rows per expert (T K / E) with a reduction of 1024 or more.
TEST(Heuristics, ClaimTilesWhereWeightsStream) {
  EXPECT_TRUE(grouped_claim_tiles(4096, 8, 256, 2048));     // deepseek-v3 GEMM2, 128 rows
  EXPECT_TRUE(grouped_claim_tiles(4096, 8, 256, 7168));     // its GEMM1
  EXPECT_FALSE(grouped_claim_tiles(16384, 8, 256, 2048));   // 512 rows: compute-bound
  EXPECT_FALSE(grouped_claim_tiles(1024, 8, 128, 768));     // qwen3-30b GEMM2: k too short
  EXPECT_TRUE(grouped_claim_tiles(1024, 8, 128, 2048));     // its GEMM1, 64 rows
  EXPECT_TRUE(grouped_claim_tiles(192 * 16, 1, 16, 1024));  // exactly the bounds
  EXPECT_FALSE(grouped_claim_tiles(192 * 16 + 1, 1, 16, 1024));
  EXPECT_FALSE(grouped_claim_tiles(1024, 1, 16, 1023));
  EXPECT_FALSE(grouped_claim_tiles(64, 8, 0, 4096));  // no experts
}

}  // namespace
}  // namespace fusedmoe::heuristics
