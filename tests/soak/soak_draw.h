// The soak's problems (issue 13): each one a random operator call drawn from a seed, so any
// problem of any run can be drawn again alone (`gpu_soak --seed S --problem N`, or `--only P`
// with the problem's own seed). Host code only: the drawing, its axes and a cost model are
// tested on the CPU (`gpu_soak --dry-run`, a ctest entry).
//
// A problem is a MoeCaseConfig (tests/common/moe_case.h: shape, routing input and method,
// dtypes, the expert MLP's activation, parameters, biases and input-side routing weights, output
// mode) plus what the soak adds around the call: the expert-parallel window's
// kind, hostile routing input, PDL, CUDA graph replay, a bitwise rerun and an oversized
// workspace. The draw is a list of steps (soak_draw.cc, kDrawSteps), each drawing one axis from
// the problem's generator; an axis of the report is a name, its labels and a labelling function
// (draw_axes()). A new axis (an activation type, expert biases, ...) is a field here, a step in
// kDrawSteps and an entry in draw_axes(): the dry run then checks that the draw reaches every
// label.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/moe_case.h"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::soak {

using test::MoeCaseConfig;
using test::RoutingInput;

// The expert-parallel window [local_expert_offset, + local_num_experts).
enum class Window {
  kAll,    // every expert local (offset 0, E_loc = E)
  kShard,  // a random window
  kCold,   // a window the routing avoids: routed ids all outside it; logits low inside it
};

// Hostile routing input, a bit set (docs/reliability.md says what each must give).
enum HostileBits : uint32_t {
  kHostileNone = 0,
  kBadIds = 1u << 0,            // routed ids outside [0, E): negative, >= E, int16/int32 extremes
  kDuplicateIds = 1u << 1,      // one expert twice or more in a token
  kNonFiniteWeights = 1u << 2,  // routed weights NaN (with payload), +-inf, +-0, negative
  kNonFiniteLogits = 1u << 3,   // NaN, +-inf (scattered and whole rows), ties, -0 in the logits
};

struct SoakProblem {
  uint64_t seed = 0;     // the problem's own seed: the draw and all its data follow from it
  MoeCaseConfig config;  // config.seed = seed; config.routing_only (the soak's data is on the GPU)
  Window window = Window::kAll;
  uint32_t hostile = kHostileNone;
  bool enable_pdl = false;
  bool graph = false;            // capture once, replay on new inputs in the same buffers
  int graph_rounds = 0;          // replays, each on fresh inputs (graph only)
  bool rerun = false;            // eager: a second run with PDL flipped must repeat the bits
  int64_t workspace_tokens = 0;  // the workspace is sized for this T (>= T: monotone sizing)

  const MoeShape& shape() const { return config.shape; }
};

// The seed of problem `index` of a run seeded `run_seed` (a mix, so neighbours are unrelated).
uint64_t problem_seed(uint64_t run_seed, int64_t index);

// The problem drawn from its seed. Every drawn problem passes validate() and fits the caps below.
SoakProblem draw_problem(uint64_t seed);

// One line naming every drawn value (the log's problem line; equal lines = equal problems).
std::string describe(const SoakProblem& problem);

// MoeArguments of the problem with placeholder (never dereferenced) pointers, for validate().
MoeArguments placeholder_arguments(const SoakProblem& problem);

// What a problem costs the soak, estimated from its sizes (soak_draw.cc says from what).
struct Cost {
  double device_bytes = 0;  // operator buffers, workspace and the GPU reference's buffers
  double host_bytes = 0;    // the reference's downloads and the comparison
  double seconds = 0;       // one whole problem: fill, run(s), reference, comparison
};
Cost estimate_cost(const SoakProblem& problem);

// Caps a drawn problem is shrunk to fit (T first, then H and I).
constexpr double kMaxDeviceBytes = 40.0 * (1ull << 30);  // of an H200's 141 GB
constexpr double kMaxHostBytes = 12.0 * (1ull << 30);    // of the device machine's 128 GiB
constexpr double kMaxProblemSeconds = 8.0;               // no problem eats the budget alone

// SMs assumed where no device is asked (the dry run): an H200's.
constexpr int kAssumedNumSms = 132;

// An axis of the mix and of the report: each problem has one label on it.
struct Axis {
  const char* name;
  std::vector<std::string> labels;  // every label the draw must reach
  // The problem's label; num_sms for the axes that follow the pipeline's own choices.
  std::string (*label_of)(const SoakProblem& problem, int num_sms);
  bool is_path;  // a kernel path of the pipeline (the report's "per path" part)
};
const std::vector<Axis>& draw_axes();

}  // namespace fusedmoe::soak
