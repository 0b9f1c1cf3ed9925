// GPU tests of the FP8 block-scale variant (docs/fp8.md): run() against run_reference() on the
// same e4m3 weights for every routing input, several methods, activations with their options and
// biases, expert windows, both do_finalize modes, e4m3 and bf16 hidden states, decode and prefill
// sizes; the quantiser kernel bitwise against the reference's rule; reruns (with and without PDL)
// bitwise. Skips when no GPU is present. (The whole operator against an independent float64
// model, on the GPU too: tests/python/test_fp8.py.)
//
// Hopper's FP8 tensor cores add a 128-deep block's products with reduced precision (about 14
// bits kept), so GEMM1 differs from the reference's fp32 sums by ~1e-4 relative; the activation's
// bf16 rounding and e4m3 re-quantisation turn that into different codes for some activations (a
// whole group's when its largest element rounds the other way). Measured on an H200, rows move by
// up to ~4 % and whole outputs by ~0.5 % (docs/fp8.md "Accuracy on the GPU"). The operator is
// therefore compared by norms: relative Frobenius error <= 1e-2 overall and <= 0.1 in every row
// (a wrong scale, block or row moves its rows by tens of per cent), while the GEMM kernels alone
// are held bitwise on problems whose arithmetic is exact (GpuFp8.*IsExactOnIntegerProblems*).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/fp8_case.h"
#include "common/gpu_buffers.h"
#include "common/host_data.h"
#include "common/moe_case.h"
#include "common/tolerance.h"
#include "decode_heuristics.h"
#include "device/e4m3_divisor.cuh"
#include "fusedmoe/fusedmoe.h"
#include "launch/fp8_gemm.h"
#include "launch/pipeline.h"
#include "reference/bf16.h"
#include "reference/fp8.h"

namespace fusedmoe::test {
namespace {

#define FUSEDMOE_SKIP_WITHOUT_GPU() \
  if (!gpu_available()) GTEST_SKIP() << "no CUDA device"

// Device copies of a host MoeArguments of an FP8 case; outputs come back with download().
class DeviceFp8Call {
 public:
  DeviceFp8Call(Fp8Case& f, bool fp8_input) : f_(f) {
    const MoeArguments host = f.arguments(fp8_input);
    const MoeShape& s = host.shape;
    const int64_t T = s.num_tokens, H = s.hidden_size, I = s.intermediate_size;
    const int64_t E = s.num_experts, K = s.top_k, L = s.local_num_experts;
    const int64_t N1 = f.c.gemm1_rows();
    args_ = host;
    args_.hidden_states = fp8_input ? up(host.hidden_states, T * H) : up(host.hidden_states, T * H * 2);
    args_.hidden_states_scale =
        static_cast<const float*>(fp8_input ? up(host.hidden_states_scale, (H / 128) * T * 4) : nullptr);
    args_.gemm1_weights = up(host.gemm1_weights, L * N1 * H);
    args_.gemm2_weights = up(host.gemm2_weights, L * H * I);
    args_.gemm1_weights_scale =
        static_cast<const float*>(up(host.gemm1_weights_scale, L * (N1 / 128) * (H / 128) * 4));
    args_.gemm2_weights_scale =
        static_cast<const float*>(up(host.gemm2_weights_scale, L * (H / 128) * (I / 128) * 4));
    const auto bytes_of = [](DType d) { return d == DType::kFP32 ? 4 : 2; };
    if (host.logits.logits) {
      args_.logits.logits = up(host.logits.logits, T * E * bytes_of(host.logits.logits_dtype));
      args_.logits.bias = up(host.logits.bias, E * bytes_of(host.logits.bias_dtype));
    } else {
      args_.routed.topk_ids = static_cast<const int32_t*>(up(host.routed.topk_ids, T * K * 4));
      args_.routed.topk_weights =
          up(host.routed.topk_weights, T * K * bytes_of(host.routed.weights_dtype));
    }
    args_.gemm1_alpha = static_cast<const float*>(up(host.gemm1_alpha, L * 4));
    args_.gemm1_beta = static_cast<const float*>(up(host.gemm1_beta, L * 4));
    args_.gemm1_clamp_limit = static_cast<const float*>(up(host.gemm1_clamp_limit, L * 4));
    args_.gemm1_bias = up(host.gemm1_bias, L * N1 * bytes_of(host.gemm1_bias_dtype));
    args_.gemm2_bias = up(host.gemm2_bias, L * H * bytes_of(host.gemm2_bias_dtype));
    args_.output = out(host.output, T * H * 2);
    args_.gemm2_output = out(host.gemm2_output, T * K * H * 2);
    args_.expert_weights = out(host.expert_weights, T * K * bytes_of(host.expert_weights_dtype));
    args_.expanded_idx_to_permuted_idx =
        static_cast<int32_t*>(out(host.expanded_idx_to_permuted_idx, T * K * 4));
    args_.routing_replay_out = static_cast<int16_t*>(out(host.routing_replay_out, T * K * 2));
  }

  Status run(bool enable_pdl) {
    size_t bytes = 0;
    if (Status s = workspace_size(args_.shape, DType::kFP8E4M3, &bytes); !s.ok()) return s;
    DeviceArray<uint8_t> workspace(std::max<size_t>(bytes, 1));
    workspace.fill_bytes(0xFF);  // the pipeline must not depend on a clean workspace
    MoeArguments a = args_;
    a.enable_pdl = enable_pdl;
    const Status status = fusedmoe::run(a, workspace.get(), bytes, nullptr);
    check_cuda(cudaGetLastError(), "run");
    check_cuda(cudaDeviceSynchronize(), "run (async)");
    return status;
  }

  // Every device output set to 0xFF bytes again (NaN for bf16), so that a rerun that leaves a row
  // unwritten cannot pass for the earlier run's.
  void poison_outputs() {
    for (const auto& [host, device, bytes] : outputs_) {
      check_cuda(cudaMemset(device, 0xFF, bytes), "poison");
    }
  }

  // Device outputs into the case's host output buffers.
  void download() {
    for (const auto& [host, device, bytes] : outputs_) {
      check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost), "download");
    }
  }

 private:
  void* up(const void* host, int64_t bytes) {
    if (host == nullptr) return nullptr;
    buffers_.emplace_back(static_cast<size_t>(std::max<int64_t>(bytes, 1)));
    if (bytes > 0) {
      check_cuda(cudaMemcpy(buffers_.back().get(), host, bytes, cudaMemcpyHostToDevice), "upload");
    }
    return buffers_.back().get();
  }
  void* out(void* host, int64_t bytes) {
    if (host == nullptr) return nullptr;
    void* device = up(host, bytes);  // the host buffer's (poisoned) contents
    outputs_.push_back({host, device, static_cast<size_t>(bytes)});
    return device;
  }

  struct Output {
    void* host;
    void* device;
    size_t bytes;
  };
  Fp8Case& f_;
  MoeArguments args_;
  std::vector<DeviceArray<uint8_t>> buffers_;
  std::vector<Output> outputs_;
};

// The returned expert_weights against the reference's: bitwise for routed input (passed through),
// within an ulp of bf16 or four of fp32 for logits (the device's exp is not the host's expf).
// The outputs start poisoned (NaN), so a slot left unwritten fails.
void expect_expert_weights(const MoeCase& gpu, const MoeCase& cpu, bool from_logits) {
  const std::vector<float> ours = gpu.expert_weights_as_float();
  const std::vector<float> ref = cpu.expert_weights_as_float();
  ASSERT_EQ(ours.size(), ref.size());
  ASSERT_FALSE(ref.empty());
  const bool fp32 = gpu.expert_weights_dtype() == DType::kFP32;
  const int mantissa_bits = fp32 ? 23 : 7;
  const float ulps = from_logits ? (fp32 ? 4.0f : 1.0f) : 0.0f;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(ref[i])) << "expert_weights[" << i << "]: reference";
    const float ulp = ref[i] == 0.0f ? 0.0f : std::ldexp(1.0f, std::ilogb(ref[i]) - mantissa_bits);
    ASSERT_LE(std::abs(ours[i] - ref[i]), ulps * ulp)
        << "expert_weights[" << i << "]: " << ours[i] << " vs " << ref[i];
  }
}

// The rule above for bf16 rows of `cols` values against the reference's.
void expect_close_fp8(const std::vector<uint16_t>& gpu, const std::vector<uint16_t>& cpu,
                      int64_t cols, const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double diff2 = 0.0, norm2 = 0.0, worst_row = 0.0;
  for (size_t row = 0; row * cols < gpu.size(); ++row) {
    double row_diff2 = 0.0, row_norm2 = 0.0;
    for (size_t i = row * cols; i < (row + 1) * cols; ++i) {
      const double a = detail::bf16_bits_to_float(gpu[i]), b = detail::bf16_bits_to_float(cpu[i]);
      ASSERT_TRUE(std::isfinite(a) || !std::isfinite(b)) << what << ": non-finite at " << i;
      row_diff2 += (a - b) * (a - b);
      row_norm2 += b * b;
    }
    if (row_norm2 == 0.0) {
      EXPECT_EQ(row_diff2, 0.0) << what << ": row " << row << " must be zeros";
    } else {
      worst_row = std::max(worst_row, std::sqrt(row_diff2 / row_norm2));
    }
    diff2 += row_diff2;
    norm2 += row_norm2;
  }
  if (norm2 > 0.0) EXPECT_LE(std::sqrt(diff2 / norm2), 1e-2) << what;
  EXPECT_LE(worst_row, 0.1) << what;
}

struct Fp8Spec {
  const char* name;
  int64_t T, H, I;
  int32_t E, K, offset, local;
  RoutingInput input = RoutingInput::kLogits;
  RoutingMethod method = RoutingMethod::kRenormalize;
  Activation activation = Activation::kSwiglu;
  bool options = false;  // activation parameters and fp32 expert biases
  bool do_finalize = true;
  bool fp8_input = false;
  bool with_bias = false;  // a routing bias (MiniMax2; DeepSeekV3 always has one), scale 2.5
  DType logits_dtype = DType::kFP32;
};

MoeCaseConfig config_of(const Fp8Spec& spec, uint64_t seed) {
  MoeCaseConfig cfg;
  cfg.shape = make_shape(spec.T, spec.H, spec.I, spec.E, spec.K);
  cfg.shape.local_expert_offset = spec.offset;
  cfg.shape.local_num_experts = spec.local;
  cfg.routing_input = spec.input;
  cfg.method = spec.method;
  if (spec.method == RoutingMethod::kDeepSeekV3) {
    cfg.n_group = 4;
    cfg.topk_group = 2;
    cfg.with_bias = true;
    cfg.routed_scaling_factor = 2.5f;
  }
  if (spec.with_bias) {
    cfg.with_bias = true;
    cfg.routed_scaling_factor = 2.5f;
  }
  cfg.logits_dtype = spec.logits_dtype;
  if (spec.input == RoutingInput::kUnpacked) cfg.routed_weights_dtype = DType::kFP32;
  cfg.activation = spec.activation;
  cfg.with_activation_params = spec.options;
  cfg.with_expert_biases = spec.options;
  cfg.expert_bias_dtype = DType::kFP32;
  cfg.do_finalize = spec.do_finalize;
  cfg.with_replay = true;
  cfg.seed = seed;
  return cfg;
}

void check_spec(const Fp8Spec& spec, uint64_t seed) {
  SCOPED_TRACE(spec.name);
  const MoeCaseConfig cfg = config_of(spec, seed);
  Fp8Case cpu(cfg), gpu(cfg);
  if (spec.fp8_input) {
    cpu.quantize_hidden_states();
    gpu.quantize_hidden_states();
  }
  ASSERT_TRUE(run_reference(cpu.arguments(spec.fp8_input)).ok());
  gpu.c.poison_outputs();
  DeviceFp8Call call(gpu, spec.fp8_input);
  const Status status = call.run(/*enable_pdl=*/false);
  ASSERT_TRUE(status.ok()) << status.message;
  call.download();
  EXPECT_EQ(first_difference(gpu.c.routing_replay_out, cpu.c.routing_replay_out), -1)
      << "routing ids";
  // The values of the rows the map names (slots outside the window map to -1); gemm2_output's
  // rows past them are not written.
  const int64_t rows = spec.H * std::count_if(cpu.c.expanded_idx_to_permuted_idx.begin(),
                                              cpu.c.expanded_idx_to_permuted_idx.end(),
                                              [](int32_t p) { return p >= 0; });
  if (spec.do_finalize) {
    expect_close_fp8(gpu.c.output, cpu.c.output, spec.H, "output");
  } else {
    EXPECT_EQ(first_difference(gpu.c.expanded_idx_to_permuted_idx,
                               cpu.c.expanded_idx_to_permuted_idx),
              -1)
        << "permutation map";
    expect_expert_weights(gpu.c, cpu.c, spec.input == RoutingInput::kLogits);
    std::vector<uint16_t> g(gpu.c.gemm2_output.begin(), gpu.c.gemm2_output.begin() + rows);
    std::vector<uint16_t> r(cpu.c.gemm2_output.begin(), cpu.c.gemm2_output.begin() + rows);
    if (rows > 0) expect_close_fp8(g, r, spec.H, "gemm2_output");
  }
  // Reruns, with and without PDL, are bitwise the first run (into outputs poisoned again, with
  // 0xFF bytes where the first run's held the host's poison: so only the rows a run writes).
  const auto written = [&] {
    const std::vector<uint16_t>& all = spec.do_finalize ? gpu.c.output : gpu.c.gemm2_output;
    return spec.do_finalize ? all : std::vector<uint16_t>(all.begin(), all.begin() + rows);
  };
  const std::vector<uint16_t> first = written();
  call.poison_outputs();
  ASSERT_TRUE(call.run(/*enable_pdl=*/true).ok());
  call.download();
  EXPECT_EQ(first_difference(written(), first), -1) << "rerun with PDL not bitwise";
}

TEST(GpuFp8, MatchesReferenceAcrossInputsActivationsAndWindows) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const Fp8Spec specs[] = {
      {"decode renormalize", 4, 512, 256, 16, 2, 0, 16},
      {"prefill renormalize", 600, 512, 384, 8, 2, 0, 8},
      {"deepseek window", 96, 768, 256, 16, 4, 4, 8, RoutingInput::kLogits,
       RoutingMethod::kDeepSeekV3},
      {"packed", 64, 256, 128, 8, 2, 0, 8, RoutingInput::kPacked},
      {"unpacked fp32 triple", 64, 256, 256, 8, 2, 2, 4, RoutingInput::kUnpacked,
       RoutingMethod::kRenormalize, Activation::kSwiglu, false, /*do_finalize=*/false},
      {"gpt-oss-like swiglu options", 96, 384, 256, 8, 2, 0, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kSwiglu, true},
      {"relu2 non-gated biases", 96, 256, 384, 8, 2, 0, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kRelu2, true},
      {"geglu", 40, 256, 128, 4, 1, 0, 4, RoutingInput::kLogits, RoutingMethod::kRenormalize,
       Activation::kGeglu},
      {"e4m3 input", 200, 512, 256, 8, 2, 0, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kSwiglu, false, true, /*fp8_input=*/true},
      {"empty window", 8, 256, 128, 64, 2, 60, 4},
      // Decode sizes (the decode GEMMs, decode_heuristics.h) with the general epilogues.
      {"decode gpt-oss-like options", 3, 384, 256, 8, 2, 0, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kSwiglu, true},
      {"decode relu2 biases unfinalized", 2, 256, 384, 8, 2, 0, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kRelu2, true, /*do_finalize=*/false},
      {"decode window e4m3 input", 5, 512, 256, 16, 4, 4, 8, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kSwiglu, false, true, /*fp8_input=*/true},
      // Prefill sizes with the general epilogues, unfinalized and in a window: the grouped FP8
      // GEMMs with claimed tiles (H, I >= 1024, at most 192 rows per expert) at 132 SMs.
      {"prefill claimed gpt-oss-like options", 600, 1024, 1024, 8, 2, 0, 8,
       RoutingInput::kLogits, RoutingMethod::kRenormalize, Activation::kSwiglu, true},
      {"prefill claimed relu2 biases unfinalized", 600, 1024, 1024, 8, 2, 0, 8,
       RoutingInput::kLogits, RoutingMethod::kRenormalize, Activation::kRelu2, true,
       /*do_finalize=*/false},
      {"prefill claimed geglu window", 600, 1024, 1024, 8, 2, 2, 4, RoutingInput::kLogits,
       RoutingMethod::kRenormalize, Activation::kGeglu, false, true},
  };
  uint64_t seed = 4000;
  for (const Fp8Spec& spec : specs) check_spec(spec, ++seed);
}

// Every routing method from logits, fp32 and bf16, in a window of half the experts, at a decode
// size (the block routing kernel quantises x, the decode GEMMs) and past the block routing's
// limit (the warp routing kernel, then the x quantiser), finalized and not: the routing is the
// BF16 operator's, and what the FP8 operator adds after it (x quantised by the routing kernels or
// the quantiser, the weights' scales) must hold for each method's ids and weights.
TEST(GpuFp8, EveryRoutingMethodMatchesTheReference) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  struct MethodShape {
    RoutingMethod method;
    int32_t num_experts, top_k;
  };
  const MethodShape methods[] = {
      {RoutingMethod::kDefault, 16, 4},          {RoutingMethod::kRenormalize, 128, 8},
      {RoutingMethod::kDeepSeekV3, 256, 8},      {RoutingMethod::kLlama4, 16, 1},
      {RoutingMethod::kRenormalizeNaive, 64, 4}, {RoutingMethod::kTopK, 16, 4},
      {RoutingMethod::kSigmoidRenorm, 64, 8},    {RoutingMethod::kMiniMax2, 256, 8},
      {RoutingMethod::kSigmoid, 16, 4},          {RoutingMethod::kTopKSigmoid, 128, 10},
  };
  static_assert(sizeof(methods) / sizeof(methods[0]) == kNumRoutingMethods, "every method");
  static_assert(5 <= heuristics::kBlockRouteMaxTokens && 300 > heuristics::kBlockRouteMaxTokens,
                "one token count per routing kernel");
  uint64_t seed = 4400;
  int variant = 0;
  for (const MethodShape& m : methods) {
    for (const int64_t T : {5, 300}) {
      const std::string name = std::string(routing_method_name(m.method)) + " T " +
                               std::to_string(T);
      Fp8Spec spec{name.c_str(), T, 256, 128, m.num_experts, m.top_k, m.num_experts / 4,
                   m.num_experts / 2, RoutingInput::kLogits, m.method};
      spec.do_finalize = variant % 2 == 0;
      spec.logits_dtype = variant % 3 == 1 ? DType::kBF16 : DType::kFP32;
      spec.with_bias = m.method == RoutingMethod::kMiniMax2;
      ++variant;
      check_spec(spec, ++seed);
    }
  }
}

TEST(GpuFp8, HiddenStatesInE4m3GiveTheBf16InputsResultBitwise) {
  // The bf16 input is quantised on the GPU, the e4m3 input by the reference's rule on the host:
  // bitwise equal outputs mean the GPU quantises exactly as the rule says, wherever it does so:
  // the quantiser kernel (T = 300 from logits), the block routing kernel (T <= 256 from logits)
  // and the routed ids' kernel (packed ids), the last two with PDL as run() launches them.
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const Fp8Spec specs[] = {
      {"e4m3 vs bf16, quantiser", 300, 640, 256, 8, 2, 0, 8},
      {"e4m3 vs bf16, block routing", 13, 640, 256, 8, 2, 0, 8},
      {"e4m3 vs bf16, routed ids", 9, 1024, 256, 16, 4, 0, 16, RoutingInput::kPacked},
  };
  uint64_t seed = 77;
  for (const Fp8Spec& spec : specs) {
    SCOPED_TRACE(spec.name);
    const MoeCaseConfig cfg = config_of(spec, ++seed);
    Fp8Case from_bf16(cfg), from_fp8(cfg);
    from_fp8.quantize_hidden_states();
    DeviceFp8Call a(from_bf16, false), b(from_fp8, true);
    ASSERT_TRUE(a.run(true).ok());
    ASSERT_TRUE(b.run(true).ok());
    a.download();
    b.download();
    EXPECT_EQ(first_difference(from_bf16.c.output, from_fp8.c.output), -1);
  }
}

// ---- the FP8 GEMM kernels alone, on problems whose arithmetic is exact ---------------------------
// Operands are small integers (e4m3 codes of -2..2) with power-of-two scales, so every 128-deep
// block sum is an exact integer (|sum| <= 512) whatever order the tensor cores add in, and every
// promotion fma(sa * sw, sum, acc) is exact: the fp32 result is unique, and the kernels must give
// its bf16 rounding bitwise (GEMM2; a non-gated GEMM1 with ReLU^2, whose g * g rounds the same way
// on both sides) or within one bf16 step of it (gated GEMM1: __expf in the GPU's SiLU). A wrong
// row, column, K block, scale or expert moves whole blocks by integers times their scales.
// Many tiles per CTA, experts with no rows, a gathered A, both tile schedules of the grouped
// kernels (static, claimed) and the decode kernels (the same problems: they serve any routing,
// re-reading an expert's weights per 16 rows) are covered. The decode kernels promote per
// 64-deep half block and add the warps' sums: still exact here. With top_k > 0 the rows come
// from kKeySlots slot keys instead, the input of the decode kernels' early start: a key per slot,
// uniform over the experts and one value past them (a slot of another shard); expert e's rows are
// its slots in slot order (the sort's stable order) and a gathered row's A row is its token,
// slot / top_k.
struct ExactGemmProblem {
  static constexpr int32_t kKeySlots = 200;
  int64_t k, n, a_rows;
  int32_t experts;
  int32_t top_k = 0;
  std::vector<int32_t> offsets, gather;  // gather empty: row p of A is p
  std::vector<int32_t> keys;             // [kKeySlots] with top_k > 0, else empty
  std::vector<uint8_t> a, b;             // e4m3 codes
  std::vector<float> a_scale, b_scale;   // [k / 128, a_rows], [experts, n / 128, k / 128]

  ExactGemmProblem(int64_t k_, int64_t n_, int32_t experts_, bool gathered, uint64_t seed,
                   int32_t top_k_ = 0)
      : k(k_), n(n_), experts(experts_), top_k(top_k_) {
    uint64_t state = seed;
    auto next = [&state](uint32_t range) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<uint32_t>((state >> 33) % range);
    };
    offsets.assign(experts + 1, 0);
    if (top_k > 0) {
      keys.resize(kKeySlots);
      for (int32_t& key : keys) key = static_cast<int32_t>(next(uint32_t(experts) + 1));
      for (const int32_t key : keys) {
        if (key < experts) ++offsets[key + 1];
      }
      for (int32_t e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
    } else {
      for (int32_t e = 0; e < experts; ++e) {
        const int32_t count = e % 5 == 3 ? 0 : static_cast<int32_t>(next(300));  // some empty
        offsets[e + 1] = offsets[e] + count;
      }
    }
    const int64_t rows = offsets[experts];
    a_rows = !gathered ? rows : top_k > 0 ? (kKeySlots + top_k - 1) / top_k : 97;
    if (gathered) {
      gather.resize(rows);
      if (top_k > 0) {
        std::vector<int32_t> at(offsets.begin(), offsets.end() - 1);
        for (int32_t slot = 0; slot < kKeySlots; ++slot) {
          if (keys[slot] < experts) gather[at[keys[slot]]++] = slot / top_k;
        }
      } else {
        for (int32_t& g : gather) g = static_cast<int32_t>(next(static_cast<uint32_t>(a_rows)));
      }
    }
    auto code = [&next]() { return detail::float_to_e4m3(static_cast<float>(next(5)) - 2.0f); };
    auto power = [&next]() { return std::ldexp(1.0f, -static_cast<int>(next(4))); };
    a.resize(a_rows * k);
    for (uint8_t& v : a) v = code();
    b.resize(int64_t(experts) * n * k);
    for (uint8_t& v : b) v = code();
    a_scale.resize((k / 128) * a_rows);
    for (float& s : a_scale) s = power();
    b_scale.resize(int64_t(experts) * (n / 128) * (k / 128));
    for (float& s : b_scale) s = power();
  }
  int64_t rows() const { return offsets[experts]; }
  int32_t expert_of(int64_t p) const {
    int32_t e = 0;
    while (offsets[e + 1] <= p) ++e;
    return e;
  }
  // The unique fp32 values [rows, n] (columns = rows of B), from the decoded operands.
  std::vector<float> exact() const {
    std::vector<float> af(a.size()), bf(b.size()), out(rows() * n);
    for (size_t i = 0; i < a.size(); ++i) af[i] = detail::e4m3_to_float(a[i]);
    for (size_t i = 0; i < b.size(); ++i) bf[i] = detail::e4m3_to_float(b[i]);
    for (int64_t p = 0; p < rows(); ++p) {
      const int32_t e = expert_of(p);
      const int64_t row = gather.empty() ? p : gather[p];
      for (int64_t c = 0; c < n; ++c) {
        float acc = 0.0f;
        for (int64_t kb = 0; kb < k / 128; ++kb) {
          const float* x = &af[row * k + kb * 128];
          const float* w = &bf[(int64_t(e) * n + c) * k + kb * 128];
          float sum = 0.0f;  // an integer of at most 512: exact in any order
          for (int i = 0; i < 128; ++i) sum += x[i] * w[i];
          const float scale = a_scale[kb * a_rows + row] *
                              b_scale[(int64_t(e) * (n / 128) + c / 128) * (k / 128) + kb];
          acc = std::fma(scale, sum, acc);
        }
        out[p * n + c] = acc;
      }
    }
    return out;
  }
};

// Which kernel runs a problem: the grouped one with a static or claimed tile schedule, or the
// decode one, from expert_offsets or from the slot keys (its early start; the problem then comes
// from keys: problem_top_k).
enum class Fp8Kernel { kStatic, kClaimed, kDecode, kDecodeEarly };
const char* kernel_name(Fp8Kernel kernel) {
  return kernel == Fp8Kernel::kStatic    ? "grouped, static tiles"
         : kernel == Fp8Kernel::kClaimed ? "grouped, claimed tiles"
         : kernel == Fp8Kernel::kDecode  ? "decode"
                                         : "decode, early start from the slot keys";
}
constexpr Fp8Kernel kFp8Kernels[] = {Fp8Kernel::kStatic, Fp8Kernel::kClaimed, Fp8Kernel::kDecode,
                                     Fp8Kernel::kDecodeEarly};
int32_t problem_top_k(Fp8Kernel kernel) { return kernel == Fp8Kernel::kDecodeEarly ? 8 : 0; }

// What a gated GEMM1 of the grouped kernels writes: the activation quantised per 128-column group,
// codes [rows + 8, inter] and scales [inter / 128, rows + 8] (8 rows past the last expert's, which
// must stay untouched: poisoned 0xFF).
struct QuantisedAct {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

// One launch of an FP8 GEMM kernel on `problem`: its bf16 output [rows + 8, out_cols] (8 rows past
// the last expert's, which must stay untouched: poisoned 0xFFFF). A gated GEMM1 on the grouped
// kernels writes *quantised instead (which must then be given) and returns nothing.
std::vector<uint16_t> run_exact_gemm(const ExactGemmProblem& problem, bool gated, Fp8Kernel kernel,
                                     int64_t out_cols, const detail::GemmEpilogue& epilogue,
                                     QuantisedAct* quantised = nullptr) {
  const bool claim = kernel == Fp8Kernel::kClaimed;
  const bool early = kernel == Fp8Kernel::kDecodeEarly;
  EXPECT_EQ(early, !problem.keys.empty()) << "an early-start problem comes from slot keys";
  DeviceArray<int32_t> offsets(problem.offsets), counters(std::vector<int32_t>{0, 0});
  DeviceArray<int32_t> keys(problem.keys.empty() ? std::vector<int32_t>{0} : problem.keys);
  DeviceArray<int32_t> gather(problem.gather.empty() ? std::vector<int32_t>{0} : problem.gather);
  // A that is not gathered is read by TMA in whole 128-row tiles, up to max_rows (the launchers'
  // contract: a holds max_rows rows): 8 rows of NaN codes past the last expert's, which must not
  // reach a stored output.
  std::vector<uint8_t> a_rows = problem.a;
  if (problem.gather.empty()) a_rows.resize(a_rows.size() + 8 * problem.k, 0x7F);
  DeviceArray<uint8_t> a(a_rows), b(problem.b);
  DeviceArray<float> a_scale(problem.a_scale), b_scale(problem.b_scale);
  const int64_t out_rows = problem.rows() + 8;
  DeviceArray<uint16_t> out(out_rows * out_cols);
  out.fill_bytes(0xFF);
  detail::GroupedRows rows;
  rows.expert_offsets = offsets.get();
  rows.num_experts = problem.experts;
  rows.max_rows = problem.rows() + 8;  // a bound, as the pipeline's T * K is
  rows.tile_counters = claim ? counters.get() : nullptr;
  if (early) {  // the keys' count is the bound (the kernel reads num_slots = max_rows keys)
    const int64_t slots = static_cast<int64_t>(problem.keys.size());
    rows.slot_key = keys.get();
    rows.top_k = problem.top_k;
    rows.max_rows = slots;
    // The launchers' rules must pick the early start here, or this tests nothing new.
    const int64_t grid = heuristics::ceil_div_decode(out_cols, 32) *
                         heuristics::decode_expert_slots(slots, problem.experts);
    EXPECT_TRUE(gated || !problem.gather.empty()
                    ? heuristics::use_decode_early_start(slots, problem.top_k)
                    : heuristics::use_decode_gemm2_early_lookup(slots, problem.top_k, grid));
  }
  const detail::Fp8A fa{a.get(), a_scale.get(), problem.a_rows,
                        problem.gather.empty() ? nullptr : gather.get()};
  const detail::Fp8B fb{b.get(), b_scale.get()};
  auto* y = reinterpret_cast<__nv_bfloat16*>(out.get());
  const bool decode = kernel == Fp8Kernel::kDecode || early;
  const bool quantises = gated && !decode;
  EXPECT_EQ(quantises, quantised != nullptr) << "the grouped gated GEMM1 writes quantised act";
  DeviceArray<uint8_t> codes(quantises ? out_rows * out_cols : 1);
  DeviceArray<float> scales(quantises ? out_cols / 128 * out_rows : 1);
  codes.fill_bytes(0xFF);
  scales.fill_bytes(0xFF);
  const auto gemm2 = decode ? detail::launch_decode_gemm2_fp8 : detail::launch_gemm2_fp8;
  const cudaError_t err =
      !gated ? gemm2(rows, fa, problem.k, problem.n, fb, y, epilogue, false, nullptr)
      : decode
          ? detail::launch_decode_gemm1_fp8(rows, fa, problem.k, problem.n / 2, fb, y, epilogue,
                                            false, nullptr)
          : detail::launch_gemm1_fp8(rows, fa, problem.k, problem.n / 2, fb, codes.get(),
                                     scales.get(), out_rows, epilogue, false, nullptr);
  check_cuda(err, "launch");
  check_cuda(cudaDeviceSynchronize(), "gemm");
  if (claim) {
    EXPECT_EQ(counters.download(), (std::vector<int32_t>{0, 0})) << "tile counters left dirty";
  }
  if (quantises) *quantised = QuantisedAct{codes.download(), scales.download()};
  return out.download();
}

// Rows past the last expert's are never written.
void expect_tail_untouched(const std::vector<uint16_t>& out, int64_t rows, int64_t cols) {
  for (int64_t i = rows * cols; i < static_cast<int64_t>(out.size()); ++i) {
    ASSERT_EQ(out[i], 0xFFFF) << "wrote past the last expert's rows at " << i;
  }
}

// The non-gated kernel (GEMM2, or GEMM1 of a non-gated activation: relu2 on gathered rows) on an
// exact problem: every output bitwise the bf16 rounding of the exact result.
void expect_exact_plain_gemm(const ExactGemmProblem& problem, Fp8Kernel kernel, bool relu2) {
  detail::GemmEpilogue epilogue;
  epilogue.has_activation = relu2;
  epilogue.activation = Activation::kRelu2;
  const std::vector<uint16_t> out = run_exact_gemm(problem, false, kernel, problem.n, epilogue);
  const std::vector<float> exact = problem.exact();
  int64_t mismatches = 0;
  for (int64_t p = 0; p < problem.rows(); ++p) {
    for (int64_t c = 0; c < problem.n; ++c) {
      float v = exact[p * problem.n + c];
      if (relu2) v = v > 0.0f ? v * v : 0.0f;
      const uint16_t want = detail::float_to_bf16_bits(v);
      if (out[p * problem.n + c] != want && ++mismatches <= 5) {
        ADD_FAILURE() << "row " << p << " (expert " << problem.expert_of(p) << ") col " << c
                      << ": got " << detail::bf16_bits_to_float(out[p * problem.n + c])
                      << ", want " << detail::bf16_bits_to_float(want);
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << problem.rows() * problem.n;
  expect_tail_untouched(out, problem.rows(), problem.n);
}

TEST(GpuFp8, Gemm2KernelIsExactOnIntegerProblems) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for (const Fp8Kernel kernel : kFp8Kernels) {
    for (const bool relu2 : {false, true}) {
      SCOPED_TRACE(std::string(kernel_name(kernel)) +
                   (relu2 ? ", non-gated GEMM1 (relu2, gathered)" : ", GEMM2"));
      expect_exact_plain_gemm(
          ExactGemmProblem(512, 768, 23, /*gathered=*/relu2, ++seed, problem_top_k(kernel)), kernel,
          relu2);
    }
  }
}

// K of 1, 2, 3 and 5 blocks of 128: the mainloop's first, last and odd/even K blocks (its
// promotions run one block behind the wgmmas) each end up in the sum exactly once, in order.
TEST(GpuFp8, Gemm2KernelIsExactForEveryKBlockCount) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 30;
  for (const Fp8Kernel kernel : kFp8Kernels) {
    for (const int64_t k : {128, 256, 384, 640}) {
      SCOPED_TRACE(std::string(kernel_name(kernel)) + ", K = " + std::to_string(k));
      expect_exact_plain_gemm(
          ExactGemmProblem(k, 256, 7, /*gathered=*/false, ++seed, problem_top_k(kernel)), kernel,
          false);
    }
  }
}

// The grouped gated kernel's quantised act against the decode kernel's bf16 act on the same exact
// problem (its sums are exact, so both kernels see the same gate and up values and the same SiLU):
// bitwise that act quantised by the reference's rule; and every dequantised value within the e4m3
// and bf16 roundings of SiLU(gate) * up of the exact values, so that the comparison cannot pass on
// two wrong activations alike. Rows past the last expert's stay untouched.
void expect_quantised_gated_gemm(const ExactGemmProblem& problem, Fp8Kernel kernel,
                                 int64_t inter) {
  detail::GemmEpilogue epilogue;
  epilogue.has_activation = true;  // plain SwiGLU
  QuantisedAct got;
  run_exact_gemm(problem, true, kernel, inter, epilogue, &got);
  const std::vector<uint16_t> act = run_exact_gemm(problem, true, Fp8Kernel::kDecode, inter,
                                                   epilogue);
  const std::vector<float> exact = problem.exact();
  const int64_t rows = problem.rows(), out_rows = rows + 8, groups = inter / 128;
  std::vector<float> row(inter), want_scales(groups);
  std::vector<uint8_t> want_codes(inter);
  int64_t mismatches = 0;
  for (int64_t p = 0; p < rows; ++p) {
    for (int64_t j = 0; j < inter; ++j) row[j] = detail::bf16_bits_to_float(act[p * inter + j]);
    detail::quantize_groups_e4m3(row.data(), inter, want_codes.data(), want_scales.data());
    for (int64_t g = 0; g < groups; ++g) {
      const float scale = got.scales[g * out_rows + p];
      if (std::memcmp(&scale, &want_scales[g], 4) != 0 && ++mismatches <= 5) {
        ADD_FAILURE() << "row " << p << " group " << g << ": scale " << scale << ", want "
                      << want_scales[g];
      }
    }
    for (int64_t j = 0; j < inter; ++j) {
      const uint8_t code = got.codes[p * inter + j];
      const float up = exact[p * problem.n + j], gate = exact[p * problem.n + inter + j];
      const float want = gate / (1.0f + std::exp(-gate)) * up;
      const float scale = got.scales[(j / 128) * out_rows + p];
      const float value = detail::e4m3_to_float(code) * scale;
      // e4m3 keeps 3 mantissa bits (half a step: 2^-4 relative, 2^-10 scale for subnormals),
      // on top of the bf16 step of the SiLU's rounding.
      const float bound = std::fabs(want) * (0.0625f + 0.0079f) + scale * 0.001f + 1e-30f;
      if ((code != want_codes[j] || !(std::fabs(value - want) <= bound)) && ++mismatches <= 5) {
        ADD_FAILURE() << "row " << p << " (expert " << problem.expert_of(p) << ") col " << j
                      << ": code " << int(code) << " (" << value << "), want code "
                      << int(want_codes[j]) << " (exact " << want << ")";
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << rows * inter;
  for (int64_t i = rows * inter; i < out_rows * inter; ++i) {
    ASSERT_EQ(got.codes[i], 0xFF) << "wrote codes past the last expert's rows at " << i;
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t p = rows; p < out_rows; ++p) {
      uint32_t bits = 0;
      std::memcpy(&bits, &got.scales[g * out_rows + p], 4);
      ASSERT_EQ(bits, 0xFFFFFFFFu) << "wrote a scale past the last expert's rows: group " << g;
    }
  }
}

// The gated kernel (GEMM1 + SwiGLU) on an exact problem of `inter` act columns: every output
// within one bf16 step of SiLU(gate) * up of the exact values (the grouped kernels' quantised
// output: expect_quantised_gated_gemm).
void expect_exact_gated_gemm(const ExactGemmProblem& problem, Fp8Kernel kernel, int64_t inter) {
  if (kernel == Fp8Kernel::kStatic || kernel == Fp8Kernel::kClaimed) {
    expect_quantised_gated_gemm(problem, kernel, inter);
    return;
  }
  detail::GemmEpilogue epilogue;
  epilogue.has_activation = true;  // plain SwiGLU
  const std::vector<uint16_t> out = run_exact_gemm(problem, true, kernel, inter, epilogue);
  const std::vector<float> exact = problem.exact();
  int64_t mismatches = 0;
  for (int64_t p = 0; p < problem.rows(); ++p) {
    for (int64_t j = 0; j < inter; ++j) {
      const float up = exact[p * problem.n + j], gate = exact[p * problem.n + inter + j];
      const float want = gate / (1.0f + std::exp(-gate)) * up;
      const float got = detail::bf16_bits_to_float(out[p * inter + j]);
      // One bf16 step (2^-7 relative) covers the rounding of a SiLU that differs in its
      // last fp32 bits; a wrong operand moves the value by far more.
      if (!(std::fabs(got - want) <= std::ldexp(std::fabs(want), -7) + 1e-30f) &&
          ++mismatches <= 5) {
        ADD_FAILURE() << "row " << p << " (expert " << problem.expert_of(p) << ") col " << j
                      << ": got " << got << ", want " << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << problem.rows() * inter;
  expect_tail_untouched(out, problem.rows(), inter);
}

// Gathered rows (x by token), and rows in expert order (the prefill GEMM1's x8 after
// launch_permute_fp8_rows: the grouped kernels then load A by TMA).
TEST(GpuFp8, GatedGemm1KernelIsExactOnIntegerProblemsUpToSilu) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  uint64_t seed = 20;
  for (const Fp8Kernel kernel : kFp8Kernels) {
    for (const bool gathered : {true, false}) {
      if (!gathered && kernel == Fp8Kernel::kDecodeEarly) continue;  // starts from gathered keys
      SCOPED_TRACE(std::string(kernel_name(kernel)) + (gathered ? ", gathered" : ", in order"));
      const int64_t inter = 512;
      expect_exact_gated_gemm(
          ExactGemmProblem(384, 2 * inter, 19, gathered, ++seed, problem_top_k(kernel)), kernel,
          inter);
    }
  }
}

// The decode kernels' 2-warp form (decode_heuristics.h: decode_fp8_warps_per_cta), which the
// problems above are too small to reach: grids of at least 8 CTAs per SM at K <= 2048, with as
// many experts as this card needs for that.
TEST(GpuFp8, DecodeKernelsOnTwoWarpsAreExact) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const int sms = num_sms();
  const auto warps = [sms](const ExactGemmProblem& problem, int64_t col_slices) {
    const int64_t slots = heuristics::decode_expert_slots(problem.rows() + 8, problem.experts);
    return heuristics::decode_fp8_warps_per_cta(col_slices * slots, sms, problem.k);
  };
  const int64_t n = 2048, inter = 1024;  // 64 column slices of 32 (GEMM2), of 16 act columns
  const int32_t experts = static_cast<int32_t>(
      heuristics::kDecodeFp8TwoWarpShortKMinCtasPerSm * sms / 64 + 2);  // > 8 CTAs per SM
  {
    SCOPED_TRACE("GEMM2, 2 warps");
    const ExactGemmProblem problem(512, n, experts, /*gathered=*/false, 41);
    ASSERT_EQ(warps(problem, n / 32), 2);
    expect_exact_plain_gemm(problem, Fp8Kernel::kDecode, false);
  }
  {
    SCOPED_TRACE("gated GEMM1, 2 warps");
    const ExactGemmProblem problem(384, 2 * inter, experts, /*gathered=*/true, 42);
    ASSERT_EQ(warps(problem, inter / 16), 2);
    expect_exact_gated_gemm(problem, Fp8Kernel::kDecode, inter);
  }
}

// The quantisation of the quantiser kernel and of the grouped GEMM1 (device::E4m3Divisor: a
// division by a reciprocal, without an IEEE division per value) against the rule's division, for
// every bf16 amax (0, subnormal, normal, inf: every scale a row can have) and every bf16 value v
// with |v| <= amax, both signs, and NaN: the e4m3 codes must be bitwise equal. Block b takes amax
// with bits b.
__global__ void compare_e4m3_divisor_kernel(unsigned long long* mismatches, uint32_t* first) {
  const uint32_t amax_bits = blockIdx.x;
  const float amax = __bfloat162float(__ushort_as_bfloat16(static_cast<uint16_t>(amax_bits)));
  const float scale = __fdiv_rn(amax, 448.0f);
  const device::E4m3Divisor divisor(scale);
  unsigned long long count = 0;
  for (uint32_t m = threadIdx.x; m <= amax_bits + 2; m += blockDim.x) {
    // m <= amax_bits: +v and -v; then two NaNs, of either sign
    const uint32_t lo = m <= amax_bits ? m : (m == amax_bits + 1 ? 0x7FC1u : 0xFFC0u);
    const uint32_t hi = m <= amax_bits ? (m | 0x8000u) : 0x7F81u;
    const uint32_t pair = lo | (hi << 16);
    const uint16_t got = divisor.codes(pair);
    const uint16_t want = device::E4m3Divisor::codes_by_division(pair, scale);
    if (got != want) {
      ++count;
      atomicCAS(first, 0xFFFFFFFFu, (amax_bits << 16) | lo);
    }
  }
  if (count > 0) atomicAdd(mismatches, count);
}

TEST(GpuFp8, EpilogueQuantisationIsTheQuantisersDivisionForEveryBf16Pair) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  DeviceArray<unsigned long long> mismatches(std::vector<unsigned long long>{0});
  DeviceArray<uint32_t> first(std::vector<uint32_t>{0xFFFFFFFFu});
  compare_e4m3_divisor_kernel<<<0x7F81, 256>>>(mismatches.get(), first.get());  // amax to +inf
  check_cuda(cudaGetLastError(), "launch");
  check_cuda(cudaDeviceSynchronize(), "compare");
  const uint32_t at = first.download()[0];
  EXPECT_EQ(mismatches.download()[0], 0u)
      << "first: amax bits 0x" << std::hex << (at >> 16) << ", v bits 0x" << (at & 0xFFFF);
}

// Rows quantised on the GPU (the quantiser kernel, or a routing kernel: RoutingOutputs::x8):
// codes [tokens, hidden] and group-major scales [hidden / 128, tokens] must be the rule's, bitwise.
void expect_quantised_by_rule(const std::vector<uint16_t>& x, int64_t tokens, int64_t hidden,
                              const DeviceArray<uint8_t>& codes, const DeviceArray<float>& scales) {
  const int64_t groups = hidden / kFp8BlockSize;
  const std::vector<uint8_t> got_codes = codes.download();
  const std::vector<float> got_scales = scales.download();
  std::vector<float> row(hidden), expected_scales(groups);
  std::vector<uint8_t> expected_codes(hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t col = 0; col < hidden; ++col) {
      row[col] = detail::bf16_bits_to_float(x[t * hidden + col]);
    }
    detail::quantize_groups_e4m3(row.data(), hidden, expected_codes.data(), expected_scales.data());
    for (int64_t col = 0; col < hidden; ++col) {
      ASSERT_EQ(got_codes[t * hidden + col], expected_codes[col]) << "token " << t << " col " << col;
    }
    for (int64_t g = 0; g < groups; ++g) {
      const float got = got_scales[g * tokens + t];
      ASSERT_EQ(std::memcmp(&got, &expected_scales[g], 4), 0) << "token " << t << " group " << g;
    }
  }
}

TEST(GpuFp8, QuantiserKernelFollowsTheRuleBitwise) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const int64_t rows = 37, cols = 384, groups = cols / 128;
  std::vector<uint16_t> values(rows * cols);
  uint64_t state = 12345;
  for (uint16_t& v : values) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<uint16_t>(state >> 48);  // any bf16 bit pattern: NaN, inf, subnormals
  }
  for (int64_t c = 0; c < 128; ++c) values[3 * cols + c] = 0;  // a group of zeros
  DeviceArray<uint16_t> in(values);
  DeviceArray<uint8_t> codes(rows * cols);
  DeviceArray<float> scales(groups * rows);
  check_cuda(detail::launch_quantize_fp8(reinterpret_cast<const __nv_bfloat16*>(in.get()), rows,
                                         nullptr, cols, codes.get(), scales.get(), rows,
                                         /*trigger_at_start=*/false, false, nullptr),
             "launch_quantize_fp8");
  check_cuda(cudaDeviceSynchronize(), "quantize");
  expect_quantised_by_rule(values, rows, cols, codes, scales);
}

// Any bf16 bit pattern (NaN, inf, subnormals), and a group of zeros.
std::vector<uint16_t> hostile_hidden_states(int64_t tokens, int64_t hidden, uint64_t seed) {
  std::vector<uint16_t> x(tokens * hidden);
  for (uint16_t& v : x) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<uint16_t>(seed >> 48);
  }
  std::fill(x.begin(), x.begin() + kFp8BlockSize, uint16_t{0});
  return x;
}

// Both routing kernels quantise x when given x8 (run() does so for FP8 calls: routed ids at any
// T, logits at block-route sizes): the rule's codes and scales, bitwise, and routing outputs
// bitwise those of the same kernel without x. The block routing cases take fewer groups than its
// routing warps, one group per warp (1024 threads), and two groups per warp; the routed cases
// one block, several, and a T past block routing.
TEST(GpuFp8, RoutingKernelsQuantiseXByTheRuleAndRouteAlike) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  struct Case {
    int64_t tokens, hidden;
    int32_t experts, top_k;
    RoutingMethod method;  // kTopK: routed ids (launch_decode_topk), packed
    int32_t n_group, topk_group;
  };
  const Case cases[] = {
      {1, 256, 128, 8, RoutingMethod::kRenormalize, 0, 0},
      {1, 4096, 8, 2, RoutingMethod::kDefault, 0, 0},
      {5, 2048, 128, 8, RoutingMethod::kRenormalize, 0, 0},
      {3, 7168, 256, 8, RoutingMethod::kDeepSeekV3, 8, 4},
      {heuristics::kBlockRouteMaxTokens, 640, 16, 1, RoutingMethod::kLlama4, 0, 0},
      {1, 2048, 128, 8, RoutingMethod::kTopK, 0, 0},
      {7, 7168, 256, 8, RoutingMethod::kTopK, 0, 0},
      {300, 640, 64, 6, RoutingMethod::kTopK, 0, 0},
  };
  uint64_t state = 2468;
  auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 32);
  };
  for (const Case& c : cases) {
    const bool routed = c.method == RoutingMethod::kTopK;
    SCOPED_TRACE(std::string(routed ? "routed" : "logits") + ", T " + std::to_string(c.tokens) +
                 ", H " + std::to_string(c.hidden) + ", E " + std::to_string(c.experts));
    const int64_t T = c.tokens, H = c.hidden, slots = T * c.top_k;
    ASSERT_TRUE(routed || heuristics::use_block_route(T));
    const std::vector<uint16_t> x = hostile_hidden_states(T, H, next());
    std::vector<float> logits(T * c.experts), bias(c.experts);
    for (float& l : logits) l = static_cast<float>(int32_t(next() % 20001) - 10000) / 2500.0f;
    for (float& b : bias) b = static_cast<float>(next() % 1001) / 1000.0f;
    std::vector<int32_t> packed(slots);  // id in bits 31..16 (some outside [0, E)), bf16 weight
    for (int32_t& word : packed) {
      const int32_t id = static_cast<int32_t>(next() % (c.experts + 4)) - 2;
      word = static_cast<int32_t>((static_cast<uint32_t>(id) << 16) | (0x3C00u + next() % 0x200));
    }
    DeviceArray<uint16_t> x_device(x);
    DeviceArray<float> logits_device(logits), bias_device(bias);
    DeviceArray<int32_t> packed_device(packed);
    MoeShape shape;
    shape.num_tokens = T;
    shape.hidden_size = H;
    shape.intermediate_size = 128;
    shape.num_experts = c.experts;
    shape.top_k = c.top_k;
    shape.local_num_experts = c.experts;
    LogitsRouting routing;
    routing.logits = logits_device.get();
    routing.bias = c.method == RoutingMethod::kDeepSeekV3 ? bias_device.get() : nullptr;
    routing.method = c.method;
    routing.n_group = c.n_group;
    routing.topk_group = c.topk_group;
    routing.routed_scaling_factor = 2.5f;
    RoutedTopK ids;
    ids.topk_ids = packed_device.get();
    DeviceArray<int32_t> keys_plain(slots), keys_x(slots);
    DeviceArray<float> weights_plain(slots), weights_x(slots);
    DeviceArray<uint8_t> codes(T * H);
    DeviceArray<float> scales(H / kFp8BlockSize * T);
    codes.fill_bytes(0xFF);  // poisoned: a (token, group) left unwritten cannot pass
    scales.fill_bytes(0xFF);
    detail::RoutingOutputs plain;
    plain.slot_key = keys_plain.get();
    plain.slot_weight = weights_plain.get();
    detail::RoutingOutputs with_x;
    with_x.slot_key = keys_x.get();
    with_x.slot_weight = weights_x.get();
    with_x.x = reinterpret_cast<const __nv_bfloat16*>(x_device.get());
    with_x.x8 = codes.get();
    with_x.x_scale = scales.get();
    for (const detail::RoutingOutputs* out : {&plain, &with_x}) {
      check_cuda(routed ? detail::launch_decode_topk(shape, ids, *out, false, nullptr)
                        : detail::launch_route(shape, routing, *out, false, nullptr),
                 "routing");
    }
    check_cuda(cudaDeviceSynchronize(), "routing");
    EXPECT_EQ(keys_x.download(), keys_plain.download());
    const std::vector<float> got_weights = weights_x.download();
    const std::vector<float> want_weights = weights_plain.download();
    EXPECT_EQ(std::memcmp(got_weights.data(), want_weights.data(), 4 * got_weights.size()), 0);
    expect_quantised_by_rule(x, T, H, codes, scales);
  }
  // Past block-route sizes the logits routing kernel does not quantise, and says so.
  MoeShape big;
  big.num_tokens = heuristics::kBlockRouteMaxTokens + 1;
  big.hidden_size = 128;
  big.intermediate_size = 128;
  big.num_experts = 8;
  big.top_k = 2;
  big.local_num_experts = 8;
  detail::RoutingOutputs out;
  out.x8 = reinterpret_cast<uint8_t*>(1);
  EXPECT_EQ(detail::launch_route(big, LogitsRouting{}, out, false, nullptr), cudaErrorInvalidValue);
}

// Row p of the output (codes and scales) is input row gather[p], for p below the device limit;
// rows past it stay untouched.
TEST(GpuFp8, PermuteKernelCopiesGatheredRows) {
  FUSEDMOE_SKIP_WITHOUT_GPU();
  const int64_t in_rows = 29, cols = 640, groups = cols / 128, rows = 3 * in_rows, written = 80;
  std::vector<uint8_t> codes(in_rows * cols);
  std::vector<float> scales(groups * in_rows);
  uint64_t state = 777;
  auto next = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  for (uint8_t& c : codes) c = static_cast<uint8_t>(next());
  for (float& s : scales) s = static_cast<float>(next() % 1000 + 1) / 512.0f;
  std::vector<int32_t> gather(rows);
  for (int64_t p = 0; p < rows; ++p) gather[p] = static_cast<int32_t>(next() % in_rows);
  DeviceArray<uint8_t> in_codes(codes), out_codes(rows * cols);
  DeviceArray<float> in_scales(scales), out_scales(groups * rows);
  DeviceArray<int32_t> gather_device(gather), limit(std::vector<int32_t>{int32_t(written)});
  out_codes.fill_bytes(0xAB);
  out_scales.fill_bytes(0xAB);
  const detail::Fp8A in{in_codes.get(), in_scales.get(), in_rows, gather_device.get()};
  check_cuda(detail::launch_permute_fp8_rows(in, rows, limit.get(), cols, out_codes.get(),
                                             out_scales.get(), false, nullptr),
             "launch_permute_fp8_rows");
  check_cuda(cudaDeviceSynchronize(), "permute");
  const std::vector<uint8_t> got_codes = out_codes.download();
  const std::vector<float> got_scales = out_scales.download();
  for (int64_t p = 0; p < rows; ++p) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t want = p < written ? codes[gather[p] * cols + c] : 0xAB;
      ASSERT_EQ(got_codes[p * cols + c], want) << "row " << p << " col " << c;
    }
    for (int64_t g = 0; g < groups; ++g) {
      float want;
      if (p < written) {
        want = scales[g * in_rows + gather[p]];
      } else {
        std::memset(&want, 0xAB, 4);
      }
      ASSERT_EQ(std::memcmp(&got_scales[g * rows + p], &want, 4), 0)
          << "row " << p << " group " << g;
    }
  }
}

}  // namespace
}  // namespace fusedmoe::test
