// Per label of every axis (soak_draw.h's draw_axes()): how many problems, how many differed, the
// worst normalised error and which problem had it, and the seconds they took (the dry run: the
// cost model's estimate). The dry run prints the mix from it, the soak its report per path and
// axis.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "soak/soak_draw.h"

namespace fusedmoe::soak {

class Tally {
 public:
  explicit Tally(int num_sms);

  void add(const SoakProblem& problem, int64_t index, bool differed, double ratio, double seconds);

  // Counts and shares per label (the dry run's mix).
  void print_mix(std::FILE* out) const;
  // Count, differed and worst normalised error per label, paths first (the soak's report).
  void print_report(std::FILE* out) const;
  // "axis=label" for every declared label no problem had, and every label not declared.
  std::vector<std::string> coverage_errors() const;

  int64_t problems() const { return problems_; }

 private:
  struct Cell {
    int64_t count = 0, differed = 0;
    double worst = 0.0, seconds = 0.0;
    int64_t worst_index = -1;
    uint64_t worst_seed = 0;
  };
  void print_axis(std::FILE* out, size_t axis, bool report) const;

  int num_sms_;
  int64_t problems_ = 0;
  double seconds_ = 0.0;
  std::vector<std::map<std::string, Cell>> cells_;  // per axis of draw_axes(), by label
};

}  // namespace fusedmoe::soak
