// CPU tests of src/decode_heuristics.h: the decode/prefill choice and the decode grid arithmetic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "decode_heuristics.h"

namespace fusedmoe::heuristics {
namespace {

TEST(DecodeHeuristics, ExpectedHitExperts) {
  EXPECT_NEAR(expected_hit_experts(1, 16), 1.0, 1e-12);
  EXPECT_NEAR(expected_hit_experts(8, 128), 128.0 * (1 - std::pow(127.0 / 128.0, 8)), 1e-9);
  EXPECT_NEAR(expected_hit_experts(8192, 8), 8.0, 1e-9);  // slots >> E: every expert
  EXPECT_EQ(expected_hit_experts(0, 128), 0.0);
  EXPECT_EQ(expected_hit_experts(5, 0), 0.0);
  double previous = 0.0;
  for (int64_t slots = 1; slots <= 65536; slots *= 2) {
    const double hit = expected_hit_experts(slots, 256);
    EXPECT_GE(hit, previous) << slots;
    EXPECT_LE(hit, std::min<double>(double(slots), 256.0) + 1e-9) << slots;
    previous = hit;
  }
}

TEST(DecodeHeuristics, ExpectedPrefillTiles) {
  // qwen3-30b T=1: ~7.8 experts x 6 GEMM1 tiles (I = 768 / 128), x 8 GEMM2 tiles (2048 / 256).
  const double hit = expected_hit_experts(8, 128);
  EXPECT_NEAR(expected_prefill_tiles(1, 8, 128, 128, 768, 128), 6 * hit, 1e-9);
  EXPECT_NEAR(expected_prefill_tiles(1, 8, 128, 128, 2048, 256), 8 * hit, 1e-9);
  EXPECT_NEAR(expected_prefill_tiles(1, 8, 128, 128, 2880, 256), 12 * hit, 1e-9);  // a partial tile
}

TEST(DecodeHeuristics, ExpertParallelShareOfHitsAndSlots) {
  // A shard of E_loc = E / 8 sees 1/8 of the hits and of the slots; E_loc = E: the full values.
  EXPECT_NEAR(expected_local_hit_experts(8, 128, 16), expected_hit_experts(8, 128) / 8, 1e-12);
  EXPECT_NEAR(expected_local_hit_experts(8, 128, 128), expected_hit_experts(8, 128), 1e-12);
  EXPECT_NEAR(expected_local_slots(32, 8, 1), 4.0, 1e-12);
  EXPECT_NEAR(expected_local_slots(32, 8, 8), 32.0, 1e-12);
  EXPECT_EQ(expected_local_slots(32, 0, 0), 0.0);
  EXPECT_NEAR(expected_prefill_tiles(16, 2, 8, 1, 4096, 256), 16 * expected_hit_experts(32, 8) / 8,
              1e-9);
}

TEST(DecodeHeuristics, MeasuredPicks) {
  // The H200 measurements behind the rule (bench/NOTES.md, "Decode GEMMs (issue 6)").
  EXPECT_TRUE(use_decode_gemms(1, 8, 128, 128, 2048, 768, 132));    // qwen3-30b T=1: 1.24x
  EXPECT_TRUE(use_decode_gemms(1, 2, 8, 8, 4096, 14336, 132));      // mixtral T=1: 1.36x
  EXPECT_TRUE(use_decode_gemms(1, 1, 16, 16, 5120, 8192, 132));     // llama4-scout T=1: 1.62x
  EXPECT_FALSE(use_decode_gemms(1, 8, 256, 256, 7168, 2048, 132));  // deepseek-v3 T=1: 0.86x
  EXPECT_FALSE(use_decode_gemms(4, 2, 8, 8, 4096, 14336, 132));     // mixtral T=4: 0.86x
  EXPECT_FALSE(use_decode_gemms(4, 1, 16, 16, 5120, 8192, 132));    // llama4-scout T=4: 0.87x
  EXPECT_FALSE(use_decode_gemms(16, 8, 128, 128, 2048, 768, 132));  // qwen3-30b T=16: 0.95x
  EXPECT_FALSE(use_decode_gemms(1, 8, 128, 128, 4096, 1536, 132));  // qwen3-235b T=1: 0.94x
}

TEST(DecodeHeuristics, PrefillAtLargeTAndMonotoneInT) {
  struct Model {
    int64_t h, inter;
    int e, k;
  };
  for (const Model m :
       {Model{2048, 768, 128, 8}, Model{4096, 1536, 128, 8}, Model{7168, 2048, 256, 8},
        Model{2880, 2880, 128, 4}, Model{4096, 14336, 8, 2}, Model{5120, 8192, 16, 1},
        Model{2048, 768, 16, 8}, Model{7168, 2048, 32, 8}}) {
    SCOPED_TRACE(m.h * 1000 + m.e);
    EXPECT_FALSE(use_decode_gemms(16384, m.k, m.e, m.e, m.h, m.inter, 132));
    bool seen_prefill = false;  // once prefill, prefill for every larger T
    for (int64_t t = 1; t <= 16384; t *= 2) {
      const bool decode = use_decode_gemms(t, m.k, m.e, m.e, m.h, m.inter, 132);
      EXPECT_FALSE(seen_prefill && decode) << "T " << t;
      seen_prefill |= !decode;
    }
  }
}

TEST(DecodeHeuristics, ExpertParallelShardsWithFewExpertsTakePrefillAtLargeT) {
  // E_loc = E / 8 leaves mixtral and llama4-scout one or two local experts: their tile counts
  // stay small at every T, but hundreds of rows per expert would make the decode kernels re-read
  // the weights (H200: 0.21x of torch._grouped_mm at mixtral EP T = 16384 before this rule).
  for (const int64_t t : {1024, 4096, 16384}) {
    SCOPED_TRACE(t);
    EXPECT_FALSE(use_decode_gemms(t, 2, 8, 1, 4096, 14336, 132));  // mixtral shard
    EXPECT_FALSE(use_decode_gemms(t, 1, 16, 2, 5120, 8192, 132));  // llama4-scout shard
  }
  EXPECT_FALSE(use_decode_gemms(256, 2, 8, 1, 4096, 14336, 132));  // 64 local rows on 1 expert
  EXPECT_TRUE(use_decode_gemms(1, 2, 8, 1, 4096, 14336, 132));  // one token: one pass over weights
}

TEST(DecodeHeuristics, ExpertParallelShardsCountOnlyTheirShareOfTheSlots) {
  // mixtral shard (E = 8, E_loc = 1), T = 16: 4 local rows on one expert. Counting all T * K
  // slots as local (the rule before) gave 32 rows per hit expert and the prefill GEMMs, whose
  // GEMM2 has 16 tiles for 132 SMs. T = 64: 16 rows on average, just past one chunk by the
  // rule's arithmetic (a mean of 16 often needs a second pass over the weights): prefill.
  EXPECT_TRUE(use_decode_gemms(16, 2, 8, 1, 4096, 14336, 132));
  EXPECT_TRUE(use_decode_gemms(32, 2, 8, 1, 4096, 14336, 132));
  EXPECT_FALSE(use_decode_gemms(64, 2, 8, 1, 4096, 14336, 132));
  // More local experts than experts is no shape: the prefill GEMMs, which accept anything.
  EXPECT_FALSE(use_decode_gemms(1, 8, 16, 32, 2048, 768, 132));
}

TEST(DecodeHeuristics, FewerSmsFavourPrefill) {
  // qwen3-30b T=1 has 47 expected GEMM1 tiles: decode on 132 SMs, prefill on 66.
  EXPECT_TRUE(use_decode_gemms(1, 8, 128, 128, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(1, 8, 128, 128, 2048, 768, 66));
}

TEST(DecodeHeuristics, WarpsPerCta) {
  EXPECT_EQ(decode_warps_per_cta(160, 132), 8);  // llama4-scout GEMM2, T=1
  EXPECT_EQ(decode_warps_per_cta(256, 132), 8);  // mixtral GEMM2, T=1
  EXPECT_EQ(decode_warps_per_cta(384, 132), 4);  // qwen3-30b GEMM1, T=1
  EXPECT_EQ(decode_warps_per_cta(1024, 132), 4);
}

TEST(DecodeHeuristics, DegenerateShapesTakeThePrefillPath) {
  EXPECT_FALSE(use_decode_gemms(0, 8, 128, 128, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(4, 0, 128, 128, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(4, 8, 0, 0, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(4, 8, 128, 128, 2048, 768, 0));
}

TEST(DecodeHeuristics, GridArithmetic) {
  EXPECT_EQ(decode_expert_slots(8, 128), 8);
  EXPECT_EQ(decode_expert_slots(4096, 128), 128);
  EXPECT_EQ(ceil_div_decode(768, 16), 48);
  EXPECT_EQ(ceil_div_decode(200, 16), 13);
  EXPECT_TRUE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4096))));
  EXPECT_FALSE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4098))));
}

TEST(DecodeHeuristics, BlockRouteUpToItsThreshold) {
  EXPECT_FALSE(use_block_route(0));
  EXPECT_TRUE(use_block_route(1));
  EXPECT_TRUE(use_block_route(kBlockRouteMaxTokens));
  EXPECT_FALSE(use_block_route(kBlockRouteMaxTokens + 1));
}

TEST(DecodeHeuristics, SmallSortChoiceAndBudgets) {
  EXPECT_FALSE(use_small_sort(0));
  EXPECT_TRUE(use_small_sort(1));
  EXPECT_TRUE(use_small_sort(kSmallSortMaxSlots));
  EXPECT_FALSE(use_small_sort(kSmallSortMaxSlots + 1));
  // Segments: S * E_loc * 4 bytes within 32 KB, 1..32.
  EXPECT_EQ(small_sort_segments(1), 32);
  EXPECT_EQ(small_sort_segments(256), 32);
  EXPECT_EQ(small_sort_segments(512), 16);
  EXPECT_EQ(small_sort_segments(1000), 8);
  EXPECT_EQ(small_sort_segments(1024), 8);
  // Dynamic smem plus the kernel's ~4.2 KB of static smem stays within the default 48 KB.
  for (int e_loc = 1; e_loc <= 1024; ++e_loc) {
    const int64_t bytes = small_sort_smem_bytes(e_loc);
    ASSERT_LE(bytes, kSmallSortSmemBytes) << e_loc;
    ASSERT_EQ(bytes, int64_t(small_sort_segments(e_loc)) * 4 * e_loc) << e_loc;
  }
}

}  // namespace
}  // namespace fusedmoe::heuristics
