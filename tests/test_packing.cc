// Packed top-k words (SPEC input 2) and the host bf16 conversions they carry: the masked encode
// round-trips every id in [0, E) including 0 and E - 1 with any weight (negative, -0, inf, NaN),
// where FlashInfer's sign-extending idiom corrupts the id; decode_routed_reference reads the same;
// bf16 rounding is round-to-nearest-even with NaN kept.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/host_data.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

TEST(Packing, RoundTripKeepsIdsAndWeightBits) {
  const int32_t E = 1024;
  const std::vector<int32_t> ids = {0, 1, 511, E - 2, E - 1};
  const std::vector<uint16_t> weights = {
      test::float_to_bf16_bits(0.75f),
      test::float_to_bf16_bits(-0.75f),
      0x8000 /* -0 */,
      test::float_to_bf16_bits(-std::numeric_limits<float>::infinity()),
      0xFFC1 /* -NaN */,
      test::float_to_bf16_bits(-1e-30f),
      0x0001 /* smallest subnormal */,
      0xFFFF};
  for (const int32_t id : ids) {
    for (const uint16_t w : weights) {
      const int32_t word = pack_topk(id, w);
      EXPECT_EQ(unpack_topk_id(word), id) << "weight bits " << w;
      EXPECT_EQ(unpack_topk_weight_bits(word), w) << "id " << id;
    }
  }
}

TEST(Packing, SignExtendingIdiomWouldCorruptNegativeWeights) {
  // FlashInfer's `(id << 16) | int16(w)` sign-extends a negative weight over the id bits.
  const int32_t id = 5;
  const uint16_t w = test::float_to_bf16_bits(-0.5f);
  const int32_t naive = (id << 16) | static_cast<int32_t>(static_cast<int16_t>(w));
  EXPECT_NE(unpack_topk_id(naive), id);
  EXPECT_EQ(unpack_topk_id(pack_topk(id, w)), id);
  // Negative ids (invalid, but must decode as themselves so they are non-local, not aliases).
  EXPECT_EQ(unpack_topk_id(pack_topk(-1, w)), -1);
  EXPECT_EQ(unpack_topk_id(pack_topk(-32768, 0x3F80)), -32768);
}

TEST(Packing, DecodeRoutedReferenceReadsPackedAndUnpacked) {
  test::Rng rng(17);
  const int64_t T = 13;
  const int32_t K = 4, E = 300;
  const std::vector<int32_t> ids = test::random_distinct_ids(rng, T, K, E);
  const std::vector<float> weights = test::random_fp32(rng, T * K, -2.0f, 2.0f);
  std::vector<int32_t> words(T * K);
  for (int64_t i = 0; i < T * K; ++i)
    words[i] = pack_topk(ids[i], test::float_to_bf16_bits(weights[i]));

  RoutedTopK packed;
  packed.topk_ids = words.data();
  const ref::Routing p = ref::decode_routed_reference(packed, T, K);
  EXPECT_EQ(p.ids, ids);
  EXPECT_EQ(p.weights_dtype, DType::kBF16);
  for (int64_t i = 0; i < T * K; ++i) EXPECT_EQ(p.weights[i], test::round_to_bf16(weights[i]));

  RoutedTopK unpacked_fp32{ids.data(), weights.data(), DType::kFP32};
  const ref::Routing f = ref::decode_routed_reference(unpacked_fp32, T, K);
  EXPECT_EQ(f.ids, ids);
  EXPECT_EQ(f.weights, weights);  // fp32 stays fp32

  const std::vector<uint16_t> weights_bf16 = test::float_to_bf16(weights);
  RoutedTopK unpacked_bf16{ids.data(), weights_bf16.data(), DType::kBF16};
  const ref::Routing b = ref::decode_routed_reference(unpacked_bf16, T, K);
  EXPECT_EQ(b.weights, p.weights);
}

TEST(Bf16, RoundsToNearestEven) {
  // bf16 keeps 7 fraction bits: near 1.0 the spacing is 2^-7.
  EXPECT_EQ(test::round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);  // tie -> even (1.0)
  EXPECT_EQ(test::round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(test::round_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)),
            1.0f + std::ldexp(1.0f, -7));  // just above the tie -> up
  EXPECT_EQ(test::float_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(test::float_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(test::float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7F80);  // overflows
  EXPECT_EQ(test::float_to_bf16_bits(-std::numeric_limits<float>::quiet_NaN()), 0x7FFF);
  EXPECT_TRUE(std::isnan(test::bf16_bits_to_float(0xFFC1)));
  EXPECT_EQ(test::float_to_bf16_bits(test::fp32_from_bits(0x7F800001u)), 0x7FFF);  // sNaN stays NaN

  // Random values: the result is the nearer of the two bf16 neighbours (ties to an even one).
  test::Rng rng(23);
  for (int i = 0; i < 100000; ++i) {
    const float v = std::ldexp(rng.uniform(-1.0f, 1.0f), rng.integer(-130, 120));
    const uint32_t bits = float_bits(v);
    const float down = test::fp32_from_bits(bits & 0xFFFF0000u);
    const float up = test::fp32_from_bits((bits & 0xFFFF0000u) + 0x10000u);
    const float r = test::round_to_bf16(v);
    ASSERT_TRUE(r == down || r == up) << v;
    const double d_r = std::abs(static_cast<double>(r) - v);
    const double d_other = std::abs(static_cast<double>(r == down ? up : down) - v);
    ASSERT_LE(d_r, d_other) << v;
    if (d_r == d_other) ASSERT_EQ(test::float_to_bf16_bits(r) & 1u, 0u) << v;
  }
}

}  // namespace
}  // namespace fusedmoe
