// An fp64 model of the operator's math for given ids and weights (as used), written from
// docs/SPEC.md independently of the CPU reference: the `ref` of docs/STYLE.md's tolerance rule.
// `exact` keeps every intermediate in fp64; `rounded` rounds the activation, y and the output to
// bf16 where the design does (docs/DESIGN.md). Covers the expert MLP's options of the case:
// every activation with its per-expert parameters, expert biases, routing weights on the input.
#pragma once

#include <cstdint>
#include <vector>

#include "common/moe_case.h"

namespace fusedmoe::test {

struct DoubleModel {
  std::vector<double> exact;    // [T, H]
  std::vector<double> rounded;  // [T, H]
};

// The activation of one column in fp64 (SPEC's formulas; NaN propagates through the clamps):
// gated: a(gate, up) with expert parameters alpha, beta, limit; non-gated: a(g) (up ignored).
double activation_double(Activation activation, double gate, double up, double alpha,
                         double beta, double limit);

DoubleModel moe_double(const MoeCase& c, const std::vector<int32_t>& ids,
                       const std::vector<float>& weights);

}  // namespace fusedmoe::test
