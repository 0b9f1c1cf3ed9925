// The CPU reference of the operator, in pieces: the truth the GPU pipeline is tested against and
// a map of it (route -> permute -> GEMM1 + SwiGLU -> GEMM2 -> finalize). run_reference() in the
// public header strings these together. Everything here works on host memory, follows SPEC and
// docs/DESIGN.md literally and favours clarity over speed (T=128, H=2048, I=768, E=8, K=2 takes
// well under a second).
//
// Pinned fp32 formulas (the GPU routing must use the same to reproduce ids and weights):
//   sigmoid(x) = 1 / (1 + exp(-x));  silu(x) = x / (1 + exp(-x))
//   softmax over E: m = max of the non-NaN values, e_i = exp(x_i - m), p_i = e_i / sum_i e_i with
//     the sum in ascending i (so a NaN logit makes the row's probabilities NaN; ids stay valid)
//   renormalisation: w_k = v_k / sum_k v_k with the sum over the selected slots in ascending k
//     (selection order); "scaled" methods: w_k = (s_k * scale) / (sum_k s_k + 1e-20f)
//   finalize: acc = fmaf(w, y, acc) in ascending k (nvcc contracts `acc += w * y` the same way;
//     with bf16 weights the product is exact so fma and mul+add agree)
#pragma once

#include <cstdint>
#include <vector>

#include "fusedmoe/fusedmoe.h"
#include "validate.h"

namespace fusedmoe::ref {

// ---- routing -----------------------------------------------------------------------------------

// Top-k order of docs/DESIGN.md: true when (score_a, id_a) ranks before (score_b, id_b): higher
// score first, equal scores lower id first, NaN below every number (-inf included).
bool ranks_before(float score_a, int32_t id_a, float score_b, int32_t id_b);

// The k best of scores[0, n) in rank order (ranks_before), written to ids_out[0, k).
void select_top_k(const float* scores, int32_t n, int32_t k, int32_t* ids_out);

float sigmoid(float x);
float silu(float x);

// One token's routing from fp32 logits [E] (and an optional fp32 bias [E], nullptr = 0).
// Writes the K selected global ids and their fp32 weights (before any bf16 rounding).
void route_token(const float* logits, const float* bias, int32_t num_experts, int32_t top_k,
                 RoutingMethod method, detail::GroupConfig groups, float routed_scaling_factor,
                 int32_t* ids_out, float* weights_out);

// Routing of all T tokens: ids, the fp32 weights and the weights as used (rounded once to
// weights_dtype; for routed input, the given weights widened to fp32).
struct Routing {
  int64_t num_tokens = 0;
  int32_t top_k = 0;
  DType weights_dtype = DType::kBF16;  // the dtype of expert_weights
  std::vector<int32_t> ids;            // [T, K] global ids (routed input: as given, any value)
  std::vector<float> weights_fp32;     // [T, K] before rounding
  std::vector<float> weights;          // [T, K] as used by finalize and returned
};

// Logits input (SPEC input 1): widens logits/bias to fp32, routes every token, rounds the
// weights to weights_dtype. Assumes validate() accepted the arguments.
Routing route_reference(const LogitsRouting& logits, int64_t num_tokens, int32_t num_experts,
                        int32_t top_k, DType weights_dtype);

// Routed input (SPEC inputs 2 and 3): packed words (topk_weights == nullptr) decode to the
// sign-extended int16 id and the bf16 weight; unpacked ids are taken as they are with bf16/fp32
// weights. The weights are used exactly as given.
Routing decode_routed_reference(const RoutedTopK& routed, int64_t num_tokens, int32_t top_k);

// ---- permutation -------------------------------------------------------------------------------

// Local slots sorted by (local expert ascending, slot t*K+k ascending) (docs/DESIGN.md).
struct Permutation {
  std::vector<int32_t> expert_offsets;               // [E_loc + 1]; [0] = 0, last = num_local
  std::vector<int32_t> permuted_slots;               // [num_local]: slot t*K+k of row p
  std::vector<int32_t> expanded_idx_to_permuted_idx;  // [T * K]: row p, or -1 if non-local
  int64_t num_local() const { return static_cast<int64_t>(permuted_slots.size()); }
};

// ids: [T * K] global ids; a slot is local iff offset <= id < offset + E_loc.
Permutation permute_reference(const std::vector<int32_t>& ids, int32_t local_expert_offset,
                              int32_t local_num_experts);

// ---- expert MLPs (rows in permuted order) ------------------------------------------------------

// A call's expert MLP options (MoeArguments): the activation with its per-expert parameters
// (src/activation.h applies the defaults) and the expert biases, as host pointers.
struct ExpertMlp {
  Activation activation = Activation::kSwiglu;
  const float* alpha = nullptr;        // [E_loc] or nullptr
  const float* beta = nullptr;         // [E_loc] or nullptr
  const float* clamp_limit = nullptr;  // [E_loc] or nullptr
  const void* gemm1_bias = nullptr;    // [E_loc, 2I] (gated) or [E_loc, I], gemm1_bias_dtype
  DType gemm1_bias_dtype = DType::kBF16;
  const void* gemm2_bias = nullptr;    // [E_loc, H], gemm2_bias_dtype
  DType gemm2_bias_dtype = DType::kBF16;
};
ExpertMlp expert_mlp(const MoeArguments& args);

// Rows of gemm1 per expert: 2I for a gated activation, I otherwise.
inline int64_t gemm1_rows(Activation activation, int64_t intermediate_size) {
  return is_gated(activation) ? 2 * intermediate_size : intermediate_size;
}

// g = x[permuted_slots[p] / K] . W1[e]^T in fp32 (+ gemm1_bias[e]); then act[p, j] =
// bf16(silu(g[I + j]) * g[j]) for plain Swiglu (no alpha, beta, clamp limit: the pinned silu),
// bf16(activation::gated(g[I + j], g[j])) for other gated activations, bf16(activation::plain(g[j]))
// for non-gated ones. x: [T, H], w1: [E_loc, 2I or I, H] (bf16 bits). Returns [num_local, I].
std::vector<uint16_t> activation_reference(const uint16_t* x, const uint16_t* w1,
                                           int64_t hidden_size, int64_t intermediate_size,
                                           int32_t top_k, const Permutation& permutation,
                                           const ExpertMlp& mlp = {});

// y[p, h] = bf16(act[p, :] . W2[e][h, :] (+ gemm2_bias[e][h])) in fp32. w2: [E_loc, H, I].
// Returns [num_local, H].
std::vector<uint16_t> gemm2_reference(const std::vector<uint16_t>& act, const uint16_t* w2,
                                      int64_t hidden_size, int64_t intermediate_size,
                                      const Permutation& permutation, const ExpertMlp& mlp = {});

// act[r, j] for rows r of one expert from their GEMM1 output g [num_rows, 2I or I] (fp32, bias
// included): the formulas above, rounded once to bf16. act: [num_rows, I].
void activate_rows(const float* g, int64_t num_rows, int64_t intermediate_size,
                   const ExpertMlp& mlp, int32_t expert, uint16_t* act);

// ---- the FP8 block-scale variant (docs/SPEC.md "FP8 block-scale variant") -----------------------

// Rows quantised per 128-column group: e4m3 codes [rows, cols] and fp32 scales [rows, cols / 128].
struct Fp8Rows {
  int64_t cols = 0;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

// bf16 rows [num_rows, cols] (cols % 128 == 0) quantised group by group (src/reference/fp8.h).
Fp8Rows quantize_rows_fp8(const uint16_t* bf16, int64_t num_rows, int64_t cols);

// The call's hidden states as FP8 rows: bf16 ones quantised, e4m3 ones with hidden_states_scale
// [H / 128, T] made token-major.
Fp8Rows fp8_hidden_states(const MoeArguments& args);

// One GEMM's e4m3 weights [E_loc, N, K] and their fp32 block scales [E_loc, N / 128, K / 128].
struct Fp8Weights {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
};

// activation_reference with FP8 operands: g[p, j] = sum over 128-blocks b of
// (x_scale[t, b] * w1_scale[e, j / 128, b]) * (fp32 dot of the block's e4m3 values), accumulated
// in fp32 in ascending b (+ gemm1_bias), then activate_rows. Returns [num_local, I] bf16.
std::vector<uint16_t> activation_reference_fp8(const Fp8Rows& x, const Fp8Weights& w1,
                                               int64_t intermediate_size, int32_t top_k,
                                               const Permutation& permutation,
                                               const ExpertMlp& mlp = {});

// gemm2_reference with FP8 operands: each bf16 act row quantised per 128-group, then the same
// block-promoted dot with w2 [E_loc, H, I] (scales [E_loc, H / 128, I / 128]), + gemm2_bias,
// rounded to bf16. Returns [num_local, H].
std::vector<uint16_t> gemm2_reference_fp8(const std::vector<uint16_t>& act, const Fp8Weights& w2,
                                          int64_t hidden_size, int64_t intermediate_size,
                                          const Permutation& permutation,
                                          const ExpertMlp& mlp = {});

// Routing weights on the input (use_routing_scales_on_input, K == 1): x'[t, :] = bf16(x[t, :] *
// w[t]) with w the weight as used (routing.weights). Returns [T, H] bf16 bits.
std::vector<uint16_t> scale_input_reference(const uint16_t* x, const Routing& routing,
                                            int64_t hidden_size);

// out[t] = bf16(sum over local slots k ascending of w[t, k] * y[row of slot]), fp32 fma chain;
// a token with no local slot gets +0. unweighted: w = 1 (the weights went into the input).
// Returns [T, H] bf16 bits.
std::vector<uint16_t> finalize_reference(const Routing& routing, const Permutation& permutation,
                                         const std::vector<uint16_t>& y, int64_t hidden_size,
                                         bool unweighted = false);

}  // namespace fusedmoe::ref
