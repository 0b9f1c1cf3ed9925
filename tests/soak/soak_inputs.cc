// Routing inputs and the reference routing of soak problems (see soak_inputs.h).
#include "soak/soak_inputs.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/host_data.h"

namespace fusedmoe::soak {
namespace {

using test::MoeCase;
using test::Rng;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
// A negative NaN with a payload (0xFFC1 in bf16): routed weights must come back bit for bit.
constexpr uint16_t kPayloadNaNBf16 = 0xFFC1;

bool chance(Rng& rng, double p) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine()) < p;
}

int64_t uniform_int(Rng& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng.engine());
}

template <typename T>
T pick(Rng& rng, const std::vector<T>& values) {
  return values[uniform_int(rng, 0, int64_t(values.size()) - 1)];
}

// ---- logits ------------------------------------------------------------------------------------

float get_logit(const MoeCase& c, int64_t i) {
  return c.config().logits_dtype == DType::kBF16 ? test::bf16_bits_to_float(c.logits_bf16[i])
                                                 : c.logits_fp32[i];
}

void set_logit(MoeCase& c, int64_t i, float value) {
  if (c.config().logits_dtype == DType::kBF16) {
    c.logits_bf16[i] = test::float_to_bf16_bits(value);
  } else {
    c.logits_fp32[i] = value;
  }
}

// A cold window's experts get logits far below the U(-4, 4) of the others, so few tokens pick
// them (none, unless K exceeds the experts outside it, or a bias or the groups force them).
void cool_window(MoeCase& c) {
  const MoeShape& s = c.shape();
  for (int64_t t = 0; t < s.num_tokens; ++t) {
    for (int32_t e = 0; e < s.local_num_experts; ++e) {
      set_logit(c, t * s.num_experts + s.local_expert_offset + e, -20.0f);
    }
  }
}

// One token's row spoiled one way (docs/reliability.md's table: whole rows of NaN / -inf /
// +inf, one +inf among numbers, scattered NaN, half the row -inf, ties and -0).
void spoil_row(Rng& rng, MoeCase& c, int64_t t, int kind) {
  const int32_t E = c.shape().num_experts;
  const int64_t row = t * E;
  auto any = [&] { return row + uniform_int(rng, 0, E - 1); };
  switch (kind) {
    case 0:
    case 1:
    case 2: {
      const float value = kind == 0 ? kNaN : kind == 1 ? -kInf : kInf;
      for (int32_t e = 0; e < E; ++e) set_logit(c, row + e, value);
      break;
    }
    case 3:
      set_logit(c, any(), kInf);
      break;
    case 4:
      for (int i = 0; i < 5; ++i) set_logit(c, any(), kNaN);
      break;
    case 5:
      for (int32_t e = 0; e < E; e += 2) set_logit(c, row + e, -kInf);
      break;
    default:
      for (int i = 0; i < 4; ++i) set_logit(c, any(), get_logit(c, any()));
      set_logit(c, any(), -0.0f);
      break;
  }
}

void spoil_logits(Rng& rng, MoeCase& c) {
  const int64_t T = c.shape().num_tokens;
  for (int64_t t = 0; t < T; ++t) {
    // Token 0 always gets a non-finite kind (0-5), so every such problem has one.
    if (t == 0 || chance(rng, 0.1)) spoil_row(rng, c, t, int(uniform_int(rng, 0, t == 0 ? 5 : 6)));
  }
  // A bias may hold anything: it moves the selection score only.
  if (!c.bias_fp32.empty() && chance(rng, 0.3)) {
    c.bias_fp32[uniform_int(rng, 0, int64_t(c.bias_fp32.size()) - 1)] = kNaN;
  }
  if (!c.bias_bf16.empty() && chance(rng, 0.3)) {
    c.bias_bf16[uniform_int(rng, 0, int64_t(c.bias_bf16.size()) - 1)] =
        test::float_to_bf16_bits(kInf);
  }
}

// ---- routed ids and weights --------------------------------------------------------------------

// Ids outside [0, E) for the problem's encoding: packed ids are int16 (bits 31..16), unpacked
// ones any int32, including those whose low 16 bits name a local expert.
std::vector<int32_t> bad_ids(const SoakProblem& p) {
  const MoeShape& s = p.shape();
  if (p.config.routing_input == RoutingInput::kPacked) {
    return {-1, -32768, 32767, s.num_experts, s.num_experts + 1, -2};
  }
  return {std::numeric_limits<int32_t>::min(),
          std::numeric_limits<int32_t>::max(),
          65536 + s.local_expert_offset,
          -65536 + s.local_expert_offset,
          s.num_experts,
          -1};
}

// K distinct ids per token: uniform over [0, E), or for a cold window over the experts
// outside it (the draw leaves at least K of them).
std::vector<int32_t> draw_ids(const SoakProblem& p, Rng& rng) {
  const MoeShape& s = p.shape();
  if (p.window != Window::kCold) {
    return test::random_distinct_ids(rng, s.num_tokens, s.top_k, s.num_experts);
  }
  std::vector<int32_t> ids =
      test::random_distinct_ids(rng, s.num_tokens, s.top_k, s.num_experts - s.local_num_experts);
  for (int32_t& id : ids) {
    if (id >= s.local_expert_offset) id += s.local_num_experts;
  }
  return ids;
}

// A slot's weight spoiled: NaN, +-inf, +-0 or negated.
float spoiled_weight(Rng& rng, float weight) {
  const float values[] = {kNaN, kInf, -kInf, 0.0f, -0.0f, -weight};
  return values[uniform_int(rng, 0, 5)];
}

void set_routed_input(const SoakProblem& p, Rng& rng, MoeCase& c) {
  const MoeShape& s = p.shape();
  const int64_t T = s.num_tokens, K = s.top_k, slots = T * K;
  std::vector<int32_t> ids = draw_ids(p, rng);
  std::vector<float> weights = test::random_fp32(rng, slots, 0.05f, 1.0f);
  if (p.hostile & kBadIds) {
    const std::vector<int32_t> bad = bad_ids(p);
    for (int64_t i = 0; i < slots; ++i) {
      if (i == 0 || chance(rng, 0.05)) ids[i] = pick(rng, bad);
    }
  }
  if ((p.hostile & kDuplicateIds) && K >= 2) {  // a slot repeats an earlier slot of its token
    for (int64_t t = 0; t < T; ++t) {
      if (t != 0 && !chance(rng, 0.1)) continue;
      const int64_t k = uniform_int(rng, 1, K - 1);
      ids[t * K + k] = ids[t * K + uniform_int(rng, 0, k - 1)];
    }
  }
  std::vector<int64_t> payload_slots;
  if (p.hostile & kNonFiniteWeights) {
    for (int64_t i = 0; i < slots; ++i) {
      if (i == 0 || chance(rng, 0.05)) weights[i] = spoiled_weight(rng, weights[i]);
      if (i == 0 || chance(rng, 0.01)) payload_slots.push_back(i);
    }
  }
  c.set_routing(ids, weights);
  // NaN payloads after the encoding (set_routing's rounding would make them canonical).
  for (int64_t i : payload_slots) {
    if (p.config.routing_input == RoutingInput::kPacked) {
      c.topk_ids[i] = pack_topk(ids[i], kPayloadNaNBf16);
    } else if (p.config.routed_weights_dtype == DType::kBF16) {
      c.topk_weights_bf16[i] = kPayloadNaNBf16;
    } else {
      c.topk_weights_fp32[i] = test::fp32_from_bits(uint32_t{kPayloadNaNBf16} << 16 | 0x1234u);
    }
  }
}

uint64_t mix(uint64_t seed, uint64_t salt) {
  return problem_seed(seed, static_cast<int64_t>(salt));
}

}  // namespace

uint64_t round_seed(const SoakProblem& p, int round) { return mix(p.seed, 100 + round); }
uint64_t gemm1_weights_seed(const SoakProblem& p) { return mix(p.seed, 1); }
uint64_t gemm2_weights_seed(const SoakProblem& p) { return mix(p.seed, 2); }

float gemm1_weights_scale(const MoeShape& s) {
  return 2.0f / std::sqrt(static_cast<float>(s.hidden_size));
}
float gemm2_weights_scale(const MoeShape& s) {
  return 2.0f / std::sqrt(static_cast<float>(s.intermediate_size));
}

MoeCase make_routing_input(const SoakProblem& p, int round) {
  MoeCaseConfig config = p.config;
  config.seed = round_seed(p, round);
  config.routing_only = true;
  MoeCase c(config);
  Rng rng(mix(config.seed, 3));
  if (p.config.routing_input != RoutingInput::kLogits) {
    set_routed_input(p, rng, c);
    return c;
  }
  if (p.window == Window::kCold) cool_window(c);
  if (p.hostile & kNonFiniteLogits) spoil_logits(rng, c);
  return c;
}

ReferenceRouting reference_routing(const SoakProblem& p, MoeCase& c) {
  const MoeArguments host = c.arguments();
  const MoeShape& s = p.shape();
  ReferenceRouting r;
  r.routing = host.logits.logits ? ref::route_reference(host.logits, s.num_tokens, s.num_experts,
                                                        s.top_k, host.expert_weights_dtype)
                                 : ref::decode_routed_reference(host.routed, s.num_tokens, s.top_k);
  r.permutation = ref::permute_reference(r.routing.ids, s.local_expert_offset, s.local_num_experts);
  return r;
}

}  // namespace fusedmoe::soak
