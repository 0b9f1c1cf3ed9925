// CPU reference routing against hand-derived expectations: every method of SPEC's table, ties to
// the lowest index, negative and all-negative rows, NaN logits, DeepSeekV3 group selection
// (top-2 group score, exclusion as -inf under negative biased scores, n_group = 1), bias only
// where the method reads it, fp32 vs bf16 logits and the bf16 rounding of the weights.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/host_data.h"
#include "common/tolerance.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace {

using test::Rng;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed route(RoutingMethod method, const std::vector<float>& logits, int32_t top_k,
             const std::vector<float>& bias = {}, int32_t n_group = 1, int32_t topk_group = 1,
             float scale = 1.0f) {
  Routed r{std::vector<int32_t>(top_k, -1), std::vector<float>(top_k, -7.0f)};
  ref::route_token(logits.data(), bias.empty() ? nullptr : bias.data(),
                   static_cast<int32_t>(logits.size()), top_k, method, {n_group, topk_group}, scale,
                   r.ids.data(), r.weights.data());
  return r;
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

void expect_weights(const Routed& r, const std::vector<double>& expected) {
  ASSERT_EQ(r.weights.size(), expected.size());
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_NEAR(r.weights[k], expected[k], 1e-6 * std::max(1.0, std::abs(expected[k])))
        << "slot " << k;
  }
}

TEST(ReferenceRouting, TopKOrderIsScoreThenLowestIdWithNaNLast) {
  EXPECT_TRUE(ref::ranks_before(2.0f, 5, 1.0f, 0));
  EXPECT_TRUE(ref::ranks_before(1.0f, 0, 1.0f, 5));
  EXPECT_FALSE(ref::ranks_before(1.0f, 5, 1.0f, 0));
  EXPECT_TRUE(ref::ranks_before(-kInf, 9, kNaN, 0));
  EXPECT_FALSE(ref::ranks_before(kNaN, 0, -kInf, 9));
  EXPECT_TRUE(ref::ranks_before(kNaN, 1, kNaN, 2));

  const std::vector<float> scores = {kNaN, 1.0f, kNaN, -kInf, 1.0f, -3.0f};
  std::vector<int32_t> ids(6);
  ref::select_top_k(scores.data(), 6, 6, ids.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 4, 5, 3, 0, 2}));
}

TEST(ReferenceRouting, DefaultIsSoftmaxProbabilitiesNotRenormalised) {
  const Routed r = route(RoutingMethod::kDefault, {1.0f, 3.0f, 2.0f, 3.0f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));  // tie on 3.0: lower index first
  const double sum = 2.0 + std::exp(-1.0) + std::exp(-2.0);
  expect_weights(r, {1.0 / sum, 1.0 / sum});
}

TEST(ReferenceRouting, RenormalizeOnAllNegativeRow) {
  const Routed r = route(RoutingMethod::kRenormalize, {-5.0f, -1.0f, -3.0f, -2.0f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  expect_weights(r, {sig(1.0), sig(-1.0)});  // softmax of {-1, -2}
}

TEST(ReferenceRouting, DeepSeekV3ExcludesGroupsAsMinusInfinity) {
  // Biased scores are all negative: b = sigmoid(l) - 1.5 = {-0.62, -0.77, -0.55, -1.48}.
  // Groups {0, 1} (sum -1.39) and {2, 3} (sum -2.03): group 0 is kept although expert 2 has the
  // best single score. Excluding with 0 instead of -inf would select {2, 3}.
  const std::vector<float> logits = {2.0f, 1.0f, 3.0f, -4.0f};
  const std::vector<float> bias(4, -1.5f);
  const float scale = 2.5f;
  const Routed r = route(RoutingMethod::kDeepSeekV3, logits, 2, bias, 2, 1, scale);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  const double s0 = sig(2.0), s1 = sig(1.0);  // weights use the unbiased s
  expect_weights(r, {s0 * scale / (s0 + s1), s1 * scale / (s0 + s1)});

  // One group (n_group = 1): plain top-K of b.
  const Routed one = route(RoutingMethod::kDeepSeekV3, logits, 2, bias, 1, 1, scale);
  EXPECT_EQ(one.ids, (std::vector<int32_t>{2, 0}));
  const double s2 = sig(3.0);
  expect_weights(one, {s2 * scale / (s0 + s2), s0 * scale / (s0 + s2)});
}

TEST(ReferenceRouting, DeepSeekV3GroupScoreIsSumOfTopTwo) {
  // logits 0 -> s = 0.5; b = 0.5 + bias. Group 0 b = {0.9, 0.9, -5} (top-2 sum 1.8, total -3.2),
  // group 1 b = {0.8, 0.8, 0.8} (top-2 sum 1.6, total 2.4): the top-2 rule keeps group 0.
  const std::vector<float> logits(6, 0.0f);
  const std::vector<float> bias = {0.4f, 0.4f, -5.5f, 0.3f, 0.3f, 0.3f};
  const Routed r = route(RoutingMethod::kDeepSeekV3, logits, 2, bias, 2, 1, 3.0f);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  expect_weights(r, {1.5, 1.5});  // 0.5 * 3 / (0.5 + 0.5)

  // The best single expert does not decide either: group 0 b = {1.0, 0.1, 0.1} (top-1 1.0,
  // top-2 1.1), group 1 b = {0.8, 0.8, 0.8} (top-2 1.6) -> group 1.
  const Routed second = route(RoutingMethod::kDeepSeekV3, logits, 2,
                              {0.5f, -0.4f, -0.4f, 0.3f, 0.3f, 0.3f}, 2, 1, 1.0f);
  EXPECT_EQ(second.ids, (std::vector<int32_t>{3, 4}));

  // Equal group scores: the lower group wins; K spans the kept groups (K = 4 of 2 * 2 experts).
  // b = {0.625, 0.75, 0.5, 0.5, 0.75, 0.625, 0.875, 0.5} (exact in binary); group scores
  // {1.375, 1.0, 1.375, 1.375}: groups 0 and 2 are kept, then experts 1, 4 (0.75), 0, 5 (0.625).
  const Routed tie = route(RoutingMethod::kDeepSeekV3, std::vector<float>(8, 0.0f), 4,
                           {0.125f, 0.25f, 0.0f, 0.0f, 0.25f, 0.125f, 0.375f, 0.0f}, 4, 2, 1.0f);
  EXPECT_EQ(tie.ids, (std::vector<int32_t>{1, 4, 0, 5}));
  expect_weights(tie, {0.25, 0.25, 0.25, 0.25});
}

TEST(ReferenceRouting, Llama4IsArgmaxWithSigmoidWeight) {
  const Routed r = route(RoutingMethod::kLlama4, {0.5f, 2.0f, 2.0f, -1.0f}, 1);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1}));
  expect_weights(r, {sig(2.0)});
}

TEST(ReferenceRouting, RenormalizeNaiveDividesByTheSelectedSum) {
  const Routed r = route(RoutingMethod::kRenormalizeNaive, {1.0f, 3.0f, 2.0f, 0.0f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 2}));
  expect_weights(r, {sig(1.0), sig(-1.0)});
}

TEST(ReferenceRouting, TopKReturnsRawNegativeLogits) {
  const Routed r = route(RoutingMethod::kTopK, {-3.0f, -1.0f, -2.0f, -1.5f}, 3);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3, 2}));
  expect_weights(r, {-1.0, -1.5, -2.0});
}

TEST(ReferenceRouting, SigmoidRenorm) {
  const Routed r = route(RoutingMethod::kSigmoidRenorm, {0.0f, 2.0f, -1.0f, 1.0f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  const double s1 = sig(2.0), s3 = sig(1.0);
  expect_weights(r, {s1 / (s1 + s3), s3 / (s1 + s3)});
}

TEST(ReferenceRouting, MiniMax2SelectsOnBiasedScoresAndWeighsUnbiased) {
  const std::vector<float> logits = {1.0f, 0.9f, 0.0f, -1.0f};
  const Routed r = route(RoutingMethod::kMiniMax2, logits, 2, {0.0f, 0.0f, 0.5f, 0.0f}, 1, 1, 2.0f);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 0}));  // b = {0.73, 0.71, 1.0, 0.27}
  const double s2 = sig(0.0), s0 = sig(1.0);
  expect_weights(r, {s2 * 2.0 / (s0 + s2), s0 * 2.0 / (s0 + s2)});
}

TEST(ReferenceRouting, SigmoidOnAllNegativeRow) {
  const Routed r = route(RoutingMethod::kSigmoid, {-2.0f, -1.0f, -3.0f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 0}));
  expect_weights(r, {sig(-1.0), sig(-2.0)});
}

TEST(ReferenceRouting, TopKSigmoid) {
  const Routed r = route(RoutingMethod::kTopKSigmoid, {0.3f, -0.2f, 0.7f}, 2);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 0}));
  expect_weights(r, {sig(0.7), sig(0.3)});
}

TEST(ReferenceRouting, EqualLogitsSelectTheLowestIdsForEveryMethod) {
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    const auto method = static_cast<RoutingMethod>(m);
    const int32_t K = method == RoutingMethod::kLlama4 ? 1 : 3;
    const Routed r =
        route(method, std::vector<float>(8, 0.25f), K, std::vector<float>(8, 0.0f), 4, 2);
    for (int32_t k = 0; k < K; ++k) EXPECT_EQ(r.ids[k], k) << routing_method_name(method);
  }
}

TEST(ReferenceRouting, NaNLogitsRankLowestAndIdsStayValid) {
  const Routed r = route(RoutingMethod::kTopK, {kNaN, 1.0f, kNaN, -kInf}, 3);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3, 0}));

  Rng rng(101);
  const int32_t E = 16, K = 4;
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    const auto method = static_cast<RoutingMethod>(m);
    const int32_t k_method = method == RoutingMethod::kLlama4 ? 1 : K;
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> logits = test::random_fp32(rng, E, -3.0f, 3.0f);
      for (int n = 0; n < 5; ++n) logits[rng.integer(0, E - 1)] = kNaN;
      const Routed routed =
          route(method, logits, k_method, test::random_fp32(rng, E, -0.2f, 0.2f), 4, 2);
      std::vector<bool> seen(E, false);
      for (int32_t id : routed.ids) {
        ASSERT_TRUE(id >= 0 && id < E) << routing_method_name(method) << " id " << id;
        EXPECT_FALSE(seen[id]) << routing_method_name(method) << " repeats id " << id;
        seen[id] = true;
      }
      // Where the ranking score of an expert is NaN only for a NaN logit (all methods but the
      // softmax-over-all ones, whose probabilities all become NaN, and the grouped DeepSeekV3),
      // a NaN-logit expert is never chosen while 11 numbers remain.
      const bool softmax_all =
          method == RoutingMethod::kDefault || method == RoutingMethod::kRenormalizeNaive;
      if (!softmax_all && method != RoutingMethod::kDeepSeekV3) {
        for (int32_t id : routed.ids)
          EXPECT_FALSE(std::isnan(logits[id])) << routing_method_name(method);
      }
    }
  }
}

TEST(ReferenceRouting, RenormalizeAndRenormalizeNaiveAgreeUpToRounding) {
  Rng rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const std::vector<float> logits = test::random_fp32(rng, 64, -5.0f, 5.0f);
    const Routed a = route(RoutingMethod::kRenormalize, logits, 6);
    const Routed b = route(RoutingMethod::kRenormalizeNaive, logits, 6);
    EXPECT_EQ(a.ids, b.ids);
    for (int k = 0; k < 6; ++k) EXPECT_NEAR(a.weights[k], b.weights[k], 1e-6);
  }
}

// route_reference over [T, E] with both dtypes: bf16 logits give exactly the result of fp32
// logits holding the same values; fp32 logits are not rounded to bf16 on the way.
TEST(ReferenceRouting, Bf16LogitsAreWidenedExactlyAndFp32IsHonoured) {
  Rng rng(3);
  const int64_t T = 23;
  const int32_t E = 32, K = 4;
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    const auto method = static_cast<RoutingMethod>(m);
    const int32_t k_method = method == RoutingMethod::kLlama4 ? 1 : K;
    const std::vector<uint16_t> logits_bf16 = test::random_bf16(rng, T * E, -4.0f, 4.0f);
    const std::vector<float> logits_fp32 = test::bf16_to_float(logits_bf16);
    const std::vector<uint16_t> bias_bf16 = test::random_bf16(rng, E, -0.5f, 0.5f);
    const std::vector<float> bias_fp32 = test::bf16_to_float(bias_bf16);

    LogitsRouting bf{
        logits_bf16.data(), DType::kBF16, bias_bf16.data(), DType::kBF16, method, 4, 2, 1.75f};
    LogitsRouting fp{
        logits_fp32.data(), DType::kFP32, bias_fp32.data(), DType::kFP32, method, 4, 2, 1.75f};
    const ref::Routing a = ref::route_reference(bf, T, E, k_method, DType::kFP32);
    const ref::Routing b = ref::route_reference(fp, T, E, k_method, DType::kFP32);
    EXPECT_EQ(a.ids, b.ids) << routing_method_name(method);
    EXPECT_EQ(test::first_difference(a.weights, b.weights), -1) << routing_method_name(method);
  }
  const std::vector<float> close = {1.0f, 1.001f};  // equal once rounded to bf16
  LogitsRouting fp{close.data(), DType::kFP32};
  fp.method = RoutingMethod::kTopK;
  EXPECT_EQ(ref::route_reference(fp, 1, 2, 1, DType::kFP32).ids[0], 1);
  const std::vector<uint16_t> close_bf16 = test::float_to_bf16(close);
  LogitsRouting bf{close_bf16.data(), DType::kBF16};
  bf.method = RoutingMethod::kTopK;
  EXPECT_EQ(ref::route_reference(bf, 1, 2, 1, DType::kFP32).ids[0], 0);
}

// routing_bias and routed_scaling_factor are read by DeepSeekV3 and MiniMax2 alone (SPEC): the
// bias changes their picks and nothing of the other methods; the factor multiplies their weights,
// leaves their picks, and changes nothing of the other methods.
TEST(ReferenceRouting, BiasAndScalingFactorAreReadOnlyByDeepSeekV3AndMiniMax2) {
  Rng rng(11);
  const int64_t T = 9;
  const int32_t E = 8, K = 2;
  const std::vector<float> logits = test::random_fp32(rng, T * E, -2.0f, 2.0f);
  const std::vector<float> bias = test::random_fp32(rng, E, -1.0f, 1.0f);
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    const auto method = static_cast<RoutingMethod>(m);
    const int32_t k_method = method == RoutingMethod::kLlama4 ? 1 : K;
    LogitsRouting with{logits.data(), DType::kFP32, bias.data(), DType::kFP32, method, 2, 1, 1.0f};
    LogitsRouting without = with;
    without.bias = nullptr;
    LogitsRouting scaled = with;
    scaled.routed_scaling_factor = 2.5f;
    const ref::Routing a = ref::route_reference(with, T, E, k_method, DType::kFP32);
    const ref::Routing b = ref::route_reference(without, T, E, k_method, DType::kFP32);
    const ref::Routing c = ref::route_reference(scaled, T, E, k_method, DType::kFP32);
    const bool reads_both =
        method == RoutingMethod::kDeepSeekV3 || method == RoutingMethod::kMiniMax2;
    if (reads_both) {
      EXPECT_NE(a.ids, b.ids) << routing_method_name(method) << ": the bias should matter here";
    } else {
      EXPECT_EQ(a.ids, b.ids) << routing_method_name(method);
      EXPECT_EQ(test::first_difference(a.weights, b.weights), -1) << routing_method_name(method);
    }
    EXPECT_EQ(a.ids, c.ids) << routing_method_name(method);
    for (int64_t i = 0; i < T * k_method; ++i) {
      const float want = reads_both ? a.weights[i] * 2.5f : a.weights[i];
      EXPECT_NEAR(c.weights[i], want, 1e-6f * std::fabs(want) + 1e-30f)
          << routing_method_name(method) << ", slot " << i;
    }
  }
}

TEST(ReferenceRouting, WeightsAreRoundedOnceToTheRequestedDtype) {
  Rng rng(5);
  const int64_t T = 17;
  const int32_t E = 12, K = 3;
  const std::vector<float> logits = test::random_fp32(rng, T * E, -3.0f, 3.0f);
  LogitsRouting lr{logits.data(), DType::kFP32};
  lr.method = RoutingMethod::kSigmoidRenorm;
  const ref::Routing bf = ref::route_reference(lr, T, E, K, DType::kBF16);
  const ref::Routing fp = ref::route_reference(lr, T, E, K, DType::kFP32);
  EXPECT_EQ(bf.ids, fp.ids);
  bool any_rounded = false;
  for (int64_t i = 0; i < T * K; ++i) {
    EXPECT_EQ(fp.weights[i], fp.weights_fp32[i]);
    EXPECT_EQ(bf.weights[i], test::round_to_bf16(bf.weights_fp32[i]));
    any_rounded |= bf.weights[i] != bf.weights_fp32[i];
  }
  EXPECT_TRUE(any_rounded);
}

}  // namespace
}  // namespace fusedmoe
