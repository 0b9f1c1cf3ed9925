// Kernel parameters of the two routing sources, built once for the launchers that route:
// launch_route / launch_decode_topk (a grid of their own) and launch_route_sort_small (one CTA).
#pragma once

#include "fusedmoe/fusedmoe.h"
#include "kernels/sm90_decode_topk_slot.cuh"
#include "kernels/sm90_route_token.cuh"
#include "launch/pipeline.h"
#include "validate.h"

namespace fusedmoe::detail {

inline RouteParams make_route_params(const MoeShape& shape, const LogitsRouting& logits,
                                     const RoutingOutputs& out) {
  const GroupConfig groups = resolve_groups(logits);
  RouteParams params{};
  params.logits = logits.logits;
  params.logits_dtype = logits.logits_dtype;
  params.bias = logits.bias;
  params.bias_dtype = logits.bias_dtype;
  params.method = logits.method;
  params.n_group = groups.n_group;
  params.topk_group = groups.topk_group;
  params.routed_scaling_factor = logits.routed_scaling_factor;
  params.num_tokens = shape.num_tokens;
  params.num_experts = shape.num_experts;
  params.top_k = shape.top_k;
  params.local_offset = shape.local_expert_offset;
  params.num_local = shape.local_num_experts;
  params.slot_key = out.slot_key;
  params.slot_weight = out.slot_weight;
  params.expert_weights = out.expert_weights;
  params.expert_weights_dtype = out.expert_weights_dtype;
  params.routing_replay_out = out.routing_replay_out;
  return params;
}

inline DecodeTopKParams make_decode_topk_params(const MoeShape& shape, const RoutedTopK& routed,
                                                const RoutingOutputs& out) {
  DecodeTopKParams params{};
  params.topk_ids = routed.topk_ids;
  params.topk_weights = routed.topk_weights;
  params.weights_dtype = routed.topk_weights ? routed.weights_dtype : DType::kBF16;
  params.num_slots = shape.num_tokens * shape.top_k;
  params.local_offset = shape.local_expert_offset;
  params.num_local = shape.local_num_experts;
  params.slot_key = out.slot_key;
  params.slot_weight = out.slot_weight;
  params.expert_weights = out.expert_weights;
  params.routing_replay_out = out.routing_replay_out;
  return params;
}

}  // namespace fusedmoe::detail
