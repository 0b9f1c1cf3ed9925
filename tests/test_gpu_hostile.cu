// Hostile inputs on the GPU (issue 7), each against the CPU reference, beyond what
// tests/test_gpu_moe.cu covers (packed hostile ids in finalize mode, scattered NaN/inf logits,
// T = 0 in finalize mode, a too-small workspace):
//   routed ids in every encoding (INT32_MIN/MAX, ids whose low 16 bits are local, -32768, 32767,
//     remote-but-valid ids), duplicates, NaN (with payload) / +-inf / 0 / negative weights, in
//     both output modes; all slots non-local; whole rows of NaN / -inf / +inf logits for every
//     method and dtype; T = 0 in the do_finalize = false mode; every validation rule through
//     run() with device outputs and workspace poisoned and checked untouched; validate_routing's
//     own argument checks; batch invariance (a token's output does not depend on its batch);
//   GpuSizes: T = 65536, H = 7168, K = 8 (T*K*H > 2^31 elements of y): rows far into the output
//     and into gemm2_output against the CPU reference computed for just those tokens.
// Outputs are poisoned before every run; each case runs twice and must repeat bit for bit; the
// device inputs are checked unchanged. Skips when no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/gpu_buffers.h"
#include "common/gpu_reference.h"
#include "common/host_data.h"
#include "common/invalid_arguments.h"
#include "common/moe_case.h"
#include "common/reference_routing.h"
#include "common/tolerance.h"
#include "fusedmoe/fusedmoe.h"
#include "reference/bf16.h"
#include "reference/reference.h"

namespace fusedmoe::test {
namespace {

#define FUSEDMOE_SKIP_WITHOUT_GPU() \
  if (!gpu_available()) GTEST_SKIP() << "no CUDA device"

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------------
// A MoeCase mirrored on the device: every host vector (inputs and poisoned outputs) has a device
// copy; arguments() is the case's MoeArguments with each host pointer swapped for its device
// twin (pointers that name no buffer of the case, e.g. a rule's dummy, stay as they are: they
// are never dereferenced).
// ------------------------------------------------------------------------------------------------
class DeviceCase {
 public:
  explicit DeviceCase(MoeCase& c) : c_(c) { upload(); }

  // Copies every host vector (inputs and outputs) to the device.
  void upload() {
    pairs_.clear();
    mirror(c_.hidden_states, x_);
    mirror(c_.gemm1_weights, w1_);
    mirror(c_.gemm2_weights, w2_);
    mirror(c_.logits_fp32, logits_fp32_);
    mirror(c_.logits_bf16, logits_bf16_);
    mirror(c_.bias_fp32, bias_fp32_);
    mirror(c_.bias_bf16, bias_bf16_);
    mirror(c_.topk_ids, topk_ids_);
    mirror(c_.topk_weights_fp32, topk_weights_fp32_);
    mirror(c_.topk_weights_bf16, topk_weights_bf16_);
    mirror(c_.output, output_);
    mirror(c_.gemm2_output, gemm2_output_);
    mirror(c_.expert_weights_fp32, expert_weights_fp32_);
    mirror(c_.expert_weights_bf16, expert_weights_bf16_);
    mirror(c_.expanded_idx_to_permuted_idx, map_);
    mirror(c_.routing_replay_out, replay_);
  }
  // Poisons the host outputs and copies them to the device.
  void poison_outputs() {
    c_.poison_outputs();
    upload_output(c_.output, output_);
    upload_output(c_.gemm2_output, gemm2_output_);
    upload_output(c_.expert_weights_fp32, expert_weights_fp32_);
    upload_output(c_.expert_weights_bf16, expert_weights_bf16_);
    upload_output(c_.expanded_idx_to_permuted_idx, map_);
    upload_output(c_.routing_replay_out, replay_);
  }
  // The device outputs into the host vectors of the case.
  void download_outputs() {
    download_into(output_, c_.output);
    download_into(gemm2_output_, c_.gemm2_output);
    download_into(expert_weights_fp32_, c_.expert_weights_fp32);
    download_into(expert_weights_bf16_, c_.expert_weights_bf16);
    download_into(map_, c_.expanded_idx_to_permuted_idx);
    download_into(replay_, c_.routing_replay_out);
  }
  // True when the device inputs still equal the host inputs byte for byte.
  bool inputs_unchanged() const {
    return same(x_, c_.hidden_states) && same(w1_, c_.gemm1_weights) &&
           same(w2_, c_.gemm2_weights) && same(logits_fp32_, c_.logits_fp32) &&
           same(logits_bf16_, c_.logits_bf16) && same(bias_fp32_, c_.bias_fp32) &&
           same(bias_bf16_, c_.bias_bf16) && same(topk_ids_, c_.topk_ids) &&
           same(topk_weights_fp32_, c_.topk_weights_fp32) &&
           same(topk_weights_bf16_, c_.topk_weights_bf16);
  }

  MoeArguments arguments(const MoeArguments& host) const {
    MoeArguments a = host;
    a.hidden_states = remap(a.hidden_states);
    a.gemm1_weights = remap(a.gemm1_weights);
    a.gemm2_weights = remap(a.gemm2_weights);
    a.logits.logits = remap(a.logits.logits);
    a.logits.bias = remap(a.logits.bias);
    a.routed.topk_ids = static_cast<const int32_t*>(remap(a.routed.topk_ids));
    a.routed.topk_weights = remap(a.routed.topk_weights);
    a.output = const_cast<void*>(remap(a.output));
    a.gemm2_output = const_cast<void*>(remap(a.gemm2_output));
    a.expert_weights = const_cast<void*>(remap(a.expert_weights));
    a.expanded_idx_to_permuted_idx =
        static_cast<int32_t*>(const_cast<void*>(remap(a.expanded_idx_to_permuted_idx)));
    a.routing_replay_out = static_cast<int16_t*>(const_cast<void*>(remap(a.routing_replay_out)));
    return a;
  }
  MoeArguments arguments() const { return arguments(c_.arguments()); }

  const uint16_t* x() const { return x_.get(); }
  const uint16_t* w1() const { return w1_.get(); }
  const uint16_t* w2() const { return w2_.get(); }

 private:
  template <typename T>
  void mirror(const std::vector<T>& host, DeviceArray<T>& device) {
    device.resize(host.size());
    if (!host.empty()) device.upload(host);
    if (host.data() != nullptr) pairs_.emplace_back(host.data(), device.get());
  }
  template <typename T>
  static void upload_output(const std::vector<T>& host, DeviceArray<T>& device) {
    if (!host.empty()) device.upload(host);
  }
  template <typename T>
  // Copies into the existing storage: the host vector's address is the key remap() looks up, so
  // it must not move (assigning a fresh vector would send host pointers to the next run()).
  static void download_into(const DeviceArray<T>& device, std::vector<T>& host) {
    if (host.empty()) return;
    const std::vector<T> copy = device.download();
    std::copy(copy.begin(), copy.end(), host.begin());
  }
  template <typename T>
  static bool same(const DeviceArray<T>& device, const std::vector<T>& host) {
    if (host.empty()) return true;
    const std::vector<T> now = device.download();
    return std::memcmp(now.data(), host.data(), host.size() * sizeof(T)) == 0;
  }
  const void* remap(const void* host) const {
    if (host == nullptr) return nullptr;
    for (const auto& [h, d] : pairs_) {
      if (h == host) return d;
    }
    return host;
  }

  MoeCase& c_;
  std::vector<std::pair<const void*, const void*>> pairs_;
  DeviceArray<uint16_t> x_, w1_, w2_, logits_bf16_, bias_bf16_, topk_weights_bf16_;
  DeviceArray<float> logits_fp32_, bias_fp32_, topk_weights_fp32_;
  DeviceArray<int32_t> topk_ids_;
  DeviceArray<uint16_t> output_, gemm2_output_, expert_weights_bf16_;
  DeviceArray<float> expert_weights_fp32_;
  DeviceArray<int32_t> map_;
  DeviceArray<int16_t> replay_;
};

// run() with a poisoned workspace of exactly workspace_size() bytes, then a sync.
Status run_on_device(const MoeArguments& args) {
  size_t bytes = 0;
  if (Status s = workspace_size(args.shape, &bytes); !s.ok()) return s;
  DeviceArray<uint8_t> workspace(bytes);
  workspace.fill_bytes(0xFF);
  const Status status = run(args, workspace.get(), bytes, nullptr);
  check_cuda(cudaGetLastError(), "run");
  check_cuda(cudaDeviceSynchronize(), "run (async)");
  return status;
}

// Runs the case on the device twice (outputs poisoned each time); the second run must repeat
// the first bit for bit, NaN payloads included. Leaves the outputs in the MoeCase.
void run_twice(MoeCase& c, DeviceCase& d) {
  d.poison_outputs();
  ASSERT_TRUE(run_on_device(d.arguments()).ok());
  d.download_outputs();
  const uint64_t first = c.output_checksum();
  d.poison_outputs();
  ASSERT_TRUE(run_on_device(d.arguments()).ok());
  d.download_outputs();
  EXPECT_EQ(c.output_checksum(), first) << "a rerun changed the outputs";
  EXPECT_TRUE(d.inputs_unchanged()) << "run() wrote into an input";
}

// The output against the reference: non-finite exactly where the reference's design result is
// (NaN and infinite weights), the finite elements by docs/STYLE.md's rule.
void expect_output(const std::vector<uint16_t>& ours, const GpuReferenceResult& ref,
                   const char* what) {
  ASSERT_EQ(ours.size(), ref.out_design.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(std::isfinite(bf16_bits_to_float(ours[i])),
              std::isfinite(bf16_bits_to_float(ref.out_design[i])))
        << what << ": element " << i << " ours " << bf16_bits_to_float(ours[i]) << " reference "
        << bf16_bits_to_float(ref.out_design[i]);
  }
  expect_close(ours, ref.out_truth, ref.out_design, what);
}

uint32_t weight_bits(const MoeCase& c, int64_t slot, bool returned) {
  if (!returned && c.config().routing_input == RoutingInput::kPacked) {
    return unpack_topk_weight_bits(c.topk_ids[slot]);
  }
  const bool bf16 = c.expert_weights_dtype() == DType::kBF16;
  if (bf16) return returned ? c.expert_weights_bf16[slot] : c.topk_weights_bf16[slot];
  uint32_t bits;
  std::memcpy(&bits, returned ? &c.expert_weights_fp32[slot] : &c.topk_weights_fp32[slot], 4);
  return bits;
}

struct Encoding {
  const char* name;
  RoutingInput input;
  DType weights_dtype;
};
const Encoding kEncodings[] = {{"packed", RoutingInput::kPacked, DType::kBF16},
                               {"unpacked_bf16", RoutingInput::kUnpacked, DType::kBF16},
                               {"unpacked_fp32", RoutingInput::kUnpacked, DType::kFP32}};

// ------------------------------------------------------------------------------------------------
// Routed input: hostile ids and weights in every encoding and both output modes.
// ------------------------------------------------------------------------------------------------
TEST(GpuHostile, RoutedIdsAndWeightsMatchReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  constexpr int64_t T = 67, H = 256, I = 128;
  constexpr int32_t E = 16, K = 4, kOffset = 4, kLocal = 8;
  const std::vector<int32_t> packed_bad = {-1, -32768, 32767, E, kOffset - 1, kOffset + kLocal};
  const std::vector<int32_t> unpacked_bad = {std::numeric_limits<int32_t>::min(),
                                             std::numeric_limits<int32_t>::max(),
                                             65536 + kOffset + 1,  // int16 would be local
                                             -65536 + kOffset,
                                             E,
                                             kOffset + kLocal};
  uint64_t seed = 1000;
  for (const Encoding& enc : kEncodings) {
    for (const bool finalize : {true, false}) {
      SCOPED_TRACE(std::string(enc.name) + (finalize ? " finalize" : " triple"));
      MoeCaseConfig cfg;
      cfg.shape = make_shape(T, H, I, E, K);
      cfg.shape.local_expert_offset = kOffset;
      cfg.shape.local_num_experts = kLocal;
      cfg.routing_input = enc.input;
      cfg.routed_weights_dtype = enc.weights_dtype;
      cfg.do_finalize = finalize;
      cfg.with_replay = true;
      cfg.seed = ++seed;
      MoeCase c(cfg);

      Rng rng(seed);
      std::vector<int32_t> ids = random_distinct_ids(rng, T, K, E);
      std::vector<float> w = random_fp32(rng, T * K, 0.05f, 1.0f);
      for (float& v : w) v = round_to_bf16(v);
      const std::vector<int32_t>& bad =
          enc.input == RoutingInput::kPacked ? packed_bad : unpacked_bad;
      for (int64_t t = 0; t < T; ++t) {
        int32_t* id = ids.data() + t * K;
        float* wt = w.data() + t * K;
        switch (t % 8) {
          case 0:
            id[1] = bad[t % bad.size()];
            break;
          case 1:
            id[1] = id[3] = id[0];
            break;  // three slots on one expert
          case 2:
            wt[0] = kNaN;
            break;
          case 3:
            wt[2] = kInf;
            wt[3] = -kInf;
            break;
          case 4:
            wt[0] = wt[1] = 0.0f;
            wt[2] = -0.0f;
            wt[3] = -wt[3];
            break;
          case 5:
            break;  // NaN with payload below
          case 6:
            for (int k = 0; k < K; ++k) id[k] = bad[(t + k) % bad.size()];
            break;
          default:
            for (int k = 0; k < K; ++k) wt[k] = -wt[k];
            break;
        }
      }
      c.set_routing(ids, w);
      for (int64_t t = 5; t < T; t += 8) {  // a negative NaN with a payload, local or not
        const uint16_t payload = 0xFFC1;
        if (enc.input == RoutingInput::kPacked) {
          c.topk_ids[t * K] = pack_topk(ids[t * K], payload);
        } else if (enc.weights_dtype == DType::kBF16) {
          c.topk_weights_bf16[t * K] = payload;
        } else {
          c.topk_weights_fp32[t * K] = fp32_from_bits(uint32_t{payload} << 16);
        }
      }
      DeviceCase d(c);
      run_twice(c, d);
      const auto [routing, perm] = reference_routing(c);

      for (int64_t slot = 0; slot < T * K; ++slot) {
        ASSERT_EQ(c.routing_replay_out[slot], static_cast<int16_t>(routing.ids[slot]))
            << "slot " << slot;
      }
      const GpuReferenceResult expected =
          gpu_reference(c.shape(), d.x(), d.w1(), d.w2(), routing, perm, !finalize);
      if (finalize) {
        expect_output(c.output, expected, "output");
        continue;
      }
      EXPECT_EQ(first_difference(c.expanded_idx_to_permuted_idx, perm.expanded_idx_to_permuted_idx),
                -1);
      for (int64_t slot = 0; slot < T * K; ++slot) {
        ASSERT_EQ(weight_bits(c, slot, true), weight_bits(c, slot, false)) << "slot " << slot;
      }
      std::vector<uint16_t> rows = c.gemm2_output;
      rows.resize(perm.num_local() * H);
      expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");
    }
  }
}

// Every slot remote: zero rows (+0 bits), the map all -1 (gemm2_output's rows are then all
// unspecified: SPEC names none).
TEST(GpuHostile, AllSlotsNonLocal) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 1100;
  for (const Encoding& enc : kEncodings) {
    for (const bool finalize : {true, false}) {
      SCOPED_TRACE(std::string(enc.name) + (finalize ? " finalize" : " triple"));
      MoeCaseConfig cfg;
      cfg.shape = make_shape(129, 128, 64, 64, 8);
      cfg.shape.local_expert_offset = 32;
      cfg.shape.local_num_experts = 16;
      cfg.routing_input = enc.input;
      cfg.routed_weights_dtype = enc.weights_dtype;
      cfg.do_finalize = finalize;
      cfg.seed = ++seed;
      MoeCase c(cfg);
      Rng rng(seed);
      std::vector<int32_t> ids = random_distinct_ids(rng, 129, 8, 32);  // all below the shard
      const int32_t remote[] = {-1, 64, 32767, -32768, 48, 63};
      for (size_t i = 0; i < ids.size(); i += 5) ids[i] = remote[i % 6];
      c.set_routing(ids, random_fp32(rng, ids.size(), -1.0f, 1.0f));
      DeviceCase d(c);
      run_twice(c, d);
      if (finalize) {
        for (uint16_t v : c.output) ASSERT_EQ(v, 0x0000);
      } else {
        for (int32_t row : c.expanded_idx_to_permuted_idx) ASSERT_EQ(row, -1);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Logits: whole rows of NaN, -inf and +inf, every method and dtype, both output modes.
// ------------------------------------------------------------------------------------------------
TEST(GpuHostile, LogitsWholeRowsOfNaNAndInfinity) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  struct MethodShape {
    RoutingMethod method;
    int32_t num_experts, top_k, n_group, topk_group;
  };
  const MethodShape methods[] = {
      {RoutingMethod::kDefault, 16, 4, 0, 0},       {RoutingMethod::kRenormalize, 128, 8, 0, 0},
      {RoutingMethod::kDeepSeekV3, 256, 8, 8, 4},   {RoutingMethod::kDeepSeekV3, 16, 4, 0, 0},
      {RoutingMethod::kLlama4, 16, 1, 0, 0},        {RoutingMethod::kRenormalizeNaive, 64, 4, 0, 0},
      {RoutingMethod::kTopK, 16, 4, 0, 0},          {RoutingMethod::kSigmoidRenorm, 1024, 32, 0, 0},
      {RoutingMethod::kMiniMax2, 256, 8, 0, 0},     {RoutingMethod::kSigmoid, 16, 4, 0, 0},
      {RoutingMethod::kTopKSigmoid, 128, 10, 0, 0},
  };
  uint64_t seed = 1200;
  for (const MethodShape& m : methods) {
    for (const DType logits_dtype : {DType::kFP32, DType::kBF16}) {
      for (const bool finalize : {true, false}) {
        SCOPED_TRACE(std::string(routing_method_name(m.method)) + " E " +
                     std::to_string(m.num_experts) + " " + dtype_name(logits_dtype) +
                     (finalize ? " finalize" : " triple"));
        MoeCaseConfig cfg;
        const int64_t T = 77;
        cfg.shape = make_shape(T, 128, 64, m.num_experts, m.top_k);
        cfg.shape.local_expert_offset = m.num_experts / 4;
        cfg.shape.local_num_experts = m.num_experts / 2;
        cfg.method = m.method;
        cfg.n_group = m.n_group;
        cfg.topk_group = m.topk_group;
        cfg.logits_dtype = logits_dtype;
        cfg.with_bias = m.method == RoutingMethod::kMiniMax2;
        cfg.routed_scaling_factor = 2.5f;
        cfg.do_finalize = finalize;
        cfg.with_replay = true;
        cfg.seed = ++seed;
        MoeCase c(cfg);
        const int32_t E = m.num_experts;
        Rng rng(seed);
        std::vector<float> logits = random_fp32(rng, T * E, -4.0f, 4.0f);
        for (int64_t t = 0; t < T; ++t) {
          float* row = logits.data() + t * E;
          switch (t % 7) {
            case 0:
              std::fill(row, row + E, kNaN);
              break;
            case 1:
              std::fill(row, row + E, -kInf);
              break;
            case 2:
              std::fill(row, row + E, kInf);
              break;
            case 3:
              row[rng.integer(0, E - 1)] = kInf;
              break;
            case 4:
              for (int i = 0; i < 5; ++i) row[rng.integer(0, E - 1)] = kNaN;
              break;
            case 5:
              for (int i = 0; i < E; i += 2) row[i] = -kInf;
              break;
            default:
              break;
          }
        }
        if (logits_dtype == DType::kFP32) {
          c.logits_fp32 = logits;
        } else {
          c.logits_bf16 = float_to_bf16(logits);
        }
        DeviceCase d(c);
        run_twice(c, d);
        const auto [routing, perm] = reference_routing(c);
        for (int64_t slot = 0; slot < T * m.top_k; ++slot) {
          ASSERT_GE(routing.ids[slot], 0);
          ASSERT_EQ(c.routing_replay_out[slot], static_cast<int16_t>(routing.ids[slot]))
              << "slot " << slot;
        }
        const GpuReferenceResult expected =
            gpu_reference(c.shape(), d.x(), d.w1(), d.w2(), routing, perm, !finalize);
        if (finalize) {
          expect_output(c.output, expected, "output");
          continue;
        }
        EXPECT_EQ(
            first_difference(c.expanded_idx_to_permuted_idx, perm.expanded_idx_to_permuted_idx),
            -1);
        for (int64_t slot = 0; slot < T * m.top_k; ++slot) {  // bf16 weights: NaN alike, else
          const float ours = bf16_bits_to_float(c.expert_weights_bf16[slot]);  // within 1 ulp
          const float want = routing.weights[slot];
          if (std::isnan(want) || std::isinf(want)) {
            ASSERT_EQ(std::isnan(ours), std::isnan(want)) << "slot " << slot;
            if (std::isinf(want)) ASSERT_EQ(ours, want) << "slot " << slot;
            continue;
          }
          ASSERT_LE(std::abs(ours - want), std::abs(want) * (1.0f / 128.0f)) << "slot " << slot;
        }
        std::vector<uint16_t> rows = c.gemm2_output;
        rows.resize(perm.num_local() * 128);
        expect_close(rows, expected.y_truth, expected.y_design, "gemm2_output");
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Empty batch, argument checks.
// ------------------------------------------------------------------------------------------------
TEST(GpuHostile, ZeroTokensWritesNothingInEitherMode) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  for (const bool finalize : {true, false}) {
    MoeCaseConfig cfg = invalid_base_config(InvalidBase::kPacked, 1300);
    cfg.do_finalize = finalize;
    MoeCase c(cfg);
    DeviceCase d(c);
    d.poison_outputs();
    MoeArguments args = d.arguments();
    args.shape.num_tokens = 0;
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
    DeviceArray<uint8_t> workspace(bytes);
    workspace.fill_bytes(0xA5);
    const uint64_t before = c.output_checksum();
    EXPECT_TRUE(run(args, workspace.get(), bytes, nullptr).ok());
    EXPECT_TRUE(run(args, nullptr, bytes, nullptr).ok());  // T = 0: the pointer is not needed
    check_cuda(cudaDeviceSynchronize(), "sync");
    d.download_outputs();
    EXPECT_EQ(c.output_checksum(), before) << "finalize " << finalize;
    for (uint8_t b : workspace.download()) ASSERT_EQ(b, 0xA5);
  }
}

// Every rule of the shared table through run() on device buffers: the same status as
// validate(), and the device outputs, inputs and workspace keep their bytes.
TEST(GpuHostile, EveryRuleRejectedByRunWritesNothing) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 1400;
  DeviceArray<uint8_t> workspace(1 << 20);
  for (const InvalidRule& rule : invalid_rules()) {
    SCOPED_TRACE(rule.name);
    MoeCase c(invalid_base_config(rule.base, ++seed));
    DeviceCase d(c);
    d.poison_outputs();
    workspace.fill_bytes(0xA5);
    MoeArguments args = d.arguments();
    ASSERT_TRUE(validate(args).ok());
    rule.mutate(args);
    const uint64_t outputs = c.output_checksum();
    const Status status = run(args, workspace.get(), workspace.size(), nullptr);
    EXPECT_TRUE(is_rejection(status, rule));
    EXPECT_EQ(status.message, validate(args).message);
    check_cuda(cudaDeviceSynchronize(), "sync");
    check_cuda(cudaGetLastError(), "no CUDA error after a rejection");
    d.download_outputs();
    EXPECT_EQ(c.output_checksum(), outputs) << "a rejected run() wrote an output";
    EXPECT_TRUE(d.inputs_unchanged());
    for (uint8_t b : workspace.download()) ASSERT_EQ(b, 0xA5) << "a rejected run() wrote";
  }
  // The workspace checks: too small, null.
  MoeCase c(invalid_base_config(InvalidBase::kUnfinalized, 1500));
  DeviceCase d(c);
  d.poison_outputs();
  const MoeArguments args = d.arguments();
  const uint64_t outputs = c.output_checksum();
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size(args.shape, &bytes).ok());
  EXPECT_EQ(run(args, workspace.get(), bytes - 1, nullptr).code, StatusCode::kWorkspaceTooSmall);
  EXPECT_EQ(run(args, nullptr, bytes, nullptr).code, StatusCode::kInvalidArgument);
  check_cuda(cudaDeviceSynchronize(), "sync");
  d.download_outputs();
  EXPECT_EQ(c.output_checksum(), outputs);
}

// validate_routing's own argument checks leave the result alone and launch nothing.
TEST(GpuHostile, ValidateRoutingRejectsBadArguments) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  DeviceArray<int32_t> ids(std::vector<int32_t>(64, 3));
  const RoutingCheck untouched{77, 88};
  struct Bad {
    const char* argument;
    const int32_t* ids;
    int64_t T;
    int32_t K, E;
  };
  const Bad cases[] = {{"num_tokens", ids.get(), -1, 2, 8},    {"top_k", ids.get(), 8, 0, 8},
                       {"top_k", ids.get(), 8, 33, 64},        {"num_experts", ids.get(), 8, 2, 0},
                       {"num_experts", ids.get(), 8, 2, 1025}, {"topk_ids", nullptr, 8, 2, 8}};
  for (const Bad& bad : cases) {
    RoutingCheck check = untouched;
    const Status status = validate_routing(bad.ids, bad.T, bad.K, bad.E, true, &check, nullptr);
    EXPECT_EQ(status.code, StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message.rfind(std::string(bad.argument) + ": expected ", 0), 0u)
        << status.message;
    EXPECT_EQ(check.first_bad_slot, 77);
    EXPECT_EQ(check.bad_id, 88);
  }
  EXPECT_EQ(validate_routing(ids.get(), 8, 2, 8, false, nullptr, nullptr).code,
            StatusCode::kInvalidArgument);
  // Packed ids with negative weights in int32 extremes: the id is bits 31..16 only.
  std::vector<int32_t> words = {pack_topk(7, 0xBF80), pack_topk(-32768, 0xFFFF),
                                pack_topk(32767, 0x8000), pack_topk(0, 0xFFC1)};
  DeviceArray<int32_t> packed(words);
  RoutingCheck check;
  ASSERT_TRUE(validate_routing(packed.get(), 2, 2, 8, true, &check, nullptr).ok());
  EXPECT_EQ(check.first_bad_slot, 1);
  EXPECT_EQ(check.bad_id, -32768);
  ASSERT_TRUE(validate_routing(packed.get(), 2, 2, 1024, false, &check, nullptr).ok());
  EXPECT_EQ(check.first_bad_slot, 0);  // as plain ids every word is far outside [0, E)
  EXPECT_EQ(check.bad_id, words[0]);
}

// ------------------------------------------------------------------------------------------------
// Batch invariance: a token's output (and its unweighted rows) are the same bits whatever other
// tokens share its batch and wherever it sits in it (docs/reliability.md: per-token routing,
// per-row GEMM accumulation in a fixed K order, no split-K, per-token finalize order). Checked
// within each GEMM path: 989 -> 600 tokens (prefill GEMMs: > 24 rows per hit expert) and
// 19 -> 7 tokens (few rows per expert: issue 6's decode GEMMs once the pipeline takes them).
// Across the two paths the K summation order differs, so bits may too (docs/reliability.md).
// ------------------------------------------------------------------------------------------------

// A case of cfg's shape whose token j is src's token from[j] (x row and routing input), or a
// fresh random token where from[j] < 0; the weights (and bias) are src's.
void copy_tokens(const MoeCase& src, const std::vector<int64_t>& from, MoeCase& dst) {
  const MoeShape& s = src.shape();
  const int64_t H = s.hidden_size, E = s.num_experts, K = s.top_k;
  dst.gemm1_weights = src.gemm1_weights;
  dst.gemm2_weights = src.gemm2_weights;
  dst.bias_fp32 = src.bias_fp32;
  for (size_t j = 0; j < from.size(); ++j) {
    const int64_t t = from[j];
    if (t < 0) continue;
    std::copy_n(src.hidden_states.begin() + t * H, H, dst.hidden_states.begin() + j * H);
    if (src.config().routing_input == RoutingInput::kLogits) {
      std::copy_n(src.logits_fp32.begin() + t * E, E, dst.logits_fp32.begin() + j * E);
    } else {
      std::copy_n(src.topk_ids.begin() + t * K, K, dst.topk_ids.begin() + j * K);
    }
  }
}

TEST(GpuHostile, BatchInvariance) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  struct Pair {
    int64_t big_tokens, small_tokens;
    std::vector<std::pair<int64_t, int64_t>> moves;  // (token in big, position in small)
  };
  const Pair pairs[] = {
      {989, 600, {{0, 599}, {1, 5}, {127, 300}, {128, 0}, {500, 128}, {987, 127}, {988, 42}}},
      {19, 7, {{18, 0}, {0, 1}, {7, 2}, {12, 4}, {3, 6}}},
  };
  uint64_t seed = 1600;
  for (const Pair& pair : pairs) {
    for (const RoutingInput input : {RoutingInput::kLogits, RoutingInput::kPacked}) {
      for (const bool finalize : {true, false}) {
        SCOPED_TRACE(std::to_string(pair.big_tokens) + " -> " + std::to_string(pair.small_tokens) +
                     (input == RoutingInput::kLogits ? " logits" : " packed") +
                     (finalize ? " finalize" : " triple"));
        MoeCaseConfig cfg;
        cfg.shape = make_shape(pair.big_tokens, test_hidden_size(2048), test_intermediate_size(768),
                               64, 8);
        cfg.routing_input = input;
        cfg.method = RoutingMethod::kDeepSeekV3;
        cfg.with_bias = true;
        cfg.n_group = 8;
        cfg.topk_group = 4;
        cfg.do_finalize = finalize;
        cfg.seed = ++seed;
        MoeCase big(cfg);
        DeviceCase d_big(big);
        run_twice(big, d_big);

        MoeCaseConfig small_cfg = cfg;
        small_cfg.shape.num_tokens = pair.small_tokens;
        small_cfg.seed = ++seed;
        MoeCase small(small_cfg);
        std::vector<int64_t> from(pair.small_tokens, -1);
        for (const auto& [t, j] : pair.moves) from[j] = t;
        copy_tokens(big, from, small);
        DeviceCase d_small(small);
        run_twice(small, d_small);

        const int64_t H = cfg.shape.hidden_size, K = cfg.shape.top_k;
        for (const auto& [t, j] : pair.moves) {
          if (finalize) {
            EXPECT_TRUE(std::equal(small.output.begin() + j * H,
                                   small.output.begin() + (j + 1) * H, big.output.begin() + t * H))
                << "token " << t << " changed with its batch";
            continue;
          }
          for (int64_t k = 0; k < K; ++k) {
            const int32_t row_small = small.expanded_idx_to_permuted_idx[j * K + k];
            const int32_t row_big = big.expanded_idx_to_permuted_idx[t * K + k];
            ASSERT_EQ(row_small >= 0, row_big >= 0);
            if (row_small < 0) continue;
            EXPECT_TRUE(std::equal(small.gemm2_output.begin() + int64_t{row_small} * H,
                                   small.gemm2_output.begin() + (int64_t{row_small} + 1) * H,
                                   big.gemm2_output.begin() + int64_t{row_big} * H))
                << "token " << t << " slot " << k << " changed with its batch";
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Sizes: T = 65536, H = 7168, K = 8 - y and gemm2_output hold T*K*H = 3.8e9 > 2^31 elements, so
// any 32-bit row * H product would land rows far from where they belong. Tokens far into the
// batch, and rows at the end of gemm2_output, against the CPU reference for just those tokens.
// ------------------------------------------------------------------------------------------------
TEST(GpuSizes, RowsFarIntoALargeBatchMatchReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  constexpr int64_t T = 65536, H = 7168, I = 128;
  constexpr int32_t E = 16, K = 8;
  MoeShape shape = make_shape(T, H, I, E, K);
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size(shape, &bytes).ok());
  size_t free_bytes = 0, total_bytes = 0;
  check_cuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  const size_t rows_bytes = static_cast<size_t>(T) * K * H * 2;
  if (free_bytes < bytes + rows_bytes + (size_t{4} << 30)) {
    GTEST_SKIP() << "needs " << ((bytes + rows_bytes) >> 30) << " GiB of device memory";
  }

  DeviceArray<uint16_t> x(T * H), w1(int64_t{E} * 2 * I * H), w2(int64_t{E} * H * I);
  fill_uniform_bf16(x, 2001, -1.0f, 1.0f);
  fill_uniform_bf16(w1, 2002, -2.0f / std::sqrt(float(H)), 2.0f / std::sqrt(float(H)));
  fill_uniform_bf16(w2, 2003, -2.0f / std::sqrt(float(I)), 2.0f / std::sqrt(float(I)));
  Rng rng(2004);
  const std::vector<float> logits = random_fp32(rng, T * E, -4.0f, 4.0f);
  DeviceArray<float> d_logits(logits);
  DeviceArray<uint16_t> output(T * H), rows(T * K * H), weights(T * K);
  DeviceArray<int32_t> map(T * K);
  DeviceArray<int16_t> replay(T * K);
  DeviceArray<uint8_t> workspace(bytes);
  output.fill_bytes(0xFF);
  rows.fill_bytes(0xFF);
  map.fill_bytes(0xFF);
  workspace.fill_bytes(0xFF);

  MoeArguments args;
  args.shape = shape;
  args.hidden_states = x.get();
  args.gemm1_weights = w1.get();
  args.gemm2_weights = w2.get();
  args.logits.logits = d_logits.get();
  args.logits.method = RoutingMethod::kRenormalize;
  args.routing_replay_out = replay.get();
  args.output = output.get();
  ASSERT_TRUE(run(args, workspace.get(), bytes, nullptr).ok());
  args.do_finalize = false;
  args.output = nullptr;
  args.gemm2_output = rows.get();
  args.expert_weights = weights.get();
  args.expanded_idx_to_permuted_idx = map.get();
  ASSERT_TRUE(run(args, workspace.get(), bytes, nullptr).ok());
  check_cuda(cudaDeviceSynchronize(), "run");

  // Routing and the whole permutation on the host (cheap), bitwise.
  LogitsRouting host_logits = args.logits;
  host_logits.logits = logits.data();
  const ref::Routing routing = ref::route_reference(host_logits, T, E, K, DType::kBF16);
  const ref::Permutation perm = ref::permute_reference(routing.ids, 0, E);
  const std::vector<int16_t> got_ids = replay.download();
  for (int64_t i = 0; i < T * K; ++i) {
    ASSERT_EQ(got_ids[i], routing.ids[i]) << "slot " << i;
  }
  const std::vector<int32_t> got_map = map.download();
  ASSERT_EQ(first_difference(got_map, perm.expanded_idx_to_permuted_idx), -1);

  // Tokens far into the batch (and the first), plus the tokens owning the last rows of y.
  std::vector<int64_t> tokens = {0, 40000, 59999, T - 2, T - 1};
  for (int64_t p : {perm.num_local() - 1, perm.num_local() - 129, int64_t{300000}}) {
    tokens.push_back(perm.permuted_slots[p] / K);
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::vector<uint16_t> all_w1 = w1.download(), all_w2 = w2.download();
  std::vector<uint16_t> sub_x(n * H), sub_out(n * H), sub_rows(n * K * H), sub_weights(n * K);
  std::vector<int32_t> sub_ids(n * K), sub_map(n * K);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<uint16_t> row = download(x.get() + tokens[i] * H, H);
    std::copy(row.begin(), row.end(), sub_x.begin() + i * H);
    for (int k = 0; k < K; ++k) {
      sub_ids[i * K + k] = routing.ids[tokens[i] * K + k];
      sub_weights[i * K + k] = float_to_bf16_bits(routing.weights[tokens[i] * K + k]);
    }
  }
  // The same tokens as an unpacked routed call on the CPU (weights as the GPU used them).
  MoeArguments sub;
  sub.shape = make_shape(n, H, I, E, K);
  sub.hidden_states = sub_x.data();
  sub.gemm1_weights = all_w1.data();
  sub.gemm2_weights = all_w2.data();
  sub.routed.topk_ids = sub_ids.data();
  sub.routed.topk_weights = sub_weights.data();
  sub.routed.weights_dtype = DType::kBF16;
  sub.output = sub_out.data();
  ASSERT_TRUE(run_reference(sub).ok());
  sub.do_finalize = false;
  sub.output = nullptr;
  sub.gemm2_output = sub_rows.data();
  std::vector<uint16_t> sub_weights_out(n * K);
  sub.expert_weights = sub_weights_out.data();
  sub.expanded_idx_to_permuted_idx = sub_map.data();
  ASSERT_TRUE(run_reference(sub).ok());

  // y is bf16(dot over I = 128) and the output a K-term sum of it: the GPU's different GEMM
  // summation order stays within a few bf16 ulps of the reference's.
  for (int64_t i = 0; i < n; ++i) {
    SCOPED_TRACE("token " + std::to_string(tokens[i]));
    const std::vector<uint16_t> ours = download(output.get() + tokens[i] * H, H);
    double worst = 0.0, scale = 0.0;
    for (int64_t h = 0; h < H; ++h) {
      const double want = bf16_bits_to_float(sub_out[i * H + h]);
      scale = std::max(scale, std::abs(want));
      worst = std::max(worst, std::abs(bf16_bits_to_float(ours[h]) - want));
      ASSERT_TRUE(std::isfinite(bf16_bits_to_float(ours[h]))) << "column " << h;
    }
    EXPECT_LE(worst, 0.02 * scale + 1e-3) << "output row";
    for (int k = 0; k < K; ++k) {
      const int64_t p = got_map[tokens[i] * K + k];
      const std::vector<uint16_t> y = download(rows.get() + p * H, H);
      const uint16_t* want = sub_rows.data() + int64_t{sub_map[i * K + k]} * H;
      double y_worst = 0.0, y_scale = 0.0;
      for (int64_t h = 0; h < H; ++h) {
        y_scale = std::max<double>(y_scale, std::abs(bf16_bits_to_float(want[h])));
        y_worst = std::max<double>(
            y_worst, std::abs(bf16_bits_to_float(y[h]) - bf16_bits_to_float(want[h])));
      }
      EXPECT_LE(y_worst, 0.02 * y_scale + 1e-3) << "gemm2_output row " << p;
    }
  }
}

}  // namespace
}  // namespace fusedmoe::test
