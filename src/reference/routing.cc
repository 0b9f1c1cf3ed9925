// CPU reference of routing (SPEC "Routing methods", docs/DESIGN.md "Routing details"): the ten
// logits methods in fp32 and the decoding of routed (packed / unpacked) input. One token at a
// time, top-k by plain selection (O(E * K) per token, at most 1024 * 32).
#include <cmath>
#include <limits>
#include <vector>

#include "reference/bf16.h"
#include "reference/reference.h"

namespace fusedmoe::ref {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kScaledRenormEpsilon = 1e-20f;  // DeepSeekV3 / MiniMax2 denominator guard

float widen(const void* data, DType dtype, int64_t index) {
  if (dtype == DType::kBF16) {
    return detail::bf16_bits_to_float(static_cast<const uint16_t*>(data)[index]);
  }
  return static_cast<const float*>(data)[index];
}

// softmax over all n values (see the pinned formula in reference.h).
std::vector<float> softmax(const float* x, int32_t n) {
  float max_value = kNegInf;
  for (int32_t i = 0; i < n; ++i) {
    if (x[i] > max_value) max_value = x[i];  // NaN never compares greater: skipped
  }
  std::vector<float> p(n);
  float sum = 0.0f;
  for (int32_t i = 0; i < n; ++i) {
    p[i] = std::exp(x[i] - max_value);
    sum += p[i];
  }
  for (int32_t i = 0; i < n; ++i) p[i] /= sum;
  return p;
}

// The selected values v[ids[k]] divided by their sum (ascending k).
void renormalize(const float* values, const int32_t* ids, int32_t k, float* weights_out) {
  float sum = 0.0f;
  for (int32_t i = 0; i < k; ++i) sum += values[ids[i]];
  for (int32_t i = 0; i < k; ++i) weights_out[i] = values[ids[i]] / sum;
}

// (s_k * scale) / (sum of selected s + 1e-20): DeepSeekV3 and MiniMax2.
void scaled_renormalize(const float* s, const int32_t* ids, int32_t k, float scale,
                        float* weights_out) {
  float sum = 0.0f;
  for (int32_t i = 0; i < k; ++i) sum += s[ids[i]];
  for (int32_t i = 0; i < k; ++i) {
    weights_out[i] = (s[ids[i]] * scale) / (sum + kScaledRenormEpsilon);
  }
}

// DeepSeekV3 selection on the biased scores b: with more than one group, every group is scored
// by the sum of its top-2 b (its single b for a one-expert group), the topk_group best groups
// are kept and the rest are excluded as -inf; then top-K of what remains.
void deepseek_select(const std::vector<float>& biased, int32_t top_k, detail::GroupConfig groups,
                     int32_t* ids_out) {
  const int32_t num_experts = static_cast<int32_t>(biased.size());
  if (groups.n_group <= 1) {
    select_top_k(biased.data(), num_experts, top_k, ids_out);
    return;
  }
  const int32_t group_size = num_experts / groups.n_group;
  const int32_t num_best = group_size >= 2 ? 2 : 1;
  std::vector<float> group_scores(groups.n_group);
  for (int32_t g = 0; g < groups.n_group; ++g) {
    const float* group_biased = biased.data() + static_cast<int64_t>(g) * group_size;
    int32_t best[2];
    select_top_k(group_biased, group_size, num_best, best);
    group_scores[g] = group_biased[best[0]];
    if (num_best == 2) group_scores[g] += group_biased[best[1]];
  }
  std::vector<int32_t> kept_groups(groups.topk_group);
  select_top_k(group_scores.data(), groups.n_group, groups.topk_group, kept_groups.data());

  std::vector<float> masked(num_experts, kNegInf);
  for (int32_t g : kept_groups) {
    for (int32_t i = g * group_size; i < (g + 1) * group_size; ++i) masked[i] = biased[i];
  }
  select_top_k(masked.data(), num_experts, top_k, ids_out);
}

}  // namespace

bool ranks_before(float score_a, int32_t id_a, float score_b, int32_t id_b) {
  const bool a_nan = std::isnan(score_a);
  const bool b_nan = std::isnan(score_b);
  if (a_nan != b_nan) return b_nan;  // a number ranks before NaN
  if (!a_nan && score_a != score_b) return score_a > score_b;
  return id_a < id_b;
}

void select_top_k(const float* scores, int32_t n, int32_t k, int32_t* ids_out) {
  std::vector<bool> taken(n, false);
  for (int32_t slot = 0; slot < k; ++slot) {
    int32_t best = -1;
    for (int32_t i = 0; i < n; ++i) {
      if (taken[i]) continue;
      if (best < 0 || ranks_before(scores[i], i, scores[best], best)) best = i;
    }
    taken[best] = true;
    ids_out[slot] = best;
  }
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

float silu(float x) { return x / (1.0f + std::exp(-x)); }

void route_token(const float* logits, const float* bias, int32_t num_experts, int32_t top_k_count,
                 RoutingMethod method, detail::GroupConfig groups, float routed_scaling_factor,
                 int32_t* ids_out, float* weights_out) {
  const int32_t E = num_experts, K = top_k_count;
  std::vector<float> s(E);  // sigmoid scores, for the sigmoid-based methods
  for (int32_t i = 0; i < E; ++i) s[i] = sigmoid(logits[i]);

  switch (method) {
    case RoutingMethod::kDefault: {  // top-K of softmax; weights = the probabilities
      const std::vector<float> p = softmax(logits, E);
      select_top_k(p.data(), E, K, ids_out);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = p[ids_out[k]];
      return;
    }
    case RoutingMethod::kRenormalize: {  // top-K of logits; softmax over the K selected
      select_top_k(logits, E, K, ids_out);
      std::vector<float> selected(K);
      for (int32_t k = 0; k < K; ++k) selected[k] = logits[ids_out[k]];
      const std::vector<float> p = softmax(selected.data(), K);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = p[k];
      return;
    }
    case RoutingMethod::kDeepSeekV3: {
      std::vector<float> biased(E);
      for (int32_t i = 0; i < E; ++i) biased[i] = s[i] + (bias ? bias[i] : 0.0f);
      deepseek_select(biased, K, groups, ids_out);
      scaled_renormalize(s.data(), ids_out, K, routed_scaling_factor, weights_out);
      return;
    }
    case RoutingMethod::kLlama4: {  // K == 1 (validated): argmax of logits, sigmoid weight
      select_top_k(logits, E, K, ids_out);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = s[ids_out[k]];
      return;
    }
    case RoutingMethod::kRenormalizeNaive: {  // top-K of softmax; p / sum of selected p
      const std::vector<float> p = softmax(logits, E);
      select_top_k(p.data(), E, K, ids_out);
      renormalize(p.data(), ids_out, K, weights_out);
      return;
    }
    case RoutingMethod::kTopK: {  // top-K of logits; the raw logits
      select_top_k(logits, E, K, ids_out);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = logits[ids_out[k]];
      return;
    }
    case RoutingMethod::kSigmoidRenorm: {  // top-K of sigmoid; s / sum of selected s
      select_top_k(s.data(), E, K, ids_out);
      renormalize(s.data(), ids_out, K, weights_out);
      return;
    }
    case RoutingMethod::kMiniMax2: {  // top-K of sigmoid + bias; scaled renormalisation of s
      std::vector<float> biased(E);
      for (int32_t i = 0; i < E; ++i) biased[i] = s[i] + (bias ? bias[i] : 0.0f);
      select_top_k(biased.data(), E, K, ids_out);
      scaled_renormalize(s.data(), ids_out, K, routed_scaling_factor, weights_out);
      return;
    }
    case RoutingMethod::kSigmoid: {  // top-K of sigmoid; s
      select_top_k(s.data(), E, K, ids_out);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = s[ids_out[k]];
      return;
    }
    case RoutingMethod::kTopKSigmoid: {  // top-K of logits; sigmoid(logit)
      select_top_k(logits, E, K, ids_out);
      for (int32_t k = 0; k < K; ++k) weights_out[k] = s[ids_out[k]];
      return;
    }
  }
}

Routing route_reference(const LogitsRouting& logits, int64_t num_tokens, int32_t num_experts,
                        int32_t top_k_count, DType weights_dtype) {
  const int64_t T = num_tokens;
  const int32_t E = num_experts, K = top_k_count;
  Routing routing;
  routing.num_tokens = T;
  routing.top_k = K;
  routing.weights_dtype = weights_dtype;
  routing.ids.resize(T * K);
  routing.weights_fp32.resize(T * K);
  routing.weights.resize(T * K);

  std::vector<float> bias;
  if (logits.bias) {
    bias.resize(E);
    for (int32_t i = 0; i < E; ++i) bias[i] = widen(logits.bias, logits.bias_dtype, i);
  }
  const detail::GroupConfig groups = detail::resolve_groups(logits);
  std::vector<float> row(E);
  for (int64_t t = 0; t < T; ++t) {
    for (int32_t i = 0; i < E; ++i) row[i] = widen(logits.logits, logits.logits_dtype, t * E + i);
    route_token(row.data(), logits.bias ? bias.data() : nullptr, E, K, logits.method, groups,
                logits.routed_scaling_factor, routing.ids.data() + t * K,
                routing.weights_fp32.data() + t * K);
  }
  for (int64_t i = 0; i < T * K; ++i) {
    const float w = routing.weights_fp32[i];
    routing.weights[i] = weights_dtype == DType::kBF16 ? detail::round_to_bf16(w) : w;
  }
  return routing;
}

Routing decode_routed_reference(const RoutedTopK& routed, int64_t num_tokens, int32_t top_k_count) {
  const int64_t num_slots = num_tokens * top_k_count;
  const bool packed = routed.topk_weights == nullptr;
  Routing routing;
  routing.num_tokens = num_tokens;
  routing.top_k = top_k_count;
  routing.weights_dtype = packed ? DType::kBF16 : routed.weights_dtype;
  routing.ids.resize(num_slots);
  routing.weights.resize(num_slots);
  for (int64_t i = 0; i < num_slots; ++i) {
    if (packed) {
      routing.ids[i] = unpack_topk_id(routed.topk_ids[i]);
      routing.weights[i] = detail::bf16_bits_to_float(unpack_topk_weight_bits(routed.topk_ids[i]));
    } else {
      routing.ids[i] = routed.topk_ids[i];
      routing.weights[i] = widen(routed.topk_weights, routed.weights_dtype, i);
    }
  }
  routing.weights_fp32 = routing.weights;
  return routing;
}

}  // namespace fusedmoe::ref
