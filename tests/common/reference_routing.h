// The CPU reference's routing of a MoeCase's own inputs (logits, or routed ids) and the
// permutation it gives: the ids and weights as used, for tests that judge device outputs against
// models of the math (tests/common/double_model.h, the GPU reference).
#pragma once

#include <utility>

#include "common/moe_case.h"
#include "reference/reference.h"

namespace fusedmoe::test {

inline std::pair<ref::Routing, ref::Permutation> reference_routing(MoeCase& c) {
  const MoeArguments a = c.arguments();
  const MoeShape& s = c.shape();
  ref::Routing r = a.logits.logits ? ref::route_reference(a.logits, s.num_tokens, s.num_experts,
                                                          s.top_k, a.expert_weights_dtype)
                                   : ref::decode_routed_reference(a.routed, s.num_tokens, s.top_k);
  ref::Permutation p = ref::permute_reference(r.ids, s.local_expert_offset, s.local_num_experts);
  return {std::move(r), std::move(p)};
}

}  // namespace fusedmoe::test
