// validate(), validate_shape(), validate_routing_host() and the enum names: every rule rejects
// with its own message "<argument>: expected <x>, got <y>" naming the API argument; a rejected
// run_reference writes no output (poisoned beforehand) and no input; valid edge cases pass.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/host_data.h"
#include "common/moe_case.h"
#include "validate.h"

namespace fusedmoe {
namespace {

using test::MoeCase;
using test::MoeCaseConfig;
using test::RoutingInput;

enum class Base { kLogits, kDeepSeek, kUnfinalized, kPacked, kUnpackedBf16, kUnpackedFp32, kFp8 };

// Block scales for the FP8 bases: validate() never reads them (any non-null pointer will do).
const std::vector<float> kSomeScales(64, 1.0f);

MoeCaseConfig base_config(Base base, uint64_t seed) {
  MoeCaseConfig cfg;
  cfg.shape = test::make_shape(5, 16, 8, 8, 2);
  cfg.seed = seed;
  cfg.with_bias = true;
  cfg.with_replay = true;
  switch (base) {
    case Base::kLogits:
      break;
    case Base::kDeepSeek:
      cfg.method = RoutingMethod::kDeepSeekV3;
      cfg.n_group = 4;
      cfg.topk_group = 2;
      break;
    case Base::kUnfinalized:
      cfg.do_finalize = false;
      break;
    case Base::kPacked:
      cfg.routing_input = RoutingInput::kPacked;
      cfg.with_bias = false;
      break;
    case Base::kUnpackedBf16:
      cfg.routing_input = RoutingInput::kUnpacked;
      cfg.with_bias = false;
      break;
    case Base::kUnpackedFp32:
      cfg.routing_input = RoutingInput::kUnpacked;
      cfg.with_bias = false;
      cfg.routed_weights_dtype = DType::kFP32;
      break;
    case Base::kFp8:  // FP8 weights need H and I multiples of 128 (arguments() sets the rest)
      cfg.shape = test::make_shape(5, 128, 256, 8, 2);
      break;
  }
  return cfg;
}

// The case's arguments; the FP8 base marks its weights e4m3 with block scales.
MoeArguments base_arguments(Base base, MoeCase& c) {
  MoeArguments args = c.arguments();
  if (base == Base::kFp8) {
    args.weights_dtype = DType::kFP8E4M3;
    args.gemm1_weights_scale = kSomeScales.data();
    args.gemm2_weights_scale = kSomeScales.data();
  }
  return args;
}

struct Rule {
  const char* name;
  Base base;
  std::function<void(MoeArguments&)> mutate;
  const char* argument;  // the message must start with "<argument>: expected "
  const char* got;       // and end with ", got <got>"
};

const std::vector<int32_t> kSomeIds(64, 1);
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

const std::vector<Rule>& rules() {
  static const std::vector<Rule> all = {
      {"negative T", Base::kLogits, [](MoeArguments& a) { a.shape.num_tokens = -1; },
       "shape.num_tokens", "-1"},
      {"H not multiple of 8", Base::kLogits, [](MoeArguments& a) { a.shape.hidden_size = 12; },
       "shape.hidden_size", "12"},
      {"H zero", Base::kLogits, [](MoeArguments& a) { a.shape.hidden_size = 0; },
       "shape.hidden_size", "0"},
      {"I not multiple of 8", Base::kLogits,
       [](MoeArguments& a) { a.shape.intermediate_size = 20; }, "shape.intermediate_size", "20"},
      {"I negative", Base::kLogits, [](MoeArguments& a) { a.shape.intermediate_size = -8; },
       "shape.intermediate_size", "-8"},
      {"E zero", Base::kLogits, [](MoeArguments& a) { a.shape.num_experts = 0; },
       "shape.num_experts", "0"},
      {"E too large", Base::kLogits, [](MoeArguments& a) { a.shape.num_experts = 1025; },
       "shape.num_experts", "1025"},
      {"K zero", Base::kLogits, [](MoeArguments& a) { a.shape.top_k = 0; }, "shape.top_k", "0"},
      {"K too large", Base::kLogits,
       [](MoeArguments& a) {
         a.shape.num_experts = 64;
         a.shape.top_k = 33;
       },
       "shape.top_k", "33"},
      {"K above E", Base::kLogits, [](MoeArguments& a) { a.shape.top_k = 9; }, "shape.top_k", "9"},
      {"E_loc zero", Base::kLogits, [](MoeArguments& a) { a.shape.local_num_experts = 0; },
       "shape.local_num_experts", "0"},
      {"negative offset", Base::kLogits, [](MoeArguments& a) { a.shape.local_expert_offset = -1; },
       "shape.local_expert_offset", "-1"},
      {"window past E", Base::kLogits, [](MoeArguments& a) { a.shape.local_expert_offset = 1; },
       "shape.local_expert_offset", "1"},
      {"weight layout", Base::kLogits,
       [](MoeArguments& a) { a.weight_layout = static_cast<WeightLayout>(1); }, "weight_layout",
       "1"},
      {"expert_weights_dtype enum", Base::kLogits,
       [](MoeArguments& a) { a.expert_weights_dtype = static_cast<DType>(3); },
       "expert_weights_dtype", "DType(3)"},
      {"expert_weights_dtype fp8", Base::kLogits,
       [](MoeArguments& a) { a.expert_weights_dtype = DType::kFP8E4M3; }, "expert_weights_dtype",
       "fp8_e4m3"},
      {"weights_dtype fp32", Base::kLogits, [](MoeArguments& a) { a.weights_dtype = DType::kFP32; },
       "weights_dtype", "fp32"},
      {"hidden_states_dtype enum", Base::kFp8,
       [](MoeArguments& a) { a.hidden_states_dtype = static_cast<DType>(9); },
       "hidden_states_dtype", "DType(9)"},
      {"fp8 hidden states with bf16 weights", Base::kLogits,
       [](MoeArguments& a) {
         a.hidden_states_dtype = DType::kFP8E4M3;
         a.hidden_states_scale = kSomeScales.data();
       },
       "hidden_states_dtype", "fp8_e4m3"},
      {"weight scale with bf16 weights", Base::kLogits,
       [](MoeArguments& a) { a.gemm2_weights_scale = kSomeScales.data(); }, "gemm2_weights_scale",
       "a pointer"},
      {"fp8 H not multiple of 128", Base::kFp8, [](MoeArguments& a) { a.shape.hidden_size = 136; },
       "shape.hidden_size", "136"},
      {"fp8 I not multiple of 128", Base::kFp8,
       [](MoeArguments& a) { a.shape.intermediate_size = 200; }, "shape.intermediate_size", "200"},
      {"fp8 no gemm1 scale", Base::kFp8, [](MoeArguments& a) { a.gemm1_weights_scale = nullptr; },
       "gemm1_weights_scale", "nullptr"},
      {"fp8 no gemm2 scale", Base::kFp8, [](MoeArguments& a) { a.gemm2_weights_scale = nullptr; },
       "gemm2_weights_scale", "nullptr"},
      {"fp8 hidden states without scale", Base::kFp8,
       [](MoeArguments& a) { a.hidden_states_dtype = DType::kFP8E4M3; }, "hidden_states_scale",
       "nullptr"},
      {"fp8 scale with bf16 hidden states", Base::kFp8,
       [](MoeArguments& a) { a.hidden_states_scale = kSomeScales.data(); }, "hidden_states_scale",
       "a pointer"},
      {"fp8 routing scales on input", Base::kFp8,
       [](MoeArguments& a) {
         a.shape.top_k = 1;
         a.use_routing_scales_on_input = true;
       },
       "use_routing_scales_on_input", "true"},
      {"both routing inputs", Base::kLogits,
       [](MoeArguments& a) { a.routed.topk_ids = kSomeIds.data(); }, "logits.logits", "both"},
      {"no routing input", Base::kLogits, [](MoeArguments& a) { a.logits.logits = nullptr; },
       "logits.logits", "neither"},
      {"weights without ids", Base::kLogits,
       [](MoeArguments& a) { a.routed.topk_weights = kSomeIds.data(); }, "routed.topk_weights",
       "a pointer"},
      {"method 10", Base::kLogits,
       [](MoeArguments& a) { a.logits.method = static_cast<RoutingMethod>(10); }, "logits.method",
       "10"},
      {"method -1", Base::kLogits,
       [](MoeArguments& a) { a.logits.method = static_cast<RoutingMethod>(-1); }, "logits.method",
       "-1"},
      {"logits dtype", Base::kLogits,
       [](MoeArguments& a) { a.logits.logits_dtype = static_cast<DType>(3); },
       "logits.logits_dtype", "DType(3)"},
      {"bias dtype", Base::kLogits,
       [](MoeArguments& a) { a.logits.bias_dtype = static_cast<DType>(4); }, "logits.bias_dtype",
       "DType(4)"},
      {"scale NaN", Base::kLogits, [](MoeArguments& a) { a.logits.routed_scaling_factor = kNaN; },
       "logits.routed_scaling_factor", "nan"},
      {"scale inf", Base::kLogits, [](MoeArguments& a) { a.logits.routed_scaling_factor = -kInf; },
       "logits.routed_scaling_factor", "-inf"},
      {"Llama4 K 2", Base::kLogits,
       [](MoeArguments& a) { a.logits.method = RoutingMethod::kLlama4; }, "shape.top_k", "2"},
      {"n_group negative", Base::kDeepSeek, [](MoeArguments& a) { a.logits.n_group = -1; },
       "logits.n_group", "-1"},
      {"n_group not dividing E", Base::kDeepSeek,
       [](MoeArguments& a) {
         a.logits.n_group = 3;
         a.logits.topk_group = 1;
       },
       "logits.n_group", "3"},
      {"topk_group above n_group", Base::kDeepSeek,
       [](MoeArguments& a) { a.logits.topk_group = 5; }, "logits.topk_group", "5"},
      {"topk_group negative", Base::kDeepSeek, [](MoeArguments& a) { a.logits.topk_group = -2; },
       "logits.topk_group", "-2"},
      {"K above kept experts", Base::kDeepSeek,
       [](MoeArguments& a) {
         a.logits.topk_group = 1;
         a.shape.top_k = 3;
       },
       "shape.top_k", "3"},
      {"bias with routed input", Base::kPacked,
       [](MoeArguments& a) { a.logits.bias = kSomeIds.data(); }, "logits.bias", "a pointer"},
      {"packed fp32 weights", Base::kPacked,
       [](MoeArguments& a) { a.expert_weights_dtype = DType::kFP32; }, "expert_weights_dtype",
       "fp32"},
      {"routed weights dtype", Base::kUnpackedBf16,
       [](MoeArguments& a) { a.routed.weights_dtype = static_cast<DType>(5); },
       "routed.weights_dtype", "DType(5)"},
      {"unpacked bf16 to fp32", Base::kUnpackedBf16,
       [](MoeArguments& a) { a.expert_weights_dtype = DType::kFP32; }, "expert_weights_dtype",
       "fp32"},
      {"unpacked fp32 to bf16", Base::kUnpackedFp32,
       [](MoeArguments& a) { a.expert_weights_dtype = DType::kBF16; }, "expert_weights_dtype",
       "bf16"},
      {"no hidden_states", Base::kLogits, [](MoeArguments& a) { a.hidden_states = nullptr; },
       "hidden_states", "nullptr"},
      {"no gemm1_weights", Base::kLogits, [](MoeArguments& a) { a.gemm1_weights = nullptr; },
       "gemm1_weights", "nullptr"},
      {"no gemm1_weights T 0", Base::kLogits,
       [](MoeArguments& a) {
         a.shape.num_tokens = 0;
         a.gemm1_weights = nullptr;
       },
       "gemm1_weights", "nullptr"},
      {"no gemm2_weights", Base::kPacked, [](MoeArguments& a) { a.gemm2_weights = nullptr; },
       "gemm2_weights", "nullptr"},
      {"no output", Base::kLogits, [](MoeArguments& a) { a.output = nullptr; }, "output",
       "nullptr"},
      {"no gemm2_output", Base::kUnfinalized, [](MoeArguments& a) { a.gemm2_output = nullptr; },
       "gemm2_output", "nullptr"},
      {"no expert_weights", Base::kUnfinalized, [](MoeArguments& a) { a.expert_weights = nullptr; },
       "expert_weights", "nullptr"},
      {"no map", Base::kUnfinalized,
       [](MoeArguments& a) { a.expanded_idx_to_permuted_idx = nullptr; },
       "expanded_idx_to_permuted_idx", "nullptr"},
  };
  return all;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST(Validate, EveryRuleRejectsWithItsOwnMessageAndWritesNothing) {
  uint64_t seed = 1;
  for (const Rule& rule : rules()) {
    SCOPED_TRACE(rule.name);
    MoeCase c(base_config(rule.base, ++seed));
    MoeArguments args = base_arguments(rule.base, c);
    ASSERT_TRUE(validate(args).ok()) << "base config must be valid: " << validate(args).message;
    rule.mutate(args);
    const uint64_t inputs = c.input_checksum();
    const uint64_t outputs = c.output_checksum();

    const Status status = validate(args);
    EXPECT_EQ(status.code, StatusCode::kInvalidArgument);
    const std::string prefix = std::string(rule.argument) + ": expected ";
    EXPECT_EQ(status.message.rfind(prefix, 0), 0u) << status.message;
    EXPECT_TRUE(ends_with(status.message, std::string(", got ") + rule.got)) << status.message;

    const Status ref_status = run_reference(args);
    EXPECT_EQ(ref_status.code, status.code);
    EXPECT_EQ(ref_status.message, status.message);
    EXPECT_EQ(c.output_checksum(), outputs) << "a rejected call wrote an output";
    EXPECT_EQ(c.input_checksum(), inputs) << "an input was written";
  }
}

TEST(Validate, ValidEdgeCasesPass) {
  const std::vector<std::pair<const char*, std::function<void(MoeArguments&)>>> edits = {
      {"as built", [](MoeArguments&) {}},
      {"T 0 without data pointers",
       [](MoeArguments& a) {
         a.shape.num_tokens = 0;
         a.hidden_states = nullptr;
         a.output = nullptr;
       }},
      {"n_group 0 and topk_group 0",
       [](MoeArguments& a) {
         a.logits.n_group = 0;
         a.logits.topk_group = 0;
       }},
      {"K equals kept experts", [](MoeArguments& a) { a.logits.topk_group = 1; }},  // 1 * 8/4 = 2
      {"single group given",
       [](MoeArguments& a) {
         a.logits.n_group = 1;
         a.logits.topk_group = 1;
       }},
  };
  for (const auto& [name, edit] : edits) {
    SCOPED_TRACE(name);
    MoeCase c(base_config(Base::kDeepSeek, 3));
    MoeArguments args = c.arguments();
    edit(args);
    const Status status = validate(args);
    EXPECT_TRUE(status.ok()) << status.message;
    EXPECT_TRUE(run_reference(args).ok());
  }
  for (const Base base : {Base::kLogits, Base::kUnfinalized, Base::kPacked, Base::kUnpackedBf16,
                          Base::kUnpackedFp32, Base::kFp8}) {
    MoeCase c(base_config(base, 4));
    EXPECT_TRUE(validate(base_arguments(base, c)).ok()) << static_cast<int>(base);
  }
  // FP8: e4m3 hidden states with their scale; T = 0 needs none.
  MoeCase fp8(base_config(Base::kFp8, 7));
  MoeArguments fp8_args = base_arguments(Base::kFp8, fp8);
  fp8_args.hidden_states_dtype = DType::kFP8E4M3;
  fp8_args.hidden_states_scale = kSomeScales.data();
  EXPECT_TRUE(validate(fp8_args).ok()) << validate(fp8_args).message;
  fp8_args.shape.num_tokens = 0;
  fp8_args.hidden_states_scale = nullptr;
  EXPECT_TRUE(validate(fp8_args).ok()) << validate(fp8_args).message;
  // Bias is allowed (and ignored) for a method that does not read it; Llama4 with K = 1.
  MoeCaseConfig cfg = base_config(Base::kLogits, 5);
  cfg.method = RoutingMethod::kSigmoid;
  EXPECT_TRUE(validate(MoeCase(cfg).arguments()).ok());
  cfg.method = RoutingMethod::kLlama4;
  cfg.shape.top_k = 1;
  EXPECT_TRUE(validate(MoeCase(cfg).arguments()).ok());
  // Limits exactly: E = 1024, K = 32, one local expert at the end; H = 2880.
  cfg = base_config(Base::kPacked, 6);
  cfg.shape = test::make_shape(2, 2880, 8, 1024, 32);
  cfg.shape.local_expert_offset = 1023;
  cfg.shape.local_num_experts = 1;
  MoeCase limits(cfg);
  EXPECT_TRUE(validate(limits.arguments()).ok());
  EXPECT_TRUE(run_reference(limits.arguments()).ok());
}

TEST(Validate, ShapeCheckAloneForWorkspaceQueries) {
  EXPECT_TRUE(detail::validate_shape(test::make_shape(0, 8, 8, 1, 1)).ok());
  MoeShape shape = test::make_shape(4, 64, 64, 8, 2);
  shape.local_num_experts = 9;
  const Status status = detail::validate_shape(shape);
  EXPECT_EQ(status.code, StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message.rfind("shape.local_expert_offset: expected ", 0), 0u) << status.message;
}

TEST(ValidateRouting, ReportsTheFirstIdOutsideTheRange) {
  const int32_t E = 16;
  test::Rng rng(9);
  // Plain ids and packed words (with negative weights, whose sign must not leak into the id).
  std::vector<int32_t> plain = test::random_distinct_ids(rng, 10, 3, E);
  std::vector<int32_t> packed(plain.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    packed[i] = pack_topk(plain[i], test::float_to_bf16_bits(rng.uniform(-2.0f, 2.0f)));
  }
  plain[0] = 0;
  plain[1] = E - 1;
  RoutingCheck check{123, 456};
  ASSERT_TRUE(validate_routing_host(plain.data(), 10, 3, E, false, &check).ok());
  EXPECT_EQ(check.first_bad_slot, -1);
  ASSERT_TRUE(validate_routing_host(packed.data(), 10, 3, E, true, &check).ok());
  EXPECT_EQ(check.first_bad_slot, -1);

  plain[17] = E;
  plain[23] = -1;
  ASSERT_TRUE(validate_routing_host(plain.data(), 10, 3, E, false, &check).ok());
  EXPECT_EQ(check.first_bad_slot, 17);
  EXPECT_EQ(check.bad_id, E);
  packed[5] = pack_topk(-2, 0xBF80);  // id -2, weight -1.0
  ASSERT_TRUE(validate_routing_host(packed.data(), 10, 3, E, true, &check).ok());
  EXPECT_EQ(check.first_bad_slot, 5);
  EXPECT_EQ(check.bad_id, -2);

  EXPECT_TRUE(validate_routing_host(nullptr, 0, 3, E, false, &check).ok());
  EXPECT_EQ(check.first_bad_slot, -1);
  const Status no_result = validate_routing_host(plain.data(), 10, 3, E, false, nullptr);
  EXPECT_EQ(no_result.message.rfind("result: expected ", 0), 0u) << no_result.message;
  const Status bad_k = validate_routing_host(plain.data(), 10, 0, E, false, &check);
  EXPECT_EQ(bad_k.message.rfind("top_k: expected ", 0), 0u) << bad_k.message;
  const Status bad_e = validate_routing_host(plain.data(), 10, 3, 0, false, &check);
  EXPECT_EQ(bad_e.message.rfind("num_experts: expected ", 0), 0u) << bad_e.message;
  // T * K past 2^30 (and T * K past int64 for the last one) is refused before any slot is read.
  for (const int64_t tokens : {kMaxNumSlots / 3 + 1, INT64_MAX / 2}) {
    const Status too_many = validate_routing_host(plain.data(), tokens, 3, E, false, &check);
    EXPECT_EQ(too_many.message.rfind("num_tokens: expected num_tokens * top_k <= 2^30", 0), 0u)
        << too_many.message;
  }
  EXPECT_TRUE(validate_routing_host(plain.data(), 10, 3, E, false, &check).ok());
}

// workspace_size() for fp8 weights applies the FP8 shape rule (H, I multiples of 128) as
// validate() does, with the same message, and names a bad weights_dtype as validate() names it.
TEST(Validate, Fp8WorkspaceQueryChecksTheFp8ShapeRule) {
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size(test::make_shape(4, 256, 384, 8, 2), DType::kFP8E4M3, &bytes).ok());
  EXPECT_GT(bytes, 0u);
  const Status h = workspace_size(test::make_shape(4, 136, 384, 8, 2), DType::kFP8E4M3, &bytes);
  EXPECT_EQ(h.code, StatusCode::kInvalidArgument);
  EXPECT_EQ(h.message, "shape.hidden_size: expected a multiple of 128 with fp8 weights, got 136");
  const Status i = workspace_size(test::make_shape(4, 256, 200, 8, 2), DType::kFP8E4M3, &bytes);
  EXPECT_EQ(i.message,
            "shape.intermediate_size: expected a multiple of 128 with fp8 weights, got 200");
  // The BF16 query has no such rule.
  EXPECT_TRUE(workspace_size(test::make_shape(4, 136, 200, 8, 2), DType::kBF16, &bytes).ok());
  const Status dtype =
      workspace_size(test::make_shape(4, 256, 384, 8, 2), static_cast<DType>(7), &bytes);
  EXPECT_EQ(dtype.message, "weights_dtype: expected bf16 (0) or fp8_e4m3 (2), got DType(7)");
}

TEST(Names, EnumsAndCapacity) {
  EXPECT_STREQ(status_code_name(StatusCode::kOk), "ok");
  EXPECT_STREQ(status_code_name(StatusCode::kInvalidArgument), "invalid_argument");
  EXPECT_STREQ(status_code_name(StatusCode::kWorkspaceTooSmall), "workspace_too_small");
  EXPECT_STREQ(dtype_name(DType::kBF16), "bf16");
  EXPECT_STREQ(dtype_name(DType::kFP32), "fp32");
  EXPECT_STREQ(dtype_name(DType::kFP8E4M3), "fp8_e4m3");
  const char* expected[kNumRoutingMethods] = {
      "Default", "Renormalize",   "DeepSeekV3", "Llama4",  "RenormalizeNaive",
      "TopK",    "SigmoidRenorm", "MiniMax2",   "Sigmoid", "TopKSigmoid"};
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    EXPECT_STREQ(routing_method_name(static_cast<RoutingMethod>(m)), expected[m]);
  }
  EXPECT_EQ(permuted_capacity(989, 8, 3), 989 * 8);
  EXPECT_EQ(permuted_capacity(0, 8, 3), 0);
}

}  // namespace
}  // namespace fusedmoe
