// The soak's comparison rules (see soak_compare.h).
#include "soak/soak_compare.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/host_data.h"
#include "common/tolerance.h"

namespace fusedmoe::soak {
namespace {

using test::bf16_bits_to_float;

std::string str(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return text;
}

// Ulps between two finite values of one dtype, from their bits (sign-magnitude made ordered).
int64_t ordered_bf16(uint16_t bits) {
  return (bits & 0x8000) ? -int64_t(bits & 0x7FFF) : int64_t(bits);
}
int64_t ordered_fp32(uint32_t bits) {
  return (bits & 0x80000000u) ? -int64_t(bits & 0x7FFFFFFFu) : int64_t(bits);
}
uint32_t fp32_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

void compare_replay(const Truth& truth, const Outputs& ours, Verdict& v) {
  const std::vector<int32_t>& ids = truth.routing.ids;
  if (ours.replay.size() != ids.size()) return v.fail("routing_replay_out: wrong size");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ours.replay[i] != static_cast<int16_t>(ids[i])) {
      return v.fail("routing_replay_out[" + std::to_string(i) + "] = " +
                    std::to_string(ours.replay[i]) + ", reference id " + std::to_string(ids[i]));
    }
  }
}

void compare_map(const Truth& truth, const Outputs& ours, Verdict& v) {
  const std::vector<int32_t>& want = truth.permutation.expanded_idx_to_permuted_idx;
  const int64_t i = test::first_difference(ours.map, want);
  if (i < 0) return;
  v.fail("expanded_idx_to_permuted_idx[" + std::to_string(i) +
         "] = " + (size_t(i) < ours.map.size() ? std::to_string(ours.map[i]) : "?") +
         ", reference " + (size_t(i) < want.size() ? std::to_string(want[i]) : "?"));
}

// The weights run() read for slot i, as bits of the returned dtype (routed input only).
uint32_t given_weight_bits(const test::MoeCase& c, int64_t i) {
  if (c.config().routing_input == RoutingInput::kPacked) {
    return unpack_topk_weight_bits(c.topk_ids[i]);
  }
  return c.expert_weights_dtype() == DType::kBF16 ? c.topk_weights_bf16[i]
                                                  : fp32_bits(c.topk_weights_fp32[i]);
}

void compare_weights(const test::MoeCase& c, const Truth& truth, const Outputs& ours, Verdict& v) {
  const bool bf16 = c.expert_weights_dtype() == DType::kBF16;
  const int64_t slots = static_cast<int64_t>(truth.routing.weights.size());
  if (int64_t(bf16 ? ours.weights_bf16.size() : ours.weights_fp32.size()) != slots) {
    return v.fail("expert_weights: wrong size");
  }
  auto ours_bits = [&](int64_t i) -> uint32_t {
    return bf16 ? ours.weights_bf16[i] : fp32_bits(ours.weights_fp32[i]);
  };
  auto ours_value = [&](int64_t i) -> float {
    return bf16 ? bf16_bits_to_float(ours.weights_bf16[i]) : ours.weights_fp32[i];
  };
  if (c.config().routing_input != RoutingInput::kLogits) {  // passed through: bit for bit
    for (int64_t i = 0; i < slots; ++i) {
      if (ours_bits(i) != given_weight_bits(c, i)) {
        return v.fail("expert_weights[" + std::to_string(i) + "]: bits " +
                      std::to_string(ours_bits(i)) + ", given " +
                      std::to_string(given_weight_bits(c, i)));
      }
    }
    return;
  }
  // Logits: the GPU's exp may round once differently from the host's expf.
  const int64_t max_ulps = bf16 ? 1 : 4;
  int64_t off = 0;
  for (int64_t i = 0; i < slots; ++i) {
    const float want = truth.routing.weights[i];
    const float got = ours_value(i);
    if (std::isnan(want) || std::isinf(want)) {
      if (std::isnan(want) ? !std::isnan(got) : got != want) {
        return v.fail("expert_weights[" + std::to_string(i) + "] = " + str(got) + ", reference " +
                      str(want));
      }
      continue;
    }
    const int64_t ulps = bf16
                             ? std::abs(ordered_bf16(uint16_t(ours_bits(i))) -
                                        ordered_bf16(test::float_to_bf16_bits(want)))
                             : std::abs(ordered_fp32(ours_bits(i)) - ordered_fp32(fp32_bits(want)));
    v.weight_ulps = std::max(v.weight_ulps, ulps);
    if (ulps > 0) ++off;
    if (ulps > max_ulps || std::isnan(got)) {
      return v.fail("expert_weights[" + std::to_string(i) + "] = " + str(got) + ", reference " +
                    str(want) + " (" + std::to_string(ulps) + " ulps)");
    }
  }
  // In bf16 a last-bit difference is a rare rounding event, never a pattern.
  if (bf16 && off > std::max<int64_t>(2, slots / 1000)) {
    v.fail("expert_weights: " + std::to_string(off) + " of " + std::to_string(slots) +
           " slots one bf16 ulp off");
  }
}

void apply_rule(const test::Bf16RuleCheck& check, const std::string& what, int64_t row_length,
                Verdict& v) {
  v.ratio = std::max(v.ratio, check.ratio());
  if (check.ok) return;
  const int64_t i = check.first_failure;
  v.fail(what + "[" + std::to_string(i / row_length) + ", " + std::to_string(i % row_length) +
         "] off by more than the bound " + str(check.bound) + " (worst " + str(check.worst_error) +
         ", normalised " + str(check.ratio()) + ")");
}

// The rows of gemm2_output the map names: unweighted, so finite whatever the weights, unless
// the weights went into the input (a NaN or inf weight spoils its row); non-finite exactly where
// the design result is, the finite elements by the rule.
void compare_rows(const SoakProblem& p, const Truth& truth, const Outputs& ours, Verdict& v) {
  const int64_t H = p.shape().hidden_size;
  if (ours.rows.size() != truth.y_design.size()) return v.fail("gemm2_output: wrong size");
  for (size_t i = 0; i < ours.rows.size(); ++i) {
    const float got = bf16_bits_to_float(ours.rows[i]);
    const float want = bf16_bits_to_float(truth.y_design[i]);
    if (std::isfinite(got) != std::isfinite(want)) {
      return v.fail("gemm2_output[" + std::to_string(int64_t(i) / H) + ", " +
                    std::to_string(int64_t(i) % H) + "] = " + str(got) + ", design reference " +
                    str(want));
    }
  }
  apply_rule(test::check_bf16_rule(ours.rows, truth.y_truth, truth.y_design), "gemm2_output", H, v);
}

// The finalized output: non-finite where the design result is, NaN on the tokens with a NaN
// weight on a local slot, the finite elements by the rule.
void compare_output(const SoakProblem& p, const Truth& truth, const Outputs& ours, Verdict& v) {
  const int64_t T = p.shape().num_tokens, H = p.shape().hidden_size, K = p.shape().top_k;
  if (ours.output.size() != truth.out_design.size()) return v.fail("output: wrong size");
  for (int64_t t = 0; t < T; ++t) {
    bool nan_weight = false;
    for (int64_t k = 0; k < K; ++k) {
      nan_weight |= truth.permutation.expanded_idx_to_permuted_idx[t * K + k] >= 0 &&
                    std::isnan(truth.routing.weights[t * K + k]);
    }
    for (int64_t h = 0; h < H; ++h) {
      const float got = bf16_bits_to_float(ours.output[t * H + h]);
      const float want = bf16_bits_to_float(truth.out_design[t * H + h]);
      if (std::isfinite(got) != std::isfinite(want) || (nan_weight && !std::isnan(got))) {
        return v.fail("output[" + std::to_string(t) + ", " + std::to_string(h) + "] = " + str(got) +
                      ", design reference " + str(want) +
                      (nan_weight ? " (a NaN weight: the row must be NaN)" : ""));
      }
    }
  }
  apply_rule(test::check_bf16_rule(ours.output, truth.out_truth, truth.out_design), "output", H, v);
}

template <typename T>
void compare_bytes(const std::vector<T>& a, const std::vector<T>& b, const std::string& what,
                   Verdict& v) {
  const int64_t i = test::first_difference(a, b);
  if (i >= 0) v.fail(what + ": element " + std::to_string(i) + " differs");
}

}  // namespace

void Verdict::fail(const std::string& what) {
  if (ok) failure = what;
  ok = false;
}

void compare_outputs(const SoakProblem& p, const test::MoeCase& c, const Truth& truth,
                     const Outputs& ours, Verdict& v) {
  if (p.config.with_replay) compare_replay(truth, ours, v);
  if (p.config.do_finalize) {
    compare_output(p, truth, ours, v);
    return;
  }
  compare_map(truth, ours, v);
  compare_weights(c, truth, ours, v);
  compare_rows(p, truth, ours, v);
}

void compare_bitwise(const Outputs& a, const Outputs& b, const std::string& what, Verdict& v) {
  compare_bytes(a.output, b.output, what + ": output", v);
  compare_bytes(a.rows, b.rows, what + ": gemm2_output", v);
  compare_bytes(a.weights_bf16, b.weights_bf16, what + ": expert_weights", v);
  compare_bytes(a.weights_fp32, b.weights_fp32, what + ": expert_weights", v);
  compare_bytes(a.map, b.map, what + ": expanded_idx_to_permuted_idx", v);
  compare_bytes(a.replay, b.replay, what + ": routing_replay_out", v);
}

}  // namespace fusedmoe::soak
