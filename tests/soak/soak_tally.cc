// Tallies per axis label (see soak_tally.h).
#include "soak/soak_tally.h"

#include <algorithm>

namespace fusedmoe::soak {

Tally::Tally(int num_sms) : num_sms_(num_sms), cells_(draw_axes().size()) {}

void Tally::add(const SoakProblem& problem, int64_t index, bool differed, double ratio,
                double seconds) {
  ++problems_;
  seconds_ += seconds;
  const std::vector<Axis>& axes = draw_axes();
  for (size_t a = 0; a < axes.size(); ++a) {
    Cell& cell = cells_[a][axes[a].label_of(problem, num_sms_)];
    ++cell.count;
    cell.seconds += seconds;
    if (differed) ++cell.differed;
    if (cell.worst_index < 0 || ratio > cell.worst) {
      cell.worst = ratio;
      cell.worst_index = index;
      cell.worst_seed = problem.seed;
    }
  }
}

// Labels in the axis's declared order, then any undeclared ones.
void Tally::print_axis(std::FILE* out, size_t a, bool report) const {
  const Axis& axis = draw_axes()[a];
  std::vector<std::string> labels = axis.labels;
  for (const auto& [label, cell] : cells_[a]) {
    if (std::find(labels.begin(), labels.end(), label) == labels.end()) labels.push_back(label);
  }
  for (const std::string& label : labels) {
    const auto found = cells_[a].find(label);
    const Cell cell = found == cells_[a].end() ? Cell{} : found->second;
    if (!report) {
      std::fprintf(out, "  %-14s %-38s %7lld  %5.1f %%  (%5.1f %% of the time)\n", axis.name,
                   label.c_str(), static_cast<long long>(cell.count),
                   problems_ ? 100.0 * double(cell.count) / double(problems_) : 0.0,
                   seconds_ > 0 ? 100.0 * cell.seconds / seconds_ : 0.0);
      continue;
    }
    if (cell.count == 0) {
      std::fprintf(out, "  %-14s %-38s %7d\n", axis.name, label.c_str(), 0);
      continue;
    }
    std::fprintf(
        out, "  %-14s %-38s %7lld  %4lld differed  worst %8.4f (#%lld seed %llu)  %6.1f s\n",
        axis.name, label.c_str(), static_cast<long long>(cell.count),
        static_cast<long long>(cell.differed), cell.worst, static_cast<long long>(cell.worst_index),
        static_cast<unsigned long long>(cell.worst_seed), cell.seconds);
  }
}

void Tally::print_mix(std::FILE* out) const {
  for (size_t a = 0; a < cells_.size(); ++a) print_axis(out, a, false);
}

void Tally::print_report(std::FILE* out) const {
  std::fprintf(out, "per path (the pipeline's kernels for the problem):\n");
  for (size_t a = 0; a < cells_.size(); ++a) {
    if (draw_axes()[a].is_path) print_axis(out, a, true);
  }
  std::fprintf(out, "per drawn axis:\n");
  for (size_t a = 0; a < cells_.size(); ++a) {
    if (!draw_axes()[a].is_path) print_axis(out, a, true);
  }
}

std::vector<std::string> Tally::coverage_errors() const {
  std::vector<std::string> errors;
  const std::vector<Axis>& axes = draw_axes();
  for (size_t a = 0; a < axes.size(); ++a) {
    for (const std::string& label : axes[a].labels) {
      if (cells_[a].count(label) == 0) {
        errors.push_back(std::string(axes[a].name) + "=" + label + " never drawn");
      }
    }
    for (const auto& [label, cell] : cells_[a]) {
      if (std::find(axes[a].labels.begin(), axes[a].labels.end(), label) == axes[a].labels.end()) {
        errors.push_back(std::string(axes[a].name) + "=" + label + " drawn but not declared");
      }
    }
  }
  return errors;
}

}  // namespace fusedmoe::soak
