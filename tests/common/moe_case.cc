// MoeCase: random host buffers for one operator call (see moe_case.h).
#include "common/moe_case.h"

#include <cmath>
#include <stdexcept>

#include "common/host_data.h"

namespace fusedmoe::test {
namespace {

// With T == 0 a [T, ...] tensor is empty, but validate() still needs a non-null routing pointer
// to tell the routing inputs apart; a reserved element gives every empty vector an address.
template <typename T>
void give_address(std::vector<T>& values) {
  if (values.capacity() == 0) values.reserve(1);
}

}  // namespace

MoeShape make_shape(int64_t num_tokens, int64_t hidden_size, int64_t intermediate_size,
                    int32_t num_experts, int32_t top_k) {
  MoeShape shape;
  shape.num_tokens = num_tokens;
  shape.hidden_size = hidden_size;
  shape.intermediate_size = intermediate_size;
  shape.num_experts = num_experts;
  shape.top_k = top_k;
  shape.local_expert_offset = 0;
  shape.local_num_experts = num_experts;
  return shape;
}

MoeCase::MoeCase(const MoeCaseConfig& config) : config_(config) {
  const MoeShape& s = config_.shape;
  const int64_t T = s.num_tokens, H = s.hidden_size, I = s.intermediate_size;
  const int64_t E = s.num_experts, K = s.top_k, E_loc = s.local_num_experts;
  Rng rng(config_.seed);

  if (!config_.routing_only) {
    hidden_states = random_bf16(rng, T * H, -1.0f, 1.0f);
    const float w1_scale = 2.0f / std::sqrt(static_cast<float>(H));
    const float w2_scale = 2.0f / std::sqrt(static_cast<float>(I));
    gemm1_weights = random_bf16(rng, E_loc * gemm1_rows() * H, -w1_scale, w1_scale);
    gemm2_weights = random_bf16(rng, E_loc * H * I, -w2_scale, w2_scale);
  }

  if (config_.routing_input == RoutingInput::kLogits) {
    std::vector<float> logits = random_fp32(rng, T * E, -4.0f, 4.0f);
    if (config_.logits_dtype == DType::kBF16) {
      logits_bf16 = float_to_bf16(logits);
    } else {
      logits_fp32 = std::move(logits);
    }
    if (config_.with_bias) {
      std::vector<float> bias = random_fp32(rng, E, -0.5f, 0.5f);
      if (config_.bias_dtype == DType::kBF16) {
        bias_bf16 = float_to_bf16(bias);
      } else {
        bias_fp32 = std::move(bias);
      }
    }
  } else {
    const std::vector<int32_t> ids =
        random_distinct_ids(rng, T, static_cast<int32_t>(K), static_cast<int32_t>(E));
    set_routing(ids, random_fp32(rng, T * K, 0.05f, 1.0f));
  }

  // The expert MLP's options, drawn last so that cases without them keep their data. Limits
  // around 1 make the clamps bite on GEMM1 outputs of unit scale; biases of half that scale.
  if (config_.with_activation_params) {
    if (config_.activation == Activation::kSwiglu) {
      gemm1_alpha = random_fp32(rng, E_loc, 1.0f, 2.0f);
      gemm1_beta = random_fp32(rng, E_loc, 0.5f, 1.5f);
    }
    if (config_.activation == Activation::kSwiglu ||
        config_.activation == Activation::kSwigluStep) {
      gemm1_clamp_limit = random_fp32(rng, E_loc, 0.5f, 1.5f);
    }
  }
  if (config_.with_expert_biases) {
    std::vector<float> bias1 = random_fp32(rng, E_loc * gemm1_rows(), -0.5f, 0.5f);
    std::vector<float> bias2 = random_fp32(rng, E_loc * H, -0.5f, 0.5f);
    if (config_.expert_bias_dtype == DType::kBF16) {
      gemm1_bias_bf16 = float_to_bf16(bias1);
      gemm2_bias_bf16 = float_to_bf16(bias2);
    } else {
      gemm1_bias_fp32 = std::move(bias1);
      gemm2_bias_fp32 = std::move(bias2);
    }
  }

  if (config_.routing_only) {
    // The caller keeps the outputs (the soak: on the device).
  } else if (config_.do_finalize) {
    output.resize(T * H);
  } else {
    gemm2_output.resize(permuted_rows() * H);
    if (expert_weights_dtype() == DType::kFP32) {
      expert_weights_fp32.resize(T * K);
    } else {
      expert_weights_bf16.resize(T * K);
    }
    expanded_idx_to_permuted_idx.resize(T * K);
  }
  if (config_.with_replay && !config_.routing_only) routing_replay_out.resize(T * K);
  poison_outputs();
  if (config_.routing_input == RoutingInput::kLogits) {
    give_address(logits_bf16);
    give_address(logits_fp32);
  } else {
    give_address(topk_ids);
    give_address(topk_weights_bf16);
    give_address(topk_weights_fp32);
  }
}

int64_t MoeCase::permuted_rows() const {
  return permuted_capacity(config_.shape.num_tokens, config_.shape.top_k,
                           config_.shape.local_num_experts);
}

DType MoeCase::expert_weights_dtype() const {
  switch (config_.routing_input) {
    case RoutingInput::kLogits:
      return config_.expert_weights_dtype;
    case RoutingInput::kPacked:
      return DType::kBF16;
    case RoutingInput::kUnpacked:
      return config_.routed_weights_dtype;
  }
  return DType::kBF16;
}

void MoeCase::set_routing(const std::vector<int32_t>& ids, const std::vector<float>& weights) {
  if (config_.routing_input == RoutingInput::kLogits) {
    throw std::logic_error("MoeCase::set_routing needs a routed input");
  }
  if (ids.size() != static_cast<size_t>(num_slots()) || weights.size() != ids.size()) {
    throw std::logic_error("MoeCase::set_routing: ids and weights must be [T, K]");
  }
  topk_ids.assign(ids.size(), 0);
  topk_weights_fp32.clear();
  topk_weights_bf16.clear();
  if (config_.routing_input == RoutingInput::kPacked) {
    for (size_t i = 0; i < ids.size(); ++i)
      topk_ids[i] = pack_topk(ids[i], float_to_bf16_bits(weights[i]));
    return;
  }
  topk_ids = ids;
  if (config_.routed_weights_dtype == DType::kFP32) {
    topk_weights_fp32 = weights;
  } else {
    topk_weights_bf16 = float_to_bf16(weights);
  }
}

MoeArguments MoeCase::arguments() {
  MoeArguments args;
  args.shape = config_.shape;
  args.hidden_states = hidden_states.data();
  args.gemm1_weights = gemm1_weights.data();
  args.gemm2_weights = gemm2_weights.data();
  if (config_.routing_input == RoutingInput::kLogits) {
    args.logits.logits = logits_data();
    args.logits.logits_dtype = config_.logits_dtype;
    args.logits.bias = bias_data();
    args.logits.bias_dtype = config_.bias_dtype;
    args.logits.method = config_.method;
    args.logits.n_group = config_.n_group;
    args.logits.topk_group = config_.topk_group;
    args.logits.routed_scaling_factor = config_.routed_scaling_factor;
  } else {
    args.routed.topk_ids = topk_ids.data();
    args.routed.topk_weights = topk_weights_data();
    args.routed.weights_dtype = config_.routed_weights_dtype;
  }
  args.expert_weights_dtype = expert_weights_dtype();
  args.activation = config_.activation;
  args.gemm1_alpha = gemm1_alpha.empty() ? nullptr : gemm1_alpha.data();
  args.gemm1_beta = gemm1_beta.empty() ? nullptr : gemm1_beta.data();
  args.gemm1_clamp_limit = gemm1_clamp_limit.empty() ? nullptr : gemm1_clamp_limit.data();
  args.gemm1_bias = gemm1_bias_data();
  args.gemm1_bias_dtype = config_.expert_bias_dtype;
  args.gemm2_bias = gemm2_bias_data();
  args.gemm2_bias_dtype = config_.expert_bias_dtype;
  args.use_routing_scales_on_input = config_.routing_scales_on_input;
  args.do_finalize = config_.do_finalize;
  if (config_.do_finalize) {
    args.output = output.data();
  } else {
    args.gemm2_output = gemm2_output.data();
    args.expert_weights = expert_weights_data();
    args.expanded_idx_to_permuted_idx = expanded_idx_to_permuted_idx.data();
  }
  args.routing_replay_out = config_.with_replay ? routing_replay_out.data() : nullptr;
  return args;
}

void MoeCase::poison_outputs() {
  poison(output);
  poison(gemm2_output);
  poison(expert_weights_fp32);
  poison(expert_weights_bf16);
  poison(expanded_idx_to_permuted_idx);
  poison(routing_replay_out);
}

uint64_t MoeCase::input_checksum() const {
  uint64_t sum = 0;
  for (uint64_t part :
       {checksum(hidden_states), checksum(gemm1_weights), checksum(gemm2_weights),
        checksum(logits_fp32), checksum(logits_bf16), checksum(bias_fp32), checksum(bias_bf16),
        checksum(topk_ids), checksum(topk_weights_fp32), checksum(topk_weights_bf16),
        checksum(gemm1_alpha), checksum(gemm1_beta), checksum(gemm1_clamp_limit),
        checksum(gemm1_bias_fp32), checksum(gemm1_bias_bf16), checksum(gemm2_bias_fp32),
        checksum(gemm2_bias_bf16)}) {
    sum = sum * 31 + part;
  }
  return sum;
}

uint64_t MoeCase::output_checksum() const {
  uint64_t sum = 0;
  for (uint64_t part : {checksum(output), checksum(gemm2_output), checksum(expert_weights_fp32),
                        checksum(expert_weights_bf16), checksum(expanded_idx_to_permuted_idx),
                        checksum(routing_replay_out)}) {
    sum = sum * 31 + part;
  }
  return sum;
}

const void* MoeCase::logits_data() const {
  return config_.logits_dtype == DType::kBF16 ? static_cast<const void*>(logits_bf16.data())
                                              : static_cast<const void*>(logits_fp32.data());
}

const void* MoeCase::bias_data() const {
  if (!config_.with_bias) return nullptr;
  return config_.bias_dtype == DType::kBF16 ? static_cast<const void*>(bias_bf16.data())
                                            : static_cast<const void*>(bias_fp32.data());
}

const void* MoeCase::topk_weights_data() const {
  if (config_.routing_input != RoutingInput::kUnpacked) return nullptr;
  return config_.routed_weights_dtype == DType::kFP32
             ? static_cast<const void*>(topk_weights_fp32.data())
             : static_cast<const void*>(topk_weights_bf16.data());
}

const void* MoeCase::gemm1_bias_data() const {
  if (!config_.with_expert_biases) return nullptr;
  return config_.expert_bias_dtype == DType::kBF16
             ? static_cast<const void*>(gemm1_bias_bf16.data())
             : static_cast<const void*>(gemm1_bias_fp32.data());
}

const void* MoeCase::gemm2_bias_data() const {
  if (!config_.with_expert_biases) return nullptr;
  return config_.expert_bias_dtype == DType::kBF16
             ? static_cast<const void*>(gemm2_bias_bf16.data())
             : static_cast<const void*>(gemm2_bias_fp32.data());
}

int64_t MoeCase::gemm1_rows() const {
  return (is_gated(config_.activation) ? 2 : 1) * config_.shape.intermediate_size;
}

void* MoeCase::expert_weights_data() {
  return expert_weights_dtype() == DType::kFP32 ? static_cast<void*>(expert_weights_fp32.data())
                                                : static_cast<void*>(expert_weights_bf16.data());
}

std::vector<float> MoeCase::expert_weights_as_float() const {
  return expert_weights_dtype() == DType::kFP32 ? expert_weights_fp32
                                                : bf16_to_float(expert_weights_bf16);
}

}  // namespace fusedmoe::test
