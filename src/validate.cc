// validate(), validate_shape() and validate_routing_host(): every SPEC rule that can be checked
// without reading device data (docs/DESIGN.md pins the defaults: n_group 0 = 1 group,
// topk_group 0 = n_group, Llama4 needs K == 1). Checks run in a fixed order (shape, weight
// layout, dtypes, the expert MLP's options, the FP8 fields, routing input and its parameters,
// required pointers) and the first failure is reported.
#include "validate.h"

#include <cmath>
#include <string>

namespace fusedmoe {
namespace detail {
namespace {

std::string str(int64_t value) { return std::to_string(value); }

bool is_dtype(DType dtype) { return dtype == DType::kBF16 || dtype == DType::kFP32; }

Status check_dtype(const char* argument, DType dtype) {
  if (is_dtype(dtype)) return Status::Ok();
  return invalid_argument(argument, "bf16 (0) or fp32 (1)", dtype_str(dtype));
}

Status check_required(const char* argument, const void* pointer, const char* when) {
  if (pointer) return Status::Ok();
  return invalid_argument(argument, std::string("a pointer ") + when, "nullptr");
}

// Method, group parameters and scaling factor of logits routing.
Status validate_logits_routing(const MoeShape& shape, const LogitsRouting& logits) {
  const int method = static_cast<int>(logits.method);
  if (method < 0 || method >= kNumRoutingMethods) {
    return invalid_argument("logits.method", "a RoutingMethod in [0, 9]", str(method));
  }
  if (Status s = check_dtype("logits.logits_dtype", logits.logits_dtype); !s.ok()) return s;
  if (logits.bias) {
    if (Status s = check_dtype("logits.bias_dtype", logits.bias_dtype); !s.ok()) return s;
  }
  if (!std::isfinite(logits.routed_scaling_factor)) {
    return invalid_argument("logits.routed_scaling_factor", "a finite number",
                            std::to_string(logits.routed_scaling_factor));
  }
  if (logits.method == RoutingMethod::kLlama4 && shape.top_k != 1) {
    return invalid_argument("shape.top_k", "1 for the Llama4 routing method", str(shape.top_k));
  }
  if (logits.method != RoutingMethod::kDeepSeekV3) return Status::Ok();

  if (logits.n_group < 0) {
    return invalid_argument("logits.n_group", ">= 1 (or 0 for one group)", str(logits.n_group));
  }
  const GroupConfig groups = resolve_groups(logits);
  if (shape.num_experts % groups.n_group != 0) {
    return invalid_argument("logits.n_group",
                            "a divisor of shape.num_experts (" + str(shape.num_experts) + ")",
                            str(groups.n_group));
  }
  if (logits.topk_group < 0 || groups.topk_group > groups.n_group) {
    return invalid_argument("logits.topk_group",
                            "in [1, n_group = " + str(groups.n_group) + "] (or 0 for n_group)",
                            str(logits.topk_group));
  }
  const int64_t selectable = static_cast<int64_t>(groups.topk_group) *
                             (shape.num_experts / groups.n_group);
  if (shape.top_k > selectable) {
    return invalid_argument("shape.top_k",
                            "<= topk_group * num_experts / n_group = " + str(selectable) +
                                " for DeepSeekV3",
                            str(shape.top_k));
  }
  return Status::Ok();
}

// The expert MLP's options: activation, its parameters, biases, routing weights on the input.
Status validate_expert_mlp(const MoeArguments& args) {
  const int activation = static_cast<int>(args.activation);
  if (!is_valid_activation(args.activation)) {
    return invalid_argument("activation",
                            "an Activation: Gelu 0, Relu 1, Silu 2, Swiglu 3, Geglu 4, Relu2 6, "
                            "SwigluStep 7 or GegluTanh 8",
                            str(activation));
  }
  const std::string name = activation_name(args.activation);
  if (args.activation != Activation::kSwiglu) {
    if (args.gemm1_alpha) {
      return invalid_argument("gemm1_alpha", "nullptr (only Swiglu reads it) with " + name,
                              "a pointer");
    }
    if (args.gemm1_beta) {
      return invalid_argument("gemm1_beta", "nullptr (only Swiglu reads it) with " + name,
                              "a pointer");
    }
  }
  if (args.gemm1_clamp_limit && args.activation != Activation::kSwiglu &&
      args.activation != Activation::kSwigluStep) {
    return invalid_argument("gemm1_clamp_limit",
                            "nullptr (only Swiglu and SwigluStep read it) with " + name,
                            "a pointer");
  }
  if (args.gemm1_bias) {
    if (Status s = check_dtype("gemm1_bias_dtype", args.gemm1_bias_dtype); !s.ok()) return s;
  }
  if (args.gemm2_bias) {
    if (Status s = check_dtype("gemm2_bias_dtype", args.gemm2_bias_dtype); !s.ok()) return s;
  }
  if (args.use_routing_scales_on_input && args.shape.top_k != 1) {
    return invalid_argument("shape.top_k", "1 with use_routing_scales_on_input",
                            str(args.shape.top_k));
  }
  return Status::Ok();
}

// The FP8 block-scale variant's element types, sizes and scales (MoeArguments' FP8 fields).
Status validate_fp8(const MoeArguments& args) {
  const auto is_bf16_or_fp8 = [](DType dtype) {
    return dtype == DType::kBF16 || dtype == DType::kFP8E4M3;
  };
  if (!is_bf16_or_fp8(args.weights_dtype)) {
    return invalid_argument("weights_dtype", "bf16 (0) or fp8_e4m3 (2)",
                            dtype_str(args.weights_dtype));
  }
  if (!is_bf16_or_fp8(args.hidden_states_dtype)) {
    return invalid_argument("hidden_states_dtype", "bf16 (0) or fp8_e4m3 (2)",
                            dtype_str(args.hidden_states_dtype));
  }
  if (args.weights_dtype != DType::kFP8E4M3) {
    if (args.hidden_states_dtype != DType::kBF16) {
      return invalid_argument("hidden_states_dtype", "bf16 with bf16 weights (fp8 hidden states "
                              "need weights_dtype fp8_e4m3)", dtype_str(args.hidden_states_dtype));
    }
    const char* scale = args.gemm1_weights_scale   ? "gemm1_weights_scale"
                        : args.gemm2_weights_scale ? "gemm2_weights_scale"
                        : args.hidden_states_scale ? "hidden_states_scale"
                                                   : nullptr;
    if (scale) return invalid_argument(scale, "nullptr with bf16 weights", "a pointer");
    return Status::Ok();
  }
  if (Status s = validate_fp8_shape(args.shape); !s.ok()) return s;
  if (args.use_routing_scales_on_input) {
    return invalid_argument("use_routing_scales_on_input", "false with fp8 weights", "true");
  }
  if (Status s = check_required("gemm1_weights_scale", args.gemm1_weights_scale,
                                "with fp8 weights");
      !s.ok()) {
    return s;
  }
  if (Status s = check_required("gemm2_weights_scale", args.gemm2_weights_scale,
                                "with fp8 weights");
      !s.ok()) {
    return s;
  }
  const bool fp8_input = args.hidden_states_dtype == DType::kFP8E4M3;
  if (!fp8_input && args.hidden_states_scale) {
    return invalid_argument("hidden_states_scale", "nullptr with bf16 hidden states (they are "
                            "quantised inside)", "a pointer");
  }
  if (fp8_input && args.shape.num_tokens > 0) {
    return check_required("hidden_states_scale", args.hidden_states_scale,
                          "with fp8 hidden states when T > 0");
  }
  return Status::Ok();
}

}  // namespace

std::string dtype_str(DType dtype) {
  if (is_dtype(dtype) || dtype == DType::kFP8E4M3) return dtype_name(dtype);
  return "DType(" + str(static_cast<int>(dtype)) + ")";
}

Status validate_fp8_shape(const MoeShape& shape) {
  if (shape.hidden_size % kFp8BlockSize != 0) {
    return invalid_argument("shape.hidden_size", "a multiple of 128 with fp8 weights",
                            str(shape.hidden_size));
  }
  if (shape.intermediate_size % kFp8BlockSize != 0) {
    return invalid_argument("shape.intermediate_size", "a multiple of 128 with fp8 weights",
                            str(shape.intermediate_size));
  }
  return Status::Ok();
}

Status invalid_argument(const std::string& argument, const std::string& expected,
                        const std::string& got) {
  return Status::Error(StatusCode::kInvalidArgument,
                       argument + ": expected " + expected + ", got " + got);
}

Status validate_shape(const MoeShape& shape) {
  if (shape.num_tokens < 0) {
    return invalid_argument("shape.num_tokens", ">= 0", str(shape.num_tokens));
  }
  if (shape.hidden_size <= 0 || shape.hidden_size % kSizeMultiple != 0 ||
      shape.hidden_size > kMaxFeatureSize) {
    return invalid_argument("shape.hidden_size", "a positive multiple of 8 up to 1048576",
                            str(shape.hidden_size));
  }
  if (shape.intermediate_size <= 0 || shape.intermediate_size % kSizeMultiple != 0 ||
      shape.intermediate_size > kMaxFeatureSize) {
    return invalid_argument("shape.intermediate_size", "a positive multiple of 8 up to 1048576",
                            str(shape.intermediate_size));
  }
  if (shape.num_experts < 1 || shape.num_experts > kMaxNumExperts) {
    return invalid_argument("shape.num_experts", "in [1, 1024]", str(shape.num_experts));
  }
  if (shape.top_k < 1 || shape.top_k > kMaxTopK) {
    return invalid_argument("shape.top_k", "in [1, 32]", str(shape.top_k));
  }
  if (shape.top_k > shape.num_experts) {
    return invalid_argument("shape.top_k", "<= shape.num_experts (" + str(shape.num_experts) + ")",
                            str(shape.top_k));
  }
  if (shape.num_tokens > kMaxNumSlots / shape.top_k) {  // T * K would pass 2^30
    return invalid_argument("shape.num_tokens",
                            "num_tokens * top_k <= 2^30 (at most " +
                                str(kMaxNumSlots / shape.top_k) + " tokens for top_k " +
                                str(shape.top_k) + ")",
                            str(shape.num_tokens));
  }
  if (shape.local_num_experts < 1) {
    return invalid_argument("shape.local_num_experts", ">= 1", str(shape.local_num_experts));
  }
  if (shape.local_expert_offset < 0) {
    return invalid_argument("shape.local_expert_offset", ">= 0", str(shape.local_expert_offset));
  }
  if (static_cast<int64_t>(shape.local_expert_offset) + shape.local_num_experts >
      shape.num_experts) {
    return invalid_argument(
        "shape.local_expert_offset",
        "local_expert_offset + local_num_experts (" + str(shape.local_num_experts) +
            ") <= num_experts (" + str(shape.num_experts) + ")",
        str(shape.local_expert_offset));
  }
  return Status::Ok();
}

}  // namespace detail

using detail::invalid_argument;

Status validate(const MoeArguments& args) {
  const MoeShape& shape = args.shape;
  if (Status s = detail::validate_shape(shape); !s.ok()) return s;

  if (args.weight_layout != WeightLayout::kCanonical) {
    return invalid_argument("weight_layout", "kCanonical (0)",
                            std::to_string(static_cast<int>(args.weight_layout)));
  }
  if (Status s = detail::check_dtype("expert_weights_dtype", args.expert_weights_dtype); !s.ok()) {
    return s;
  }
  if (Status s = detail::validate_expert_mlp(args); !s.ok()) return s;
  if (Status s = detail::validate_fp8(args); !s.ok()) return s;

  // Exactly one routing input.
  const bool has_logits = args.logits.logits != nullptr;
  const bool has_routed = args.routed.topk_ids != nullptr;
  if (has_logits && has_routed) {
    return invalid_argument("logits.logits", "exactly one of logits.logits and routed.topk_ids",
                            "both");
  }
  if (!has_logits && !has_routed) {
    return invalid_argument("logits.logits", "exactly one of logits.logits and routed.topk_ids",
                            "neither");
  }

  if (has_logits) {
    if (args.routed.topk_weights) {
      return invalid_argument("routed.topk_weights", "nullptr without routed.topk_ids",
                              "a pointer");
    }
    if (Status s = detail::validate_logits_routing(shape, args.logits); !s.ok()) return s;
  } else {
    if (args.logits.bias) {
      return invalid_argument("logits.bias", "nullptr with routed input (routed.topk_ids)",
                              "a pointer");
    }
    const bool packed = args.routed.topk_weights == nullptr;
    if (packed) {
      if (args.expert_weights_dtype != DType::kBF16) {
        return invalid_argument("expert_weights_dtype", "bf16 for packed routed.topk_ids",
                                detail::dtype_str(args.expert_weights_dtype));
      }
    } else {
      if (Status s = detail::check_dtype("routed.weights_dtype", args.routed.weights_dtype);
          !s.ok()) {
        return s;
      }
      if (args.expert_weights_dtype != args.routed.weights_dtype) {
        return invalid_argument(
            "expert_weights_dtype",
            std::string("routed.weights_dtype (") + dtype_name(args.routed.weights_dtype) + ")",
            detail::dtype_str(args.expert_weights_dtype));
      }
    }
  }

  // Required pointers. With T == 0 every [T, ...] tensor is empty and may be null.
  const bool has_tokens = shape.num_tokens > 0;
  if (has_tokens) {
    if (Status s = detail::check_required("hidden_states", args.hidden_states, "when T > 0");
        !s.ok()) {
      return s;
    }
  }
  if (Status s = detail::check_required("gemm1_weights", args.gemm1_weights, "(always)");
      !s.ok()) {
    return s;
  }
  if (Status s = detail::check_required("gemm2_weights", args.gemm2_weights, "(always)");
      !s.ok()) {
    return s;
  }
  if (!has_tokens) return Status::Ok();
  if (args.do_finalize) {
    return detail::check_required("output", args.output, "when do_finalize");
  }
  if (Status s = detail::check_required("gemm2_output", args.gemm2_output, "when !do_finalize");
      !s.ok()) {
    return s;
  }
  if (Status s = detail::check_required("expert_weights", args.expert_weights, "when !do_finalize");
      !s.ok()) {
    return s;
  }
  return detail::check_required("expanded_idx_to_permuted_idx",
                                args.expanded_idx_to_permuted_idx, "when !do_finalize");
}

namespace detail {

Status validate_routing_arguments(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                                  int32_t num_experts, const RoutingCheck* result) {
  if (num_tokens < 0) return invalid_argument("num_tokens", ">= 0", std::to_string(num_tokens));
  if (top_k < 1 || top_k > kMaxTopK) {
    return invalid_argument("top_k", "in [1, 32]", std::to_string(top_k));
  }
  if (num_experts < 1 || num_experts > kMaxNumExperts) {
    return invalid_argument("num_experts", "in [1, 1024]", std::to_string(num_experts));
  }
  if (num_tokens > kMaxNumSlots / top_k) {  // T * K would pass 2^30 (and could overflow)
    return invalid_argument("num_tokens",
                            "num_tokens * top_k <= 2^30 (at most " +
                                std::to_string(kMaxNumSlots / top_k) + " tokens for top_k " +
                                std::to_string(top_k) + ")",
                            std::to_string(num_tokens));
  }
  if (!result) return invalid_argument("result", "a pointer", "nullptr");
  if (num_tokens > 0 && !topk_ids) return invalid_argument("topk_ids", "a pointer", "nullptr");
  return Status::Ok();
}

}  // namespace detail

Status validate_routing_host(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                             int32_t num_experts, bool packed, RoutingCheck* result) {
  if (Status s = detail::validate_routing_arguments(topk_ids, num_tokens, top_k, num_experts,
                                                    result);
      !s.ok()) {
    return s;
  }

  *result = RoutingCheck{};
  const int64_t num_slots = num_tokens * top_k;
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t id = packed ? unpack_topk_id(topk_ids[slot]) : topk_ids[slot];
    if (id < 0 || id >= num_experts) {
      result->first_bad_slot = slot;
      result->bad_id = id;
      break;
    }
  }
  return Status::Ok();
}

}  // namespace fusedmoe
