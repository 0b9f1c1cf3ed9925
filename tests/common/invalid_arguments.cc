// The table of invalid arguments (see invalid_arguments.h).
#include "common/invalid_arguments.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace fusedmoe::test {
namespace {

const std::vector<int32_t> kSomeIds(64, 1);  // a non-null pointer for "given" inputs
const std::vector<float> kSomeFloats(64, 1.0f);
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

MoeCaseConfig invalid_base_config(InvalidBase base, uint64_t seed) {
  MoeCaseConfig cfg;
  cfg.shape = make_shape(5, 16, 8, 8, 2);
  cfg.seed = seed;
  cfg.with_bias = true;
  cfg.with_replay = true;
  switch (base) {
    case InvalidBase::kLogits:
      break;
    case InvalidBase::kDeepSeek:
      cfg.method = RoutingMethod::kDeepSeekV3;
      cfg.n_group = 4;
      cfg.topk_group = 2;
      break;
    case InvalidBase::kUnfinalized:
      cfg.do_finalize = false;
      break;
    case InvalidBase::kPacked:
      cfg.routing_input = RoutingInput::kPacked;
      cfg.with_bias = false;
      break;
    case InvalidBase::kUnpackedBf16:
      cfg.routing_input = RoutingInput::kUnpacked;
      cfg.with_bias = false;
      break;
    case InvalidBase::kUnpackedFp32:
      cfg.routing_input = RoutingInput::kUnpacked;
      cfg.with_bias = false;
      cfg.routed_weights_dtype = DType::kFP32;
      break;
  }
  return cfg;
}

const std::vector<InvalidRule>& invalid_rules() {
  using B = InvalidBase;
  using A = MoeArguments;
  static const std::vector<InvalidRule> all = {
      // ---- shape (also rejected by workspace_size) ----
      {"negative T", B::kLogits, [](A& a) { a.shape.num_tokens = -3; }, "shape.num_tokens", "-3",
       true},
      {"T * K above 2^30", B::kLogits, [](A& a) { a.shape.num_tokens = (int64_t{1} << 29) + 1; },
       "shape.num_tokens", "536870913", true},
      {"T = INT64_MAX", B::kPacked,
       [](A& a) { a.shape.num_tokens = std::numeric_limits<int64_t>::max(); }, "shape.num_tokens",
       "9223372036854775807", true},
      {"H not multiple of 8", B::kLogits, [](A& a) { a.shape.hidden_size = 2884; },
       "shape.hidden_size", "2884", true},
      {"H zero", B::kUnfinalized, [](A& a) { a.shape.hidden_size = 0; }, "shape.hidden_size", "0",
       true},
      {"H above 2^20", B::kLogits, [](A& a) { a.shape.hidden_size = (1 << 20) + 8; },
       "shape.hidden_size", "1048584", true},
      {"H = INT64_MIN", B::kLogits,
       [](A& a) { a.shape.hidden_size = std::numeric_limits<int64_t>::min(); },
       "shape.hidden_size", "-9223372036854775808", true},
      {"I not multiple of 8", B::kPacked, [](A& a) { a.shape.intermediate_size = 100; },
       "shape.intermediate_size", "100", true},
      {"I above 2^20", B::kUnpackedFp32,
       [](A& a) { a.shape.intermediate_size = int64_t{1} << 40; }, "shape.intermediate_size",
       "1099511627776", true},
      {"E zero", B::kLogits, [](A& a) { a.shape.num_experts = 0; }, "shape.num_experts", "0",
       true},
      {"E 1025", B::kPacked, [](A& a) { a.shape.num_experts = 1025; }, "shape.num_experts",
       "1025", true},
      {"E negative", B::kLogits, [](A& a) { a.shape.num_experts = -8; }, "shape.num_experts",
       "-8", true},
      {"K zero", B::kUnpackedBf16, [](A& a) { a.shape.top_k = 0; }, "shape.top_k", "0", true},
      {"K 33", B::kLogits,
       [](A& a) {
         a.shape.num_experts = 64;
         a.shape.local_num_experts = 64;
         a.shape.top_k = 33;
       },
       "shape.top_k", "33", true},
      {"K above E", B::kPacked, [](A& a) { a.shape.top_k = 9; }, "shape.top_k", "9", true},
      {"E_loc zero", B::kLogits, [](A& a) { a.shape.local_num_experts = 0; },
       "shape.local_num_experts", "0", true},
      {"offset negative", B::kUnpackedBf16, [](A& a) { a.shape.local_expert_offset = -1; },
       "shape.local_expert_offset", "-1", true},
      {"window past E", B::kPacked,
       [](A& a) {
         a.shape.local_expert_offset = 6;
         a.shape.local_num_experts = 3;
       },
       "shape.local_expert_offset", "6", true},
      {"window past E at INT32_MAX", B::kLogits,
       [](A& a) {
         a.shape.local_expert_offset = std::numeric_limits<int32_t>::max();
         a.shape.local_num_experts = std::numeric_limits<int32_t>::max();
       },
       "shape.local_expert_offset", "2147483647", true},
      // ---- everything else (workspace_size accepts the shape) ----
      {"weight layout", B::kLogits, [](A& a) { a.weight_layout = static_cast<WeightLayout>(7); },
       "weight_layout", "7", false},
      {"expert_weights_dtype enum", B::kUnfinalized,
       [](A& a) { a.expert_weights_dtype = static_cast<DType>(-1); }, "expert_weights_dtype",
       "DType(-1)", false},
      {"both routing inputs", B::kLogits, [](A& a) { a.routed.topk_ids = kSomeIds.data(); },
       "logits.logits", "both", false},
      {"both routing inputs (routed base)", B::kUnpackedBf16,
       [](A& a) { a.logits.logits = kSomeIds.data(); }, "logits.logits", "both", false},
      {"no routing input", B::kPacked, [](A& a) { a.routed.topk_ids = nullptr; },
       "logits.logits", "neither", false},
      {"weights without ids", B::kLogits, [](A& a) { a.routed.topk_weights = kSomeIds.data(); },
       "routed.topk_weights", "a pointer", false},
      {"method 10", B::kLogits, [](A& a) { a.logits.method = static_cast<RoutingMethod>(10); },
       "logits.method", "10", false},
      {"method INT_MIN", B::kLogits,
       [](A& a) { a.logits.method = static_cast<RoutingMethod>(std::numeric_limits<int>::min()); },
       "logits.method", "-2147483648", false},
      {"logits dtype", B::kLogits, [](A& a) { a.logits.logits_dtype = static_cast<DType>(3); },
       "logits.logits_dtype", "DType(3)", false},
      {"bias dtype", B::kDeepSeek, [](A& a) { a.logits.bias_dtype = static_cast<DType>(9); },
       "logits.bias_dtype", "DType(9)", false},
      {"scale NaN", B::kDeepSeek, [](A& a) { a.logits.routed_scaling_factor = kNaN; },
       "logits.routed_scaling_factor", "nan", false},
      {"scale +inf", B::kLogits, [](A& a) { a.logits.routed_scaling_factor = kInf; },
       "logits.routed_scaling_factor", "inf", false},
      {"Llama4 with K 2", B::kLogits, [](A& a) { a.logits.method = RoutingMethod::kLlama4; },
       "shape.top_k", "2", false},
      {"n_group negative", B::kDeepSeek, [](A& a) { a.logits.n_group = -4; }, "logits.n_group",
       "-4", false},
      {"n_group not dividing E", B::kDeepSeek,
       [](A& a) {
         a.logits.n_group = 3;
         a.logits.topk_group = 1;
       },
       "logits.n_group", "3", false},
      {"n_group above E", B::kDeepSeek,
       [](A& a) {
         a.logits.n_group = 16;
         a.logits.topk_group = 1;
       },
       "logits.n_group", "16", false},
      {"topk_group above n_group", B::kDeepSeek, [](A& a) { a.logits.topk_group = 5; },
       "logits.topk_group", "5", false},
      {"topk_group negative", B::kDeepSeek, [](A& a) { a.logits.topk_group = -1; },
       "logits.topk_group", "-1", false},
      {"K above the kept experts", B::kDeepSeek,
       [](A& a) {
         a.logits.topk_group = 1;
         a.shape.top_k = 3;
       },
       "shape.top_k", "3", false},
      {"bias with packed input", B::kPacked, [](A& a) { a.logits.bias = kSomeIds.data(); },
       "logits.bias", "a pointer", false},
      {"packed with fp32 weights", B::kPacked,
       [](A& a) { a.expert_weights_dtype = DType::kFP32; }, "expert_weights_dtype", "fp32",
       false},
      {"routed weights dtype", B::kUnpackedFp32,
       [](A& a) { a.routed.weights_dtype = static_cast<DType>(3); }, "routed.weights_dtype",
       "DType(3)", false},
      {"unpacked bf16 asks fp32", B::kUnpackedBf16,
       [](A& a) { a.expert_weights_dtype = DType::kFP32; }, "expert_weights_dtype", "fp32",
       false},
      {"unpacked fp32 asks bf16", B::kUnpackedFp32,
       [](A& a) { a.expert_weights_dtype = DType::kBF16; }, "expert_weights_dtype", "bf16",
       false},
      {"activation 5 (SwigluBias)", B::kLogits,
       [](A& a) { a.activation = static_cast<Activation>(5); }, "activation", "5", false},
      {"activation -1", B::kPacked, [](A& a) { a.activation = static_cast<Activation>(-1); },
       "activation", "-1", false},
      {"alpha with Geglu", B::kLogits,
       [](A& a) {
         a.activation = Activation::kGeglu;
         a.gemm1_alpha = kSomeFloats.data();
       },
       "gemm1_alpha", "a pointer", false},
      {"beta with Relu2", B::kUnfinalized,
       [](A& a) {
         a.activation = Activation::kRelu2;
         a.gemm1_beta = kSomeFloats.data();
       },
       "gemm1_beta", "a pointer", false},
      {"beta with SwigluStep", B::kPacked,
       [](A& a) {
         a.activation = Activation::kSwigluStep;
         a.gemm1_beta = kSomeFloats.data();
       },
       "gemm1_beta", "a pointer", false},
      {"clamp limit with Gelu", B::kLogits,
       [](A& a) {
         a.activation = Activation::kGelu;
         a.gemm1_clamp_limit = kSomeFloats.data();
       },
       "gemm1_clamp_limit", "a pointer", false},
      {"gemm1 bias dtype", B::kUnpackedBf16,
       [](A& a) {
         a.gemm1_bias = kSomeFloats.data();
         a.gemm1_bias_dtype = static_cast<DType>(7);
       },
       "gemm1_bias_dtype", "DType(7)", false},
      {"gemm2 bias dtype", B::kLogits,
       [](A& a) {
         a.gemm2_bias = kSomeFloats.data();
         a.gemm2_bias_dtype = static_cast<DType>(-2);
       },
       "gemm2_bias_dtype", "DType(-2)", false},
      {"routing scales on input with K 2", B::kLogits,
       [](A& a) { a.use_routing_scales_on_input = true; }, "shape.top_k", "2", false},
      {"no hidden_states", B::kPacked, [](A& a) { a.hidden_states = nullptr; }, "hidden_states",
       "nullptr", false},
      {"no gemm1_weights", B::kLogits, [](A& a) { a.gemm1_weights = nullptr; }, "gemm1_weights",
       "nullptr", false},
      {"no gemm2_weights at T 0", B::kUnpackedBf16,
       [](A& a) {
         a.shape.num_tokens = 0;
         a.gemm2_weights = nullptr;
       },
       "gemm2_weights", "nullptr", false},
      {"no output", B::kUnpackedFp32, [](A& a) { a.output = nullptr; }, "output", "nullptr",
       false},
      {"no gemm2_output", B::kUnfinalized, [](A& a) { a.gemm2_output = nullptr; },
       "gemm2_output", "nullptr", false},
      {"no expert_weights", B::kUnfinalized, [](A& a) { a.expert_weights = nullptr; },
       "expert_weights", "nullptr", false},
      {"no map", B::kUnfinalized, [](A& a) { a.expanded_idx_to_permuted_idx = nullptr; },
       "expanded_idx_to_permuted_idx", "nullptr", false},
  };
  return all;
}

::testing::AssertionResult is_rejection(const Status& status, const InvalidRule& rule) {
  if (status.code != StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure()
           << "status " << status_code_name(status.code) << " (" << status.message << ")";
  }
  const std::string prefix = rule.argument + ": expected ";
  if (status.message.rfind(prefix, 0) != 0 || !ends_with(status.message, ", got " + rule.got)) {
    return ::testing::AssertionFailure()
           << "message \"" << status.message << "\" is not \"" << prefix << "..., got "
           << rule.got << "\"";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace fusedmoe::test
