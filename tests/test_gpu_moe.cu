// GPU test suite of the whole operator (run()): every routing method and input mode, the SPEC
// shapes, expert parallelism, hostile ids, determinism, CUDA graph replay and the
// do_finalize=false triple. Skips when no GPU is present.
//
// The truth is the CPU reference (src/reference/): its routing and permutation are compared
// bitwise (ids, permutation) or to the last ulp (weights: the GPU's exp may differ by one rounding
// from the host's expf; bf16 weights within 1 ulp, fp32 weights within 4). The expert MLPs are
// compared by docs/STYLE.md's tolerance rule to a cuBLAS reference (tests/common/gpu_reference.h)
// fed with the CPU reference's routing and permutation, since most SPEC shapes are far too large
// for the CPU; that GPU reference is itself checked against the CPU reference on a small shape.
// Inputs are fresh random data per case; outputs are poisoned (0xFF bytes: bf16 0xFFFF NaN,
// int -1) before every run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/double_model.h"
#include "common/gpu_buffers.h"
#include "common/gpu_reference.h"
#include "common/host_data.h"
#include "common/moe_case.h"
#include "common/reference_routing.h"
#include "common/tolerance.h"
#include "decode_heuristics.h"
#include "fusedmoe/fusedmoe.h"
#include "reference/bf16.h"
#include "reference/reference.h"

namespace fusedmoe::test {
namespace {

#define FUSEDMOE_SKIP_WITHOUT_GPU() \
  if (!gpu_available()) GTEST_SKIP() << "no CUDA device"

// ------------------------------------------------------------------------------------------------
// One operator call on the device: inputs, outputs and its MoeArguments.
// ------------------------------------------------------------------------------------------------
struct CaseSpec {
  std::string name;
  int64_t num_tokens;
  int64_t hidden_size;
  int64_t intermediate_size;
  int32_t num_experts;
  int32_t top_k;
  int32_t local_num_experts = 0;  // 0 = all experts local
  int32_t local_expert_offset = 0;
  RoutingInput input = RoutingInput::kLogits;
  RoutingMethod method = RoutingMethod::kDefault;
  DType logits_dtype = DType::kFP32;
  bool with_bias = false;
  DType bias_dtype = DType::kFP32;
  int32_t n_group = 0;
  int32_t topk_group = 0;
  float routed_scaling_factor = 1.0f;
  DType weights_dtype = DType::kBF16;  // expert_weights_dtype (= routed weights dtype)
  bool do_finalize = true;
  bool with_replay = true;
};

// Printed as its name (gtest would otherwise dump the struct's bytes in every listing).
void PrintTo(const CaseSpec& spec, std::ostream* os) { *os << spec.name; }

class GpuCase {
 public:
  GpuCase(const CaseSpec& spec, uint64_t seed) : spec_(spec) {
    shape_.num_tokens = spec.num_tokens;
    shape_.hidden_size = test_hidden_size(spec.hidden_size);
    shape_.intermediate_size = test_intermediate_size(spec.intermediate_size);
    shape_.num_experts = spec.num_experts;
    shape_.top_k = spec.top_k;
    shape_.local_num_experts = spec.local_num_experts ? spec.local_num_experts : spec.num_experts;
    shape_.local_expert_offset = spec.local_expert_offset;
    const int64_t T = shape_.num_tokens, H = shape_.hidden_size, I = shape_.intermediate_size;
    const int64_t E_loc = shape_.local_num_experts, K = shape_.top_k;

    w1_.resize(E_loc * 2 * I * H);
    w2_.resize(E_loc * H * I);
    const float w1_scale = 2.0f / std::sqrt(static_cast<float>(H));
    const float w2_scale = 2.0f / std::sqrt(static_cast<float>(I));
    fill_uniform_bf16(w1_, seed * 3 + 1, -w1_scale, w1_scale);
    fill_uniform_bf16(w2_, seed * 3 + 2, -w2_scale, w2_scale);
    x_.resize(T * H);
    new_inputs(seed);

    output_.resize(T * H);
    gemm2_output_.resize(permuted_capacity(T, shape_.top_k, shape_.local_num_experts) * H);
    expert_weights_.resize(T * K);  // 4 bytes per element: fits bf16 and fp32
    permuted_idx_.resize(T * K);
    replay_.resize(T * K);
  }

  // Fresh hidden states and routing input in the same device buffers (graph replay).
  void new_inputs(uint64_t seed) {
    const int64_t T = shape_.num_tokens, E = shape_.num_experts, K = shape_.top_k;
    fill_uniform_bf16(x_, seed * 3 + 3, -1.0f, 1.0f);
    Rng rng(seed);
    if (spec_.input == RoutingInput::kLogits) {
      logits_fp32_ = random_fp32(rng, T * E, -4.0f, 4.0f);
      if (spec_.logits_dtype == DType::kBF16) {
        logits_bf16_ = float_to_bf16(logits_fp32_);
        d_logits_bf16_.upload(logits_bf16_);
      } else {
        d_logits_fp32_.upload(logits_fp32_);
      }
      if (spec_.with_bias) {
        bias_fp32_ = random_fp32(rng, E, -0.5f, 0.5f);
        if (spec_.bias_dtype == DType::kBF16) {
          bias_bf16_ = float_to_bf16(bias_fp32_);
          d_bias_bf16_.upload(bias_bf16_);
        } else {
          d_bias_fp32_.upload(bias_fp32_);
        }
      }
    } else {
      set_routed(random_distinct_ids(rng, T, K, static_cast<int32_t>(E)),
                 random_fp32(rng, T * K, 0.05f, 1.0f));
    }
  }

  // Replaces the logits (given in fp32; rounded to bf16 when the spec asks for bf16 logits).
  void set_logits(const std::vector<float>& logits) {
    logits_fp32_ = logits;
    if (spec_.logits_dtype == DType::kBF16) {
      logits_bf16_ = float_to_bf16(logits_fp32_);
      logits_fp32_ = bf16_to_float(logits_bf16_);
      d_logits_bf16_.upload(logits_bf16_);
    } else {
      d_logits_fp32_.upload(logits_fp32_);
    }
  }
  const std::vector<float>& logits() const { return logits_fp32_; }

  // Routed input from plain ids and fp32 weights, encoded as the spec's input asks.
  void set_routed(const std::vector<int32_t>& ids, const std::vector<float>& weights) {
    if (spec_.input == RoutingInput::kPacked) {
      topk_ids_.resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        topk_ids_[i] = pack_topk(ids[i], float_to_bf16_bits(weights[i]));
      }
    } else {
      topk_ids_ = ids;
      if (spec_.weights_dtype == DType::kBF16) {
        topk_weights_bf16_ = float_to_bf16(weights);
        d_topk_weights_bf16_.upload(topk_weights_bf16_);
      } else {
        topk_weights_fp32_ = weights;
        d_topk_weights_fp32_.upload(topk_weights_fp32_);
      }
    }
    d_topk_ids_.upload(topk_ids_);
  }

  // bf16 / fp32 outputs become NaN; the map and the replay ids kPoisonInt32 / kPoisonInt16, not
  // -1 (0xFF bytes), which is a legal "routed elsewhere" entry and would pass for a written one.
  void poison_outputs() {
    output_.fill_bytes(0xFF);
    gemm2_output_.fill_bytes(0xFF);
    expert_weights_.fill_bytes(0xFF);
    permuted_idx_.fill_bytes(0x5A);
    replay_.fill_bytes(0x5A);
  }

  // MoeArguments on the device buffers (host = false) or on the host copies of the routing
  // inputs (host = true, for the CPU reference's routing only).
  MoeArguments arguments(bool host = false) {
    MoeArguments args;
    args.shape = shape_;
    args.hidden_states = x_.get();
    args.gemm1_weights = w1_.get();
    args.gemm2_weights = w2_.get();
    args.expert_weights_dtype = spec_.weights_dtype;
    if (spec_.input == RoutingInput::kLogits) {
      const bool bf16 = spec_.logits_dtype == DType::kBF16;
      args.logits.logits = host ? (bf16 ? static_cast<const void*>(logits_bf16_.data())
                                        : static_cast<const void*>(logits_fp32_.data()))
                                : (bf16 ? static_cast<const void*>(d_logits_bf16_.get())
                                        : static_cast<const void*>(d_logits_fp32_.get()));
      args.logits.logits_dtype = spec_.logits_dtype;
      if (spec_.with_bias) {
        const bool bias_bf16 = spec_.bias_dtype == DType::kBF16;
        args.logits.bias = host ? (bias_bf16 ? static_cast<const void*>(bias_bf16_.data())
                                             : static_cast<const void*>(bias_fp32_.data()))
                                : (bias_bf16 ? static_cast<const void*>(d_bias_bf16_.get())
                                             : static_cast<const void*>(d_bias_fp32_.get()));
        args.logits.bias_dtype = spec_.bias_dtype;
      }
      args.logits.method = spec_.method;
      args.logits.n_group = spec_.n_group;
      args.logits.topk_group = spec_.topk_group;
      args.logits.routed_scaling_factor = spec_.routed_scaling_factor;
    } else {
      args.routed.topk_ids = host ? topk_ids_.data() : d_topk_ids_.get();
      if (spec_.input == RoutingInput::kUnpacked) {
        const bool bf16 = spec_.weights_dtype == DType::kBF16;
        args.routed.topk_weights =
            host ? (bf16 ? static_cast<const void*>(topk_weights_bf16_.data())
                         : static_cast<const void*>(topk_weights_fp32_.data()))
                 : (bf16 ? static_cast<const void*>(d_topk_weights_bf16_.get())
                         : static_cast<const void*>(d_topk_weights_fp32_.get()));
        args.routed.weights_dtype = spec_.weights_dtype;
      }
    }
    args.do_finalize = spec_.do_finalize;
    if (spec_.do_finalize) {
      args.output = output_.get();
    } else {
      args.gemm2_output = gemm2_output_.get();
      args.expert_weights = expert_weights_.get();
      args.expanded_idx_to_permuted_idx = permuted_idx_.get();
    }
    if (spec_.with_replay) args.routing_replay_out = replay_.get();
    return args;
  }

  // The CPU reference's routing and permutation of the current inputs.
  ref::Routing reference_routing() {
    const MoeArguments host = arguments(true);
    if (spec_.input == RoutingInput::kLogits) {
      return ref::route_reference(host.logits, shape_.num_tokens, shape_.num_experts, shape_.top_k,
                                  spec_.weights_dtype);
    }
    return ref::decode_routed_reference(host.routed, shape_.num_tokens, shape_.top_k);
  }

  const CaseSpec& spec() const { return spec_; }
  const MoeShape& shape() const { return shape_; }
  const uint16_t* x() const { return x_.get(); }
  const uint16_t* w1() const { return w1_.get(); }
  const uint16_t* w2() const { return w2_.get(); }
  DeviceArray<uint16_t>& output() { return output_; }
  DeviceArray<uint16_t>& gemm2_output() { return gemm2_output_; }
  DeviceArray<uint32_t>& expert_weights() { return expert_weights_; }
  DeviceArray<int32_t>& permuted_idx() { return permuted_idx_; }
  DeviceArray<int16_t>& replay() { return replay_; }

 private:
  CaseSpec spec_;
  MoeShape shape_;
  DeviceArray<uint16_t> x_, w1_, w2_;
  std::vector<float> logits_fp32_, bias_fp32_, topk_weights_fp32_;
  std::vector<uint16_t> logits_bf16_, bias_bf16_, topk_weights_bf16_;
  std::vector<int32_t> topk_ids_;
  DeviceArray<float> d_logits_fp32_, d_bias_fp32_, d_topk_weights_fp32_;
  DeviceArray<uint16_t> d_logits_bf16_, d_bias_bf16_, d_topk_weights_bf16_;
  DeviceArray<int32_t> d_topk_ids_;
  DeviceArray<uint16_t> output_, gemm2_output_;
  DeviceArray<uint32_t> expert_weights_;
  DeviceArray<int32_t> permuted_idx_;
  DeviceArray<int16_t> replay_;
};

// run() with a workspace sized by workspace_size(), then a sync.
Status run_on_device(const MoeArguments& args, bool enable_pdl = false) {
  size_t bytes = 0;
  if (Status s = workspace_size(args.shape, &bytes); !s.ok()) return s;
  DeviceArray<uint8_t> workspace(bytes);
  workspace.fill_bytes(0xFF);  // the pipeline must not depend on a clean workspace
  MoeArguments with_pdl = args;
  with_pdl.enable_pdl = enable_pdl;
  const Status status = run(with_pdl, workspace.get(), bytes, nullptr);
  check_cuda(cudaGetLastError(), "run");
  check_cuda(cudaDeviceSynchronize(), "run (async)");
  return status;
}

// Distance in units in the last place between two finite values of the same dtype.
int64_t ulp_distance_bits(int64_t a, int64_t b) { return a > b ? a - b : b - a; }
int64_t ordered_bf16(uint16_t bits) {
  return (bits & 0x8000) ? -static_cast<int64_t>(bits & 0x7FFF) : static_cast<int64_t>(bits);
}
int64_t ordered_fp32(uint32_t bits) {
  return (bits & 0x80000000u) ? -static_cast<int64_t>(bits & 0x7FFFFFFFu)
                              : static_cast<int64_t>(bits);
}

// The returned expert_weights against the reference's: bitwise for routed input (passed through),
// within one ulp for logits input (exp rounding may differ from the host's expf).
void expect_weights(GpuCase& c, const ref::Routing& routing) {
  const int64_t num_slots = c.shape().num_tokens * c.shape().top_k;
  const std::vector<uint32_t> raw = c.expert_weights().download();
  const bool bf16 = c.spec().weights_dtype == DType::kBF16;
  // fp32 weights show the exp difference directly (softmax sums of E terms can add one more).
  const bool logits = c.spec().input == RoutingInput::kLogits;
  const int64_t max_ulps = logits ? (bf16 ? 1 : 4) : 0;
  int64_t mismatches = 0;
  for (int64_t i = 0; i < num_slots; ++i) {
    int64_t ulps;
    const bool ref_nan = std::isnan(routing.weights[i]);
    if (ref_nan) {
      const bool ours_nan =
          bf16 ? std::isnan(bf16_bits_to_float(reinterpret_cast<const uint16_t*>(raw.data())[i]))
               : std::isnan(fp32_from_bits(raw[i]));
      ASSERT_TRUE(ours_nan) << "expert_weights[" << i << "]: reference NaN";
      continue;
    }
    if (bf16) {
      const uint16_t ours = reinterpret_cast<const uint16_t*>(raw.data())[i];
      ulps = ulp_distance_bits(ordered_bf16(ours),
                               ordered_bf16(float_to_bf16_bits(routing.weights[i])));
    } else {
      uint32_t ref_bits;
      std::memcpy(&ref_bits, &routing.weights[i], 4);
      ulps = ulp_distance_bits(ordered_fp32(raw[i]), ordered_fp32(ref_bits));
    }
    if (ulps > 0) ++mismatches;
    ASSERT_LE(ulps, max_ulps) << "expert_weights[" << i << "]";
  }
  // In bf16 a last-bit difference is a rare rounding event, never a pattern.
  if (bf16) {
    EXPECT_LE(mismatches, std::max<int64_t>(2, num_slots / 1000))
        << "expert_weights off by one ulp";
  }
}

// Runs a case once and checks every output against the references.
void check_case(const CaseSpec& spec, uint64_t seed) {
  SCOPED_TRACE(spec.name);
  GpuCase c(spec, seed);
  const MoeShape& shape = c.shape();
  const int64_t T = shape.num_tokens, H = shape.hidden_size, K = shape.top_k;
  const ref::Routing routing = c.reference_routing();
  const ref::Permutation perm =
      ref::permute_reference(routing.ids, shape.local_expert_offset, shape.local_num_experts);

  c.poison_outputs();
  const Status status = run_on_device(c.arguments());
  ASSERT_TRUE(status.ok()) << status.message;

  if (spec.with_replay) {
    const std::vector<int16_t> replay = c.replay().download();
    for (int64_t i = 0; i < T * K; ++i) {
      ASSERT_EQ(replay[i], static_cast<int16_t>(routing.ids[i])) << "routing id of slot " << i;
    }
  }
  const GpuReferenceResult expected =
      gpu_reference(shape, c.x(), c.w1(), c.w2(), routing, perm, !spec.do_finalize);
  if (spec.do_finalize) {
    expect_close(c.output().download(), expected.out_truth, expected.out_design, "output");
    return;
  }

  // The triple: permutation bitwise, weights, rows by the rule, and its reduction.
  EXPECT_EQ(first_difference(c.permuted_idx().download(), perm.expanded_idx_to_permuted_idx), -1)
      << "expanded_idx_to_permuted_idx";
  expect_weights(c, routing);
  std::vector<uint16_t> rows = c.gemm2_output().download();
  rows.resize(perm.num_local() * H);
  expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");

  // Reduce the triple the documented way; it must match the reference output by the rule.
  std::vector<uint16_t> reduced(T * H);
  const std::vector<int32_t> map = c.permuted_idx().download();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t row = map[t * K + k];
        if (row < 0) continue;
        acc = std::fma(routing.weights[t * K + k], bf16_bits_to_float(rows[row * H + h]), acc);
      }
      reduced[t * H + h] = float_to_bf16_bits(acc);
    }
  }
  expect_close(reduced, expected.out_truth, expected.out_design, "reduced triple");
}

// ------------------------------------------------------------------------------------------------
// The covering set: every method and input mode, each SPEC shape, T, E and K value at least once.
// ------------------------------------------------------------------------------------------------
std::vector<CaseSpec> covering_cases() {
  using RM = RoutingMethod;
  std::vector<CaseSpec> cases;
  auto add = [&cases](CaseSpec spec) { cases.push_back(std::move(spec)); };
  CaseSpec s;

  s = {"default_fp32_E128_K8", 128, 2048, 768, 128, 8};
  s.method = RM::kDefault;
  add(s);

  s = {"renormalize_bf16_mixtral", 989, 4096, 14336, 8, 2};  // the small-E (4096, 14336) shape
  s.method = RM::kRenormalize;
  s.logits_dtype = DType::kBF16;
  add(s);

  s = {"deepseekv3_groups_shard", 128, 7168, 2048, 256, 8, 32, 64};
  s.method = RM::kDeepSeekV3;
  s.with_bias = true;
  s.n_group = 8;
  s.topk_group = 4;
  s.routed_scaling_factor = 2.5f;
  add(s);

  s = {"deepseekv3_nogroup_bf16", 7, 2048, 768, 8, 2};
  s.method = RM::kDeepSeekV3;
  s.logits_dtype = DType::kBF16;
  s.with_bias = true;
  s.bias_dtype = DType::kBF16;
  add(s);

  s = {"llama4_bf16_T1", 1, 4096, 1536, 128, 1};
  s.method = RM::kLlama4;
  s.logits_dtype = DType::kBF16;
  add(s);

  s = {"renormalize_naive_E1024_K32", 19, 2048, 768, 1024, 32, 256, 512};
  s.method = RM::kRenormalizeNaive;
  add(s);

  s = {"topk_raw_negative_weights", 7, 2880, 2880, 128, 4};
  s.method = RM::kTopK;
  s.logits_dtype = DType::kBF16;
  s.do_finalize = false;
  add(s);

  s = {"sigmoid_renorm_T4096", 4096, 4096, 1536, 128, 8};
  s.method = RM::kSigmoidRenorm;
  s.with_replay = false;
  add(s);

  s = {"minimax2_bf16_bias", 128, 2048, 768, 256, 8};
  s.method = RM::kMiniMax2;
  s.logits_dtype = DType::kBF16;
  s.with_bias = true;
  s.bias_dtype = DType::kBF16;
  s.routed_scaling_factor = 1.7f;
  add(s);

  s = {"sigmoid_K10", 19, 2880, 2880, 128, 10};
  s.method = RM::kSigmoid;
  add(s);

  s = {"topk_sigmoid_fp32_weights_triple", 989, 2048, 768, 1024, 10, 128, 0};
  s.method = RM::kTopKSigmoid;
  s.weights_dtype = DType::kFP32;
  s.do_finalize = false;
  add(s);

  s = {"default_fp32_weights_E256", 128, 2048, 768, 256, 8, 64, 192};
  s.method = RM::kDefault;
  s.weights_dtype = DType::kFP32;
  add(s);

  s = {"packed_dsv3_shape_T4096_shard", 4096, 7168, 2048, 256, 8, 8, 248};
  s.input = RoutingInput::kPacked;
  s.with_replay = false;
  add(s);

  s = {"packed_K32_E1024_shard_triple", 19, 2048, 768, 1024, 32, 64, 960};
  s.input = RoutingInput::kPacked;
  s.do_finalize = false;
  add(s);

  s = {"unpacked_bf16_gptoss", 128, 2880, 2880, 128, 4};
  s.input = RoutingInput::kUnpacked;
  add(s);

  s = {"unpacked_fp32_triple", 989, 2048, 768, 8, 2};
  s.input = RoutingInput::kUnpacked;
  s.weights_dtype = DType::kFP32;
  s.do_finalize = false;
  add(s);

  s = {"unpacked_fp32_K1_T1", 1, 2048, 768, 8, 1};
  s.input = RoutingInput::kUnpacked;
  s.weights_dtype = DType::kFP32;
  add(s);
  return cases;
}

class CoveringSet : public ::testing::TestWithParam<CaseSpec> {};

TEST_P(CoveringSet, MatchesReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  check_case(GetParam(), /*seed=*/1000 + std::hash<std::string>{}(GetParam().name) % 1000);
}

INSTANTIATE_TEST_SUITE_P(Gpu, CoveringSet, ::testing::ValuesIn(covering_cases()),
                         [](const ::testing::TestParamInfo<CaseSpec>& info) {
                           return info.param.name;
                         });

// A MoeCase's inputs copied to the device, device outputs of the same sizes, and the
// MoeArguments over them; download() brings the outputs back into the case's host vectors.
class DeviceMoeCall {
 public:
  explicit DeviceMoeCall(MoeCase& c) : case_(c) {
    const MoeArguments host = c.arguments();
    args_ = host;
    args_.hidden_states = upload(c.hidden_states);
    args_.gemm1_weights = upload(c.gemm1_weights);
    args_.gemm2_weights = upload(c.gemm2_weights);
    if (host.logits.logits) {
      args_.logits.logits = c.config().logits_dtype == DType::kBF16 ? upload(c.logits_bf16)
                                                                     : upload(c.logits_fp32);
      args_.logits.bias = !host.logits.bias                           ? nullptr
                          : c.config().bias_dtype == DType::kBF16 ? upload(c.bias_bf16)
                                                                  : upload(c.bias_fp32);
    } else {
      args_.routed.topk_ids = static_cast<const int32_t*>(upload(c.topk_ids));
      args_.routed.topk_weights = !host.routed.topk_weights ? nullptr
                                  : c.topk_weights_fp32.empty() ? upload(c.topk_weights_bf16)
                                                                : upload(c.topk_weights_fp32);
    }
    args_.gemm1_alpha = static_cast<const float*>(upload_optional(c.gemm1_alpha));
    args_.gemm1_beta = static_cast<const float*>(upload_optional(c.gemm1_beta));
    args_.gemm1_clamp_limit = static_cast<const float*>(upload_optional(c.gemm1_clamp_limit));
    if (host.gemm1_bias) {
      const bool fp32 = !c.gemm1_bias_fp32.empty();
      args_.gemm1_bias = fp32 ? upload(c.gemm1_bias_fp32) : upload(c.gemm1_bias_bf16);
      args_.gemm2_bias = fp32 ? upload(c.gemm2_bias_fp32) : upload(c.gemm2_bias_bf16);
    }
    args_.output = host.output ? upload(c.output) : nullptr;  // poisoned host contents
    args_.gemm2_output = host.gemm2_output ? upload(c.gemm2_output) : nullptr;
    args_.expert_weights = !host.expert_weights ? nullptr
                           : c.expert_weights_fp32.empty() ? upload(c.expert_weights_bf16)
                                                           : upload(c.expert_weights_fp32);
    args_.expanded_idx_to_permuted_idx =
        host.expanded_idx_to_permuted_idx
            ? static_cast<int32_t*>(upload(c.expanded_idx_to_permuted_idx))
            : nullptr;
    args_.routing_replay_out =
        host.routing_replay_out ? static_cast<int16_t*>(upload(c.routing_replay_out)) : nullptr;
  }

  const MoeArguments& arguments() const { return args_; }

  // The bf16 outputs set to 0xFF bytes (NaN) again, so that a rerun that leaves a row unwritten
  // cannot pass for the earlier run's.
  void poison_outputs() {
    if (args_.output) {
      check_cuda(cudaMemset(args_.output, 0xFF, case_.output.size() * sizeof(uint16_t)), "poison");
    }
    if (args_.gemm2_output) {
      check_cuda(cudaMemset(args_.gemm2_output, 0xFF, case_.gemm2_output.size() * sizeof(uint16_t)),
                 "poison");
    }
  }

  void download() {
    copy_back(case_.output, args_.output);
    copy_back(case_.gemm2_output, args_.gemm2_output);
    copy_back(case_.expert_weights_bf16, case_.expert_weights_fp32.empty() ? args_.expert_weights
                                                                           : nullptr);
    copy_back(case_.expert_weights_fp32, case_.expert_weights_fp32.empty() ? nullptr
                                                                           : args_.expert_weights);
    copy_back(case_.expanded_idx_to_permuted_idx, args_.expanded_idx_to_permuted_idx);
    copy_back(case_.routing_replay_out, args_.routing_replay_out);
  }

 private:
  template <typename T>
  void* upload(const std::vector<T>& host) {
    buffers_.emplace_back(host.size() * sizeof(T));
    if (!host.empty()) {
      check_cuda(cudaMemcpy(buffers_.back().get(), host.data(), host.size() * sizeof(T),
                            cudaMemcpyHostToDevice),
                 "upload");
    }
    return buffers_.back().get();
  }
  template <typename T>
  void* upload_optional(const std::vector<T>& host) {
    return host.empty() ? nullptr : upload(host);
  }
  template <typename T>
  void copy_back(std::vector<T>& host, const void* device) {
    if (device == nullptr || host.empty()) return;
    check_cuda(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost),
               "download");
  }

  MoeCase& case_;
  MoeArguments args_;
  std::vector<DeviceArray<uint8_t>> buffers_;
};

// The GPU reference's fp32 truth against the fp64 model (tests/common/double_model.h): within
// fp32 accumulation error, 1e-4 of the largest output (a missing bias, parameter or rounding of
// the scaled input is far larger).
void expect_truth_near_fp64(const std::vector<double>& truth, const DoubleModel& model) {
  ASSERT_EQ(truth.size(), model.exact.size());
  double largest = 0.0, worst = 0.0;
  for (size_t i = 0; i < model.exact.size(); ++i) {
    largest = std::max(largest, std::abs(model.exact[i]));
    worst = std::max(worst, std::abs(truth[i] - model.exact[i]));
  }
  ASSERT_GT(largest, 0.0);
  EXPECT_LE(worst, 1e-4 * largest) << "gpu reference truth vs fp64 model";
}

// ------------------------------------------------------------------------------------------------
// The GPU reference against the CPU reference, and the operator against the CPU directly.
// ------------------------------------------------------------------------------------------------
TEST(GpuMoe, GpuReferenceAndOperatorMatchCpuReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  MoeCaseConfig cfg;
  cfg.shape = make_shape(19, 2048, 768, 8, 2);
  cfg.method = RoutingMethod::kRenormalize;
  cfg.seed = 7;
  MoeCase cpu_case(cfg), gpu_case(cfg);
  ASSERT_TRUE(run_reference(cpu_case.arguments()).ok());
  const MoeShape& shape = cfg.shape;
  const auto [routing, perm] = reference_routing(cpu_case);
  DeviceMoeCall call(gpu_case);
  const MoeArguments& device = call.arguments();
  const GpuReferenceResult gpu =
      gpu_reference(shape, static_cast<const uint16_t*>(device.hidden_states),
                    static_cast<const uint16_t*>(device.gemm1_weights),
                    static_cast<const uint16_t*>(device.gemm2_weights), routing, perm, true);

  // Truth from neither GPU nor CPU reference: the fp64 model. The cuBLAS reference's fp32 chain
  // is within fp32 error of it, and both designs (the GPU reference's and run_reference's) and
  // the operator are judged by the rule around it, with run_reference's error setting the bound.
  const DoubleModel model = moe_double(cpu_case, routing.ids, routing.weights);
  expect_truth_near_fp64(gpu.out_truth, model);
  expect_close(gpu.out_design, model.exact, cpu_case.output, "gpu reference vs cpu reference");

  // The expert rows (before the weighted sum), around the GPU reference's rows, whose truth the
  // output's check above anchors.
  const std::vector<uint16_t> act = ref::activation_reference(
      cpu_case.hidden_states.data(), cpu_case.gemm1_weights.data(), shape.hidden_size,
      shape.intermediate_size, shape.top_k, perm);
  const std::vector<uint16_t> y =
      ref::gemm2_reference(act, cpu_case.gemm2_weights.data(), shape.hidden_size,
                          shape.intermediate_size, perm);
  expect_close(gpu.y_design, gpu.y_truth, y, "gpu reference rows vs cpu reference rows");

  ASSERT_TRUE(run_on_device(device).ok());
  call.download();
  expect_close(gpu_case.output, model.exact, cpu_case.output, "operator vs cpu reference");
}

// The GPU reference with the expert MLP's options (the soak's truth on shapes the CPU cannot
// reach): its design result against run_reference() (both rounded the same way, up to the GEMMs'
// summation order), its truth against the fp64 model of tests/common/double_model.h (no
// intermediate rounding: within fp32 accumulation error), and the operator against it by the
// rule, as the soak compares. Every activation, parameters where read, bf16 and fp32 expert
// biases, routing weights on the input (logits and routed, K = 1), a shard, both output modes.
TEST(GpuMoe, GpuReferenceWithExpertMlpOptionsMatchesCpuReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  struct MlpCase {
    Activation activation;
    bool params;
    int biases;  // 0 none, 1 bf16, 2 fp32
    bool scales_on_input;
    RoutingInput input;
    bool finalize;
  };
  const MlpCase cases[] = {
      {Activation::kSwiglu, true, 1, false, RoutingInput::kLogits, true},
      {Activation::kSwiglu, false, 2, false, RoutingInput::kLogits, false},
      {Activation::kSwigluStep, true, 0, false, RoutingInput::kPacked, true},
      {Activation::kSwigluStep, false, 2, false, RoutingInput::kLogits, true},
      {Activation::kGeglu, false, 1, false, RoutingInput::kLogits, false},
      {Activation::kGegluTanh, false, 0, false, RoutingInput::kUnpacked, true},
      {Activation::kGelu, false, 2, false, RoutingInput::kLogits, true},
      {Activation::kRelu, false, 1, false, RoutingInput::kLogits, true},
      {Activation::kSilu, false, 0, false, RoutingInput::kLogits, false},
      {Activation::kRelu2, false, 2, false, RoutingInput::kUnpacked, true},
      {Activation::kSwiglu, true, 1, true, RoutingInput::kLogits, true},
      {Activation::kSwiglu, false, 0, true, RoutingInput::kUnpacked, false},
      {Activation::kSilu, false, 2, true, RoutingInput::kUnpacked, true},
      {Activation::kGegluTanh, false, 1, true, RoutingInput::kLogits, false},
  };
  uint64_t seed = 700;
  for (const MlpCase& m : cases) {
    MoeCaseConfig cfg;
    cfg.shape = make_shape(37, 256, 136, 8, m.scales_on_input ? 1 : 2);
    if (seed % 2) {  // every other case on a shard: experts 2..6 local
      cfg.shape.local_expert_offset = 2;
      cfg.shape.local_num_experts = 5;
    }
    cfg.routing_input = m.input;
    cfg.method = m.scales_on_input ? RoutingMethod::kLlama4 : RoutingMethod::kRenormalize;
    if (m.input == RoutingInput::kUnpacked) cfg.routed_weights_dtype = DType::kFP32;
    cfg.activation = m.activation;
    cfg.with_activation_params = m.params;
    cfg.with_expert_biases = m.biases != 0;
    cfg.expert_bias_dtype = m.biases == 2 ? DType::kFP32 : DType::kBF16;
    cfg.routing_scales_on_input = m.scales_on_input;
    cfg.do_finalize = m.finalize;
    cfg.seed = ++seed;
    const std::string name =
        std::string(activation_name(m.activation)) + (m.params ? " params" : "") +
        (m.biases ? (m.biases == 1 ? " bias bf16" : " bias fp32") : "") +
        (m.scales_on_input ? " scales on input" : "") + (m.finalize ? "" : " unfinalized");
    SCOPED_TRACE(name);

    MoeCase cpu_case(cfg), gpu_case(cfg);
    ASSERT_TRUE(run_reference(cpu_case.arguments()).ok());
    const MoeShape& shape = cfg.shape;
    const auto [routing, perm] = reference_routing(cpu_case);
    ASSERT_GT(perm.num_local(), 0);
    DeviceMoeCall call(gpu_case);
    const MoeArguments& device = call.arguments();
    const GpuReferenceResult gpu =
        gpu_reference(shape, static_cast<const uint16_t*>(device.hidden_states),
                      static_cast<const uint16_t*>(device.gemm1_weights),
                      static_cast<const uint16_t*>(device.gemm2_weights), routing, perm,
                      !m.finalize, nullptr, gpu_reference_mlp(device));

    // Truth: the fp64 model's output within fp32 error (a missing bias, parameter or rounding
    // of the scaled input is far larger).
    const DoubleModel model = moe_double(cpu_case, routing.ids, routing.weights);
    expect_truth_near_fp64(gpu.out_truth, model);

    // Design: run_reference's output or rows, by the rule around the truth.
    if (m.finalize) {
      expect_close(gpu.out_design, gpu.out_truth, cpu_case.output, "gpu reference vs cpu");
    } else {
      const std::vector<uint16_t> cpu_rows(
          cpu_case.gemm2_output.begin(),
          cpu_case.gemm2_output.begin() + perm.num_local() * shape.hidden_size);
      expect_close(gpu.y_design, gpu.y_truth, cpu_rows, "gpu reference rows vs cpu rows");
    }

    // The operator against this reference, as the soak compares.
    ASSERT_TRUE(run_on_device(device).ok());
    call.download();
    if (m.finalize) {
      expect_close(gpu_case.output, gpu.out_truth, gpu.out_design, "operator vs gpu reference");
    } else {
      EXPECT_EQ(first_difference(gpu_case.expanded_idx_to_permuted_idx,
                                 perm.expanded_idx_to_permuted_idx),
                -1);
      const std::vector<uint16_t> rows(
          gpu_case.gemm2_output.begin(),
          gpu_case.gemm2_output.begin() + perm.num_local() * shape.hidden_size);
      expect_close(rows, gpu.y_truth, gpu.y_design, "operator rows vs gpu reference rows");
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Routing alone, every method and logits dtype, with NaN, +-inf and exact ties mixed in: ids and
// permutation bitwise, weights to the last ulp (tiny H and I: the GEMMs are not the subject).
// ------------------------------------------------------------------------------------------------
struct RoutingShape {
  int32_t num_experts, top_k;
};

// Both routing kernels: a warp per token (T = 989) and a block per token (T = 37, at most
// heuristics::kBlockRouteMaxTokens), bitwise against the reference's ids and permutation.
TEST(GpuMoe, RoutingEveryMethodAndDtypeWithSpecialValues) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  static_assert(37 <= heuristics::kBlockRouteMaxTokens && 989 > heuristics::kBlockRouteMaxTokens,
                "one token count per routing kernel");
  const RoutingShape shapes[] = {{8, 2}, {128, 8}, {256, 8}, {1024, 32}, {128, 10}, {1024, 4}};
  int variant = 0;
  for (int64_t num_tokens : {989, 37}) {
    for (int m = 0; m < kNumRoutingMethods; ++m) {
      for (DType logits_dtype : {DType::kFP32, DType::kBF16}) {
        const RoutingMethod method = static_cast<RoutingMethod>(m);
        RoutingShape rs = shapes[variant % 6];
        CaseSpec spec{"routing", num_tokens, 128, 64, rs.num_experts, rs.top_k};
        spec.method = method;
        spec.logits_dtype = logits_dtype;
        spec.do_finalize = false;
        spec.weights_dtype = variant % 3 == 2 ? DType::kFP32 : DType::kBF16;
        if (method == RoutingMethod::kLlama4) spec.top_k = 1;
        if (method == RoutingMethod::kDeepSeekV3 || method == RoutingMethod::kMiniMax2) {
          spec.with_bias = true;
          spec.bias_dtype = variant % 2 ? DType::kBF16 : DType::kFP32;
          spec.routed_scaling_factor = 2.5f;
        }
        if (method == RoutingMethod::kDeepSeekV3 && logits_dtype == DType::kFP32) {
          spec.num_experts = 256;
          spec.top_k = 8;
          spec.n_group = 8;
          spec.topk_group = 4;
        }
        // Expert-parallel shard: half the experts, starting a quarter in.
        spec.local_num_experts = spec.num_experts / 2;
        spec.local_expert_offset = spec.num_experts / 4;
        spec.name = std::string(routing_method_name(method)) + "/" + dtype_name(logits_dtype) +
                    "/T" + std::to_string(num_tokens);
        SCOPED_TRACE(spec.name);
        ++variant;

        GpuCase c(spec, 500 + variant);
        std::vector<float> logits = c.logits();
        Rng rng(600 + variant);
        const int32_t E = spec.num_experts;
        for (int64_t t = 0; t < spec.num_tokens; ++t) {
          float* row = logits.data() + t * E;
          if (t % 7 == 0) {
            for (int i = 0; i < 3; ++i) row[rng.integer(0, E - 1)] = std::nanf("");
          }
          if (t % 11 == 0) {
            row[rng.integer(0, E - 1)] = INFINITY;
            row[rng.integer(0, E - 1)] = -INFINITY;
          }
          if (t % 5 == 0) {
            for (int i = 0; i < 4; ++i) row[rng.integer(0, E - 1)] = row[rng.integer(0, E - 1)];
          }
          if (t % 13 == 0) row[rng.integer(0, E - 1)] = -0.0f;
        }
        c.set_logits(logits);
        const ref::Routing routing = c.reference_routing();
        const ref::Permutation perm =
            ref::permute_reference(routing.ids, spec.local_expert_offset, spec.local_num_experts);

        c.poison_outputs();
        const Status status = run_on_device(c.arguments(), /*enable_pdl=*/variant % 2 == 0);
        ASSERT_TRUE(status.ok()) << status.message;
        const std::vector<int16_t> replay = c.replay().download();
        for (size_t i = 0; i < routing.ids.size(); ++i) {
          ASSERT_GE(routing.ids[i], 0);
          ASSERT_EQ(replay[i], static_cast<int16_t>(routing.ids[i])) << "routing id of slot " << i;
        }
        EXPECT_EQ(first_difference(c.permuted_idx().download(), perm.expanded_idx_to_permuted_idx),
                  -1);
        expect_weights(c, routing);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The checks can fail: a wrong weight or a wrong expert on one token breaks the rule.
// ------------------------------------------------------------------------------------------------
TEST(GpuMoe, ToleranceRuleCatchesOneWrongSlot) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"negative_control", 128, 2048, 768, 128, 8};
  GpuCase c(spec, 71);
  const ref::Routing routing = c.reference_routing();
  const ref::Permutation perm = ref::permute_reference(routing.ids, 0, spec.num_experts);
  c.poison_outputs();
  ASSERT_TRUE(run_on_device(c.arguments()).ok());
  const std::vector<double> ours = bf16_to_double(c.output().download());

  const GpuReferenceResult right =
      gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), routing, perm, false);
  EXPECT_TRUE(close_by_bf16_rule(ours, right.out_truth, bf16_to_double(right.out_design)));

  ref::Routing wrong_weight = routing;
  wrong_weight.weights[5 * spec.top_k + 3] *= 1.25f;  // token 5, slot 3
  const GpuReferenceResult a =
      gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), wrong_weight, perm, false);
  EXPECT_FALSE(close_by_bf16_rule(ours, a.out_truth, bf16_to_double(a.out_design)));

  ref::Routing wrong_expert = routing;
  wrong_expert.ids[9 * spec.top_k] = (wrong_expert.ids[9 * spec.top_k] + 1) % spec.num_experts;
  const ref::Permutation wrong_perm = ref::permute_reference(wrong_expert.ids, 0, spec.num_experts);
  const GpuReferenceResult b =
      gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), wrong_expert, wrong_perm, false);
  EXPECT_FALSE(close_by_bf16_rule(ours, b.out_truth, bf16_to_double(b.out_design)));
}

// ------------------------------------------------------------------------------------------------
// The public CPU entry point run_reference() against run(), do_finalize=false triple included.
// ------------------------------------------------------------------------------------------------
TEST(GpuMoe, TripleMatchesRunReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"run_reference", 128, 2048, 768, 128, 8, 64, 32};
  spec.method = RoutingMethod::kDeepSeekV3;
  spec.with_bias = true;
  spec.n_group = 4;
  spec.topk_group = 2;
  spec.routed_scaling_factor = 2.5f;
  spec.do_finalize = false;
  GpuCase c(spec, 81);
  const MoeShape& shape = c.shape();
  const int64_t T = shape.num_tokens, H = shape.hidden_size, K = shape.top_k;

  // Host copies of everything run_reference reads; host outputs poisoned.
  const std::vector<uint16_t> x = download(c.x(), T * H);
  const std::vector<uint16_t> w1 =
      download(c.w1(), int64_t{shape.local_num_experts} * 2 * shape.intermediate_size * H);
  const std::vector<uint16_t> w2 =
      download(c.w2(), int64_t{shape.local_num_experts} * H * shape.intermediate_size);
  std::vector<uint16_t> ref_rows(T * K * H);
  std::vector<uint16_t> ref_weights(T * K);
  std::vector<int32_t> ref_map(T * K);
  std::vector<int16_t> ref_replay(T * K);
  poison(ref_rows);
  poison(ref_weights);
  poison(ref_map);
  poison(ref_replay);
  MoeArguments host = c.arguments(/*host=*/true);
  host.hidden_states = x.data();
  host.gemm1_weights = w1.data();
  host.gemm2_weights = w2.data();
  host.gemm2_output = ref_rows.data();
  host.expert_weights = ref_weights.data();
  host.expanded_idx_to_permuted_idx = ref_map.data();
  host.routing_replay_out = ref_replay.data();
  const Status ref_status = run_reference(host);
  ASSERT_TRUE(ref_status.ok()) << ref_status.message;

  c.poison_outputs();
  const Status status = run_on_device(c.arguments());
  ASSERT_TRUE(status.ok()) << status.message;

  EXPECT_EQ(first_difference(c.replay().download(), ref_replay), -1) << "routing_replay_out";
  EXPECT_EQ(first_difference(c.permuted_idx().download(), ref_map), -1)
      << "expanded_idx_to_permuted_idx";
  const std::vector<uint32_t> raw_weights = c.expert_weights().download();
  std::vector<uint16_t> ours_weights(T * K);
  std::memcpy(ours_weights.data(), raw_weights.data(), T * K * sizeof(uint16_t));
  int64_t weight_ulps = 0;
  for (int64_t i = 0; i < T * K; ++i) {
    weight_ulps = std::max(weight_ulps, ulp_distance_bits(ordered_bf16(ours_weights[i]),
                                                          ordered_bf16(ref_weights[i])));
  }
  EXPECT_LE(weight_ulps, 1) << "expert_weights";

  const ref::Routing routing = c.reference_routing();
  const ref::Permutation perm =
      ref::permute_reference(routing.ids, shape.local_expert_offset, shape.local_num_experts);
  const GpuReferenceResult gpu = gpu_reference(shape, c.x(), c.w1(), c.w2(), routing, perm, true);
  std::vector<uint16_t> rows = c.gemm2_output().download();
  rows.resize(perm.num_local() * H);
  ref_rows.resize(perm.num_local() * H);
  expect_close(rows, gpu.y_truth, ref_rows, "gemm2_output vs run_reference");
}

// ------------------------------------------------------------------------------------------------
// Routing corner cases: empty experts, one hot expert, hostile ids.
// ------------------------------------------------------------------------------------------------
TEST(GpuMoe, EmptyExpertAndAllTokensOnOneExpert) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"skewed", 989, 2048, 768, 8, 4};
  spec.input = RoutingInput::kUnpacked;
  spec.do_finalize = false;
  GpuCase c(spec, 11);
  // Slot 0 of every token goes to expert 2; experts 5 and 7 never get a token.
  Rng rng(12);
  std::vector<int32_t> ids;
  const std::vector<int32_t> others = {0, 1, 3, 4, 6};
  for (int64_t t = 0; t < spec.num_tokens; ++t) {
    std::vector<int32_t> pool = others;
    std::shuffle(pool.begin(), pool.end(), rng.engine());
    ids.push_back(2);
    for (int k = 1; k < spec.top_k; ++k) ids.push_back(pool[k - 1]);
  }
  c.set_routed(ids, random_fp32(rng, ids.size(), 0.05f, 1.0f));
  const ref::Routing routing = c.reference_routing();
  const ref::Permutation perm = ref::permute_reference(routing.ids, 0, spec.num_experts);
  ASSERT_EQ(perm.expert_offsets[6] - perm.expert_offsets[5], 0);
  c.poison_outputs();
  const Status status = run_on_device(c.arguments());
  ASSERT_TRUE(status.ok()) << status.message;
  EXPECT_EQ(first_difference(c.permuted_idx().download(), perm.expanded_idx_to_permuted_idx), -1);
  const GpuReferenceResult expected =
      gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), routing, perm, true);
  std::vector<uint16_t> rows = c.gemm2_output().download();
  rows.resize(perm.num_local() * c.shape().hidden_size);
  expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");

  // K = 1: every token on a single expert.
  CaseSpec one{"one_expert", 989, 2880, 2880, 128, 1};
  one.input = RoutingInput::kPacked;
  GpuCase d(one, 13);
  d.set_routed(std::vector<int32_t>(one.num_tokens, 77),
               random_fp32(rng, one.num_tokens, 0.05f, 1.0f));
  const ref::Routing routing_d = d.reference_routing();
  const ref::Permutation perm_d = ref::permute_reference(routing_d.ids, 0, one.num_experts);
  d.poison_outputs();
  ASSERT_TRUE(run_on_device(d.arguments()).ok());
  const GpuReferenceResult expected_d =
      gpu_reference(d.shape(), d.x(), d.w1(), d.w2(), routing_d, perm_d, false);
  expect_close(d.output().download(), expected_d.out_truth, expected_d.out_design, "one expert");
}

TEST(GpuMoe, HostileIdsAreNonLocalAndReported) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"hostile", 128, 2048, 768, 64, 4, 16, 16};
  spec.input = RoutingInput::kPacked;
  GpuCase c(spec, 21);
  Rng rng(22);
  std::vector<int32_t> ids = random_distinct_ids(rng, spec.num_tokens, spec.top_k, 64);
  const int32_t hostile[] = {-1, 64, 32767, -32768, 1000};
  for (int i = 0; i < 5; ++i) ids[37 + 50 * i] = hostile[i];     // first bad slot: 37
  c.set_routed(ids, random_fp32(rng, ids.size(), -1.0f, 1.0f));  // negative weights too
  const ref::Routing routing = c.reference_routing();
  for (int i = 0; i < 5; ++i) ASSERT_EQ(routing.ids[37 + 50 * i], hostile[i]) << "packing";
  const ref::Permutation perm = ref::permute_reference(routing.ids, 16, 16);
  c.poison_outputs();
  ASSERT_TRUE(run_on_device(c.arguments()).ok());
  const GpuReferenceResult expected =
      gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), routing, perm, false);
  expect_close(c.output().download(), expected.out_truth, expected.out_design, "hostile ids");

  // validate_routing (device) agrees with the host helper.
  MoeArguments args = c.arguments();
  RoutingCheck device_check, host_check;
  ASSERT_TRUE(validate_routing(args.routed.topk_ids, spec.num_tokens, spec.top_k, 64, true,
                               &device_check, nullptr)
                  .ok());
  std::vector<int32_t> packed(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) packed[i] = pack_topk(ids[i], 0x3F80);
  ASSERT_TRUE(
      validate_routing_host(packed.data(), spec.num_tokens, spec.top_k, 64, true, &host_check)
          .ok());
  EXPECT_EQ(device_check.first_bad_slot, 37);
  EXPECT_EQ(device_check.bad_id, -1);
  EXPECT_EQ(device_check.first_bad_slot, host_check.first_bad_slot);

  // Plain ids: a valid tensor reports none.
  DeviceArray<int32_t> plain(random_distinct_ids(rng, 19, 8, 256));
  RoutingCheck clean;
  ASSERT_TRUE(validate_routing(plain.get(), 19, 8, 256, false, &clean, nullptr).ok());
  EXPECT_EQ(clean.first_bad_slot, -1);
}

// ------------------------------------------------------------------------------------------------
// Step 2 at decode sizes: at T * K <= 4096 one CTA sorts the slots (kernels/
// sm90_expert_sort_small.cuh); above, the three-kernel counting sort. Both must give the CPU
// reference's permutation bitwise (and the rows, weights and ids that follow from it).
// ------------------------------------------------------------------------------------------------
constexpr int64_t kSmallSortMaxSlots = 4096;  // decode_heuristics.h: kSmallSortMaxSlots

// A do_finalize=false run on the given routed ids (or the case's random ones when ids is empty):
// permutation and replay ids bitwise, weights passed through, rows by the tolerance rule.
void check_routed_triple(CaseSpec spec, const std::vector<int32_t>& ids, uint64_t seed) {
  SCOPED_TRACE(spec.name);
  spec.do_finalize = false;
  GpuCase c(spec, seed);
  if (!ids.empty()) {
    Rng rng(seed + 1);
    c.set_routed(ids, random_fp32(rng, ids.size(), 0.05f, 1.0f));
  }
  const MoeShape& shape = c.shape();
  const ref::Routing routing = c.reference_routing();
  const ref::Permutation perm =
      ref::permute_reference(routing.ids, shape.local_expert_offset, shape.local_num_experts);
  c.poison_outputs();
  const Status status = run_on_device(c.arguments(), /*enable_pdl=*/true);
  ASSERT_TRUE(status.ok()) << status.message;
  EXPECT_EQ(first_difference(c.permuted_idx().download(), perm.expanded_idx_to_permuted_idx), -1)
      << "expanded_idx_to_permuted_idx";
  if (spec.with_replay) {
    const std::vector<int16_t> replay = c.replay().download();
    for (int64_t i = 0; i < shape.num_tokens * shape.top_k; ++i) {
      ASSERT_EQ(replay[i], static_cast<int16_t>(routing.ids[i])) << "routing id of slot " << i;
    }
  }
  expect_weights(c, routing);
  if (perm.num_local() == 0) return;
  const GpuReferenceResult expected =
      gpu_reference(shape, c.x(), c.w1(), c.w2(), routing, perm, true);
  std::vector<uint16_t> rows = c.gemm2_output().download();
  rows.resize(perm.num_local() * shape.hidden_size);
  expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");
}

TEST(GpuMoe, SmallSortAtAndAboveItsThreshold) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  // T * K = 4096: the one-CTA sort; 4097: the three kernels.
  CaseSpec at{"small_sort_at_threshold", 512, 2048, 768, 128, 8};
  at.input = RoutingInput::kPacked;
  ASSERT_EQ(at.num_tokens * at.top_k, kSmallSortMaxSlots);
  check_routed_triple(at, {}, 301);
  CaseSpec above{"small_sort_above_threshold", 241, 2048, 768, 128, 17};
  above.input = RoutingInput::kUnpacked;
  ASSERT_EQ(above.num_tokens * above.top_k, kSmallSortMaxSlots + 1);
  check_routed_triple(above, {}, 302);

  // Logits at the threshold and just above it.
  for (int64_t t : {int64_t{512}, int64_t{513}}) {
    CaseSpec logits{"small_sort_logits_T" + std::to_string(t), t, 2048, 768, 128, 8};
    logits.method = RoutingMethod::kRenormalize;
    logits.do_finalize = false;
    check_case(logits, 303 + t);
  }
  // E = E_loc = 1024, K = 32: the sort's 8 segments of 1024 counts, fewer slots than segments x 32.
  for (int64_t t : {int64_t{5}, int64_t{6}}) {
    CaseSpec wide{"small_sort_E1024_K32_T" + std::to_string(t), t, 2048, 768, 1024, 32};
    wide.method = RoutingMethod::kRenormalizeNaive;
    wide.do_finalize = false;
    check_case(wide, 310 + t);
  }
  // DeepSeekV3 groups on a shard at decode sizes.
  for (int64_t t : {int64_t{1}, int64_t{20}, int64_t{21}}) {
    CaseSpec ds{"small_sort_dsv3_T" + std::to_string(t), t, 7168, 2048, 256, 8, 32, 64};
    ds.method = RoutingMethod::kDeepSeekV3;
    ds.with_bias = true;
    ds.n_group = 8;
    ds.topk_group = 4;
    ds.routed_scaling_factor = 2.5f;
    ds.do_finalize = false;
    check_case(ds, 320 + t);
  }
}

TEST(GpuMoe, SmallSortExtremes) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  // E_loc = 1024, every slot local, T * K = 4096 (8 segments of 512 slots).
  CaseSpec wide{"small_sort_E1024", 1024, 256, 128, 1024, 4};
  wide.input = RoutingInput::kPacked;
  check_routed_triple(wide, {}, 331);

  // All 4096 slots on one expert (K = 1), and on one expert of a 1024-expert shard.
  CaseSpec one{"small_sort_one_expert", 4096, 256, 128, 128, 1};
  one.input = RoutingInput::kPacked;
  check_routed_triple(one, std::vector<int32_t>(4096, 77), 332);
  CaseSpec one_wide{"small_sort_one_of_1024", 1023, 256, 128, 1024, 4};
  one_wide.input = RoutingInput::kUnpacked;
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < one_wide.num_tokens; ++t) {
    for (int k = 0; k < one_wide.top_k; ++k) ids.push_back(k == 2 ? 1023 : (t * 7 + k) % 1000);
  }
  check_routed_triple(one_wide, ids, 333);

  // No slot local (expert parallelism, every id in other shards), T = 1 and T * K = 4096.
  for (int64_t t : {int64_t{1}, int64_t{512}}) {
    CaseSpec none{"small_sort_nothing_local_T" + std::to_string(t), t, 2048, 768, 256, 8, 32, 0};
    none.input = RoutingInput::kPacked;
    Rng rng(340 + t);
    std::vector<int32_t> far = random_distinct_ids(rng, t, 8, 224);
    for (int32_t& id : far) id += 32;
    check_routed_triple(none, far, 340 + t);
    // With finalize: every output row is a sum over no slot, +0.
    none.do_finalize = true;
    GpuCase c(none, 350 + t);
    c.set_routed(far, random_fp32(rng, far.size(), 0.05f, 1.0f));
    c.poison_outputs();
    ASSERT_TRUE(run_on_device(c.arguments(), /*enable_pdl=*/true).ok());
    for (uint16_t v : c.output().download()) ASSERT_EQ(v, 0) << none.name;
  }

  // Logits whose ids all fall outside the shard, at T = 1.
  CaseSpec far_logits{"small_sort_logits_nothing_local", 1, 2048, 768, 128, 8, 16, 112};
  far_logits.method = RoutingMethod::kRenormalize;
  far_logits.do_finalize = false;
  GpuCase c(far_logits, 360);
  std::vector<float> logits(128, -3.0f);
  for (int e = 0; e < 8; ++e) logits[e] = 1.0f + 0.25f * e;  // experts 0..7, not local
  c.set_logits(logits);
  const ref::Routing routing = c.reference_routing();
  c.poison_outputs();
  ASSERT_TRUE(run_on_device(c.arguments(), /*enable_pdl=*/true).ok());
  const std::vector<int32_t> map = c.permuted_idx().download();
  for (int k = 0; k < 8; ++k) EXPECT_EQ(map[k], -1) << "slot " << k;
  expect_weights(c, routing);
}

// ------------------------------------------------------------------------------------------------
// Execution contract: T = 0, workspace checks, determinism, graph capture and replay.
// ------------------------------------------------------------------------------------------------
TEST(GpuMoe, ZeroTokensWritesNothing) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"t0", 0, 2048, 768, 128, 8};
  GpuCase c(spec, 31);
  DeviceArray<uint16_t> sentinel(16);
  sentinel.fill_bytes(0xFF);
  MoeArguments args = c.arguments();
  args.output = sentinel.get();
  size_t bytes = 1;
  ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
  EXPECT_TRUE(run(args, nullptr, bytes, nullptr).ok());
  check_cuda(cudaDeviceSynchronize(), "sync");
  for (uint16_t v : sentinel.download()) EXPECT_EQ(v, 0xFFFF);
}

TEST(GpuMoe, WorkspaceSizeIsMonotoneAndChecked) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  MoeShape shape = make_shape(0, 7168, 2048, 256, 8);
  size_t previous = 0;
  for (int64_t t : {0, 1, 7, 19, 127, 128, 129, 989, 1024, 4096, 4097, 16384}) {
    shape.num_tokens = t;
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size(shape, &bytes).ok());
    EXPECT_GE(bytes, previous) << "T = " << t;
    previous = bytes;
  }
  shape.hidden_size = 7;
  size_t bytes = 0;
  EXPECT_EQ(workspace_size(shape, &bytes).code, StatusCode::kInvalidArgument);

  // Too small a workspace: rejected, nothing written.
  CaseSpec spec{"small_ws", 19, 2048, 768, 8, 2};
  GpuCase c(spec, 32);
  c.poison_outputs();
  MoeArguments args = c.arguments();
  ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
  DeviceArray<uint8_t> workspace(bytes);
  EXPECT_EQ(run(args, workspace.get(), bytes - 1, nullptr).code, StatusCode::kWorkspaceTooSmall);
  check_cuda(cudaDeviceSynchronize(), "sync");
  for (uint16_t v : c.output().download()) ASSERT_EQ(v, 0xFFFF);
  // A workspace sized for a larger T serves this T.
  args.shape.num_tokens = 4096;
  size_t big = 0;
  ASSERT_TRUE(workspace_size(args.shape, &big).ok());
  args.shape.num_tokens = spec.num_tokens;
  DeviceArray<uint8_t> big_workspace(big);
  EXPECT_TRUE(run(args, big_workspace.get(), big, nullptr).ok());
  check_cuda(cudaDeviceSynchronize(), "sync");
  for (uint16_t v : c.output().download()) ASSERT_FALSE(is_poison_bf16(v) || v == 0xFFFF);
}

// An output pointer off the 16-byte grid takes finalize's scalar path; same bits as the vector one.
TEST(GpuMoe, UnalignedOutputMatchesAligned) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  CaseSpec spec{"unaligned", 19, 2880, 2880, 128, 4};
  spec.method = RoutingMethod::kSigmoidRenorm;
  GpuCase c(spec, 45);
  c.poison_outputs();
  ASSERT_TRUE(run_on_device(c.arguments()).ok());
  const std::vector<uint16_t> aligned = c.output().download();

  DeviceArray<uint16_t> shifted(aligned.size() + 1);
  shifted.fill_bytes(0xFF);
  MoeArguments args = c.arguments();
  args.output = shifted.get() + 1;  // 2-byte aligned only
  ASSERT_TRUE(run_on_device(args).ok());
  std::vector<uint16_t> unaligned = shifted.download();
  EXPECT_EQ(unaligned[0], 0xFFFF) << "wrote before the output";
  unaligned.erase(unaligned.begin());
  EXPECT_EQ(first_difference(unaligned, aligned), -1);
}

TEST(GpuMoe, RerunsAreBitwiseIdenticalWithAndWithoutPdl) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  for (bool finalize : {true, false}) {
    CaseSpec spec{"rerun", 989, 2048, 768, 256, 8};
    spec.method = RoutingMethod::kDeepSeekV3;
    spec.with_bias = true;
    spec.n_group = 8;
    spec.topk_group = 4;
    spec.do_finalize = finalize;
    GpuCase c(spec, 41);
    std::vector<uint64_t> sums;
    for (int rep = 0; rep < 3; ++rep) {
      c.poison_outputs();
      ASSERT_TRUE(run_on_device(c.arguments(), /*enable_pdl=*/rep == 1).ok());
      const uint64_t sum = finalize ? checksum(c.output().download())
                                    : checksum(c.gemm2_output().download()) ^
                                          checksum(c.permuted_idx().download()) ^
                                          checksum(c.expert_weights().download());
      sums.push_back(sum ^ checksum(c.replay().download()));
    }
    EXPECT_EQ(sums[0], sums[1]) << "finalize " << finalize;
    EXPECT_EQ(sums[0], sums[2]) << "finalize " << finalize;
  }
}

// run(args) captured into a graph on a non-blocking stream of its own and instantiated (when the
// captured call succeeded); the graph and the stream go with the object.
class CapturedRun {
 public:
  CapturedRun(const MoeArguments& args, void* workspace, size_t bytes) {
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    check_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capture");
    status_ = run(args, workspace, bytes, stream_);
    check_cuda(cudaStreamEndCapture(stream_, &graph_), "end capture");
    if (status_.ok()) check_cuda(cudaGraphInstantiate(&exec_, graph_, 0), "instantiate");
  }
  ~CapturedRun() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    cudaStreamDestroy(stream_);
  }
  CapturedRun(const CapturedRun&) = delete;
  CapturedRun& operator=(const CapturedRun&) = delete;
  const Status& status() const { return status_; }
  // One replay, waited for.
  void replay() {
    check_cuda(cudaGraphLaunch(exec_, stream_), "graph launch");
    check_cuda(cudaStreamSynchronize(stream_), "graph sync");
  }

 private:
  cudaStream_t stream_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  Status status_;
};

TEST(GpuMoe, GraphCaptureReplaysWithNewInputs) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  for (bool pdl : {false, true}) {
    CaseSpec spec{"graph", 128, 2048, 768, 128, 8};
    spec.method = RoutingMethod::kDefault;
    GpuCase c(spec, 51);
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size(c.shape(), &bytes).ok());
    DeviceArray<uint8_t> workspace(bytes);
    MoeArguments args = c.arguments();
    args.enable_pdl = pdl;

    CapturedRun captured(args, workspace.get(), bytes);
    ASSERT_TRUE(captured.status().ok()) << captured.status().message;

    for (uint64_t round = 0; round < 3; ++round) {
      c.new_inputs(60 + round);  // same buffers, new contents
      c.poison_outputs();
      check_cuda(cudaDeviceSynchronize(), "inputs ready");  // they went in on the legacy stream
      captured.replay();
      const ref::Routing routing = c.reference_routing();
      const ref::Permutation perm = ref::permute_reference(routing.ids, 0, spec.num_experts);
      const std::vector<int16_t> replay = c.replay().download();
      for (int64_t i = 0; i < spec.num_tokens * spec.top_k; ++i) {
        ASSERT_EQ(replay[i], routing.ids[i]) << "round " << round << " slot " << i;
      }
      const GpuReferenceResult expected =
          gpu_reference(c.shape(), c.x(), c.w1(), c.w2(), routing, perm, false);
      expect_close(c.output().download(), expected.out_truth, expected.out_design, "graph");
    }
  }
}

// The decode GEMMs' CTAs without an expert leave at once and only CTA (0, 0) waits for the
// kernel before (kernels/sm90_decode_mainloop.cuh, decode_empty_cta_leaves_now); the finalize after
// them reads the sort's map once it has waited for GEMM2. One graph with PDL, replayed with
// routed ids that put nothing, one slot and every slot on the shard in turn, its outputs
// poisoned before each replay: a finalize that ran ahead of the sort would read the previous
// replay's map and add stale rows where the output must be zero. The early-start grids are
// 128 x 16 (GEMM1) and 64 x 16 (GEMM2) CTAs of 4 warps, several waves each.
TEST(GpuMoe, ShardGraphReplaysWithNothingOneAndAllLocal) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  constexpr int32_t kOffset = 32, kLocal = 16;
  for (bool finalize : {true, false}) {
    SCOPED_TRACE(finalize ? "finalized" : "unfinalized");
    CaseSpec spec{"shard replays", 2, 2048, 2048, 128, 8, kLocal, kOffset};
    spec.input = RoutingInput::kPacked;
    spec.do_finalize = finalize;
    GpuCase c(spec, 71);
    const MoeShape& shape = c.shape();
    const int64_t T = shape.num_tokens, K = shape.top_k, H = shape.hidden_size;
    const int64_t I = shape.intermediate_size;
    ASSERT_TRUE(heuristics::use_decode_gemm1(T, K, 128, kLocal, I, num_sms()));
    ASSERT_TRUE(heuristics::use_decode_gemm2(T, K, 128, kLocal, H, num_sms()));
    ASSERT_TRUE(heuristics::use_decode_early_start(T * K, K));
    ASSERT_TRUE(heuristics::use_decode_gemm2_early_lookup(T * K, K, (H / 32) * kLocal));
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size(shape, &bytes).ok());
    DeviceArray<uint8_t> workspace(bytes);
    MoeArguments args = c.arguments();
    args.enable_pdl = true;

    CapturedRun captured(args, workspace.get(), bytes);
    ASSERT_TRUE(captured.status().ok()) << captured.status().message;

    Rng rng(72);
    for (int round = 0; round < 6; ++round) {
      // Slots [0, local) on the shard (ids kOffset + slot), the rest on ids 64 + slot, outside
      // it; every id distinct, so distinct within each token.
      const int64_t local = std::vector<int64_t>{0, 1, T * K}[round % 3];
      SCOPED_TRACE("round " + std::to_string(round) + ", local slots " + std::to_string(local));
      std::vector<int32_t> ids(T * K);
      for (int64_t i = 0; i < T * K; ++i) {
        ids[i] = static_cast<int32_t>(i < local ? kOffset + i : 64 + i);
      }
      c.set_routed(ids, random_fp32(rng, T * K, 0.05f, 1.0f));
      c.poison_outputs();
      check_cuda(cudaDeviceSynchronize(), "inputs ready");  // they went in on the legacy stream
      captured.replay();

      const ref::Routing routing = c.reference_routing();
      const ref::Permutation perm = ref::permute_reference(routing.ids, kOffset, kLocal);
      ASSERT_EQ(perm.num_local(), local);
      const GpuReferenceResult expected =
          gpu_reference(shape, c.x(), c.w1(), c.w2(), routing, perm, !finalize);
      if (finalize) {
        const std::vector<uint16_t> out = c.output().download();
        // Token t has a local slot iff t * K < local: its row by the rule, else zeros exactly.
        for (int64_t t = 0; t < T; ++t) {
          if (t * K < local) continue;
          for (int64_t h = 0; h < H; ++h) {
            ASSERT_EQ(out[t * H + h], 0u) << "token " << t << " column " << h;
          }
        }
        if (local > 0) expect_close(out, expected.out_truth, expected.out_design, "output");
        continue;
      }
      EXPECT_EQ(first_difference(c.permuted_idx().download(), perm.expanded_idx_to_permuted_idx),
                -1)
          << "expanded_idx_to_permuted_idx";
      if (local > 0) {
        std::vector<uint16_t> rows = c.gemm2_output().download();
        rows.resize(local * H);
        expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");
      }
    }
  }
}


// ------------------------------------------------------------------------------------------------
// The expert MLP's options (docs/SPEC.md "Activations, expert biases and input-side routing
// weights") on both GEMM paths, against the fp64 model of tests/common/double_model.h, with
// run_reference() as the design's rounding.
// ------------------------------------------------------------------------------------------------

// Runs the case on the GPU and on the CPU reference; checks the GPU output against the fp64 model
// by the tolerance rule (the reference's output as the design's rounding), and reruns bitwise.
void check_expert_mlp_case(const MoeCaseConfig& cfg, const char* name) {
  SCOPED_TRACE(name);
  MoeCase gpu_case(cfg), cpu_case(cfg);
  ASSERT_TRUE(run_reference(cpu_case.arguments()).ok());
  DeviceMoeCall call(gpu_case);
  const Status status = run_on_device(call.arguments());
  ASSERT_TRUE(status.ok()) << status.message;
  call.download();
  // The ids and weights as used, from the CPU reference's routing of the same inputs.
  const ref::Routing routing = reference_routing(cpu_case).first;
  const DoubleModel model = moe_double(cpu_case, routing.ids, routing.weights);
  if (cfg.do_finalize) {
    std::vector<double> design = bf16_to_double(cpu_case.output);
    expect_close(bf16_to_double(gpu_case.output), model.exact, design, name);
    const std::vector<uint16_t> first = gpu_case.output;
    call.poison_outputs();
    ASSERT_TRUE(run_on_device(call.arguments(), /*enable_pdl=*/true).ok());
    call.download();
    EXPECT_EQ(first_difference(gpu_case.output, first), -1) << "rerun with PDL not bitwise";
    return;
  }
  // The triple: map bitwise; reduced the documented way (weights of 1 when they went into the
  // input), it matches the model by the rule.
  EXPECT_EQ(first_difference(gpu_case.expanded_idx_to_permuted_idx,
                             cpu_case.expanded_idx_to_permuted_idx),
            -1);
  const int64_t T = cfg.shape.num_tokens, H = cfg.shape.hidden_size, K = cfg.shape.top_k;
  const std::vector<float> weights = gpu_case.expert_weights_as_float();
  std::vector<double> reduced(T * H, 0.0), reduced_design(T * H, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      float acc = 0.0f, acc_design = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t row = gpu_case.expanded_idx_to_permuted_idx[t * K + k];
        if (row < 0) continue;
        const float w = cfg.routing_scales_on_input ? 1.0f : weights[t * K + k];
        acc = std::fma(w, bf16_bits_to_float(gpu_case.gemm2_output[row * H + h]), acc);
        acc_design =
            std::fma(w, bf16_bits_to_float(cpu_case.gemm2_output[row * H + h]), acc_design);
      }
      reduced[t * H + h] = round_to_bf16(acc);
      reduced_design[t * H + h] = round_to_bf16(acc_design);
    }
  }
  expect_close(reduced, model.exact, reduced_design, name);
}

struct MlpShape {
  const char* path;
  int64_t T, H, I;
  int32_t E, K;
};
// The decode GEMMs at T = 4 (a few rows per expert) and the prefill ones at T = 300 (150 rows per
// expert); GpuExpertMlp.ShapesTakeBothPaths checks that the heuristics agree.
const MlpShape kMlpShapes[] = {{"decode", 4, 512, 256, 16, 2}, {"prefill", 300, 512, 264, 4, 2}};

TEST(GpuExpertMlp, ShapesTakeBothPaths) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const int sms = num_sms();
  for (const MlpShape& s : kMlpShapes) {
    const bool decode = std::string(s.path) == "decode";
    EXPECT_EQ(heuristics::use_decode_gemm1(s.T, s.K, s.E, s.E, s.I, sms), decode) << s.path;
    EXPECT_EQ(heuristics::use_decode_gemm2(s.T, s.K, s.E, s.E, s.I, sms), decode) << s.path;
    EXPECT_EQ(heuristics::use_decode_gemm2(s.T, s.K, s.E, s.E, s.H, sms), decode) << s.path;
  }
}

TEST(GpuExpertMlp, EveryActivationWithParametersAndBiases) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const Activation activations[] = {Activation::kGelu,  Activation::kRelu,       Activation::kSilu,
                                    Activation::kSwiglu, Activation::kGeglu,     Activation::kRelu2,
                                    Activation::kSwigluStep, Activation::kGegluTanh};
  uint64_t seed = 900;
  for (const MlpShape& s : kMlpShapes) {
    for (const Activation activation : activations) {
      for (int options = 0; options < 4; ++options) {  // none, params, biases bf16, both fp32
        MoeCaseConfig cfg;
        cfg.shape = make_shape(s.T, s.H, s.I, s.E, s.K);
        cfg.method = RoutingMethod::kRenormalize;
        cfg.activation = activation;
        cfg.with_activation_params = options == 1 || options == 3;
        cfg.with_expert_biases = options >= 2;
        cfg.expert_bias_dtype = options == 3 ? DType::kFP32 : DType::kBF16;
        cfg.with_replay = true;
        cfg.seed = ++seed;
        const std::string name = std::string(s.path) + " " + activation_name(activation) +
                                 " options " + std::to_string(options);
        check_expert_mlp_case(cfg, name.c_str());
        if (options == 3) {  // the triple carries gemm2_bias inside its rows
          cfg.do_finalize = false;
          check_expert_mlp_case(cfg, (name + " unfinalized").c_str());
        }
      }
    }
  }
}

TEST(GpuExpertMlp, RoutingWeightsOnInput) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 990;
  for (const MlpShape& s : kMlpShapes) {
    for (const RoutingInput input : {RoutingInput::kLogits, RoutingInput::kUnpacked}) {
      for (const bool finalize : {true, false}) {
        MoeCaseConfig cfg;
        cfg.shape = make_shape(2 * s.T, s.H, s.I, s.E, 1);  // K = 1: as many rows per expert
        cfg.routing_input = input;
        cfg.method = RoutingMethod::kLlama4;
        cfg.routed_weights_dtype = DType::kFP32;
        cfg.routing_scales_on_input = true;
        cfg.do_finalize = finalize;
        cfg.seed = ++seed;
        const std::string name = std::string(s.path) +
                                 (input == RoutingInput::kLogits ? " logits" : " unpacked fp32") +
                                 (finalize ? "" : " unfinalized");
        check_expert_mlp_case(cfg, name.c_str());
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Concurrency (SPEC "Execution contract"): calls in flight at the same time on different streams
// or threads, each with a workspace of its own, give bitwise the results they give one after the
// other. FUSEDMOE_TEST_SHARED_WORKSPACE=1 makes every call use ONE workspace instead (what the
// Python package did before per-call scratch): these tests must then fail, which shows that they
// can see a shared-scratch race at all (scripts/device_check.sh runs that control).
// ------------------------------------------------------------------------------------------------

// Four calls that cover the pipeline's paths between them: decode and prefill GEMMs, the
// one-CTA and the three-kernel sort, prefill GEMMs with tile claims (workspace counters), logits
// and routed input, do_finalize false, an expert-parallel shard, PDL on and off.
std::vector<CaseSpec> concurrency_cases() {
  std::vector<CaseSpec> cases;
  CaseSpec s{"decode_logits", 4, 2048, 768, 128, 8};
  s.method = RoutingMethod::kRenormalize;
  cases.push_back(s);
  s = {"prefill_claims_dsv3_groups", 512, 2048, 768, 128, 8};
  s.method = RoutingMethod::kDeepSeekV3;
  s.with_bias = true;
  s.n_group = 8;
  s.topk_group = 4;
  s.routed_scaling_factor = 2.5f;
  cases.push_back(s);
  s = {"prefill_packed_triple_shard", 1100, 2048, 768, 64, 4, 32, 16};  // T * K > 4096: 3 kernels
  s.input = RoutingInput::kPacked;
  s.do_finalize = false;
  cases.push_back(s);
  s = {"decode_unpacked_fp32_triple", 16, 2880, 2880, 128, 4};
  s.input = RoutingInput::kUnpacked;
  s.weights_dtype = DType::kFP32;
  s.do_finalize = false;
  cases.push_back(s);
  return cases;
}

// Holds a stream for `cycles` clock ticks, so that the launches queued behind it on every stream
// start together and overlap (without it, each call could finish before the next is enqueued).
__global__ void spin_kernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

bool shared_workspace_control() {
  const char* choice = std::getenv("FUSEDMOE_TEST_SHARED_WORKSPACE");
  return choice != nullptr && std::strcmp(choice, "1") == 0;
}

// Every output of a call, downloaded (bitwise comparisons).
struct Snapshot {
  std::vector<uint16_t> output, gemm2_output;
  std::vector<uint32_t> expert_weights;
  std::vector<int32_t> permuted_idx;
  std::vector<int16_t> replay;
  bool operator==(const Snapshot& o) const {
    return output == o.output && gemm2_output == o.gemm2_output &&
           expert_weights == o.expert_weights && permuted_idx == o.permuted_idx &&
           replay == o.replay;
  }
};

Snapshot snapshot(GpuCase& c) {
  return {c.output().download(), c.gemm2_output().download(), c.expert_weights().download(),
          c.permuted_idx().download(), c.replay().download()};
}

// N calls, each on a non-blocking stream of its own with a workspace of its own (or all on one
// workspace under the control), and each call's serial result.
class ConcurrentCalls {
 public:
  explicit ConcurrentCalls(int num_calls) {
    const std::vector<CaseSpec> specs = concurrency_cases();
    for (int i = 0; i < num_calls; ++i) {
      const CaseSpec& spec = specs[i % specs.size()];
      cases_.push_back(std::make_unique<GpuCase>(spec, 700 + i));
      MoeArguments args = cases_.back()->arguments();
      args.enable_pdl = i % 2 == 1;
      args_.push_back(args);
      size_t bytes = 0;
      if (!workspace_size(args.shape, &bytes).ok()) throw std::runtime_error("workspace_size");
      bytes_.push_back(bytes);
      cudaStream_t stream;
      check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
      streams_.push_back(stream);
    }
    const size_t largest = *std::max_element(bytes_.begin(), bytes_.end());
    for (int i = 0; i < num_calls; ++i) {
      workspaces_.emplace_back(shared_workspace_control() && i > 0 ? 0 : largest);
    }
    // Serial results: one call at a time, each on its own stream.
    for (int i = 0; i < num_calls; ++i) {
      poison_all();
      launch(i);
      check_cuda(cudaStreamSynchronize(streams_[i]), "serial run");
      serial_.push_back(snapshot(*cases_[i]));
    }
  }
  ~ConcurrentCalls() {
    for (cudaStream_t stream : streams_) cudaStreamDestroy(stream);
  }

  int size() const { return static_cast<int>(cases_.size()); }
  cudaStream_t stream(int i) const { return streams_[i]; }

  // run() of call i on its stream, not waited for.
  Status launch(int i) { return run(args_[i], workspace(i), bytes_[i], streams_[i]); }

  // Poisons every output and waits, so that the poison (legacy stream) lands before any call;
  // then holds every stream for ~1 ms, so that the launches that follow run together.
  void poison_all() {
    for (auto& c : cases_) c->poison_outputs();
    check_cuda(cudaDeviceSynchronize(), "poison");
    for (cudaStream_t stream : streams_) spin_kernel<<<1, 1, 0, stream>>>(2000000);
    check_cuda(cudaGetLastError(), "spin");
  }

  // Waits for everything and counts the calls whose outputs differ from their serial result.
  int count_differences() {
    check_cuda(cudaDeviceSynchronize(), "concurrent runs");
    int differ = 0;
    for (int i = 0; i < size(); ++i) differ += snapshot(*cases_[i]) == serial_[i] ? 0 : 1;
    return differ;
  }

  // Captures call i into a graph on its stream (thread-local capture mode, so that several
  // threads could capture at once).
  cudaGraphExec_t capture(int i) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    check_cuda(cudaStreamBeginCapture(streams_[i], cudaStreamCaptureModeThreadLocal), "capture");
    const Status status = launch(i);
    check_cuda(cudaStreamEndCapture(streams_[i], &graph), "end capture");
    if (!status.ok()) throw std::runtime_error(status.message);
    check_cuda(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cudaGraphDestroy(graph);
    return exec;
  }

 private:
  void* workspace(int i) { return workspaces_[shared_workspace_control() ? 0 : i].get(); }

  std::vector<std::unique_ptr<GpuCase>> cases_;
  std::vector<MoeArguments> args_;
  std::vector<size_t> bytes_;
  std::vector<cudaStream_t> streams_;
  std::vector<DeviceArray<uint8_t>> workspaces_;
  std::vector<Snapshot> serial_;
};

TEST(GpuConcurrency, CasesCoverDecodeAndPrefillGemms) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const int sms = num_sms();
  int decode = 0, prefill = 0, small_sort = 0, three_kernel_sort = 0;
  for (const CaseSpec& spec : concurrency_cases()) {
    const int32_t num_local = spec.local_num_experts ? spec.local_num_experts : spec.num_experts;
    const bool d = heuristics::use_decode_gemm1(spec.num_tokens, spec.top_k, spec.num_experts,
                                                num_local, spec.intermediate_size, sms);
    (d ? decode : prefill) += 1;
    (heuristics::use_small_sort(spec.num_tokens * spec.top_k) ? small_sort : three_kernel_sort) +=
        1;
  }
  EXPECT_GT(decode, 0);
  EXPECT_GT(prefill, 0);
  EXPECT_GT(small_sort, 0);
  EXPECT_GT(three_kernel_sort, 0) << "no case sorts with chunk_prefix (the workspace's counts)";
}

TEST(GpuConcurrency, StreamsInFlightMatchSerialBitwise) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  for (int num_streams : {2, 4}) {
    ConcurrentCalls calls(num_streams);
    for (int round = 0; round < 5; ++round) {
      calls.poison_all();
      // Three calls per stream, interleaved across the streams, nothing waited for in between.
      for (int rep = 0; rep < 3; ++rep) {
        for (int i = 0; i < calls.size(); ++i) ASSERT_TRUE(calls.launch(i).ok());
      }
      EXPECT_EQ(calls.count_differences(), 0) << num_streams << " streams, round " << round;
    }
  }
}

TEST(GpuConcurrency, ThreadsMatchSerialBitwise) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  ConcurrentCalls calls(4);
  for (int round = 0; round < 5; ++round) {
    calls.poison_all();
    std::vector<Status> statuses(2);
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&calls, &statuses, t] {
        // Thread t launches calls t and t + 2, three times each, on their own streams.
        for (int rep = 0; rep < 3; ++rep) {
          for (int i = t; i < calls.size(); i += 2) {
            const Status status = calls.launch(i);
            if (!status.ok()) statuses[t] = status;
          }
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (const Status& status : statuses) ASSERT_TRUE(status.ok()) << status.message;
    EXPECT_EQ(calls.count_differences(), 0) << "round " << round;
  }
}

TEST(GpuConcurrency, GraphsReplayedConcurrentlyMatchSerialBitwise) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  ConcurrentCalls calls(4);
  std::vector<cudaGraphExec_t> graphs;
  for (int i = 0; i < calls.size(); ++i) graphs.push_back(calls.capture(i));
  for (int round = 0; round < 5; ++round) {
    calls.poison_all();
    for (int rep = 0; rep < 3; ++rep) {
      for (int i = 0; i < calls.size(); ++i) {
        check_cuda(cudaGraphLaunch(graphs[i], calls.stream(i)), "graph launch");
      }
    }
    EXPECT_EQ(calls.count_differences(), 0) << "round " << round;
  }
  for (cudaGraphExec_t exec : graphs) cudaGraphExecDestroy(exec);
}

}  // namespace
}  // namespace fusedmoe::test
