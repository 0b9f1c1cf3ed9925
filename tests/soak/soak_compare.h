// The soak's comparison of what run() wrote against the truth, on host copies. The rules are the
// GPU tests' (tests/test_gpu_moe.cu, tests/test_gpu_hostile.cu) and docs/reliability.md's:
//   routing_replay_out, expanded_idx_to_permuted_idx: bitwise (int16 of the reference's ids; its
//     permutation);
//   expert_weights: routed input bit for bit as given (NaN payloads too); logits input within
//     1 bf16 ulp (at most max(2, T*K/1000) slots off by one) or 4 fp32 ulps of the reference's,
//     NaN exactly where it has NaN, infinities equal;
//   gemm2_output rows [0, P) and output: STYLE's tolerance rule (tests/common/tolerance.h) against
//     the GPU reference's fp64 truth and bf16 design results; the output non-finite exactly
//     where the design result is, and all NaN on a token with a NaN weight on a local slot;
//   two runs of the same inputs (a rerun, graph vs eager): every byte.
// Host code only (the dry run's self-test exercises it on the CPU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/moe_case.h"
#include "reference/reference.h"
#include "soak/soak_draw.h"

namespace fusedmoe::soak {

// What run() wrote, copied to the host: the tensors of the problem's output mode.
struct Outputs {
  std::vector<uint16_t> output;        // [T, H] (do_finalize)
  std::vector<uint16_t> rows;          // [P, H]: gemm2_output rows named by the map
  std::vector<uint16_t> weights_bf16;  // [T, K] expert_weights (unfinalized, bf16)
  std::vector<float> weights_fp32;     // [T, K] expert_weights (unfinalized, fp32)
  std::vector<int32_t> map;            // [T * K] expanded_idx_to_permuted_idx (unfinalized)
  std::vector<int16_t> replay;         // [T, K] routing_replay_out (when asked for)
};

// The truth of one round: the CPU reference's routing and permutation, and the GPU reference's
// results (tests/common/gpu_reference.h; rows only when unfinalized).
struct Truth {
  const ref::Routing& routing;
  const ref::Permutation& permutation;
  const std::vector<uint16_t>& out_design;  // [T, H] bf16
  const std::vector<double>& out_truth;     // [T, H]
  const std::vector<uint16_t>& y_design;    // [P, H] bf16
  const std::vector<double>& y_truth;       // [P, H]
};

// The verdict on one problem: ok, the worst normalised error of the tolerance rule (its
// max|ours - ref| / bound; <= 1 passes), the worst expert_weights ulp distance, the first failure.
struct Verdict {
  bool ok = true;
  double ratio = 0.0;
  int64_t weight_ulps = 0;
  std::string failure;
  void fail(const std::string& what);
};

// Every tensor of `ours` against the truth; `routing_input` is the input run() read.
void compare_outputs(const SoakProblem& problem, const test::MoeCase& routing_input,
                     const Truth& truth, const Outputs& ours, Verdict& verdict);

// Two runs of the same inputs, byte for byte (`what` names the pair in the failure).
void compare_bitwise(const Outputs& first, const Outputs& second, const std::string& what,
                     Verdict& verdict);

}  // namespace fusedmoe::soak
