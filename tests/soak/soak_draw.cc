// The soak's draw (see soak_draw.h): seeded steps, one per axis, then a fit to the caps.
#include "soak/soak_draw.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "common/host_data.h"
#include "decode_heuristics.h"
#include "heuristics.h"
#include "validate.h"

namespace fusedmoe::soak {
namespace {

using test::Rng;

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// ---- random helpers ----------------------------------------------------------------------------

bool chance(Rng& rng, double p) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine()) < p;
}

int64_t uniform_int(Rng& rng, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng.engine());
}

// Log-uniform integer in [lo, hi] (lo >= 1): as many draws in 1..16 as in 1024..16384.
int64_t log_uniform(Rng& rng, int64_t lo, int64_t hi) {
  const double x = std::exp(std::uniform_real_distribution<double>(
      std::log(double(lo)), std::log(double(hi) + 1.0))(rng.engine()));
  return std::clamp<int64_t>(static_cast<int64_t>(x), lo, hi);
}

template <typename T>
T pick(Rng& rng, const std::vector<T>& values) {
  return values[uniform_int(rng, 0, int64_t(values.size()) - 1)];
}

// A range [lo, hi] chosen with probability `weight` (weights of a list sum to 1).
struct Bucket {
  double weight;
  int64_t lo, hi;
};

const Bucket& pick_bucket(Rng& rng, const std::vector<Bucket>& buckets) {
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine());
  for (const Bucket& b : buckets) {
    if (u < b.weight) return b;
    u -= b.weight;
  }
  return buckets.back();
}

int64_t draw_from_buckets(Rng& rng, const std::vector<Bucket>& buckets) {
  const Bucket& b = pick_bucket(rng, buckets);
  return b.lo == b.hi ? b.lo : log_uniform(rng, b.lo, b.hi);
}

int64_t round_to_8(int64_t value) { return std::max<int64_t>(8, (value + 4) / 8 * 8); }

// ---- the distributions -------------------------------------------------------------------------
// Most problems are small (a soak's worth is in the number of different problems), a few are
// large enough to stress the sizes the models use; the caps below keep each within reach.

// T: decode sizes (<= 16), small and mid prefill, and a few large batches up to 20000 tokens.
const std::vector<Bucket> kTokenBuckets = {{0.02, 0, 0},       {0.33, 1, 16},
                                           {0.30, 17, 256},    {0.24, 257, 2048},
                                           {0.09, 2049, 8192}, {0.02, 8193, 20000}};
// H and I (multiples of 8): tiny tiles-off sizes up to the largest models' 7168 / 8192.
const std::vector<Bucket> kFeatureBuckets = {
    {0.45, 8, 256}, {0.30, 264, 1024}, {0.19, 1032, 4096}, {0.06, 4104, 8192}};
// Sizes of real models (the benchmark's shapes, bench/README.md) drawn now and then, so they
// are never missed.
const std::vector<int64_t> kModelFeatures = {128, 256, 768, 1536, 2048, 2880, 4096, 7168, 8192};
// E: 1..1024 over the scales of the models (8 to 1024 experts).
const std::vector<Bucket> kExpertBuckets = {
    {0.2, 1, 8}, {0.3, 9, 64}, {0.3, 65, 256}, {0.2, 257, 1024}};
const std::vector<int32_t> kModelExperts = {1, 8, 16, 32, 64, 128, 160, 256, 384, 512, 1024};
// T values at the pipeline's thresholds (block routing <= 256 tokens, the one-CTA sort at
// T * K <= 4096) and STYLE's ragged sizes.
const std::vector<int64_t> kEdgeTokens = {1, 7, 19, 64, 127, 128, 129, 255, 256, 257, 989, 4096};

bool reads_bias(RoutingMethod method) {
  return method == RoutingMethod::kDeepSeekV3 || method == RoutingMethod::kMiniMax2;
}

// Activations with per-expert parameters (gemm1_alpha / _beta / _clamp_limit).
bool reads_params(Activation a) { return a == Activation::kSwiglu || a == Activation::kSwigluStep; }

// ---- the steps, one axis (or a few coupled ones) each, in order --------------------------------

void draw_tokens(Rng& rng, SoakProblem& p) {
  p.config.shape.num_tokens =
      chance(rng, 0.08) ? pick(rng, kEdgeTokens) : draw_from_buckets(rng, kTokenBuckets);
}

int64_t draw_feature(Rng& rng) {
  if (chance(rng, 0.15)) return pick(rng, kModelFeatures);
  return round_to_8(draw_from_buckets(rng, kFeatureBuckets));
}

void draw_features(Rng& rng, SoakProblem& p) {
  p.config.shape.hidden_size = draw_feature(rng);
  p.config.shape.intermediate_size = draw_feature(rng);
}

void draw_experts(Rng& rng, SoakProblem& p) {
  p.config.shape.num_experts = static_cast<int32_t>(
      chance(rng, 0.3) ? pick(rng, kModelExperts) : draw_from_buckets(rng, kExpertBuckets));
}

void draw_routing_input(Rng& rng, SoakProblem& p) {
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine());
  p.config.routing_input = u < 0.55   ? RoutingInput::kLogits
                           : u < 0.75 ? RoutingInput::kPacked
                                      : RoutingInput::kUnpacked;
  p.config.routed_weights_dtype = chance(rng, 0.5) ? DType::kFP32 : DType::kBF16;
  if (p.config.routing_input != RoutingInput::kUnpacked)
    p.config.routed_weights_dtype = DType::kBF16;
}

void draw_method(Rng& rng, SoakProblem& p) {
  const int method = static_cast<int>(uniform_int(rng, 0, kNumRoutingMethods - 1));
  p.config.method = p.config.routing_input == RoutingInput::kLogits
                        ? static_cast<RoutingMethod>(method)
                        : RoutingMethod::kRenormalize;  // unused by routed input
}

// K <= min(32, E); Llama4 takes K == 1 only. (K == 1 comes in ~20 % of the problems: the few
// experts of small E, Llama4, the low draws; it is the only K that takes weights on the input.)
void draw_top_k(Rng& rng, SoakProblem& p) {
  const int64_t max_k = std::min<int64_t>(kMaxTopK, p.config.shape.num_experts);
  int64_t k;
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine());
  if (u < 0.6) {
    k = uniform_int(rng, 1, std::min<int64_t>(8, max_k));
  } else if (u < 0.9) {
    k = uniform_int(rng, 1, max_k);
  } else {
    k = max_k;
  }
  if (p.config.routing_input == RoutingInput::kLogits &&
      p.config.method == RoutingMethod::kLlama4) {
    k = 1;
  }
  p.config.shape.top_k = static_cast<int32_t>(k);
}

// DeepSeekV3's groups: n_group divides E, topk_group <= n_group, K <= topk_group * E / n_group;
// 0 stands for "not given" (one group; topk_group = n_group).
void draw_groups(Rng& rng, SoakProblem& p) {
  p.config.n_group = p.config.topk_group = 0;
  if (p.config.routing_input != RoutingInput::kLogits ||
      p.config.method != RoutingMethod::kDeepSeekV3) {
    return;
  }
  const int32_t E = p.config.shape.num_experts, K = p.config.shape.top_k;
  std::vector<int32_t> divisors;
  for (int32_t d = 2; d <= E; ++d) {
    if (E % d == 0) divisors.push_back(d);
  }
  if (divisors.empty() || chance(rng, 0.25)) {
    p.config.n_group = chance(rng, 0.5) ? 0 : 1;
    p.config.topk_group = p.config.n_group == 1 && chance(rng, 0.5) ? 1 : 0;
    return;
  }
  const int32_t n_group = pick(rng, divisors);
  const int32_t group_size = E / n_group;
  const int32_t fewest = (K + group_size - 1) / group_size;  // groups that hold K experts
  p.config.n_group = n_group;
  p.config.topk_group = chance(rng, 0.15) ? 0 : int32_t(uniform_int(rng, fewest, n_group));
}

// Bias where a method reads it (and now and then where it does not: it must be ignored), the
// scaling factor, and the dtypes of logits, bias and returned weights.
void draw_logits_parameters(Rng& rng, SoakProblem& p) {
  MoeCaseConfig& c = p.config;
  const bool logits = c.routing_input == RoutingInput::kLogits;
  c.logits_dtype = chance(rng, 0.5) ? DType::kBF16 : DType::kFP32;
  c.with_bias = logits && chance(rng, reads_bias(c.method) ? 0.85 : 0.1);
  c.bias_dtype = chance(rng, 0.5) ? DType::kBF16 : DType::kFP32;
  c.routed_scaling_factor = 1.0f;
  if (chance(rng, reads_bias(c.method) ? 0.7 : 0.2)) {
    c.routed_scaling_factor = std::uniform_real_distribution<float>(0.5f, 3.0f)(rng.engine());
  }
  c.expert_weights_dtype = logits && chance(rng, 0.35) ? DType::kFP32 : DType::kBF16;
  if (c.routing_input == RoutingInput::kUnpacked) c.expert_weights_dtype = c.routed_weights_dtype;
}

// The expert-parallel window. A cold window leaves room for K distinct ids outside it.
void draw_window(Rng& rng, SoakProblem& p) {
  MoeShape& s = p.config.shape;
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine());
  p.window = u < 0.6 ? Window::kAll : u < 0.9 ? Window::kShard : Window::kCold;
  const int32_t room = s.num_experts - s.top_k;  // a cold window may hold at most E - K
  if (p.window == Window::kCold && room < 1) p.window = Window::kShard;
  if (s.num_experts == 1) p.window = Window::kAll;
  s.local_expert_offset = 0;
  s.local_num_experts = s.num_experts;
  if (p.window == Window::kAll) return;
  const int32_t most = p.window == Window::kCold ? room : s.num_experts;
  s.local_num_experts = static_cast<int32_t>(log_uniform(rng, 1, most));
  s.local_expert_offset =
      static_cast<int32_t>(uniform_int(rng, 0, s.num_experts - s.local_num_experts));
}

void draw_outputs(Rng& rng, SoakProblem& p) {
  p.config.do_finalize = chance(rng, 0.65);
  p.config.with_replay = chance(rng, 0.5);
}

// PDL, graph replay (T >= 1: a graph of nothing proves nothing), an eager rerun, and a
// workspace sized for more tokens than the call has (always for a graph: captured once for a
// maximum T).
void draw_execution(Rng& rng, SoakProblem& p) {
  const int64_t T = p.config.shape.num_tokens;
  p.enable_pdl = chance(rng, 0.5);
  p.graph = T >= 1 && chance(rng, 0.15);
  p.graph_rounds = p.graph ? int(uniform_int(rng, 2, 3)) : 0;
  p.rerun = !p.graph && chance(rng, 0.12);
  p.workspace_tokens = T;
  if (p.graph || chance(rng, 0.15))
    p.workspace_tokens = T + uniform_int(rng, 1, std::max<int64_t>(T, 16));
}

// Hostile input in a fifth of the problems: for routed input one kind or all three at once
// (duplicates need K >= 2), for logits non-finite values and ties.
void draw_hostile(Rng& rng, SoakProblem& p) {
  p.hostile = kHostileNone;
  if (!chance(rng, 0.2)) return;
  if (p.config.routing_input == RoutingInput::kLogits) {
    p.hostile = kNonFiniteLogits;
    return;
  }
  const uint32_t kinds[] = {kBadIds, kNonFiniteWeights, kDuplicateIds,
                            kBadIds | kDuplicateIds | kNonFiniteWeights};
  p.hostile = kinds[uniform_int(rng, 0, p.config.shape.top_k >= 2 ? 3 : 1)];
}

// The expert MLP (MoeArguments' activation options). The activation: SwiGLU in 60 % (the
// models' common case; its fast GEMM1 epilogue), each of the other seven in ~5.7 %.
void draw_activation(Rng& rng, SoakProblem& p) {
  const Activation others[] = {Activation::kGelu,     Activation::kRelu,  Activation::kSilu,
                               Activation::kGeglu,    Activation::kRelu2, Activation::kSwigluStep,
                               Activation::kGegluTanh};
  p.config.activation = chance(rng, 0.6) ? Activation::kSwiglu : others[uniform_int(rng, 0, 6)];
}

// Per-expert parameters where the activation reads them: Swiglu's alpha, beta and clamp limit
// in a fifth of its problems (plain SwiGLU stays ~half of all), SwigluStep's limit in half.
void draw_activation_params(Rng& rng, SoakProblem& p) {
  const Activation a = p.config.activation;
  p.config.with_activation_params =
      reads_params(a) && chance(rng, a == Activation::kSwiglu ? 0.2 : 0.5);
}

// Expert biases of both GEMMs (one dtype for the two) in 30 % of the problems.
void draw_expert_biases(Rng& rng, SoakProblem& p) {
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.engine());
  p.config.with_expert_biases = u < 0.3;
  p.config.expert_bias_dtype = u < 0.15 ? DType::kBF16 : DType::kFP32;
}

// Routing weights on the input (validate(): K == 1 only) in 40 % of the K == 1 problems.
void draw_scales_on_input(Rng& rng, SoakProblem& p) {
  p.config.routing_scales_on_input = p.config.shape.top_k == 1 && chance(rng, 0.4);
}

// Shrinks a problem over the caps: T down to 256 first (large batches are the usual culprit),
// then the larger of H and I, then T again; T = 1, H = I = 8 fits anything.
void fit_caps(SoakProblem& p) {
  MoeShape& s = p.config.shape;
  auto fits = [&p] {
    const Cost cost = estimate_cost(p);
    return cost.device_bytes <= kMaxDeviceBytes && cost.host_bytes <= kMaxHostBytes &&
           cost.seconds <= kMaxProblemSeconds;
  };
  auto halve_tokens = [&p, &s] {
    const int64_t extra = p.workspace_tokens - s.num_tokens;
    s.num_tokens = std::max<int64_t>(1, s.num_tokens / 2);
    p.workspace_tokens = s.num_tokens + extra / 2 + (extra > 0 ? 1 : 0);
  };
  while (!fits() && s.num_tokens > 256) halve_tokens();
  while (!fits() && (s.hidden_size > 8 || s.intermediate_size > 8)) {
    int64_t& larger = s.hidden_size >= s.intermediate_size ? s.hidden_size : s.intermediate_size;
    larger = std::max<int64_t>(8, larger / 2 / 8 * 8);
  }
  while (!fits() && s.num_tokens > 1) halve_tokens();
}

using DrawStep = void (*)(Rng&, SoakProblem&);
// Order matters where axes are coupled: K after the method (Llama4), groups after K, the
// window after K (a cold window's room), hostile after the routing input, the activation's
// parameters after the activation, weights on the input after K.
const DrawStep kDrawSteps[] = {draw_tokens,        draw_features,
                               draw_experts,       draw_routing_input,
                               draw_method,        draw_top_k,
                               draw_groups,        draw_logits_parameters,
                               draw_window,        draw_outputs,
                               draw_execution,     draw_hostile,
                               draw_activation,    draw_activation_params,
                               draw_expert_biases, draw_scales_on_input};

// ---- describe and axes -------------------------------------------------------------------------

const char* input_name(const SoakProblem& p) {
  switch (p.config.routing_input) {
    case RoutingInput::kLogits:
      return "logits";
    case RoutingInput::kPacked:
      return "packed";
    case RoutingInput::kUnpacked:
      return p.config.routed_weights_dtype == DType::kFP32 ? "unpacked_fp32" : "unpacked_bf16";
  }
  return "?";
}

bool is_logits(const SoakProblem& p) { return p.config.routing_input == RoutingInput::kLogits; }

const char* window_name(Window w) {
  return w == Window::kAll ? "all" : w == Window::kShard ? "shard" : "cold";
}

std::string hostile_name(uint32_t bits) {
  if (bits == kHostileNone) return "none";
  std::string name;
  auto add = [&name](const char* part) { name += (name.empty() ? "" : "+") + std::string(part); };
  if (bits & kBadIds) add("bad_ids");
  if (bits & kDuplicateIds) add("duplicates");
  if (bits & kNonFiniteWeights) add("nonfinite_weights");
  if (bits & kNonFiniteLogits) add("nonfinite_logits");
  return name;
}

std::string bucket_label(int64_t value, const std::vector<Bucket>& buckets) {
  for (const Bucket& b : buckets) {
    if (value >= b.lo && value <= b.hi) {
      return b.lo == b.hi ? std::to_string(b.lo)
                          : std::to_string(b.lo) + "-" + std::to_string(b.hi);
    }
  }
  return "?";
}

std::vector<std::string> bucket_labels(const std::vector<Bucket>& buckets) {
  std::vector<std::string> labels;
  for (const Bucket& b : buckets) labels.push_back(bucket_label(b.lo, buckets));
  return labels;
}

// The feature buckets leave gaps between multiples of 8 (256 < 264): label by the bucket below.
std::string feature_label(int64_t value) {
  for (size_t i = kFeatureBuckets.size(); i-- > 0;) {
    if (value >= kFeatureBuckets[i].lo) return bucket_label(kFeatureBuckets[i].lo, kFeatureBuckets);
  }
  return "?";
}

std::string method_label(const SoakProblem& p, int) {
  return is_logits(p) ? routing_method_name(p.config.method) : "routed";
}

bool is_grouped_method(const SoakProblem& p) {
  return is_logits(p) && p.config.method == RoutingMethod::kDeepSeekV3;
}

// DeepSeekV3's groups with the defaults applied (0 = not given).
detail::GroupConfig groups_of(const SoakProblem& p) {
  LogitsRouting logits;
  logits.n_group = p.config.n_group;
  logits.topk_group = p.config.topk_group;
  return detail::resolve_groups(logits);
}

std::string groups_label(const SoakProblem& p, int) {
  if (!is_grouped_method(p)) return "-";
  const detail::GroupConfig g = groups_of(p);
  if (g.n_group == 1) return "one_group";
  return g.topk_group == g.n_group ? "all_groups_kept" : "some_groups_kept";
}

std::string bias_label(const SoakProblem& p, int) {
  if (!p.config.with_bias) return "none";
  if (!reads_bias(p.config.method)) return "unread";
  return dtype_name(p.config.bias_dtype);
}

std::string activation_params_label(const SoakProblem& p, int) {
  if (!reads_params(p.config.activation)) return "-";
  return p.config.with_activation_params ? "given" : "default";
}

std::string expert_biases_label(const SoakProblem& p, int) {
  return p.config.with_expert_biases ? dtype_name(p.config.expert_bias_dtype) : "none";
}

std::string scales_on_input_label(const SoakProblem& p, int) {
  if (p.config.shape.top_k != 1) return "-";
  return p.config.routing_scales_on_input ? "on" : "off";
}

std::vector<std::string> activation_labels() {
  std::vector<std::string> labels;
  for (int a = 0; a <= 8; ++a) {
    if (is_valid_activation(static_cast<Activation>(a)))
      labels.push_back(activation_name(static_cast<Activation>(a)));
  }
  return labels;
}

std::string top_k_label(const SoakProblem& p, int) {
  const int32_t k = p.config.shape.top_k;
  return k == 1 ? "1" : k <= 8 ? "2-8" : k < 32 ? "9-31" : "32";
}

// The pipeline's own choices (src/moe.cu), from the same pure functions it calls.
bool runs(const SoakProblem& p) { return p.config.shape.num_tokens > 0; }

// A non-gated GEMM1 (N = I) runs on GEMM2's kernels, chosen by GEMM2's heuristic.
std::string gemm1_label(const SoakProblem& p, int num_sms) {
  const MoeShape& s = p.config.shape;
  if (!runs(p)) return "none";
  if (!is_gated(p.config.activation)) {
    return heuristics::use_decode_gemm2(s.num_tokens, s.top_k, s.num_experts, s.local_num_experts,
                                        s.intermediate_size, num_sms)
               ? "decode_nongated"
               : "prefill_nongated";
  }
  return heuristics::use_decode_gemm1(s.num_tokens, s.top_k, s.num_experts, s.local_num_experts,
                                      s.intermediate_size, num_sms)
             ? "decode"
             : "prefill";
}

// The GEMMs' epilogues (src/launch/gemm_epilogue.h): the plain ones (SwiGLU without parameters,
// no biases) or the general one, in GEMM1 alone (an activation or parameters) or in both (biases).
std::string epilogue_label(const SoakProblem& p, int) {
  const MoeCaseConfig& c = p.config;
  if (!runs(p)) return "none";
  if (c.with_expert_biases) return "general_both";
  const bool plain1 = c.activation == Activation::kSwiglu && !c.with_activation_params;
  return plain1 ? "plain" : "general_gemm1";
}

std::string gemm2_label(const SoakProblem& p, int num_sms) {
  const MoeShape& s = p.config.shape;
  if (!runs(p)) return "none";
  return heuristics::use_decode_gemm2(s.num_tokens, s.top_k, s.num_experts, s.local_num_experts,
                                      s.hidden_size, num_sms)
             ? "decode"
             : "prefill";
}

std::string claim_label(const SoakProblem& p, int num_sms) {
  const MoeShape& s = p.config.shape;
  const bool claim1 =
      gemm1_label(p, num_sms).rfind("prefill", 0) == 0 &&
      heuristics::grouped_claim_tiles(s.num_tokens, s.top_k, s.num_experts, s.hidden_size);
  const bool claim2 =
      gemm2_label(p, num_sms) == "prefill" &&
      heuristics::grouped_claim_tiles(s.num_tokens, s.top_k, s.num_experts, s.intermediate_size);
  return claim1 || claim2 ? "claimed" : "static";
}

std::string sort_label(const SoakProblem& p, int) {
  if (!runs(p)) return "none";
  return heuristics::use_small_sort(p.config.shape.num_tokens * p.config.shape.top_k) ? "one_cta"
                                                                                      : "counting";
}

std::string route_label(const SoakProblem& p, int) {
  if (!runs(p)) return "none";
  if (!is_logits(p)) return "decode_routed";
  return heuristics::use_block_route(p.config.shape.num_tokens) ? "block_per_token"
                                                                : "warp_per_token";
}

std::string exec_label(const SoakProblem& p, int) {
  return p.graph ? "graph" : p.rerun ? "eager+rerun" : "eager";
}

std::vector<std::string> method_labels() {
  std::vector<std::string> labels = {"routed"};
  for (int m = 0; m < kNumRoutingMethods; ++m) {
    labels.push_back(routing_method_name(static_cast<RoutingMethod>(m)));
  }
  return labels;
}

}  // namespace

uint64_t problem_seed(uint64_t run_seed, int64_t index) {
  return splitmix64(splitmix64(run_seed) ^ static_cast<uint64_t>(index));
}

SoakProblem draw_problem(uint64_t seed) {
  SoakProblem p;
  p.seed = seed;
  Rng rng(seed);
  for (DrawStep step : kDrawSteps) step(rng, p);
  fit_caps(p);
  p.config.seed = seed;
  p.config.routing_only = true;
  return p;
}

std::string describe(const SoakProblem& p) {
  const MoeCaseConfig& c = p.config;
  const MoeShape& s = c.shape;
  char line[512];
  int n = std::snprintf(line, sizeof(line), "T=%lld H=%lld I=%lld E=%d K=%d window=%s[%d,+%d) %s",
                        static_cast<long long>(s.num_tokens), static_cast<long long>(s.hidden_size),
                        static_cast<long long>(s.intermediate_size), s.num_experts, s.top_k,
                        window_name(p.window), s.local_expert_offset, s.local_num_experts,
                        input_name(p));
  std::string text(line, std::min<size_t>(n, sizeof(line) - 1));
  if (is_logits(p)) {
    std::snprintf(line, sizeof(line), " %s logits=%s bias=%s groups=%d/%d scale=%g",
                  routing_method_name(c.method), dtype_name(c.logits_dtype),
                  c.with_bias ? dtype_name(c.bias_dtype) : "none", c.n_group, c.topk_group,
                  static_cast<double>(c.routed_scaling_factor));
    text += line;
  }
  std::snprintf(line, sizeof(line), " act=%s%s expert_bias=%s%s", activation_name(c.activation),
                c.with_activation_params ? "+params" : "",
                c.with_expert_biases ? dtype_name(c.expert_bias_dtype) : "none",
                c.routing_scales_on_input ? " scales_on_input" : "");
  text += line;
  std::snprintf(line, sizeof(line), " weights=%s %s%s pdl=%d %s ws_T=%lld hostile=%s",
                dtype_name(c.expert_weights_dtype), c.do_finalize ? "finalize" : "unfinalized",
                c.with_replay ? " replay" : "", p.enable_pdl ? 1 : 0,
                p.graph ? ("graph x" + std::to_string(p.graph_rounds)).c_str()
                        : (p.rerun ? "eager+rerun" : "eager"),
                static_cast<long long>(p.workspace_tokens), hostile_name(p.hostile).c_str());
  return text + line;
}

MoeArguments placeholder_arguments(const SoakProblem& p) {
  // The routing part comes from MoeCase itself (which pointers and dtypes a config gives), on a
  // copy with no tokens so nothing T x E is drawn; every pointer then names a placeholder.
  static char placeholder[16];
  MoeCaseConfig empty = p.config;
  empty.shape.num_tokens = 0;
  empty.shape.hidden_size = empty.shape.intermediate_size = 8;  // small expert biases
  test::MoeCase routing_case(empty);
  MoeArguments args = routing_case.arguments();
  args.shape = p.config.shape;
  auto replace = [](auto& pointer) {
    if (pointer)
      pointer = reinterpret_cast<std::remove_reference_t<decltype(pointer)>>(placeholder);
  };
  replace(args.logits.logits);
  replace(args.logits.bias);
  replace(args.routed.topk_ids);
  replace(args.routed.topk_weights);
  replace(args.gemm1_alpha);
  replace(args.gemm1_beta);
  replace(args.gemm1_clamp_limit);
  replace(args.gemm1_bias);
  replace(args.gemm2_bias);
  args.hidden_states = placeholder;
  args.gemm1_weights = placeholder;
  args.gemm2_weights = placeholder;
  if (p.config.do_finalize) {
    args.output = placeholder;
  } else {
    args.gemm2_output = placeholder;
    args.expert_weights = placeholder;
    args.expanded_idx_to_permuted_idx = reinterpret_cast<int32_t*>(placeholder);
  }
  if (p.config.with_replay) args.routing_replay_out = reinterpret_cast<int16_t*>(placeholder);
  args.enable_pdl = p.enable_pdl;
  return args;
}

// The model behind the estimate (H200 figures, rounded; the soak prints estimate and actual
// per problem so they can be recalibrated): a fixed cost per call (allocation, launches,
// synchronisation), the GEMMs at a fraction of their peaks (the operator and the reference's
// bf16 GEMMs ~300 TFLOP/s, the reference's fp32 "truth" GEMM2 ~30 TFLOP/s), per hit expert the
// reference's 3 cuBLAS calls and a conversion (~40 us), pageable downloads at ~5 GB/s, and the
// host's work: routing O(E * K) per token (~1.5 ns a step; DeepSeekV3's groups add
// O(n_group * topk_group)), ~10 ns per logit drawn, ~8 ns per element compared, ~15 ns per
// expert-bias element drawn (E_loc * (N + H) per round, N = GEMM1's 2I or I columns).
Cost estimate_cost(const SoakProblem& p) {
  const MoeShape& s = p.config.shape;
  const double T = double(s.num_tokens), H = double(s.hidden_size), I = double(s.intermediate_size);
  const double N = is_gated(p.config.activation) ? 2.0 * I : I;  // GEMM1's output columns
  const double E = s.num_experts, K = s.top_k, E_loc = s.local_num_experts;
  const bool finalize = p.config.do_finalize;
  const double slots = T * K;
  // Rows the GEMMs see: every slot at most (memory), the window's share expected (time).
  const double rows_bound = slots;
  const double local_share = p.window == Window::kCold && !is_logits(p) ? 0.0 : E_loc / E;
  const double rows = slots * local_share;
  const double hit_experts = std::min(E_loc, rows);

  MoeShape workspace_shape = s;
  workspace_shape.num_tokens = p.workspace_tokens;
  size_t workspace_bytes = 0;
  if (!workspace_size(workspace_shape, &workspace_bytes).ok()) workspace_bytes = ~size_t{0} >> 1;

  Cost cost;
  const double weights_bytes = 2.0 * E_loc * H * (N + I);
  // Expert biases: drawn on the host in fp32 (and rounded to a bf16 copy), on the device once.
  const double bias_elements = p.config.with_expert_biases ? E_loc * (N + H) : 0.0;
  const double outputs_bytes = finalize ? 2.0 * T * H : 2.0 * slots * H + 10.0 * slots;
  const double reference_bytes =
      rows_bound * (2.0 * H + 4.0 * N + 6.0 * I + 10.0 * H + 12.0) + 4.0 * H * I + 10.0 * T * H;
  cost.device_bytes = weights_bytes + 2.0 * T * H + outputs_bytes + double(workspace_bytes) +
                      reference_bytes + 16.0 * slots + 6.0 * T * E + 4.0 * bias_elements;

  // Host: the routing input, the reference's output (truth fp64 + design bf16) and ours, rows.
  const double compared = finalize ? T * H : T * H + rows_bound * H;
  cost.host_bytes = 10.0 * T * E + 12.0 * T * H + (finalize ? 0.0 : 16.0 * rows_bound * H) +
                    (p.graph || p.rerun ? 2.0 * compared : 0.0) + 8.0 * bias_elements;

  const double run_seconds = 2.0 * rows * H * (N + I) / 300e12 + 50e-6;
  const double reference_seconds = 2.0 * rows * H * N / 300e12 + 2.0 * rows * H * I / 30e12 +
                                   hit_experts * (40e-6 + 6.0 * H * I / 2e12);
  // The reference's DeepSeekV3 group selection is O(n_group * topk_group) per token too.
  const detail::GroupConfig groups = groups_of(p);
  const double group_steps = is_grouped_method(p) ? double(groups.n_group) * groups.topk_group : 0;
  const double routing_seconds = is_logits(p)
                                     ? T * (E * (K + 8.0) + group_steps) * 1.5e-9 + T * E * 10e-9
                                     : slots * 30e-9;  // ids and weights drawn, decoded
  const double host_seconds =
      routing_seconds + compared * 8e-9 + (12.0 * T * H + (finalize ? 0.0 : 8.0 * rows * H)) / 5e9;
  const double round_seconds =
      run_seconds + reference_seconds + host_seconds + 2.0 * T * H / 2e12 + bias_elements * 15e-9;
  const double bitwise_seconds = run_seconds + compared * (2.0 / 5e9 + 2e-9);
  const int rounds = p.graph ? p.graph_rounds : 1;
  cost.seconds = 3e-3 + weights_bytes / 2e12 + rounds * round_seconds +
                 (p.graph || p.rerun ? bitwise_seconds : 0.0);
  return cost;
}

const std::vector<Axis>& draw_axes() {
  static const std::vector<Axis> axes = {
      {"tokens", bucket_labels(kTokenBuckets),
       [](const SoakProblem& p, int) {
         return bucket_label(p.config.shape.num_tokens, kTokenBuckets);
       },
       false},
      {"hidden", bucket_labels(kFeatureBuckets),
       [](const SoakProblem& p, int) { return feature_label(p.config.shape.hidden_size); }, false},
      {"intermediate", bucket_labels(kFeatureBuckets),
       [](const SoakProblem& p, int) { return feature_label(p.config.shape.intermediate_size); },
       false},
      {"experts", bucket_labels(kExpertBuckets),
       [](const SoakProblem& p, int) {
         return bucket_label(p.config.shape.num_experts, kExpertBuckets);
       },
       false},
      {"top_k", {"1", "2-8", "9-31", "32"}, top_k_label, false},
      {"input",
       {"logits", "packed", "unpacked_bf16", "unpacked_fp32"},
       [](const SoakProblem& p, int) { return std::string(input_name(p)); },
       true},
      {"method", method_labels(), method_label, false},
      {"logits_dtype",
       {"-", "bf16", "fp32"},
       [](const SoakProblem& p, int) {
         return is_logits(p) ? std::string(dtype_name(p.config.logits_dtype)) : "-";
       },
       false},
      {"bias", {"none", "bf16", "fp32", "unread"}, bias_label, false},
      {"groups", {"-", "one_group", "all_groups_kept", "some_groups_kept"}, groups_label, false},
      {"scale",
       {"1", "other"},
       [](const SoakProblem& p, int) {
         return std::string(p.config.routed_scaling_factor == 1.0f ? "1" : "other");
       },
       false},
      {"activation", activation_labels(),
       [](const SoakProblem& p, int) { return std::string(activation_name(p.config.activation)); },
       false},
      {"act_params", {"-", "default", "given"}, activation_params_label, false},
      {"expert_biases", {"none", "bf16", "fp32"}, expert_biases_label, false},
      {"input_scales", {"-", "off", "on"}, scales_on_input_label, false},
      {"expert_weights",
       {"bf16", "fp32"},
       [](const SoakProblem& p, int) {
         return std::string(dtype_name(p.config.expert_weights_dtype));
       },
       false},
      {"window",
       {"all", "shard", "cold"},
       [](const SoakProblem& p, int) { return std::string(window_name(p.window)); },
       false},
      {"output",
       {"finalize", "unfinalized"},
       [](const SoakProblem& p, int) {
         return std::string(p.config.do_finalize ? "finalize" : "unfinalized");
       },
       true},
      {"replay_out",
       {"on", "off"},
       [](const SoakProblem& p, int) { return std::string(p.config.with_replay ? "on" : "off"); },
       false},
      {"pdl",
       {"on", "off"},
       [](const SoakProblem& p, int) { return std::string(p.enable_pdl ? "on" : "off"); },
       false},
      {"exec", {"eager", "eager+rerun", "graph"}, exec_label, true},
      {"workspace",
       {"exact", "oversized"},
       [](const SoakProblem& p, int) {
         return std::string(p.workspace_tokens > p.config.shape.num_tokens ? "oversized" : "exact");
       },
       false},
      {"hostile",
       {"none", "bad_ids", "duplicates", "nonfinite_weights",
        "bad_ids+duplicates+nonfinite_weights", "nonfinite_logits"},
       [](const SoakProblem& p, int) { return hostile_name(p.hostile); },
       false},
      {"route", {"none", "decode_routed", "block_per_token", "warp_per_token"}, route_label, true},
      {"sort", {"none", "one_cta", "counting"}, sort_label, true},
      {"gemm1",
       {"none", "decode", "prefill", "decode_nongated", "prefill_nongated"},
       gemm1_label,
       true},
      {"epilogue", {"none", "plain", "general_gemm1", "general_both"}, epilogue_label, true},
      {"gemm2", {"none", "decode", "prefill"}, gemm2_label, true},
      {"tile_claims", {"static", "claimed"}, claim_label, true},
  };
  return axes;
}

}  // namespace fusedmoe::soak
