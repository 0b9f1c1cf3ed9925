// MoeCase: host buffers for one operator call (a shape plus a routing input), filled with fresh
// random data from a seed, and the MoeArguments that point at them.
//
// Every tensor is a plain std::vector (bf16 as uint16_t bits, fp32 as float, ids as int32_t), so a
// GPU test copies each one to the device (data(), size() * sizeof(element)) and swaps the
// pointers in the MoeArguments it gets from arguments(). Only the vectors the config needs are
// non-empty (e.g. logits_bf16 only for bf16 logits). Outputs start poisoned.
//
// Data scales keep every stage O(1): x ~ U(-1, 1), W1 ~ U(-2, 2) / sqrt(H), W2 ~ U(-2, 2) / sqrt(I),
// logits ~ U(-4, 4), bias ~ U(-0.5, 0.5), routed weights ~ U(0.05, 1).
#pragma once

#include <cstdint>
#include <vector>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::test {

enum class RoutingInput { kLogits, kPacked, kUnpacked };

struct MoeCaseConfig {
  MoeShape shape;
  RoutingInput routing_input = RoutingInput::kLogits;

  // Logits input.
  RoutingMethod method = RoutingMethod::kRenormalize;
  DType logits_dtype = DType::kFP32;
  bool with_bias = false;
  DType bias_dtype = DType::kFP32;
  int32_t n_group = 0;
  int32_t topk_group = 0;
  float routed_scaling_factor = 1.0f;

  // Unpacked routed input: the dtype of topk_weights (also the expert_weights dtype then).
  DType routed_weights_dtype = DType::kBF16;
  // Logits input only: bf16 or fp32 routing weights (packed forces bf16).
  DType expert_weights_dtype = DType::kBF16;

  // The expert MLP: the activation (gemm1 holds 2I rows per expert when gated, I otherwise),
  // random per-expert parameters (alpha, beta for Swiglu; clamp limit for Swiglu and SwigluStep)
  // and expert biases of both GEMMs, routing weights on the input (K == 1).
  Activation activation = Activation::kSwiglu;
  bool with_activation_params = false;
  bool with_expert_biases = false;
  DType expert_bias_dtype = DType::kBF16;
  bool routing_scales_on_input = false;

  bool do_finalize = true;
  bool with_replay = false;
  uint64_t seed = 1;

  // Only the routing input (logits and bias, or routed ids and weights): no hidden states,
  // expert weights or outputs, for callers that keep those on the device (the soak fills
  // multi-GB weights there). arguments() then leaves those pointers null.
  bool routing_only = false;
};

// Convenience: a MoeShape with every expert local (offset 0, E_loc = E).
MoeShape make_shape(int64_t num_tokens, int64_t hidden_size, int64_t intermediate_size,
                    int32_t num_experts, int32_t top_k);

class MoeCase {
 public:
  explicit MoeCase(const MoeCaseConfig& config);

  const MoeCaseConfig& config() const { return config_; }
  const MoeShape& shape() const { return config_.shape; }
  int64_t num_slots() const { return config_.shape.num_tokens * config_.shape.top_k; }
  int64_t permuted_rows() const;
  DType expert_weights_dtype() const;  // the dtype arguments() asks for

  // MoeArguments pointing at this case's host buffers (outputs according to do_finalize).
  MoeArguments arguments();

  // Replaces the routed input (ids plain global ids, weights in fp32) and encodes it as the
  // config's routed input asks: packed words with bf16 weights, or plain ids with bf16/fp32
  // weights. Only for RoutingInput::kPacked / kUnpacked.
  void set_routing(const std::vector<int32_t>& ids, const std::vector<float>& weights);

  void poison_outputs();
  uint64_t input_checksum() const;   // over every input buffer
  uint64_t output_checksum() const;  // over every output buffer

  // Typed access to dtype-dependent buffers.
  const void* logits_data() const;
  const void* bias_data() const;
  const void* topk_weights_data() const;
  const void* gemm1_bias_data() const;  // nullptr without expert biases
  const void* gemm2_bias_data() const;
  int64_t gemm1_rows() const;           // 2I (gated activation) or I
  void* expert_weights_data();
  std::vector<float> expert_weights_as_float() const;

  // Inputs.
  std::vector<uint16_t> hidden_states;      // [T, H] bf16
  std::vector<uint16_t> gemm1_weights;      // [E_loc, 2I, H] bf16: rows [0, I) up, [I, 2I) gate
                                            // ([E_loc, I, H] for a non-gated activation)
  std::vector<uint16_t> gemm2_weights;      // [E_loc, H, I] bf16
  std::vector<float> logits_fp32;           // [T, E] when logits_dtype == fp32
  std::vector<uint16_t> logits_bf16;        // [T, E] when logits_dtype == bf16
  std::vector<float> bias_fp32;             // [E] when with_bias and bias_dtype == fp32
  std::vector<uint16_t> bias_bf16;          // [E] when with_bias and bias_dtype == bf16
  std::vector<int32_t> topk_ids;            // [T, K] packed words or plain ids (routed input)
  std::vector<float> topk_weights_fp32;     // [T, K] unpacked, fp32
  std::vector<uint16_t> topk_weights_bf16;  // [T, K] unpacked, bf16
  std::vector<float> gemm1_alpha;           // [E_loc] when with_activation_params and Swiglu
  std::vector<float> gemm1_beta;            // [E_loc] likewise
  std::vector<float> gemm1_clamp_limit;     // [E_loc] with params and Swiglu or SwigluStep
  std::vector<float> gemm1_bias_fp32;       // [E_loc, 2I or I] when with_expert_biases, fp32
  std::vector<uint16_t> gemm1_bias_bf16;    // likewise, bf16
  std::vector<float> gemm2_bias_fp32;       // [E_loc, H] when with_expert_biases, fp32
  std::vector<uint16_t> gemm2_bias_bf16;    // likewise, bf16

  // Outputs (poisoned at construction).
  std::vector<uint16_t> output;                       // [T, H] when do_finalize
  std::vector<uint16_t> gemm2_output;                 // [T * K, H] when !do_finalize
  std::vector<float> expert_weights_fp32;             // [T, K] when !do_finalize, fp32
  std::vector<uint16_t> expert_weights_bf16;          // [T, K] when !do_finalize, bf16
  std::vector<int32_t> expanded_idx_to_permuted_idx;  // [T * K] when !do_finalize
  std::vector<int16_t> routing_replay_out;            // [T, K] when with_replay

 private:
  MoeCaseConfig config_;
};

}  // namespace fusedmoe::test
