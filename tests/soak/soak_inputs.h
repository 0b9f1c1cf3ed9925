// The host side of a soak problem's inputs and of its truth: the routing input of each round
// (a routing-only MoeCase with the problem's window and hostile values applied) and the CPU
// reference's routing and permutation of it. Host code only: the dry run exercises it on the CPU.
// The hidden states and expert weights are filled on the device (gpu_soak.cu) from the seeds
// below; the host self-test draws the same scales on the host.
#pragma once

#include <cstdint>

#include "common/moe_case.h"
#include "reference/reference.h"
#include "soak/soak_draw.h"

namespace fusedmoe::soak {

// Seeds of a problem's data: round r's routing input and hidden states, and the two weights.
uint64_t round_seed(const SoakProblem& problem, int round);
uint64_t gemm1_weights_seed(const SoakProblem& problem);
uint64_t gemm2_weights_seed(const SoakProblem& problem);

// Uniform ranges of the data (as MoeCase and the GPU tests draw them): x in [-1, 1), W1 in
// +-2/sqrt(H), W2 in +-2/sqrt(I).
float gemm1_weights_scale(const MoeShape& shape);
float gemm2_weights_scale(const MoeShape& shape);

// The routing input of round `round`: fresh random logits (and bias) or routed ids and weights,
// then the problem's window (a cold window: routed ids all outside it, logits low inside it)
// and hostile values. The case also holds the round's expert MLP parameters and biases (MoeCase
// draws them, fresh per round, when the config asks for them). Each hostile kind is applied at least once when T >= 1, so a problem that
// says "bad_ids" has a bad id.
test::MoeCase make_routing_input(const SoakProblem& problem, int round);

// The CPU reference's routing (ids and weights as used) and permutation of that input.
struct ReferenceRouting {
  ref::Routing routing;
  ref::Permutation permutation;
};
ReferenceRouting reference_routing(const SoakProblem& problem, test::MoeCase& routing_input);

}  // namespace fusedmoe::soak
