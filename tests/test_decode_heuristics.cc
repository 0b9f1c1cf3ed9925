// CPU tests of src/decode_heuristics.h: the decode/prefill choice and the decode grid arithmetic.
#include "decode_heuristics.h"

#include <cmath>
#include <cstdint>

#include <gtest/gtest.h>

namespace fusedmoe::heuristics {
namespace {

TEST(DecodeHeuristics, ExpectedRowsPerHitExpert) {
  // One slot: one row on one expert. Slots << E: ~1 row per hit expert.
  EXPECT_DOUBLE_EQ(expected_rows_per_hit_expert(1, 1, 16), 1.0);
  EXPECT_NEAR(expected_rows_per_hit_expert(1, 8, 128), 1.0, 0.03);
  // Slots >> E: every expert hit, slots / E rows each.
  EXPECT_NEAR(expected_rows_per_hit_expert(4096, 2, 8), 1024.0, 1e-6);
  // qwen3-30b at T = 16: 128 slots hit ~81 of 128 experts.
  EXPECT_NEAR(expected_rows_per_hit_expert(16, 8, 128), 128.0 / (128.0 * (1 - std::pow(127.0 / 128.0, 128))), 1e-9);
  EXPECT_EQ(expected_rows_per_hit_expert(0, 8, 128), 0.0);
  EXPECT_EQ(expected_rows_per_hit_expert(5, 8, 0), 0.0);
}

TEST(DecodeHeuristics, RowsPerExpertGrowWithTokens) {
  double previous = 0.0;
  for (int64_t t = 1; t <= 65536; t *= 2) {
    const double rows = expected_rows_per_hit_expert(t, 8, 256);
    EXPECT_GE(rows, previous) << "T " << t;
    previous = rows;
  }
}

TEST(DecodeHeuristics, DecodeAtSmallTPrefillAtLargeT) {
  struct Model { int64_t h, inter; int e, k; };
  for (const Model m : {Model{2048, 768, 128, 8}, Model{4096, 1536, 128, 8},
                        Model{7168, 2048, 256, 8}, Model{2880, 2880, 128, 4},
                        Model{4096, 14336, 8, 2}, Model{5120, 8192, 16, 1}}) {
    SCOPED_TRACE(m.h);
    EXPECT_TRUE(use_decode_gemms(1, m.k, m.e, m.h, m.inter, 132));
    EXPECT_TRUE(use_decode_gemms(4, m.k, m.e, m.h, m.inter, 132));
    EXPECT_FALSE(use_decode_gemms(16384, m.k, m.e, m.h, m.inter, 132));
    // Monotone: once prefill, prefill for every larger T.
    bool seen_prefill = false;
    for (int64_t t = 1; t <= 16384; t *= 2) {
      const bool decode = use_decode_gemms(t, m.k, m.e, m.h, m.inter, 132);
      EXPECT_FALSE(seen_prefill && decode) << "T " << t;
      seen_prefill |= !decode;
    }
  }
}

TEST(DecodeHeuristics, DegenerateShapesTakeThePrefillPath) {
  EXPECT_FALSE(use_decode_gemms(0, 8, 128, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(4, 0, 128, 2048, 768, 132));
  EXPECT_FALSE(use_decode_gemms(4, 8, 0, 2048, 768, 132));
}

TEST(DecodeHeuristics, GridArithmetic) {
  EXPECT_EQ(decode_expert_slots(8, 128), 8);
  EXPECT_EQ(decode_expert_slots(4096, 128), 128);
  EXPECT_EQ(ceil_div_decode(768, 16), 48);
  EXPECT_EQ(ceil_div_decode(200, 16), 13);
  EXPECT_TRUE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4096))));
  EXPECT_FALSE(decode_aligned_16(reinterpret_cast<const void*>(uintptr_t(4098))));
}

}  // namespace
}  // namespace fusedmoe::heuristics
