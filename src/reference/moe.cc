// CPU reference of the operator after routing: permutation, the two expert GEMMs with the
// activation and biases (in BF16, or in FP8 with block scales), routing weights on the input,
// finalize, and run_reference() which strings the pieces together (SPEC "The math",
// docs/DESIGN.md).
//
// Speed without cleverness: rows are processed expert by expert; each weight row is widened to
// fp32 once and dotted with every row of that expert (it stays in L1, the rows in L2), and dot
// products keep 8 partial sums so the compiler vectorises them without reassociating (the order
// is fixed: lanes h % 8, then a pairwise tree). T=128, H=2048, I=768, E=8, K=2: ~0.2 s.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "activation.h"
#include "reference/bf16.h"
#include "reference/fp8.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace ref {
namespace {

constexpr int kDotLanes = 8;  // H and I are multiples of 8 (validated)

// fp32 dot product of length n (n % 8 == 0) in a fixed summation order.
float dot(const float* a, const float* b, int64_t n) {
  float lanes[kDotLanes] = {};
  for (int64_t i = 0; i < n; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

void widen_row(const uint16_t* bf16, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = detail::bf16_bits_to_float(bf16[i]);
}

void widen_e4m3_row(const uint8_t* codes, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = detail::e4m3_to_float(codes[i]);
}

// The FP8 GEMMs' dot product (n % 128 == 0): each 128-deep block's fp32 partial sum (dot's fixed
// order) promoted by the product of its two scales into an fp32 accumulator, block by block, with
// one fma (acc = fma(a_scale * w_scale, partial, acc), what nvcc makes of `acc += scale * partial`).
float fp8_dot(const float* a, const float* a_scales, const float* w, const float* w_scales,
              int64_t n) {
  float acc = 0.0f;
  for (int64_t b = 0; b * kFp8BlockSize < n; ++b) {
    const float partial = dot(a + b * kFp8BlockSize, w + b * kFp8BlockSize, kFp8BlockSize);
    const float scale = a_scales[b] * w_scales[b];
    acc = std::fma(scale, partial, acc);
  }
  return acc;
}

// Element `index` of an optional bias in bf16 or fp32, widened (0 when there is no bias).
float bias_at(const void* bias, DType dtype, int64_t index) {
  if (bias == nullptr) return 0.0f;
  if (dtype == DType::kFP32) return static_cast<const float*>(bias)[index];
  return detail::bf16_bits_to_float(static_cast<const uint16_t*>(bias)[index]);
}

// One expert's FP8 GEMM: for each of its n weight rows j (e4m3 codes of k values, block scales
// w_scales [n / 128, k / 128]) and each of its num_rows rows r (widened values rows + r * k, group
// scales row_scales + r * k / 128), out(r, j, value) with value = fp8_dot plus element
// bias_base + j of the bias when there is one.
template <class Out>
void fp8_expert_gemm(const float* rows, const float* row_scales, int64_t num_rows,
                     const uint8_t* w_codes, const float* w_scales, int64_t n, int64_t k,
                     const void* bias, DType bias_dtype, int64_t bias_base, Out out) {
  const int64_t groups = k / kFp8BlockSize;
  std::vector<float> weight_row(k);
  for (int64_t j = 0; j < n; ++j) {
    widen_e4m3_row(w_codes + j * k, k, weight_row.data());
    const float* block_scales = w_scales + (j / kFp8BlockSize) * groups;
    const float bias_j = bias_at(bias, bias_dtype, bias_base + j);
    for (int64_t r = 0; r < num_rows; ++r) {
      const float value =
          fp8_dot(rows + r * k, row_scales + r * groups, weight_row.data(), block_scales, k);
      out(r, j, bias ? value + bias_j : value);
    }
  }
}

}  // namespace

void activate_rows(const float* g, int64_t num_rows, int64_t intermediate_size,
                   const ExpertMlp& mlp, int32_t expert, uint16_t* act) {
  const int64_t I = intermediate_size;
  const int64_t N = gemm1_rows(mlp.activation, I);
  const bool gated = is_gated(mlp.activation);
  // Plain SwiGLU keeps the pinned silu(gate) * up (the GEMM1 fast path's formula).
  const bool plain_swiglu = mlp.activation == Activation::kSwiglu && mlp.alpha == nullptr &&
                            mlp.beta == nullptr && mlp.clamp_limit == nullptr;
  const activation::ExpertParams params = activation::expert_params(
      mlp.activation, mlp.alpha, mlp.beta, mlp.clamp_limit, expert);
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* g_row = g + r * N;
    uint16_t* act_row = act + r * I;
    for (int64_t j = 0; j < I; ++j) {
      float a;
      if (plain_swiglu) {
        a = silu(g_row[I + j]) * g_row[j];
      } else if (gated) {
        a = activation::gated(mlp.activation, g_row[I + j], g_row[j], params);
      } else {
        a = activation::plain(mlp.activation, g_row[j]);
      }
      act_row[j] = detail::float_to_bf16_bits(a);
    }
  }
}

ExpertMlp expert_mlp(const MoeArguments& args) {
  ExpertMlp mlp;
  mlp.activation = args.activation;
  mlp.alpha = args.gemm1_alpha;
  mlp.beta = args.gemm1_beta;
  mlp.clamp_limit = args.gemm1_clamp_limit;
  mlp.gemm1_bias = args.gemm1_bias;
  mlp.gemm1_bias_dtype = args.gemm1_bias_dtype;
  mlp.gemm2_bias = args.gemm2_bias;
  mlp.gemm2_bias_dtype = args.gemm2_bias_dtype;
  return mlp;
}

Permutation permute_reference(const std::vector<int32_t>& ids, int32_t local_expert_offset,
                              int32_t local_num_experts) {
  const int64_t num_slots = static_cast<int64_t>(ids.size());
  Permutation perm;
  perm.expert_offsets.assign(local_num_experts + 1, 0);
  perm.expanded_idx_to_permuted_idx.assign(num_slots, -1);

  // Counting sort by local expert; scanning slots in ascending order keeps it stable.
  auto local_expert = [&](int64_t slot) {
    const int64_t e = static_cast<int64_t>(ids[slot]) - local_expert_offset;
    return (e >= 0 && e < local_num_experts) ? static_cast<int32_t>(e) : -1;
  };
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t e = local_expert(slot);
    if (e >= 0) ++perm.expert_offsets[e + 1];
  }
  for (int32_t e = 0; e < local_num_experts; ++e) {
    perm.expert_offsets[e + 1] += perm.expert_offsets[e];
  }
  perm.permuted_slots.assign(perm.expert_offsets[local_num_experts], -1);
  std::vector<int32_t> next_row(perm.expert_offsets.begin(), perm.expert_offsets.end() - 1);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t e = local_expert(slot);
    if (e < 0) continue;
    const int32_t row = next_row[e]++;
    perm.permuted_slots[row] = static_cast<int32_t>(slot);
    perm.expanded_idx_to_permuted_idx[slot] = row;
  }
  return perm;
}

std::vector<uint16_t> activation_reference(const uint16_t* x, const uint16_t* w1,
                                           int64_t hidden_size, int64_t intermediate_size,
                                           int32_t top_k, const Permutation& permutation,
                                           const ExpertMlp& mlp) {
  const int64_t H = hidden_size, I = intermediate_size;
  const int64_t N = gemm1_rows(mlp.activation, I);  // g's length: 2I gated, I non-gated
  const int32_t num_experts = static_cast<int32_t>(permutation.expert_offsets.size()) - 1;
  std::vector<uint16_t> act(permutation.num_local() * I);
  std::vector<float> rows, g, weight_row(H);

  for (int32_t e = 0; e < num_experts; ++e) {
    const int64_t begin = permutation.expert_offsets[e];
    const int64_t num_rows = permutation.expert_offsets[e + 1] - begin;
    if (num_rows == 0) continue;
    // The expert's input rows, gathered and widened: (num_rows, H).
    rows.resize(num_rows * H);
    for (int64_t r = 0; r < num_rows; ++r) {
      const int64_t token = permutation.permuted_slots[begin + r] / top_k;
      widen_row(x + token * H, H, rows.data() + r * H);
    }
    // g = rows . W1[e]^T + bias[e]: (num_rows, N), fp32, not rounded.
    g.resize(num_rows * N);
    const uint16_t* w1_expert = w1 + static_cast<int64_t>(e) * N * H;
    for (int64_t j = 0; j < N; ++j) {
      widen_row(w1_expert + j * H, H, weight_row.data());
      const float bias = bias_at(mlp.gemm1_bias, mlp.gemm1_bias_dtype, e * N + j);
      for (int64_t r = 0; r < num_rows; ++r) {
        const float dot_value = dot(rows.data() + r * H, weight_row.data(), H);
        g[r * N + j] = mlp.gemm1_bias ? dot_value + bias : dot_value;
      }
    }
    activate_rows(g.data(), num_rows, I, mlp, e, act.data() + begin * I);
  }
  return act;
}

std::vector<uint16_t> gemm2_reference(const std::vector<uint16_t>& act, const uint16_t* w2,
                                      int64_t hidden_size, int64_t intermediate_size,
                                      const Permutation& permutation, const ExpertMlp& mlp) {
  const int64_t H = hidden_size, I = intermediate_size;
  const int32_t num_experts = static_cast<int32_t>(permutation.expert_offsets.size()) - 1;
  std::vector<uint16_t> y(permutation.num_local() * H);
  std::vector<float> rows, weight_row(I);

  for (int32_t e = 0; e < num_experts; ++e) {
    const int64_t begin = permutation.expert_offsets[e];
    const int64_t num_rows = permutation.expert_offsets[e + 1] - begin;
    if (num_rows == 0) continue;
    rows.resize(num_rows * I);  // (num_rows, I)
    widen_row(act.data() + begin * I, num_rows * I, rows.data());
    const uint16_t* w2_expert = w2 + static_cast<int64_t>(e) * H * I;
    for (int64_t h = 0; h < H; ++h) {
      widen_row(w2_expert + h * I, I, weight_row.data());
      const float bias = bias_at(mlp.gemm2_bias, mlp.gemm2_bias_dtype, e * H + h);
      for (int64_t r = 0; r < num_rows; ++r) {
        const float dot_value = dot(rows.data() + r * I, weight_row.data(), I);
        y[(begin + r) * H + h] =
            detail::float_to_bf16_bits(mlp.gemm2_bias ? dot_value + bias : dot_value);
      }
    }
  }
  return y;
}

Fp8Rows quantize_rows_fp8(const uint16_t* bf16, int64_t num_rows, int64_t cols) {
  Fp8Rows q;
  q.cols = cols;
  q.codes.resize(num_rows * cols);
  q.scales.resize(num_rows * (cols / kFp8BlockSize));
  std::vector<float> row(cols);
  for (int64_t r = 0; r < num_rows; ++r) {
    widen_row(bf16 + r * cols, cols, row.data());
    detail::quantize_groups_e4m3(row.data(), cols, q.codes.data() + r * cols,
                                 q.scales.data() + r * (cols / kFp8BlockSize));
  }
  return q;
}

std::vector<uint16_t> activation_reference_fp8(const Fp8Rows& x, const Fp8Weights& w1,
                                               int64_t intermediate_size, int32_t top_k,
                                               const Permutation& permutation,
                                               const ExpertMlp& mlp) {
  const int64_t H = x.cols, I = intermediate_size;
  const int64_t N = gemm1_rows(mlp.activation, I);
  const int64_t groups = H / kFp8BlockSize;
  const int32_t num_experts = static_cast<int32_t>(permutation.expert_offsets.size()) - 1;
  std::vector<uint16_t> act(permutation.num_local() * I);
  std::vector<float> rows, row_scales, g;

  for (int32_t e = 0; e < num_experts; ++e) {
    const int64_t begin = permutation.expert_offsets[e];
    const int64_t num_rows = permutation.expert_offsets[e + 1] - begin;
    if (num_rows == 0) continue;
    // The expert's input rows, gathered: e4m3 values widened (num_rows, H) and their scales.
    rows.resize(num_rows * H);
    row_scales.resize(num_rows * groups);
    for (int64_t r = 0; r < num_rows; ++r) {
      const int64_t token = permutation.permuted_slots[begin + r] / top_k;
      widen_e4m3_row(x.codes.data() + token * H, H, rows.data() + r * H);
      std::copy_n(x.scales.data() + token * groups, groups, row_scales.data() + r * groups);
    }
    g.resize(num_rows * N);
    fp8_expert_gemm(rows.data(), row_scales.data(), num_rows,
                    w1.codes + static_cast<int64_t>(e) * N * H,
                    w1.scales + static_cast<int64_t>(e) * (N / kFp8BlockSize) * groups, N, H,
                    mlp.gemm1_bias, mlp.gemm1_bias_dtype, e * N,
                    [&](int64_t r, int64_t j, float value) { g[r * N + j] = value; });
    activate_rows(g.data(), num_rows, I, mlp, e, act.data() + begin * I);
  }
  return act;
}

std::vector<uint16_t> gemm2_reference_fp8(const std::vector<uint16_t>& act, const Fp8Weights& w2,
                                          int64_t hidden_size, int64_t intermediate_size,
                                          const Permutation& permutation, const ExpertMlp& mlp) {
  const int64_t H = hidden_size, I = intermediate_size;
  const int64_t groups = I / kFp8BlockSize;
  const int32_t num_experts = static_cast<int32_t>(permutation.expert_offsets.size()) - 1;
  const Fp8Rows a = quantize_rows_fp8(act.data(), permutation.num_local(), I);
  std::vector<uint16_t> y(permutation.num_local() * H);
  std::vector<float> rows;

  for (int32_t e = 0; e < num_experts; ++e) {
    const int64_t begin = permutation.expert_offsets[e];
    const int64_t num_rows = permutation.expert_offsets[e + 1] - begin;
    if (num_rows == 0) continue;
    rows.resize(num_rows * I);
    widen_e4m3_row(a.codes.data() + begin * I, num_rows * I, rows.data());
    fp8_expert_gemm(rows.data(), a.scales.data() + begin * groups, num_rows,
                    w2.codes + static_cast<int64_t>(e) * H * I,
                    w2.scales + static_cast<int64_t>(e) * (H / kFp8BlockSize) * groups, H, I,
                    mlp.gemm2_bias, mlp.gemm2_bias_dtype, e * H,
                    [&](int64_t r, int64_t h, float value) {
                      y[(begin + r) * H + h] = detail::float_to_bf16_bits(value);
                    });
  }
  return y;
}

std::vector<uint16_t> scale_input_reference(const uint16_t* x, const Routing& routing,
                                            int64_t hidden_size) {
  const int64_t T = routing.num_tokens, H = hidden_size;
  std::vector<uint16_t> scaled(T * H);
  for (int64_t t = 0; t < T; ++t) {
    const float w = routing.weights[t * routing.top_k];  // K == 1
    for (int64_t h = 0; h < H; ++h) {
      scaled[t * H + h] = detail::float_to_bf16_bits(detail::bf16_bits_to_float(x[t * H + h]) * w);
    }
  }
  return scaled;
}

std::vector<uint16_t> finalize_reference(const Routing& routing, const Permutation& permutation,
                                         const std::vector<uint16_t>& y, int64_t hidden_size,
                                         bool unweighted) {
  const int64_t T = routing.num_tokens, H = hidden_size;
  const int32_t K = routing.top_k;
  std::vector<uint16_t> out(T * H);
  std::vector<float> acc(H);
  for (int64_t t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int32_t k = 0; k < K; ++k) {
      const int64_t slot = t * K + k;
      const int32_t row = permutation.expanded_idx_to_permuted_idx[slot];
      if (row < 0) continue;  // non-local: contributes exactly zero
      const float w = unweighted ? 1.0f : routing.weights[slot];
      const uint16_t* y_row = y.data() + static_cast<int64_t>(row) * H;
      for (int64_t h = 0; h < H; ++h) {
        acc[h] = std::fma(w, detail::bf16_bits_to_float(y_row[h]), acc[h]);
      }
    }
    for (int64_t h = 0; h < H; ++h) out[t * H + h] = detail::float_to_bf16_bits(acc[h]);
  }
  return out;
}

Fp8Rows fp8_hidden_states(const MoeArguments& args) {
  const int64_t T = args.shape.num_tokens, H = args.shape.hidden_size;
  if (args.hidden_states_dtype != DType::kFP8E4M3) {
    return quantize_rows_fp8(static_cast<const uint16_t*>(args.hidden_states), T, H);
  }
  // Given e4m3 codes with scales [H / 128, T] (group-major): made token-major.
  const int64_t groups = H / kFp8BlockSize;
  Fp8Rows x;
  x.cols = H;
  const auto* codes = static_cast<const uint8_t*>(args.hidden_states);
  x.codes.assign(codes, codes + T * H);
  x.scales.resize(T * groups);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t g = 0; g < groups; ++g) x.scales[t * groups + g] = args.hidden_states_scale[g * T + t];
  }
  return x;
}

}  // namespace ref

Status run_reference(const MoeArguments& args) {
  if (Status status = validate(args); !status.ok()) return status;
  const MoeShape& shape = args.shape;
  const int64_t T = shape.num_tokens, H = shape.hidden_size, I = shape.intermediate_size;
  const int32_t K = shape.top_k;
  if (T == 0) return Status::Ok();

  // Everything is computed into local buffers first; outputs are written at the end only.
  const ref::Routing routing =
      args.logits.logits
          ? ref::route_reference(args.logits, T, shape.num_experts, K, args.expert_weights_dtype)
          : ref::decode_routed_reference(args.routed, T, K);
  const ref::Permutation perm =
      ref::permute_reference(routing.ids, shape.local_expert_offset, shape.local_num_experts);
  const ref::ExpertMlp mlp = ref::expert_mlp(args);
  const auto* x = static_cast<const uint16_t*>(args.hidden_states);
  // Routing weights on the input: the experts see bf16(w * x), and finalize weights by 1.
  std::vector<uint16_t> scaled_x;
  if (args.use_routing_scales_on_input) {
    scaled_x = ref::scale_input_reference(x, routing, H);
    x = scaled_x.data();
  }
  std::vector<uint16_t> act, y;
  if (args.weights_dtype == DType::kFP8E4M3) {
    const ref::Fp8Rows x8 = ref::fp8_hidden_states(args);
    const ref::Fp8Weights w1{static_cast<const uint8_t*>(args.gemm1_weights),
                             args.gemm1_weights_scale};
    const ref::Fp8Weights w2{static_cast<const uint8_t*>(args.gemm2_weights),
                             args.gemm2_weights_scale};
    act = ref::activation_reference_fp8(x8, w1, I, K, perm, mlp);
    y = ref::gemm2_reference_fp8(act, w2, H, I, perm, mlp);
  } else {
    act = ref::activation_reference(x, static_cast<const uint16_t*>(args.gemm1_weights), H, I, K,
                                    perm, mlp);
    y = ref::gemm2_reference(act, static_cast<const uint16_t*>(args.gemm2_weights), H, I, perm,
                             mlp);
  }

  if (args.do_finalize) {
    const std::vector<uint16_t> out =
        ref::finalize_reference(routing, perm, y, H, args.use_routing_scales_on_input);
    std::memcpy(args.output, out.data(), out.size() * sizeof(uint16_t));
  } else {
    // Rows [0, num_local) of gemm2_output; the rest of the capacity is left as it was. (No
    // local slot: y is empty and its data() may be null, which memcpy must not see.)
    if (!y.empty()) std::memcpy(args.gemm2_output, y.data(), y.size() * sizeof(uint16_t));
    for (int64_t i = 0; i < T * K; ++i) {
      if (args.expert_weights_dtype == DType::kFP32) {
        static_cast<float*>(args.expert_weights)[i] = routing.weights[i];
      } else {
        // The weights are bf16 values here, so the upper half is exact and keeps a given
        // NaN's sign and payload (routed weights are returned bit for bit, as the GPU does).
        static_cast<uint16_t*>(args.expert_weights)[i] =
            detail::bf16_value_to_bits(routing.weights[i]);
      }
      args.expanded_idx_to_permuted_idx[i] = perm.expanded_idx_to_permuted_idx[i];
    }
  }
  if (args.routing_replay_out) {
    for (int64_t i = 0; i < T * K; ++i) {
      args.routing_replay_out[i] = static_cast<int16_t>(routing.ids[i]);
    }
  }
  return Status::Ok();
}

}  // namespace fusedmoe
