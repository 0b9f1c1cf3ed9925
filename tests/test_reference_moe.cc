// The CPU reference of the whole operator: its math vs an independent fp64 model (docs/STYLE.md
// tolerance rule), and the properties the design promises bitwise: the permutation order, the
// do_finalize = false triple reducing to the output, routed input reproducing the logits path,
// expert-parallel shards summing to the unsharded output, zero rows for tokens with no local
// expert, out-of-range ids as non-local, T = 0, and inputs never written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/double_model.h"
#include "common/host_data.h"
#include "common/moe_case.h"
#include "common/tolerance.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace {

using test::MoeCase;
using test::MoeCaseConfig;
using test::RoutingInput;

using test::DoubleModel;
using test::moe_double;

// Runs run_reference on the case and checks that no input changed.
void run_and_check_inputs(MoeCase& c) {
  const uint64_t before = c.input_checksum();
  const Status status = run_reference(c.arguments());
  ASSERT_TRUE(status.ok()) << status.message;
  EXPECT_EQ(c.input_checksum(), before) << "run_reference wrote into an input";
}

MoeCaseConfig config(int64_t T, int64_t H, int64_t I, int32_t E, int32_t K, RoutingInput input,
                     uint64_t seed) {
  MoeCaseConfig cfg;
  cfg.shape = test::make_shape(T, H, I, E, K);
  cfg.routing_input = input;
  cfg.seed = seed;
  return cfg;
}

TEST(ReferenceMoe, PermutationIsStableByLocalExpert) {
  // T = 3, K = 2; experts 1 and 2 are local (offset 1, E_loc 2); 5 and 0 are not.
  const std::vector<int32_t> ids = {2, 0, 2, 5, 1, 2};
  const ref::Permutation p = ref::permute_reference(ids, 1, 2);
  EXPECT_EQ(p.expert_offsets, (std::vector<int32_t>{0, 1, 4}));
  EXPECT_EQ(p.permuted_slots, (std::vector<int32_t>{4, 0, 2, 5}));
  EXPECT_EQ(p.expanded_idx_to_permuted_idx, (std::vector<int32_t>{1, -1, 2, -1, 0, 3}));
}

struct MathCase {
  const char* name;
  int64_t T, H, I;
  int32_t E, K, offset, local;
  RoutingInput input;
  RoutingMethod method;
  DType dtype;  // logits dtype, or the unpacked weights dtype
};

TEST(ReferenceMoe, MatchesDoublePrecisionModel) {
  const MathCase cases[] = {
      {"renormalize fp32", 19, 64, 40, 6, 3, 0, 6, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, DType::kFP32},
      {"deepseek bf16 window", 33, 128, 96, 16, 4, 4, 8, RoutingInput::kLogits,
       RoutingMethod::kDeepSeekV3, DType::kBF16},
      {"topk negative weights", 7, 2880, 64, 4, 2, 0, 4, RoutingInput::kLogits,
       RoutingMethod::kTopK, DType::kFP32},
      {"one of everything", 1, 8, 8, 1, 1, 0, 1, RoutingInput::kLogits, RoutingMethod::kDefault,
       DType::kBF16},
      {"packed", 19, 64, 48, 8, 2, 2, 4, RoutingInput::kPacked, RoutingMethod::kDefault,
       DType::kBF16},
      {"unpacked fp32", 12, 96, 40, 8, 3, 0, 8, RoutingInput::kUnpacked, RoutingMethod::kDefault,
       DType::kFP32},
      {"unpacked bf16", 12, 96, 40, 8, 3, 3, 5, RoutingInput::kUnpacked, RoutingMethod::kDefault,
       DType::kBF16},
      {"989 tokens", 989, 16, 8, 32, 8, 8, 16, RoutingInput::kLogits,
       RoutingMethod::kRenormalizeNaive, DType::kBF16},
  };
  uint64_t seed = 100;
  for (const MathCase& mc : cases) {
    SCOPED_TRACE(mc.name);
    MoeCaseConfig cfg = config(mc.T, mc.H, mc.I, mc.E, mc.K, mc.input, ++seed);
    cfg.shape.local_expert_offset = mc.offset;
    cfg.shape.local_num_experts = mc.local;
    cfg.method = mc.method;
    cfg.logits_dtype = mc.dtype;
    cfg.routed_weights_dtype = mc.dtype;
    cfg.with_bias = mc.method == RoutingMethod::kDeepSeekV3;
    cfg.n_group = mc.method == RoutingMethod::kDeepSeekV3 ? 4 : 0;
    cfg.topk_group = mc.method == RoutingMethod::kDeepSeekV3 ? 2 : 0;
    cfg.routed_scaling_factor = 2.5f;
    cfg.with_replay = true;
    MoeCase c(cfg);

    std::vector<int32_t> ids;
    std::vector<float> weights;
    if (mc.input == RoutingInput::kLogits) {
      const MoeArguments args = c.arguments();
      const ref::Routing r = ref::route_reference(args.logits, mc.T, mc.E, mc.K, DType::kBF16);
      ids = r.ids;
      weights = r.weights;
    } else {
      // Own routing: duplicates, out-of-range ids and negative weights included.
      test::Rng rng(seed);
      for (int64_t i = 0; i < mc.T * mc.K; ++i) {
        ids.push_back(rng.integer(-1, mc.E));
        weights.push_back(rng.uniform(-1.0f, 1.0f));
      }
      c.set_routing(ids, weights);
      if (mc.input == RoutingInput::kPacked || mc.dtype == DType::kBF16) {
        for (float& w : weights) w = test::round_to_bf16(w);
      }
    }
    run_and_check_inputs(c);
    const DoubleModel model = moe_double(c, ids, weights);
    test::expect_close(test::bf16_to_double(c.output), model.exact, model.rounded, mc.name);
    // The rounded model takes the same rounding steps with fp64 sums: within one bf16 ulp of
    // the largest element (a rounding may flip).
    double max_abs = 0.0;
    for (double v : model.exact) max_abs = std::max(max_abs, std::abs(v));
    test::expect_close(test::bf16_to_double(c.output), model.rounded, model.rounded, mc.name,
                       std::ldexp(max_abs, -7));
    for (int64_t i = 0; i < mc.T * mc.K; ++i) {
      ASSERT_EQ(c.routing_replay_out[i], static_cast<int16_t>(ids[i])) << "slot " << i;
    }
  }
}

// Every activation, with and without its per-expert parameters and the expert biases (bf16 and
// fp32), routing weights on the input, logits and routed input, against the fp64 model.
TEST(ReferenceMoe, ExpertMlpOptionsMatchDoublePrecisionModel) {
  const Activation activations[] = {Activation::kGelu,  Activation::kRelu,       Activation::kSilu,
                                    Activation::kSwiglu, Activation::kGeglu,     Activation::kRelu2,
                                    Activation::kSwigluStep, Activation::kGegluTanh};
  uint64_t seed = 500;
  for (const Activation activation : activations) {
    for (int options = 0; options < 4; ++options) {  // none, params, biases bf16, both + fp32
      const std::string name = std::string(activation_name(activation)) + " options " +
                               std::to_string(options);
      SCOPED_TRACE(name);
      MoeCaseConfig cfg = config(23, 72, 40, 8, 2, RoutingInput::kLogits, ++seed);
      cfg.shape.local_expert_offset = 2;
      cfg.shape.local_num_experts = 5;
      cfg.method = RoutingMethod::kRenormalize;
      cfg.activation = activation;
      cfg.with_activation_params = options == 1 || options == 3;
      cfg.with_expert_biases = options >= 2;
      cfg.expert_bias_dtype = options == 3 ? DType::kFP32 : DType::kBF16;
      MoeCase c(cfg);
      const MoeArguments args = c.arguments();
      const ref::Routing r = ref::route_reference(args.logits, 23, 8, 2, DType::kBF16);
      run_and_check_inputs(c);
      const DoubleModel model = moe_double(c, r.ids, r.weights);
      test::expect_close(test::bf16_to_double(c.output), model.exact, model.rounded,
                         name.c_str());
    }
  }
  for (const RoutingInput input : {RoutingInput::kLogits, RoutingInput::kUnpacked}) {
    SCOPED_TRACE(input == RoutingInput::kLogits ? "scales on input, logits"
                                                : "scales on input, unpacked fp32");
    MoeCaseConfig cfg = config(31, 64, 48, 8, 1, input, ++seed);
    cfg.method = RoutingMethod::kLlama4;
    cfg.routed_weights_dtype = DType::kFP32;
    cfg.routing_scales_on_input = true;
    MoeCase c(cfg);
    std::vector<int32_t> ids;
    std::vector<float> weights;
    if (input == RoutingInput::kLogits) {
      const MoeArguments args = c.arguments();
      const ref::Routing r = ref::route_reference(args.logits, 31, 8, 1, DType::kBF16);
      ids = r.ids;
      weights = r.weights;
    } else {
      ids = c.topk_ids;
      weights = c.topk_weights_fp32;
    }
    run_and_check_inputs(c);
    const DoubleModel model = moe_double(c, ids, weights);
    test::expect_close(test::bf16_to_double(c.output), model.exact, model.rounded, "on input");
    // Weighting the output instead is far off (SwiGLU is not linear): the option took effect.
    MoeCaseConfig after_cfg = cfg;
    after_cfg.routing_scales_on_input = false;
    MoeCase after(after_cfg);
    ASSERT_TRUE(run_reference(after.arguments()).ok());
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < c.output.size(); ++i) {
      const double a = test::bf16_bits_to_float(c.output[i]);
      const double b = test::bf16_bits_to_float(after.output[i]);
      diff += (a - b) * (a - b);
      norm += b * b;
    }
    EXPECT_GT(std::sqrt(diff / norm), 1e-2);
  }
}

TEST(ReferenceMoe, ExpertParallelShardsSumToUnsharded) {
  for (const DType ew : {DType::kBF16, DType::kFP32}) {
    MoeCaseConfig cfg = config(29, 64, 32, 8, 3, RoutingInput::kLogits, 7 + static_cast<int>(ew));
    cfg.method = RoutingMethod::kSigmoidRenorm;
    cfg.expert_weights_dtype = ew;
    MoeCase full(cfg);
    run_and_check_inputs(full);

    const int64_t T = 29, H = 64, I = 32;
    std::vector<double> sum(T * H, 0.0), sum_abs(T * H, 0.0);
    const int32_t shards[][2] = {{0, 3}, {3, 2}, {5, 3}};  // (offset, E_loc)
    for (const auto& shard : shards) {
      MoeCaseConfig shard_cfg = cfg;
      shard_cfg.shape.local_expert_offset = shard[0];
      shard_cfg.shape.local_num_experts = shard[1];
      MoeCase part(shard_cfg);
      part.logits_fp32 = full.logits_fp32;
      part.hidden_states = full.hidden_states;
      const int64_t w1_rows = 2 * I * H, w2_rows = H * I;
      part.gemm1_weights.assign(full.gemm1_weights.begin() + shard[0] * w1_rows,
                                full.gemm1_weights.begin() + (shard[0] + shard[1]) * w1_rows);
      part.gemm2_weights.assign(full.gemm2_weights.begin() + shard[0] * w2_rows,
                                full.gemm2_weights.begin() + (shard[0] + shard[1]) * w2_rows);
      run_and_check_inputs(part);
      for (int64_t i = 0; i < T * H; ++i) {
        const double v = test::bf16_bits_to_float(part.output[i]);
        sum[i] += v;
        sum_abs[i] += std::abs(v);
      }
    }
    // Each shard's output and the full one carry one bf16 rounding (half an ulp, <= 2^-8 relative);
    // the fp32 partial sums differ in rounding order only (~1e-6 relative).
    for (int64_t i = 0; i < T * H; ++i) {
      const double out = test::bf16_bits_to_float(full.output[i]);
      const double bound = std::ldexp(sum_abs[i] + std::abs(out), -8) + 1e-6 * sum_abs[i] + 1e-30;
      ASSERT_LE(std::abs(sum[i] - out), bound) << "element " << i;
    }
  }
}

TEST(ReferenceMoe, TokenWithoutLocalExpertGetsZeroRow) {
  MoeCaseConfig cfg = config(40, 32, 16, 8, 2, RoutingInput::kLogits, 21);
  cfg.method = RoutingMethod::kRenormalize;
  cfg.shape.local_expert_offset = 5;
  cfg.shape.local_num_experts = 1;
  cfg.with_replay = true;
  MoeCase c(cfg);
  run_and_check_inputs(c);
  int num_zero_rows = 0, num_local_rows = 0;
  for (int64_t t = 0; t < 40; ++t) {
    const bool local = c.routing_replay_out[t * 2] == 5 || c.routing_replay_out[t * 2 + 1] == 5;
    bool all_zero = true;
    for (int64_t h = 0; h < 32; ++h) all_zero &= c.output[t * 32 + h] == 0x0000;  // +0.0
    EXPECT_EQ(all_zero, !local) << "token " << t;
    num_zero_rows += !local;
    num_local_rows += local;
  }
  EXPECT_GT(num_zero_rows, 0);
  EXPECT_GT(num_local_rows, 0);
}

TEST(ReferenceMoe, RoutedInputFromLogitsRoutingIsBitwiseEqual) {
  struct Variant {
    RoutingInput input;
    DType dtype;
  };
  for (const Variant v : {Variant{RoutingInput::kPacked, DType::kBF16},
                          Variant{RoutingInput::kUnpacked, DType::kBF16},
                          Variant{RoutingInput::kUnpacked, DType::kFP32}}) {
    MoeCaseConfig cfg =
        config(23, 64, 40, 12, 4, RoutingInput::kLogits, 31 + static_cast<int>(v.dtype));
    cfg.method = RoutingMethod::kMiniMax2;
    cfg.with_bias = true;
    cfg.routed_scaling_factor = 1.5f;
    cfg.expert_weights_dtype = v.dtype;
    cfg.shape.local_expert_offset = 2;
    cfg.shape.local_num_experts = 7;
    cfg.with_replay = true;
    MoeCase logits(cfg);
    run_and_check_inputs(logits);
    MoeCaseConfig unfinalized_cfg = cfg;
    unfinalized_cfg.do_finalize = false;
    MoeCase unfinalized(unfinalized_cfg);  // same seed: same data
    run_and_check_inputs(unfinalized);

    MoeCaseConfig routed_cfg = cfg;
    routed_cfg.routing_input = v.input;
    routed_cfg.routed_weights_dtype = v.dtype;
    MoeCase routed(routed_cfg);
    routed.hidden_states = logits.hidden_states;
    routed.gemm1_weights = logits.gemm1_weights;
    routed.gemm2_weights = logits.gemm2_weights;
    const std::vector<int32_t> ids(logits.routing_replay_out.begin(),
                                   logits.routing_replay_out.end());
    routed.set_routing(ids, unfinalized.expert_weights_as_float());
    run_and_check_inputs(routed);
    EXPECT_EQ(test::first_difference(routed.output, logits.output), -1)
        << "routed input " << static_cast<int>(v.input) << " " << dtype_name(v.dtype);
    EXPECT_EQ(routed.routing_replay_out, logits.routing_replay_out);
  }
}

TEST(ReferenceMoe, UnfinalizedTripleReducesBitwiseToOutput) {
  for (const DType ew : {DType::kBF16, DType::kFP32}) {
    MoeCaseConfig cfg = config(37, 48, 24, 10, 3, RoutingInput::kLogits, 41 + static_cast<int>(ew));
    cfg.method = RoutingMethod::kTopKSigmoid;
    cfg.logits_dtype = DType::kBF16;
    cfg.expert_weights_dtype = ew;
    cfg.shape.local_expert_offset = 3;
    cfg.shape.local_num_experts = 5;
    cfg.with_replay = true;
    MoeCase finalized(cfg);
    run_and_check_inputs(finalized);
    cfg.do_finalize = false;
    MoeCase triple(cfg);
    run_and_check_inputs(triple);

    const int64_t T = 37, H = 48, K = 3;
    const std::vector<float> w = triple.expert_weights_as_float();
    // The map names each local slot once, rows [0, num_local) in (expert, slot) order; -1 else.
    std::vector<int64_t> slot_of_row(T * K, -1);
    int64_t num_local = 0;
    for (int64_t slot = 0; slot < T * K; ++slot) {
      const int32_t id = triple.routing_replay_out[slot];
      const bool local = id >= 3 && id < 8;
      const int32_t row = triple.expanded_idx_to_permuted_idx[slot];
      if (!local) {
        EXPECT_EQ(row, -1) << "slot " << slot;
        continue;
      }
      ASSERT_TRUE(row >= 0 && row < T * K) << "slot " << slot;
      EXPECT_EQ(slot_of_row[row], -1) << "row " << row << " named twice";
      slot_of_row[row] = slot;
      ++num_local;
    }
    for (int64_t row = 0; row < num_local; ++row) {
      ASSERT_GE(slot_of_row[row], 0) << "rows are not dense: " << row;
      if (row == 0) continue;
      const int64_t a = slot_of_row[row - 1], b = slot_of_row[row];
      const int32_t ea = triple.routing_replay_out[a], eb = triple.routing_replay_out[b];
      EXPECT_TRUE(ea < eb || (ea == eb && a < b)) << "rows " << row - 1 << ", " << row;
    }
    for (int64_t i = num_local * H; i < T * K * H; ++i) {
      ASSERT_TRUE(test::is_poison_bf16(triple.gemm2_output[i])) << "unnamed row written";
    }
    // Reduce per docs/DESIGN.md: acc = fma(w, y, acc) over local k ascending, then bf16.
    std::vector<uint16_t> reduced(T * H);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) {
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          const int32_t row = triple.expanded_idx_to_permuted_idx[t * K + k];
          if (row < 0) continue;
          acc = std::fma(w[t * K + k], test::bf16_bits_to_float(triple.gemm2_output[row * H + h]),
                         acc);
        }
        reduced[t * H + h] = test::float_to_bf16_bits(acc);
      }
    }
    EXPECT_EQ(test::first_difference(reduced, finalized.output), -1) << dtype_name(ew);
    EXPECT_EQ(finalized.routing_replay_out, triple.routing_replay_out);
  }
}

TEST(ReferenceMoe, AllTokensOnOneExpertOthersEmpty) {
  MoeCaseConfig cfg = config(21, 32, 24, 4, 1, RoutingInput::kUnpacked, 81);
  cfg.routed_weights_dtype = DType::kFP32;
  MoeCase c(cfg);
  test::Rng rng(82);
  const std::vector<int32_t> ids(21, 2);
  const std::vector<float> weights = test::random_fp32(rng, 21, 0.1f, 2.0f);
  c.set_routing(ids, weights);
  run_and_check_inputs(c);
  const DoubleModel model = moe_double(c, ids, weights);
  test::expect_close(test::bf16_to_double(c.output), model.exact, model.rounded, "one expert");

  const ref::Permutation p = ref::permute_reference(ids, 0, 4);
  EXPECT_EQ(p.expert_offsets, (std::vector<int32_t>{0, 0, 0, 21, 21}));
}

TEST(ReferenceMoe, OutOfRangeIdsAreNonLocal) {
  MoeCaseConfig cfg = config(6, 16, 8, 4, 2, RoutingInput::kUnpacked, 51);
  MoeCase c(cfg);
  c.set_routing({-1, 1, 4, 2, 30000, -30000, 0, 3, 2, 5, 1, 1}, std::vector<float>(12, 0.5f));
  MoeCase same(cfg);
  same.set_routing({-3, 1, 7, 2, 9, 9, 0, 3, 2, 9, 1, 1}, std::vector<float>(12, 0.5f));
  run_and_check_inputs(c);
  run_and_check_inputs(same);
  EXPECT_EQ(test::first_difference(c.output, same.output), -1);
  // Token 2 has no valid id: zero row.
  for (int64_t h = 0; h < 16; ++h) EXPECT_EQ(c.output[2 * 16 + h], 0x0000);

  RoutingCheck check;
  ASSERT_TRUE(validate_routing_host(c.topk_ids.data(), 6, 2, 4, false, &check).ok());
  EXPECT_EQ(check.first_bad_slot, 0);
  EXPECT_EQ(check.bad_id, -1);
}

// SwigluStep's clamp engages at its default limit (7) when no clamp_limit is given, and at the
// given limit otherwise: act = min(silu(gate), L) * clamp(up, -L, L), rounded to bf16. GEMM1
// outputs well past the limit, which random test data never reaches.
TEST(ReferenceMoe, SwigluStepClampsAtItsDefaultLimit) {
  const int64_t I = 4;
  // One row of GEMM1 output: up (columns 0..I-1), then gate (I..2I-1).
  const std::vector<float> g = {10.0f, -10.0f, 3.0f, 10.0f, 10.0f, 10.0f, 2.0f, -10.0f};
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  auto expected = [&](double limit) {
    std::vector<double> want(I);
    for (int64_t j = 0; j < I; ++j) {
      const double up = std::min(std::max(double(g[j]), -limit), limit);
      want[j] = std::min(silu(g[I + j]), limit) * up;
    }
    return want;
  };
  ref::ExpertMlp mlp;
  mlp.activation = Activation::kSwigluStep;
  const float given_limit = 3.0f;
  for (const bool given : {false, true}) {
    mlp.clamp_limit = given ? &given_limit : nullptr;
    std::vector<uint16_t> act(I);
    ref::activate_rows(g.data(), 1, I, mlp, 0, act.data());
    const std::vector<double> want = expected(given ? given_limit : kSwigluStepDefaultLimit);
    for (int64_t j = 0; j < I; ++j) {
      const double got = test::bf16_bits_to_float(act[j]);
      EXPECT_NEAR(got, want[j], 0.01 * std::fabs(want[j]) + 1e-6)
          << (given ? "limit 3" : "default limit") << ", column " << j;
    }
  }
  // Column 0 without any clamp would be silu(10) * 10 ~ 100: the default limit made it 49.
  mlp.clamp_limit = nullptr;
  std::vector<uint16_t> act(I);
  ref::activate_rows(g.data(), 1, I, mlp, 0, act.data());
  EXPECT_EQ(test::bf16_bits_to_float(act[0]), 49.0f);
}

TEST(ReferenceMoe, ZeroTokens) {
  for (const RoutingInput input :
       {RoutingInput::kLogits, RoutingInput::kPacked, RoutingInput::kUnpacked}) {
    for (const bool finalize : {true, false}) {
      MoeCaseConfig cfg = config(0, 64, 32, 8, 2, input, 61);
      cfg.do_finalize = finalize;
      cfg.with_replay = true;
      MoeCase c(cfg);
      const MoeArguments args = c.arguments();
      ASSERT_EQ(args.hidden_states, c.hidden_states.data());
      const Status status = run_reference(args);
      EXPECT_TRUE(status.ok()) << status.message;
    }
  }
}

TEST(ReferenceMoe, EveryMethodAndDtypeRunsWithoutTouchingInputs) {
  uint64_t seed = 70;
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    for (const DType logits_dtype : {DType::kFP32, DType::kBF16}) {
      for (const bool finalize : {true, false}) {
        MoeCaseConfig cfg = config(11, 32, 16, 8, m == 3 ? 1 : 3, RoutingInput::kLogits, ++seed);
        cfg.method = static_cast<RoutingMethod>(m);
        cfg.logits_dtype = logits_dtype;
        cfg.with_bias = true;
        cfg.bias_dtype = logits_dtype == DType::kFP32 ? DType::kBF16 : DType::kFP32;
        cfg.n_group = 2;
        cfg.do_finalize = finalize;
        MoeCase c(cfg);
        SCOPED_TRACE(routing_method_name(cfg.method));
        run_and_check_inputs(c);
        if (finalize) {
          for (uint16_t v : c.output) ASSERT_FALSE(test::is_poison_bf16(v));
        } else {
          for (int32_t row : c.expanded_idx_to_permuted_idx) ASSERT_NE(row, test::kPoisonInt32);
        }
      }
    }
  }
}

}  // namespace
}  // namespace fusedmoe
