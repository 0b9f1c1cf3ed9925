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

// Model shapes of bench/README.md: (H, I, E, K).
struct Shape {
  int64_t h, inter;
  int e, k;
};
constexpr Shape kQwen30b{2048, 768, 128, 8}, kQwen235b{4096, 1536, 128, 8},
    kDeepSeek{7168, 2048, 256, 8}, kGptOss{2880, 2880, 128, 4}, kMixtral{4096, 14336, 8, 2},
    kLlama4{5120, 8192, 16, 1};

bool decode1(int64_t t, const Shape& m, int e_loc = 0, int sms = 132) {
  return use_decode_gemm1(t, m.k, m.e, e_loc ? e_loc : m.e, m.inter, sms);
}
bool decode2(int64_t t, const Shape& m, int e_loc = 0, int sms = 132) {
  return use_decode_gemm2(t, m.k, m.e, e_loc ? e_loc : m.e, m.h, sms);
}

TEST(DecodeHeuristics, MeasuredPicks) {
  // The H200 measurements behind the rule (test_gpu_decode DecodeGemmBench, bench/NOTES.md
  // "Decode GEMMs, cp.async ring"): decode vs prefill kernel us, per GEMM or the pair.
  EXPECT_TRUE(decode1(1, kQwen30b));    // 24.3 vs 31.8
  EXPECT_TRUE(decode2(1, kQwen30b));    // 14.9 vs 17.7
  EXPECT_TRUE(decode2(1, kMixtral));    // 76.7 vs 155.2
  EXPECT_TRUE(decode2(1, kLlama4));     // 37.8 vs 97.4
  EXPECT_TRUE(decode1(16, kQwen235b));  // 526.2 vs 567.4
  EXPECT_TRUE(decode1(64, kDeepSeek));  // 2924.7 vs 3044.5
  EXPECT_TRUE(decode2(64, kLlama4));    // 323.6 vs 357.6
  // 8 rows per expert under uniform routing: the pair 1501.9 vs 1524.7, but skewed routing
  // doubles the passes (bench deepseek-v3 T=256, 12.4 rows per hit expert: 4701 vs 3356): prefill.
  EXPECT_FALSE(decode1(256, kGptOss));
  EXPECT_FALSE(decode1(256, kDeepSeek));
  EXPECT_FALSE(decode1(256, kQwen30b));  // pair 416.4 vs 309.0 (16 rows: two passes)
  EXPECT_FALSE(decode2(256, kQwen30b));
  EXPECT_FALSE(decode1(64, kMixtral));  // 651.4 vs 456.5
  EXPECT_FALSE(decode2(64, kMixtral));  // 355.0 vs 234.5
  EXPECT_FALSE(decode1(256, kLlama4));  // 908.9 vs 643.7
}

TEST(DecodeHeuristics, PrefillAtLargeTAndMonotoneInT) {
  const Shape small_e1{2048, 768, 16, 8}, small_e2{7168, 2048, 32, 8};
  for (const Shape& m :
       {kQwen30b, kQwen235b, kDeepSeek, kGptOss, kMixtral, kLlama4, small_e1, small_e2}) {
    SCOPED_TRACE(m.h * 1000 + m.e);
    EXPECT_FALSE(decode1(16384, m));
    EXPECT_FALSE(decode2(16384, m));
    bool seen_prefill1 = false, seen_prefill2 = false;  // once prefill, prefill for larger T
    for (int64_t t = 1; t <= 16384; t *= 2) {
      EXPECT_FALSE(seen_prefill1 && decode1(t, m)) << "T " << t;
      EXPECT_FALSE(seen_prefill2 && decode2(t, m)) << "T " << t;
      seen_prefill1 |= !decode1(t, m);
      seen_prefill2 |= !decode2(t, m);
    }
  }
}

TEST(DecodeHeuristics, PassesOverTheWeightsCountAgainstTheDecodeKernels) {
  // E_loc = E / 8 leaves mixtral and llama4-scout one or two local experts: few prefill tiles at
  // every T, but hundreds of rows per expert make the decode kernels re-read the weights once
  // per 16 rows (H200: 0.21x of torch._grouped_mm at mixtral EP T = 16384 when only the tiles
  // counted).
  for (const int64_t t : {1024, 4096, 16384}) {
    SCOPED_TRACE(t);
    EXPECT_FALSE(decode1(t, kMixtral, 1));
    EXPECT_FALSE(decode2(t, kMixtral, 1));
    EXPECT_FALSE(decode1(t, kLlama4, 2));
    EXPECT_FALSE(decode2(t, kLlama4, 2));
  }
  // mixtral shard, GEMM2 (16 prefill tiles, a quarter of the prefill rate): 4 local rows per
  // expert at T = 16 (one pass), 16 at T = 64 (two passes: decode, H200 dev/time_decode.cu
  // whole call 131.2 us vs 225.5 with both prefill kernels), 64 at T = 256 (five: prefill; four
  // passes measured 266.6 us vs 228.3).
  EXPECT_TRUE(decode2(16, kMixtral, 1));
  EXPECT_TRUE(decode2(64, kMixtral, 1));
  EXPECT_FALSE(decode2(256, kMixtral, 1));
  EXPECT_TRUE(decode1(16, kMixtral, 1));   // one pass: decode
  EXPECT_FALSE(decode1(64, kMixtral, 1));  // two passes, 112 tiles: prefill
}

TEST(DecodeHeuristics, ExpertParallelShardsCountOnlyTheirShareOfTheSlots) {
  // qwen3-235b shard (E_loc = 16 of 128), T = 4: 3.5 local experts hit and 1.1 rows each;
  // counting every slot as local (the rule before) gave 14 hits and 2.3 rows. Either way one
  // pass: decode (H200, dev/time_decode.cu: 77.9 us with the prefill kernels, 44.0 with these).
  EXPECT_TRUE(decode1(4, kQwen235b, 16));
  EXPECT_TRUE(decode2(4, kQwen235b, 16));
  // Rows per hit expert do not shrink on a shard (T * K / E either way), only the hits and so
  // the prefill tiles: qwen3-30b at T = 256, 16 rows (two passes) and 96 GEMM1 tiles on a shard
  // of 16: the prefill kernel still fills the SMs.
  EXPECT_FALSE(decode1(256, kQwen30b, 16));
  EXPECT_FALSE(decode2(256, kQwen30b, 16));
  // More local experts than experts is no shape: the prefill GEMMs, which accept anything.
  EXPECT_FALSE(use_decode_gemm1(1, 8, 16, 32, 768, 132));
}

TEST(DecodeHeuristics, FewerSmsFavourPrefillWhenDecodeNeedsPasses) {
  // mixtral shard GEMM2 at T = 64 (16 tiles, two passes): a quarter of 132 SMs' prefill rate,
  // so decode; on 32 SMs the same 16 tiles reach the prefill kernel's full rate: prefill.
  EXPECT_TRUE(decode2(64, kMixtral, 1, 132));
  EXPECT_FALSE(decode2(64, kMixtral, 1, 32));
  // One pass: decode whatever the SM count.
  EXPECT_TRUE(decode1(1, kQwen30b, 0, 132));
  EXPECT_TRUE(decode1(1, kQwen30b, 0, 16));
}

TEST(DecodeHeuristics, WarpsPerCta) {
  EXPECT_EQ(decode_warps_per_cta(160, 132), 8);  // llama4-scout GEMM2, T=1
  EXPECT_EQ(decode_warps_per_cta(256, 132), 8);  // mixtral GEMM2, T=1
  EXPECT_EQ(decode_warps_per_cta(384, 132), 4);  // qwen3-30b GEMM1, T=1
  EXPECT_EQ(decode_warps_per_cta(1024, 132), 4);
}

// The FP8 decode kernels' 2-warp form, at the grids of the measured points (H200, 132 SMs):
// (column slices x expert slots) CTAs and K in e4m3.
TEST(DecodeHeuristics, Fp8TwoWarpsOnGridsOfManyWaves) {
  EXPECT_EQ(decode_fp8_warps_per_cta(48 * 128, 132, 2048), 2);  // qwen3-30b GEMM1, T = 16
  EXPECT_EQ(decode_fp8_warps_per_cta(64 * 128, 132, 768), 2);   // qwen3-30b GEMM2, T = 16
  EXPECT_EQ(decode_fp8_warps_per_cta(48 * 32, 132, 2048), 2);   // qwen3-30b GEMM1, T = 4
  EXPECT_EQ(decode_fp8_warps_per_cta(64 * 32, 132, 768), 2);    // qwen3-30b GEMM2, T = 4
  EXPECT_EQ(decode_fp8_warps_per_cta(512 * 4, 132, 5120), 4);   // llama4-scout GEMM1, T = 4
  EXPECT_EQ(decode_fp8_warps_per_cta(512 * 16, 132, 5120), 2);  // llama4-scout GEMM1, T = 16
  EXPECT_EQ(decode_fp8_warps_per_cta(160 * 16, 132, 8192), 4);  // llama4-scout GEMM2, T = 16
  EXPECT_EQ(decode_fp8_warps_per_cta(224 * 8, 132, 2048), 2);   // deepseek-v3 GEMM2, T = 1
  EXPECT_EQ(decode_fp8_warps_per_cta(128 * 8, 132, 7168), 4);   // deepseek-v3 GEMM1, T = 1
  // Small grids keep the BF16 rule (8 warps below 2.5 CTAs per SM).
  EXPECT_EQ(decode_fp8_warps_per_cta(48 * 8, 132, 2048), 4);  // qwen3-30b GEMM1, T = 1
  EXPECT_EQ(decode_fp8_warps_per_cta(160, 132, 8192), 8);     // llama4-scout GEMM2, T = 1
  // The thresholds scale with the SM count.
  EXPECT_EQ(decode_fp8_warps_per_cta(8 * 114, 114, 2048), 2);
  EXPECT_EQ(decode_fp8_warps_per_cta(8 * 114 - 1, 114, 2048), 4);
  EXPECT_EQ(decode_fp8_warps_per_cta(24 * 114, 114, 2049), 2);
  EXPECT_EQ(decode_fp8_warps_per_cta(24 * 114 - 1, 114, 2049), 4);
}

TEST(DecodeHeuristics, EarlyStartUpToItsThreshold) {
  EXPECT_TRUE(use_decode_early_start(8, 8));     // T = 1, K = 8
  EXPECT_TRUE(use_decode_early_start(256, 8));   // T = 32
  EXPECT_FALSE(use_decode_early_start(264, 8));  // T = 33
  EXPECT_FALSE(use_decode_early_start(0, 8));
  EXPECT_FALSE(use_decode_early_start(8, 0));
}

TEST(DecodeHeuristics, Gemm2EarlyLookupOnlyOnSmallGrids) {
  // qwen3-30b GEMM2 (H = 2048: 64 column slices of 32), expert slots min(T * K, E = 128).
  EXPECT_TRUE(use_decode_gemm2_early_lookup(8, 8, 8 * 64));       // T = 1
  EXPECT_TRUE(use_decode_gemm2_early_lookup(32, 8, 32 * 64));     // T = 4
  EXPECT_FALSE(use_decode_gemm2_early_lookup(128, 8, 128 * 64));  // T = 16
  EXPECT_TRUE(use_decode_gemm2_early_lookup(128, 8, 16 * 64));    // T = 16, shard of 16 experts
  EXPECT_TRUE(use_decode_gemm2_early_lookup(64, 1, 4096));
  EXPECT_FALSE(use_decode_gemm2_early_lookup(64, 1, 4097));
  EXPECT_FALSE(use_decode_gemm2_early_lookup(264, 8, 16 * 64));  // past the early start's slots
}

TEST(DecodeHeuristics, DegenerateShapesTakeThePrefillPath) {
  EXPECT_FALSE(use_decode_gemm1(0, 8, 128, 128, 768, 132));
  EXPECT_FALSE(use_decode_gemm1(4, 0, 128, 128, 768, 132));
  EXPECT_FALSE(use_decode_gemm1(4, 8, 0, 0, 768, 132));
  EXPECT_FALSE(use_decode_gemm1(4, 8, 128, 128, 768, 0));
  EXPECT_FALSE(use_decode_gemm(4, 8, 128, 128, 0, 128, 132));
  EXPECT_FALSE(use_decode_gemm(4, 8, 128, 128, 768, 0, 132));
}

TEST(DecodeHeuristics, GridArithmetic) {
  EXPECT_EQ(decode_expert_slots(8, 128), 8);
  EXPECT_EQ(decode_expert_slots(4096, 128), 128);
  EXPECT_EQ(ceil_div_decode(768, 16), 48);
  EXPECT_EQ(ceil_div_decode(200, 16), 13);
  EXPECT_TRUE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4096))));
  EXPECT_FALSE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4098))));
}

TEST(DecodeHeuristics, FinalizeBatchesLoadsOnOneWaveOrManyLocalRows) {
  // One wave at 4 CTAs per SM: batched whatever the rows (132 SMs: up to 528 CTAs).
  EXPECT_EQ(finalize_load_batch(1, 132, 1, 16, 16), kFinalizeLoadBatch);
  EXPECT_EQ(finalize_load_batch(528, 132, 1, 16, 2), kFinalizeLoadBatch);
  EXPECT_EQ(finalize_load_batch(529, 132, 1, 16, 16), 1);
  // Past it, batched only where K E_loc / E > 4: the full grid at K = 8 (qwen3-30b T = 4096,
  // 2 column blocks; deepseek-v3 T = 4096, 7), not at K = 4, 2, 1 (gpt-oss, mixtral,
  // llama4-scout), nor on a shard of E / 8 (K = 8: 1 row per token).
  EXPECT_EQ(finalize_load_batch(4096 * 2, 132, 8, 128, 128), kFinalizeLoadBatch);
  EXPECT_EQ(finalize_load_batch(4096 * 7, 132, 8, 256, 256), kFinalizeLoadBatch);
  EXPECT_EQ(finalize_load_batch(4096 * 3, 132, 4, 128, 128), 1);
  EXPECT_EQ(finalize_load_batch(4096 * 4, 132, 2, 8, 8), 1);
  EXPECT_EQ(finalize_load_batch(4096 * 5, 132, 1, 16, 16), 1);
  EXPECT_EQ(finalize_load_batch(4096 * 2, 132, 8, 128, 16), 1);
  // K E_loc / E just above and at 4.
  EXPECT_EQ(finalize_load_batch(4096, 132, 5, 128, 128), kFinalizeLoadBatch);
  EXPECT_EQ(finalize_load_batch(4096, 132, 8, 128, 64), 1);
  // A smaller card: one wave holds fewer CTAs.
  EXPECT_EQ(finalize_load_batch(528, 78, 1, 16, 16), 1);
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
  // Segments: S * E_loc * 4 bytes within 32 KB, 1..32, at most one per 32 slots.
  EXPECT_EQ(small_sort_segments(1, 4096), 32);
  EXPECT_EQ(small_sort_segments(256, 4096), 32);
  EXPECT_EQ(small_sort_segments(512, 4096), 16);
  EXPECT_EQ(small_sort_segments(1000, 4096), 8);
  EXPECT_EQ(small_sort_segments(1024, 4096), 8);
  EXPECT_EQ(small_sort_segments(16, 8), 1);  // an EP shard at T = 1, K = 8
  EXPECT_EQ(small_sort_segments(16, 32), 1);
  EXPECT_EQ(small_sort_segments(16, 33), 2);
  EXPECT_EQ(small_sort_segments(16, 256), 8);  // the decode early start's largest
  EXPECT_EQ(small_sort_segments(16, 1024), 32);
  EXPECT_EQ(small_sort_segments(1024, 256), 8);
  EXPECT_EQ(small_sort_segments(1024, 1000), 8);
  // At most ceil(T K / 32) segments ((S - 1) 32 < T K), so a segment holds more than one warp step
  // of slots only where the smem budget caps S; the kernel's walk covers every slot (S segments of
  // L = ceil(T K / S) slots); dynamic smem plus the kernel's ~4.2 KB of static smem stays within
  // the default 48 KB.
  for (int e_loc : {1, 16, 256, 512, 1000, 1024}) {
    for (int64_t slots = 1; slots <= kSmallSortMaxSlots; ++slots) {
      const int s = small_sort_segments(e_loc, slots);
      ASSERT_GE(s, 1) << e_loc << " " << slots;
      ASSERT_LE(s, 32) << e_loc << " " << slots;
      ASSERT_LE((int64_t(s) - 1) * 32, slots) << e_loc << " " << slots;
      const int64_t bytes = small_sort_smem_bytes(e_loc, slots);
      ASSERT_LE(bytes, kSmallSortSmemBytes) << e_loc << " " << slots;
      ASSERT_EQ(bytes, int64_t(s) * 4 * e_loc) << e_loc << " " << slots;
    }
  }
}

}  // namespace
}  // namespace fusedmoe::heuristics
