// fusedmoe: a fused BF16 Mixture-of-Experts feed-forward layer for Hopper (sm_90a).
//
// Public C++ API. The contract is docs/SPEC.md; this header is its
// C++ shape, modelled on CUB:
//   * every entry point returns a Status (code + message naming the argument, expected, actual);
//   * the caller owns the device workspace, sized once by workspace_size() for a maximum T;
//   * concurrency: run() keeps no state between calls, so calls from any number of threads and
//     streams may be in flight at once and give bitwise their serial results, PROVIDED each call
//     in flight has a workspace of its own: one workspace per stream with calls in flight (calls
//     queued on one stream run one after the other and may share one);
//   * no allocation, no host synchronisation and no host-visible data dependence inside run(),
//     so a run() captured in a CUDA graph replays correctly with new inputs;
//   * the stream is the last parameter.
//
// Pointers are raw and tensors are dense row-major (C-contiguous); their shapes follow from
// MoeShape. The binding layers (python/) check framework tensors against these shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

namespace fusedmoe {

// ----------------------------------------------------------------------------------------------
// Status
// ----------------------------------------------------------------------------------------------
enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,    // an argument breaks a rule of SPEC; nothing was written
  kNotImplemented = 2,     // a valid request this build cannot serve (e.g. no GPU kernels)
  kCudaError = 3,          // a CUDA runtime call failed
  kWorkspaceTooSmall = 4,  // workspace_bytes < workspace_size(shape); nothing was written
};

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;  // empty when ok; otherwise "<argument>: expected <x>, got <y>"

  bool ok() const { return code == StatusCode::kOk; }
  static Status Ok() { return {}; }
  static Status Error(StatusCode c, std::string msg) { return {c, std::move(msg)}; }
};

const char* status_code_name(StatusCode code);

// ----------------------------------------------------------------------------------------------
// Element types, routing methods, layouts
// ----------------------------------------------------------------------------------------------
// kFP8E4M3 is float8_e4m3fn (1 sign, 4 exponent, 3 mantissa bits, bias 7, no infinities, largest
// finite 448, NaN 0x7F/0xFF): the FP8 variant's weights and, optionally, hidden states.
enum class DType : int { kBF16 = 0, kFP32 = 1, kFP8E4M3 = 2 };

const char* dtype_name(DType dtype);

// Pinned numbering: identical to FlashInfer's RoutingMethodType values (SPEC "Routing methods").
enum class RoutingMethod : int {
  kDefault = 0,           // top-K of softmax(all E); weights = those probabilities
  kRenormalize = 1,       // top-K of logits; weights = softmax over the K selected logits
  kDeepSeekV3 = 2,        // sigmoid + bias, group-limited top-K; weights = s * scale / (sum s + 1e-20)
  kLlama4 = 3,            // K == 1; argmax of logits; weight = sigmoid(logit)
  kRenormalizeNaive = 4,  // top-K of softmax(all E); weights = p / sum of selected p
  kTopK = 5,              // top-K of logits; weights = raw logits
  kSigmoidRenorm = 6,     // top-K of sigmoid; weights = s / sum of selected s
  kMiniMax2 = 7,          // top-K of sigmoid + bias; weights = s * scale / (sum s + 1e-20)
  kSigmoid = 8,           // top-K of sigmoid; weights = s
  kTopKSigmoid = 9,       // top-K of logits; weights = sigmoid(logit)
};
constexpr int kNumRoutingMethods = 10;

const char* routing_method_name(RoutingMethod method);

// The activation between the two GEMMs: FlashInfer's ActivationType numbers. Gated activations
// read gate and up halves of GEMM1's output g (gemm1 [E_loc, 2I, H], rows [0, I) up, [I, 2I)
// gate); non-gated ones read g itself (gemm1 [E_loc, I, H]). Computed in fp32, rounded once to
// bf16. (FlashInfer's SwigluBias 5, Identity 9 and later values are not offered: an error.)
enum class Activation : int {
  kGelu = 0,        // non-gated: gelu(g) = g/2 (1 + erf(g / sqrt 2))
  kRelu = 1,        // non-gated: max(g, 0)
  kSilu = 2,        // non-gated: g * sigmoid(g)
  kSwiglu = 3,      // gated (default): gate' * sigmoid(alpha * gate') * (up' + beta), with
                    //   gate' = min(gate, limit), up' = clamp(up, -limit, limit)
  kGeglu = 4,       // gated: gelu(gate) * up (erf form)
  kRelu2 = 6,       // non-gated: max(g, 0)^2
  kSwigluStep = 7,  // gated: min(silu(gate), limit) * clamp(up, -limit, limit); limit default 7
  kGegluTanh = 8,   // gated: gelu_tanh(gate) * up, gelu_tanh(v) = v/2 (1 + tanh(sqrt(2/pi) (v +
                    //   0.044715 v^3)))
};

// True for the activations above, false for any other value.
bool is_valid_activation(Activation activation);
// Gated: Swiglu, Geglu, SwigluStep, GegluTanh (gemm1 holds 2I rows per expert).
bool is_gated(Activation activation);
const char* activation_name(Activation activation);

// SwigluStep's clamp limit when gemm1_clamp_limit is not given (the Step-3 models' value).
constexpr float kSwigluStepDefaultLimit = 7.0f;

// Weight layouts. kCanonical is SPEC's: gemm1 [E_loc, 2I, H] (rows [0,I) up, [I,2I) gate),
// gemm2 [E_loc, H, I]. Every path accepts it; prepare_weights() may offer faster ones later.
enum class WeightLayout : int { kCanonical = 0 };

// ----------------------------------------------------------------------------------------------
// Limits (SPEC)
// ----------------------------------------------------------------------------------------------
constexpr int kMaxTopK = 32;
constexpr int kMaxNumExperts = 1024;
constexpr int kSizeMultiple = 8;  // H and I must be multiples of this
// Index-width limits (SPEC's table): device rows are int32, so T * K <= 2^30 keeps every row and
// tile index with headroom, and H, I <= 2^20 keep workspace_size() far from wrapping size_t.
constexpr int64_t kMaxNumSlots = int64_t{1} << 30;    // T * K
constexpr int64_t kMaxFeatureSize = int64_t{1} << 20;  // H and I
// The FP8 variant: 128x128 weight blocks and 1x128 activation groups share one fp32 scale each,
// so H and I must be multiples of 128 there; quantising divides by scale = amax / 448.
constexpr int kFp8BlockSize = 128;
constexpr float kFp8E4M3Max = 448.0f;

// ----------------------------------------------------------------------------------------------
// Packed top-k routing: bits 31..16 = expert id as signed int16, bits 15..0 = bf16 weight bits.
// Encoded with a mask so a negative weight never sign-extends into the id (FlashInfer's defect).
// ----------------------------------------------------------------------------------------------
inline int32_t pack_topk(int32_t expert_id, uint16_t weight_bf16_bits) {
  return static_cast<int32_t>((static_cast<uint32_t>(expert_id) << 16) |
                              (static_cast<uint32_t>(weight_bf16_bits) & 0xFFFFu));
}
inline int32_t unpack_topk_id(int32_t packed) {  // sign-extended int16 id
  return static_cast<int32_t>(static_cast<int16_t>(static_cast<uint32_t>(packed) >> 16));
}
inline uint16_t unpack_topk_weight_bits(int32_t packed) {
  return static_cast<uint16_t>(static_cast<uint32_t>(packed) & 0xFFFFu);
}

// ----------------------------------------------------------------------------------------------
// Problem description
// ----------------------------------------------------------------------------------------------
struct MoeShape {
  int64_t num_tokens = 0;         // T >= 0
  int64_t hidden_size = 0;        // H > 0, H % 8 == 0
  int64_t intermediate_size = 0;  // I > 0, I % 8 == 0
  int32_t num_experts = 0;        // E, 1..1024 (global; ids are in [0, E))
  int32_t top_k = 0;              // K, 1..32 (and K <= E)
  int32_t local_expert_offset = 0;  // first global id held here; 0 <= offset, offset + E_loc <= E
  int32_t local_num_experts = 0;    // E_loc >= 1: experts whose weights this call holds
};

// Routing from logits (SPEC input 1).
struct LogitsRouting {
  const void* logits = nullptr;  // [T, E], logits_dtype
  DType logits_dtype = DType::kFP32;
  const void* bias = nullptr;  // optional [E], bias_dtype (read by DeepSeekV3 and MiniMax2 only)
  DType bias_dtype = DType::kFP32;
  RoutingMethod method = RoutingMethod::kDefault;
  int32_t n_group = 0;     // DeepSeekV3: number of expert groups; 0 = not given (= 1 group)
  int32_t topk_group = 0;  // DeepSeekV3: groups kept; 0 = not given (= n_group)
  float routed_scaling_factor = 1.0f;  // DeepSeekV3 and MiniMax2
};

// Pre-computed routing (SPEC inputs 2 and 3). topk_weights == nullptr means topk_ids is packed.
struct RoutedTopK {
  const int32_t* topk_ids = nullptr;  // [T, K]: packed words, or plain global ids
  const void* topk_weights = nullptr;  // [T, K] in weights_dtype, only for unpacked input
  DType weights_dtype = DType::kBF16;
};

struct MoeArguments {
  MoeShape shape;

  // Inputs (never written).
  const void* hidden_states = nullptr;  // [T, H] bf16 (FP8 variant: or e4m3, see below)
  const void* gemm1_weights = nullptr;  // [E_loc, 2I, H] bf16 (gated), [E_loc, I, H] (non-gated)
  const void* gemm2_weights = nullptr;  // [E_loc, H, I] bf16 (FP8 variant: e4m3 both)
  WeightLayout weight_layout = WeightLayout::kCanonical;

  // The expert MLP: activation, its per-expert parameters and the expert biases (all optional).
  Activation activation = Activation::kSwiglu;
  const float* gemm1_alpha = nullptr;        // [E_loc] fp32, Swiglu only; nullptr: 1
  const float* gemm1_beta = nullptr;         // [E_loc] fp32, Swiglu only; nullptr: 0
  const float* gemm1_clamp_limit = nullptr;  // [E_loc] fp32, Swiglu (nullptr: no clamp) and
                                             // SwigluStep (nullptr: kSwigluStepDefaultLimit)
  // Added to GEMM1's fp32 output before the activation: [E_loc, 2I] (gated, ordered like gemm1's
  // rows: up then gate) or [E_loc, I] (non-gated).
  const void* gemm1_bias = nullptr;
  DType gemm1_bias_dtype = DType::kBF16;
  // Added to GEMM2's fp32 output before it is rounded to bf16 and weighted: [E_loc, H].
  const void* gemm2_bias = nullptr;
  DType gemm2_bias_dtype = DType::kBF16;
  // K == 1 only: the expert computes on bf16(w * x) (the routing weight applied to its input,
  // as Llama 4 does) and its output is not weighted again.
  bool use_routing_scales_on_input = false;

  // The FP8 block-scale variant (FlashInfer's DeepSeekFp8 recipe, docs/SPEC.md "FP8 block-scale
  // variant"). weights_dtype = kFP8E4M3 makes gemm1_weights and gemm2_weights e4m3 bytes (same
  // shapes) with one fp32 scale per 128x128 block, weight = e4m3 value * its block's scale:
  DType weights_dtype = DType::kBF16;          // kBF16 or kFP8E4M3
  const float* gemm1_weights_scale = nullptr;  // FP8: [E_loc, N1 / 128, H / 128], N1 = 2I or I
  const float* gemm2_weights_scale = nullptr;  // FP8: [E_loc, H / 128, I / 128]
  // With FP8 weights the hidden states are bf16 (quantised inside, per token and 128-column group:
  // scale = amax / 448, e4m3 = RNE(x / scale) saturated to +-448) or already e4m3 (kFP8E4M3) with
  // hidden_states_scale [H / 128, T] fp32, group-major (FlashInfer's layout). Both GEMMs promote
  // each 128-deep block's fp32 partial sum by the product of its two scales; GEMM1's activation
  // is rounded to bf16 and quantised the same way before GEMM2. H and I multiples of 128.
  DType hidden_states_dtype = DType::kBF16;    // kBF16, or kFP8E4M3 with FP8 weights
  const float* hidden_states_scale = nullptr;  // [H / 128, T] when hidden_states_dtype is FP8

  // Routing: exactly one of logits.logits and routed.topk_ids is non-null.
  LogitsRouting logits;
  RoutedTopK routed;

  // Precision of the routing weights that are used and returned as expert_weights.
  // Logits input: bf16 (SPEC default) or fp32 on request. Packed input: must be bf16.
  // Unpacked input: must equal routed.weights_dtype (fp32 stays fp32).
  DType expert_weights_dtype = DType::kBF16;

  // Outputs.
  bool do_finalize = true;
  void* output = nullptr;  // do_finalize: [T, H] bf16; every row written
  // !do_finalize: the three intermediates (all required).
  void* gemm2_output = nullptr;    // [permuted_capacity(T, K, E_loc), H] bf16, expert-sorted rows
  void* expert_weights = nullptr;  // [T, K] in expert_weights_dtype
  int32_t* expanded_idx_to_permuted_idx = nullptr;  // [T * K]; -1 for a non-local slot
  int16_t* routing_replay_out = nullptr;  // optional [T, K]: selected global ids

  bool enable_pdl = false;  // programmatic dependent launch between the pipeline's kernels
};

// ----------------------------------------------------------------------------------------------
// Entry points
// ----------------------------------------------------------------------------------------------

// Rows of gemm2_output for a call with T tokens: T * K (each local slot gets one row, expert-sorted,
// no padding). Rows the map does not name are unspecified.
int64_t permuted_capacity(int64_t num_tokens, int32_t top_k, int32_t local_num_experts);

// Checks every rule of SPEC that can be checked without reading device data: shapes, limits,
// exactly one routing input, dtype combinations, required pointers. Does not dereference.
Status validate(const MoeArguments& args);

// Bytes of device workspace that run() needs for this shape; monotone in num_tokens, so sizing
// once with the largest T serves every smaller T. Validates the shape.
Status workspace_size(const MoeShape& shape, size_t* workspace_bytes);
// The same for calls with weights of `weights_dtype` (kBF16: the above; kFP8E4M3: more, for the
// quantised hidden states and activation).
Status workspace_size(const MoeShape& shape, DType weights_dtype, size_t* workspace_bytes);

// The operator on the GPU (device pointers). Asynchronous on `stream`; no allocation, no host
// synchronisation. On a non-ok status nothing has been enqueued and no output written.
// hidden_states, gemm1_weights, gemm2_weights and the workspace must be 16-byte aligned (the
// kernels read them with 16-byte copies; cudaMalloc and PyTorch's allocator give 256 bytes).
// At num_tokens 0 it returns at once: the workspace may then be null and of any size.
// FP8 weights (weights_dtype kFP8E4M3) need workspace_size(shape, kFP8E4M3, ...) bytes.
// The workspace holds the call's routing, permutation and activations until its last kernel has
// run: it must not be used by another call in flight on another stream at the same time (give
// each stream its own; reuse on the same stream is safe, the stream orders the calls). Thread-safe
// otherwise: run() reads no mutable global state.
Status run(const MoeArguments& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The operator on the CPU (host pointers): the reference implementation of SPEC, the truth that
// every GPU path is tested against. Straightforward and slow.
Status run_reference(const MoeArguments& args);

// Result of validate_routing: the first slot (t * K + k) whose id lies outside [0, E), or -1.
struct RoutingCheck {
  int64_t first_bad_slot = -1;
  int32_t bad_id = 0;
};

// Debugging helper (SPEC): reports the first expert id outside [0, E). `topk_ids` is [T, K] and
// packed or plain. Host pointer version:
Status validate_routing_host(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                             int32_t num_experts, bool packed, RoutingCheck* result);
// Device pointer version: synchronous (it waits for `stream`); never use inside graph capture.
Status validate_routing(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                        int32_t num_experts, bool packed, RoutingCheck* result,
                        cudaStream_t stream);

}  // namespace fusedmoe
