// Names and predicates of the public enums (for messages and bindings) and the permuted capacity.
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid_argument";
    case StatusCode::kNotImplemented: return "not_implemented";
    case StatusCode::kCudaError: return "cuda_error";
    case StatusCode::kWorkspaceTooSmall: return "workspace_too_small";
  }
  return "unknown_status";
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return "bf16";
    case DType::kFP32: return "fp32";
    case DType::kFP8E4M3: return "fp8_e4m3";
  }
  return "unknown_dtype";
}

const char* routing_method_name(RoutingMethod method) {
  switch (method) {
    case RoutingMethod::kDefault: return "Default";
    case RoutingMethod::kRenormalize: return "Renormalize";
    case RoutingMethod::kDeepSeekV3: return "DeepSeekV3";
    case RoutingMethod::kLlama4: return "Llama4";
    case RoutingMethod::kRenormalizeNaive: return "RenormalizeNaive";
    case RoutingMethod::kTopK: return "TopK";
    case RoutingMethod::kSigmoidRenorm: return "SigmoidRenorm";
    case RoutingMethod::kMiniMax2: return "MiniMax2";
    case RoutingMethod::kSigmoid: return "Sigmoid";
    case RoutingMethod::kTopKSigmoid: return "TopKSigmoid";
  }
  return "unknown_method";
}

bool is_valid_activation(Activation activation) {
  switch (activation) {
    case Activation::kGelu:
    case Activation::kRelu:
    case Activation::kSilu:
    case Activation::kSwiglu:
    case Activation::kGeglu:
    case Activation::kRelu2:
    case Activation::kSwigluStep:
    case Activation::kGegluTanh: return true;
  }
  return false;
}

bool is_gated(Activation activation) {
  return activation == Activation::kSwiglu || activation == Activation::kGeglu ||
         activation == Activation::kSwigluStep || activation == Activation::kGegluTanh;
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::kGelu: return "Gelu";
    case Activation::kRelu: return "Relu";
    case Activation::kSilu: return "Silu";
    case Activation::kSwiglu: return "Swiglu";
    case Activation::kGeglu: return "Geglu";
    case Activation::kRelu2: return "Relu2";
    case Activation::kSwigluStep: return "SwigluStep";
    case Activation::kGegluTanh: return "GegluTanh";
  }
  return "unknown_activation";
}

// Every local slot gets one row, expert-sorted and unpadded (docs/DESIGN.md "Permutation").
int64_t permuted_capacity(int64_t num_tokens, int32_t top_k, int32_t /*local_num_experts*/) {
  return num_tokens * top_k;
}

}  // namespace fusedmoe
