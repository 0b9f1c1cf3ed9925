// The fp64 model of the operator (see double_model.h).
#include "common/double_model.h"

#include <cmath>
#include <limits>

#include "common/host_data.h"

namespace fusedmoe::test {
namespace {

double bf16_round(double v) { return round_to_bf16(static_cast<float>(v)); }

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
double gelu(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }
double gelu_tanh(double v) {
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v)));
}
// Clamps that keep NaN (std::min/max would not).
double clamp_above(double v, double hi) { return v > hi ? hi : v; }
double clamp(double v, double lo, double hi) { return v < lo ? lo : clamp_above(v, hi); }

double bias_value(const std::vector<float>& fp32, const std::vector<uint16_t>& bf16,
                  int64_t index) {
  if (!fp32.empty()) return fp32[index];
  if (!bf16.empty()) return bf16_bits_to_float(bf16[index]);
  return 0.0;
}

}  // namespace

double activation_double(Activation activation, double gate, double up, double alpha,
                         double beta, double limit) {
  switch (activation) {
    case Activation::kSwiglu: {
      const double g = clamp_above(gate, limit);
      return g * sigmoid(alpha * g) * (clamp(up, -limit, limit) + beta);
    }
    case Activation::kSwigluStep:
      return clamp_above(gate * sigmoid(gate), limit) * clamp(up, -limit, limit);
    case Activation::kGeglu: return gelu(gate) * up;
    case Activation::kGegluTanh: return gelu_tanh(gate) * up;
    case Activation::kGelu: return gelu(gate);
    case Activation::kRelu: return gate < 0.0 ? 0.0 : gate;
    case Activation::kSilu: return gate * sigmoid(gate);
    case Activation::kRelu2: return gate < 0.0 ? 0.0 : gate * gate;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

DoubleModel moe_double(const MoeCase& c, const std::vector<int32_t>& ids,
                       const std::vector<float>& weights) {
  const MoeShape& s = c.shape();
  const MoeCaseConfig& cfg = c.config();
  const int64_t T = s.num_tokens, H = s.hidden_size, I = s.intermediate_size, K = s.top_k;
  const int64_t N = c.gemm1_rows();
  const bool gated = is_gated(cfg.activation);
  const double inf = std::numeric_limits<double>::infinity();
  DoubleModel m{std::vector<double>(T * H, 0.0), std::vector<double>(T * H, 0.0)};
  std::vector<double> x(H), g(N), act(I), act_r(I);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = static_cast<int64_t>(ids[t * K + k]) - s.local_expert_offset;
      if (e < 0 || e >= s.local_num_experts) continue;
      // Routing weights on the input (K == 1): the expert sees bf16(x * w), which the model
      // rounds too, and its output is not weighted again.
      const double w = weights[t * K + k];
      for (int64_t h = 0; h < H; ++h) {
        const double xv = bf16_bits_to_float(c.hidden_states[t * H + h]);
        x[h] = cfg.routing_scales_on_input ? bf16_round(xv * w) : xv;
      }
      const uint16_t* w1 = c.gemm1_weights.data() + e * N * H;
      const uint16_t* w2 = c.gemm2_weights.data() + e * H * I;
      for (int64_t j = 0; j < N; ++j) {
        double sum = 0.0;
        for (int64_t h = 0; h < H; ++h) sum += x[h] * bf16_bits_to_float(w1[j * H + h]);
        g[j] = sum + bias_value(c.gemm1_bias_fp32, c.gemm1_bias_bf16, e * N + j);
      }
      const bool swiglu = cfg.activation == Activation::kSwiglu;
      const double alpha = c.gemm1_alpha.empty() ? 1.0 : c.gemm1_alpha[e];
      const double beta = c.gemm1_beta.empty() ? 0.0 : c.gemm1_beta[e];
      const double limit = !c.gemm1_clamp_limit.empty() ? c.gemm1_clamp_limit[e]
                           : swiglu                     ? inf
                                                        : double(kSwigluStepDefaultLimit);
      for (int64_t j = 0; j < I; ++j) {
        act[j] = gated ? activation_double(cfg.activation, g[I + j], g[j], alpha, beta, limit)
                       : activation_double(cfg.activation, g[j], 0.0, alpha, beta, limit);
        act_r[j] = bf16_round(act[j]);
      }
      const double weight = cfg.routing_scales_on_input ? 1.0 : w;
      for (int64_t h = 0; h < H; ++h) {
        double y = 0.0, y_r = 0.0;
        for (int64_t j = 0; j < I; ++j) {
          const double w2_value = bf16_bits_to_float(w2[h * I + j]);
          y += act[j] * w2_value;
          y_r += act_r[j] * w2_value;
        }
        const double bias = bias_value(c.gemm2_bias_fp32, c.gemm2_bias_bf16, e * H + h);
        m.exact[t * H + h] += weight * (y + bias);
        m.rounded[t * H + h] += weight * bf16_round(y_r + bias);
      }
    }
  }
  for (double& v : m.rounded) v = bf16_round(v);
  return m;
}

}  // namespace fusedmoe::test
