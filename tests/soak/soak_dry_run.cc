// The soak's dry run (see soak_dry_run.h).
#include "soak/soak_dry_run.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/double_model.h"
#include "common/host_data.h"
#include "common/tolerance.h"
#include "soak/soak_compare.h"
#include "soak/soak_draw.h"
#include "soak/soak_inputs.h"
#include "soak/soak_tally.h"

namespace fusedmoe::soak {
namespace {

using test::MoeCase;

// ---- the draw ----------------------------------------------------------------------------------

// Empty when the drawn problem is one the soak can run; else what is wrong with it.
std::string check_drawn(const SoakProblem& p) {
  if (Status s = validate(placeholder_arguments(p)); !s.ok()) return "validate(): " + s.message;
  MoeShape workspace_shape = p.shape();
  workspace_shape.num_tokens = p.workspace_tokens;
  size_t bytes = 0;
  if (Status s = workspace_size(workspace_shape, &bytes); !s.ok()) {
    return "workspace_size(): " + s.message;
  }
  if (p.workspace_tokens < p.shape().num_tokens) return "workspace sized for fewer tokens";
  if (p.graph && (p.shape().num_tokens < 1 || p.graph_rounds < 2)) return "graph of < 1 token";
  const Cost cost = estimate_cost(p);
  if (cost.device_bytes > kMaxDeviceBytes || cost.host_bytes > kMaxHostBytes ||
      cost.seconds > kMaxProblemSeconds) {
    return "over the caps";
  }
  if (describe(draw_problem(p.seed)) != describe(p)) return "drawn differently from its seed";
  return "";
}

// ---- the CPU self-test -------------------------------------------------------------------------

// Small enough for the CPU reference in milliseconds.
bool fits_self_test(const SoakProblem& p) {
  const MoeShape& s = p.shape();
  const double macs = 3.0 * s.num_tokens * s.top_k * s.hidden_size * s.intermediate_size;
  const double weights = 3.0 * s.local_num_experts * s.hidden_size * s.intermediate_size;
  return macs <= 2e7 && weights <= 3e6 && double(s.num_tokens) * s.num_experts <= 1e6;
}

bool has_duplicate(const std::vector<int32_t>& ids, int64_t T, int32_t K) {
  for (int64_t t = 0; t < T; ++t) {
    std::set<int32_t> seen(ids.begin() + t * K, ids.begin() + (t + 1) * K);
    if (int64_t(seen.size()) < K) return true;
  }
  return false;
}

// The hostile values and the window the problem promises are in its input.
std::string check_input(const SoakProblem& p, const MoeCase& input, const ReferenceRouting& r) {
  const MoeShape& s = p.shape();
  if (s.num_tokens == 0) return "";
  const std::vector<int32_t>& ids = r.routing.ids;
  const bool routed = p.config.routing_input != RoutingInput::kLogits;
  auto any_bad = [&] {
    return std::any_of(ids.begin(), ids.end(),
                       [&](int32_t id) { return id < 0 || id >= s.num_experts; });
  };
  auto any_nonfinite = [](const auto& values, auto widen) {
    return std::any_of(values.begin(), values.end(),
                       [&](auto v) { return !std::isfinite(widen(v)); });
  };
  if ((p.hostile & kBadIds) && !any_bad()) return "bad_ids drawn, none in the input";
  if ((p.hostile & kDuplicateIds) && !has_duplicate(ids, s.num_tokens, s.top_k)) {
    return "duplicates drawn, none in the input";
  }
  if ((p.hostile & kNonFiniteWeights) &&
      !any_nonfinite(r.routing.weights, [](float v) { return v; })) {
    return "nonfinite_weights drawn, none in the input";
  }
  if ((p.hostile & kNonFiniteLogits) &&
      !any_nonfinite(input.logits_fp32, [](float v) { return v; }) &&
      !any_nonfinite(input.logits_bf16, [](uint16_t v) { return test::bf16_bits_to_float(v); })) {
    return "nonfinite_logits drawn, none in the input";
  }
  if (!routed && any_bad()) return "logits routing gave an id outside [0, E)";
  if (routed && p.window == Window::kCold && r.permutation.num_local() != 0) {
    return "a routed slot hit the cold window";
  }
  if (routed && p.window == Window::kAll && !(p.hostile & kBadIds) &&
      r.permutation.num_local() != s.num_tokens * s.top_k) {
    return "a valid routed slot was not local with every expert local";
  }
  return "";
}

// run_reference() (the public CPU entry point) on the problem's input: the "ours" of the
// self-test, in the same Outputs the soak downloads from the device.
std::string run_reference_outputs(const SoakProblem& p, MoeCase& input,
                                  const std::vector<uint16_t>& x, const std::vector<uint16_t>& w1,
                                  const std::vector<uint16_t>& w2, int64_t num_local,
                                  Outputs& ours) {
  const MoeShape& s = p.shape();
  const int64_t T = s.num_tokens, H = s.hidden_size, K = s.top_k;
  MoeArguments args = input.arguments();
  args.hidden_states = x.data();
  args.gemm1_weights = w1.data();
  args.gemm2_weights = w2.data();
  std::vector<uint16_t> all_rows;
  if (p.config.do_finalize) {
    ours.output.resize(T * H);
    test::poison(ours.output);
    args.output = ours.output.data();
  } else {
    all_rows.resize(T * K * H);
    test::poison(all_rows);
    ours.map.resize(T * K);
    args.gemm2_output = all_rows.data();
    args.expanded_idx_to_permuted_idx = ours.map.data();
    if (input.expert_weights_dtype() == DType::kFP32) {
      ours.weights_fp32.resize(T * K);
      args.expert_weights = ours.weights_fp32.data();
    } else {
      ours.weights_bf16.resize(T * K);
      args.expert_weights = ours.weights_bf16.data();
    }
  }
  if (p.config.with_replay) {
    ours.replay.resize(T * K);
    args.routing_replay_out = ours.replay.data();
  }
  if (Status s = run_reference(args); !s.ok()) return "run_reference(): " + s.message;
  ours.rows.assign(all_rows.begin(),
                   all_rows.begin() + std::min<int64_t>(num_local * H, int64_t(all_rows.size())));
  return "";
}

// One nudged element, map entry or replay id must fail the comparison.
std::string negative_controls(const SoakProblem& p, const MoeCase& input, const Truth& truth,
                              const Outputs& ours) {
  auto must_fail = [&](const Outputs& nudged, const char* what) -> std::string {
    Verdict v;
    compare_outputs(p, input, truth, nudged, v);
    Verdict bits;
    compare_bitwise(ours, nudged, "nudged", bits);
    if (v.ok) return std::string("self-test: a nudged ") + what + " passed the comparison";
    if (bits.ok) return std::string("self-test: a nudged ") + what + " passed the bitwise check";
    return "";
  };
  // The largest finite reference element, moved by 10 % of itself (1 when it is 0): far past
  // a bound of 2 * 0 + 1e-3 * max|ref|.
  const bool finalize = p.config.do_finalize;
  const std::vector<double>& ref = finalize ? truth.out_truth : truth.y_truth;
  int64_t largest = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isfinite(ref[i]) && (largest < 0 || std::abs(ref[i]) > std::abs(ref[largest]))) {
      largest = int64_t(i);
    }
  }
  if (largest >= 0) {
    Outputs nudged = ours;
    std::vector<uint16_t>& values = finalize ? nudged.output : nudged.rows;
    const double moved = ref[largest] + std::max(0.1 * std::abs(ref[largest]), 1.0);
    values[largest] = test::float_to_bf16_bits(static_cast<float>(moved));
    if (std::string e = must_fail(nudged, "output element"); !e.empty()) return e;
  }
  if (!finalize && !ours.map.empty()) {
    Outputs nudged = ours;
    nudged.map[0] = nudged.map[0] < 0 ? 0 : -1;
    if (std::string e = must_fail(nudged, "map entry"); !e.empty()) return e;
  }
  if (!ours.replay.empty()) {
    Outputs nudged = ours;
    nudged.replay[0] ^= 1;
    if (std::string e = must_fail(nudged, "replay id"); !e.empty()) return e;
  }
  return "";
}

// The soak's truth assembled from the reference's pieces as the GPU reference assembles it
// (tests/common/gpu_reference.h): the round's expert MLP options, the input scaled by the
// weights when they go into it, finalize unweighted then. Checked against the fp64 model of
// tests/common/double_model.h (written from SPEC apart from the reference) by the rule, so an
// option the assembly dropped or applied twice shows here; the model reads the case's hidden
// states and weights, so they are copied into `input`.
std::string check_against_model(const SoakProblem& p, MoeCase& input, const ReferenceRouting& r,
                                const std::vector<uint16_t>& x, const std::vector<uint16_t>& w1,
                                const std::vector<uint16_t>& w2, const std::vector<uint16_t>& out) {
  input.hidden_states = x;
  input.gemm1_weights = w1;
  input.gemm2_weights = w2;
  const test::DoubleModel model = test::moe_double(input, r.routing.ids, r.routing.weights);
  const test::Bf16RuleCheck check =
      test::check_bf16_rule(test::bf16_to_double(out), model.exact, model.rounded);
  if (check.ok) return "";
  const int64_t i = check.first_failure, H = p.shape().hidden_size;
  return "self-test: the reference's output vs the fp64 model at [" + std::to_string(i / H) + ", " +
         std::to_string(i % H) + "]: worst error " + std::to_string(check.worst_error) +
         " over the bound " + std::to_string(check.bound);
}

// The host half of the problem on the CPU (see soak_dry_run.h). The truth is the reference's
// pieces with the design result standing in for the fp64 truth, so the rule's bound is its atol
// alone and only identical results pass.
std::string self_test(const SoakProblem& p) {
  MoeCase input = make_routing_input(p, 0);
  const ReferenceRouting r = reference_routing(p, input);
  if (std::string e = check_input(p, input, r); !e.empty()) return "self-test: " + e;
  const MoeShape& s = p.shape();
  const int64_t T = s.num_tokens, H = s.hidden_size, I = s.intermediate_size;
  if (T == 0) return "";
  test::Rng rng(round_seed(p, 0));
  const float scale1 = gemm1_weights_scale(s), scale2 = gemm2_weights_scale(s);
  const std::vector<uint16_t> x = test::random_bf16(rng, T * H, -1.0f, 1.0f);
  const std::vector<uint16_t> w1 = test::random_bf16(
      rng, int64_t{s.local_num_experts} * ref::gemm1_rows(p.config.activation, I) * H, -scale1,
      scale1);
  const std::vector<uint16_t> w2 =
      test::random_bf16(rng, int64_t{s.local_num_experts} * H * I, -scale2, scale2);

  // The expert MLP options of the round's input (host pointers into `input`).
  const MoeArguments host = input.arguments();
  const ref::ExpertMlp mlp = ref::expert_mlp(host);
  const bool scaled = host.use_routing_scales_on_input;
  const std::vector<uint16_t> x_scaled =
      scaled ? ref::scale_input_reference(x.data(), r.routing, H) : std::vector<uint16_t>{};
  const ref::Permutation& perm = r.permutation;
  const std::vector<uint16_t> act = ref::activation_reference(scaled ? x_scaled.data() : x.data(),
                                                              w1.data(), H, I, s.top_k, perm, mlp);
  const std::vector<uint16_t> y = ref::gemm2_reference(act, w2.data(), H, I, perm, mlp);
  const std::vector<uint16_t> out = ref::finalize_reference(r.routing, perm, y, H, scaled);
  const std::vector<double> out_truth = test::bf16_to_double(out);
  const std::vector<double> y_truth = test::bf16_to_double(y);
  const Truth truth{r.routing, perm, out, out_truth, y, y_truth};
  if (std::string e = check_against_model(p, input, r, x, w1, w2, out); !e.empty()) return e;

  Outputs ours;
  if (std::string e = run_reference_outputs(p, input, x, w1, w2, perm.num_local(), ours);
      !e.empty()) {
    return "self-test: " + e;
  }
  Verdict v;
  compare_outputs(p, input, truth, ours, v);
  if (!v.ok) return "self-test: identical results differed: " + v.failure;
  compare_bitwise(ours, ours, "itself", v);
  if (!v.ok) return "self-test: " + v.failure;
  return negative_controls(p, input, truth, ours);
}

// ---- the run's estimate ------------------------------------------------------------------------

void print_estimate(const std::vector<double>& seconds, double budget) {
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  double total = 0.0;
  int64_t fit = 0;
  for (double s : seconds) {
    total += s;
    if (total <= budget) ++fit;
  }
  auto at = [&](double q) {
    return sorted[std::min(sorted.size() - 1, size_t(q * sorted.size()))];
  };
  std::printf(
      "estimate (uncalibrated model, soak_draw.cc): %.0f s for %zu problems, mean %.1f ms, "
      "p50 %.1f ms, p99 %.0f ms, max %.0f ms; %lld problems fit a %.0f s budget\n",
      total, seconds.size(), 1e3 * total / double(seconds.size()), 1e3 * at(0.5), 1e3 * at(0.99),
      1e3 * sorted.back(), static_cast<long long>(fit), budget);
}

// The axes of the expert MLP, whose every label the CPU self-test must reach too (the GPU
// reference's share of the options is checked on the device by
// GpuMoe.GpuReferenceWithExpertMlpOptionsMatchesCpuReference).
const char* const kSelfTestedAxes[] = {"activation", "act_params", "expert_biases", "input_scales"};

// Self-tested problems per label of kSelfTestedAxes ("axis=label" -> count).
class SelfTestMix {
 public:
  void add(const SoakProblem& p) {
    for (const Axis& axis : draw_axes()) {
      if (selected(axis))
        ++counts_[std::string(axis.name) + "=" + axis.label_of(p, kAssumedNumSms)];
    }
  }
  void print(std::FILE* out) const {
    std::fprintf(out, "self-tested expert MLP options:");
    for (const auto& [label, count] : counts_) {
      std::fprintf(out, " %s %lld", label.c_str(), static_cast<long long>(count));
    }
    std::fprintf(out, "\n");
  }
  std::vector<std::string> gaps() const {
    std::vector<std::string> gaps;
    for (const Axis& axis : draw_axes()) {
      if (!selected(axis)) continue;
      for (const std::string& label : axis.labels) {
        const std::string key = std::string(axis.name) + "=" + label;
        if (counts_.count(key) == 0) gaps.push_back(key + " never self-tested on the CPU");
      }
    }
    return gaps;
  }

 private:
  static bool selected(const Axis& axis) {
    for (const char* name : kSelfTestedAxes) {
      if (std::string(name) == axis.name) return true;
    }
    return false;
  }
  std::map<std::string, int64_t> counts_;
};

}  // namespace

int dry_run(const DryRunOptions& o) {
  Tally tally(kAssumedNumSms);
  std::vector<double> seconds;
  SelfTestMix self_test_mix;
  int64_t errors = 0, self_tests = 0;
  const bool one = o.only_index >= 0 || o.only_seed != 0;
  const int64_t first = o.only_index >= 0 ? o.only_index : 0;
  const int64_t count = one ? 1 : o.problems;
  for (int64_t index = first; index < first + count; ++index) {
    const uint64_t seed = o.only_seed != 0 ? o.only_seed : problem_seed(o.run_seed, index);
    const SoakProblem p = draw_problem(seed);
    if (o.list || one)
      std::printf("#%lld seed=%llu %s\n", static_cast<long long>(index),
                  static_cast<unsigned long long>(seed), describe(p).c_str());
    std::string error = check_drawn(p);
    if (error.empty() && self_tests < o.self_tests && (one || fits_self_test(p))) {
      ++self_tests;
      self_test_mix.add(p);
      error = self_test(p);
    }
    if (!error.empty()) {
      ++errors;
      std::printf("#%lld seed=%llu %s\n  ERROR: %s\n", static_cast<long long>(index),
                  static_cast<unsigned long long>(seed), describe(p).c_str(), error.c_str());
    }
    seconds.push_back(estimate_cost(p).seconds);
    tally.add(p, index, !error.empty(), 0.0, seconds.back());
  }
  std::printf("mix of %lld problems (run seed %llu; paths for %d SMs):\n",
              static_cast<long long>(count), static_cast<unsigned long long>(o.run_seed),
              kAssumedNumSms);
  tally.print_mix(stdout);
  print_estimate(seconds, o.budget_seconds);
  self_test_mix.print(stdout);
  int64_t coverage = 0;
  if (!one) {
    std::vector<std::string> gaps = tally.coverage_errors();
    // The self-test's reach counts once its budget is spent (a short run may not get there).
    if (self_tests == o.self_tests) {
      for (const std::string& gap : self_test_mix.gaps()) gaps.push_back(gap);
    }
    for (const std::string& gap : gaps) {
      std::printf("COVERAGE: %s\n", gap.c_str());
      ++coverage;
    }
  }
  std::printf(
      "soak dry run: %lld problems drawn, %lld invalid or failing, %lld self-tested on the CPU, "
      "%lld coverage gaps over %zu axes\n",
      static_cast<long long>(count), static_cast<long long>(errors),
      static_cast<long long>(self_tests), static_cast<long long>(coverage), draw_axes().size());
  return errors + coverage == 0 ? 0 : 1;
}

}  // namespace fusedmoe::soak
