// The soak's dry run: draws the problems of a run without a GPU and checks the draw itself.
//   * every drawn problem passes validate() (and workspace_size()), fits the caps, and draws
//     again identically from its seed;
//   * the mix reaches every label of every axis (soak_draw.h's draw_axes());
//   * a CPU self-test on the small problems: the routing input (window and hostile values as
//     drawn), the reference routing, and run_reference() as "ours" against the reference's
//     pieces (with the problem's expert MLP options: activation, parameters, biases, weights on
//     the input), which the soak's comparisons must accept, while a nudged element, map entry or
//     replay id must be caught; those pieces against the fp64 model (tests/common/double_model.h)
//     by the tolerance rule; every label of the expert MLP's axes self-tested once the
//     self-test budget is spent;
//   * the cost model's estimate of the run, and how many problems fit the time budget.
// Prints the mix and the estimate; the last line reads "soak dry run: ...".
#pragma once

#include <cstdint>

namespace fusedmoe::soak {

struct DryRunOptions {
  uint64_t run_seed = 1;
  int64_t problems = 6000;      // problems 0 .. problems - 1 of the run
  int64_t only_index = -1;      // >= 0: that problem of the run alone
  uint64_t only_seed = 0;       // != 0: the problem of that seed alone
  double budget_seconds = 300;  // for the "fit the budget" estimate
  int64_t self_tests = 300;     // at most this many small problems through the CPU self-test
  bool list = false;            // print every problem's line
};

// 0 when every check passed, 1 otherwise.
int dry_run(const DryRunOptions& options);

}  // namespace fusedmoe::soak
