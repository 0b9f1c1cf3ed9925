// The activations between the two GEMMs (public enum Activation, FlashInfer's numbering): one
// pinned fp32 formula each, shared by the CPU reference (src/reference/) and the GEMM kernels'
// general epilogue, so that the two differ only by the last-ulp differences of expf, erff and
// tanhf between the host's and the device's math library. The GEMM1 fast path (plain SwiGLU
// without parameters or bias) keeps its own fast-math silu (kernels/sm90_gemm1_swiglu.cuh).
//
// Clamps propagate NaN (`v > hi ? hi : v`, unlike fminf, which would turn a NaN into the limit),
// as PyTorch's clamp and minimum do: a NaN in GEMM1's output stays NaN through every activation.
#pragma once

#include <cmath>

#include "fusedmoe/fusedmoe.h"

#if defined(__CUDACC__)
#define FUSEDMOE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDMOE_HOST_DEVICE inline
#endif

namespace fusedmoe::activation {

// An expert's Swiglu / SwigluStep parameters, defaults applied (gemm1_alpha / _beta /
// _clamp_limit not given).
struct ExpertParams {
  float alpha = 1.0f;
  float beta = 0.0f;
  float limit = INFINITY;  // SwigluStep's default is kSwigluStepDefaultLimit (see expert_params)
};

// The parameters of local expert e: the given arrays' entries, or the defaults.
FUSEDMOE_HOST_DEVICE ExpertParams expert_params(Activation activation, const float* alpha,
                                                const float* beta, const float* clamp_limit,
                                                int e) {
  ExpertParams p;
  if (alpha != nullptr) p.alpha = alpha[e];
  if (beta != nullptr) p.beta = beta[e];
  if (clamp_limit != nullptr) {
    p.limit = clamp_limit[e];
  } else if (activation == Activation::kSwigluStep) {
    p.limit = kSwigluStepDefaultLimit;
  }
  return p;
}

FUSEDMOE_HOST_DEVICE float min_keep_nan(float v, float hi) { return v > hi ? hi : v; }
FUSEDMOE_HOST_DEVICE float clamp_keep_nan(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// v * sigmoid(scale * v) = v / (1 + exp(-scale * v)): one division, as the reference's silu.
FUSEDMOE_HOST_DEVICE float swish(float v, float scale) { return v / (1.0f + expf(-scale * v)); }
FUSEDMOE_HOST_DEVICE float gelu_erf(float v) {
  return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
}
FUSEDMOE_HOST_DEVICE float gelu_tanh(float v) {
  return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
}

// Gated activations: gate and up are the fp32 GEMM1 outputs (biases added) of one column.
FUSEDMOE_HOST_DEVICE float gated(Activation activation, float gate, float up,
                                 const ExpertParams& p) {
  switch (activation) {
    case Activation::kSwiglu: {
      const float g = min_keep_nan(gate, p.limit);
      const float u = clamp_keep_nan(up, -p.limit, p.limit);
      return swish(g, p.alpha) * (u + p.beta);
    }
    case Activation::kSwigluStep:
      return min_keep_nan(swish(gate, 1.0f), p.limit) * clamp_keep_nan(up, -p.limit, p.limit);
    case Activation::kGeglu: return gelu_erf(gate) * up;
    case Activation::kGegluTanh: return gelu_tanh(gate) * up;
    default: return NAN;  // not gated: validate() never lets it through
  }
}

// Non-gated activations of one fp32 GEMM1 output g (bias added).
FUSEDMOE_HOST_DEVICE float plain(Activation activation, float g) {
  switch (activation) {
    case Activation::kGelu: return gelu_erf(g);
    case Activation::kRelu: return g < 0.0f ? 0.0f : g;  // NaN stays NaN
    case Activation::kSilu: return swish(g, 1.0f);
    case Activation::kRelu2: {
      const float r = g < 0.0f ? 0.0f : g;
      return r * r;
    }
    default: return NAN;  // gated: validate() never lets it through
  }
}

}  // namespace fusedmoe::activation
