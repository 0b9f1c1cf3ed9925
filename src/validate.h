// Argument checks shared by the entry points (validate(), workspace_size(), run(),
// run_reference()). Every failure is a kInvalidArgument Status whose message reads
// "<argument>: expected <x>, got <y>", the argument named as in the public API
// (e.g. "shape.hidden_size", "logits.n_group", "routed.topk_ids").
#pragma once

#include <cstdint>
#include <string>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

// "<argument>: expected <expected>, got <got>" as a kInvalidArgument Status.
Status invalid_argument(const std::string& argument, const std::string& expected,
                        const std::string& got);

// Size limits that keep every index and byte count in range (docs/reliability.md, "64-bit
// index policy"): slots t*K+k, permuted rows, expert offsets and the map are int32 (SPEC's map
// is int32), and the grouped GEMMs compute row + 127 and M-block round-ups in int32, hence a
// 2^30 bound on T * K with headroom; H and I up to 2^20 keep workspace_size() (< 2^53 bytes)
// and the TMA coordinates (< 2^22) far from overflow. Real models sit far below all three.
using fusedmoe::kMaxNumSlots;    // T * K (public header)
using fusedmoe::kMaxFeatureSize;  // H and I (public header)

// The MoeShape rules of SPEC: T >= 0; H, I > 0 and multiples of 8; 1 <= E <= 1024;
// 1 <= K <= 32; K <= E; E_loc >= 1; offset >= 0; offset + E_loc <= E; plus the size limits
// above (H, I <= kMaxFeatureSize; T * K <= kMaxNumSlots).
Status validate_shape(const MoeShape& shape);

// The FP8 variant's shape rule: H and I multiples of 128 (validate() with fp8 weights, and
// workspace_size() for kFP8E4M3).
Status validate_fp8_shape(const MoeShape& shape);

// A DType as messages name it: "bf16", "fp32", "fp8_e4m3", or "DType(<value>)" for a value that
// is none of them.
std::string dtype_str(DType dtype);

// The argument rules shared by validate_routing_host and validate_routing (device).
Status validate_routing_arguments(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                                  int32_t num_experts, const RoutingCheck* result);

// The DeepSeekV3 group parameters with their defaults applied (0 means "not given").
struct GroupConfig {
  int32_t n_group = 1;     // >= 1, divides E
  int32_t topk_group = 1;  // in [1, n_group]
};
inline GroupConfig resolve_groups(const LogitsRouting& logits) {
  GroupConfig groups;
  groups.n_group = logits.n_group == 0 ? 1 : logits.n_group;
  groups.topk_group = logits.topk_group == 0 ? groups.n_group : logits.topk_group;
  return groups;
}

}  // namespace fusedmoe::detail
