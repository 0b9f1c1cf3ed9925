// docs/STYLE.md's tolerance rule (see tolerance.h).
#include "common/tolerance.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/host_data.h"

namespace fusedmoe::test {
namespace {

// The rule over n elements; ours(i) and ref_bf16(i) read element i as a double, so bf16 inputs
// need no widened copy (a soak output can hold 10^8 elements).
template <typename Ours, typename RefBf16>
Bf16RuleCheck evaluate_rule(size_t n, Ours ours, const std::vector<double>& ref, RefBf16 ref_bf16,
                            double atol) {
  Bf16RuleCheck check;
  check.atol = atol < 0 ? default_atol(ref) : atol;
  for (size_t i = 0; i < n; ++i) {
    if (std::isfinite(ref[i])) {
      check.bf16_error = std::max(check.bf16_error, std::abs(ref_bf16(i) - ref[i]));
    }
  }
  check.bound = 2.0 * check.bf16_error + check.atol;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(ref[i])) continue;  // the rule speaks about finite references only
    double error = std::abs(ours(i) - ref[i]);
    if (!(error <= check.bound)) {  // also catches NaN
      if (check.ok) check.first_failure = static_cast<int64_t>(i);
      check.ok = false;
      if (!std::isfinite(error)) error = std::numeric_limits<double>::infinity();
    }
    if (check.worst_index < 0 || error > check.worst_error) {
      check.worst_error = error;
      check.worst_index = static_cast<int64_t>(i);
    }
  }
  return check;
}

}  // namespace

double default_atol(const std::vector<double>& ref) {
  double max_ref = 0.0;
  for (double r : ref) {
    if (std::isfinite(r)) max_ref = std::max(max_ref, std::abs(r));
  }
  return 1e-3 * max_ref + 1e-6;
}

Bf16RuleCheck check_bf16_rule(const std::vector<double>& ours, const std::vector<double>& ref,
                              const std::vector<double>& ref_bf16, double atol) {
  Bf16RuleCheck check;
  if (ours.size() != ref.size() || ref_bf16.size() != ref.size()) {
    check.ok = false;
    check.first_failure = 0;
    return check;
  }
  return evaluate_rule(
      ref.size(), [&](size_t i) { return ours[i]; }, ref, [&](size_t i) { return ref_bf16[i]; },
      atol);
}

Bf16RuleCheck check_bf16_rule(const std::vector<uint16_t>& ours_bf16,
                              const std::vector<double>& ref, const std::vector<uint16_t>& ref_bf16,
                              double atol) {
  Bf16RuleCheck check;
  if (ours_bf16.size() != ref.size() || ref_bf16.size() != ref.size()) {
    check.ok = false;
    check.first_failure = 0;
    return check;
  }
  return evaluate_rule(
      ref.size(), [&](size_t i) { return double{bf16_bits_to_float(ours_bf16[i])}; }, ref,
      [&](size_t i) { return double{bf16_bits_to_float(ref_bf16[i])}; }, atol);
}

::testing::AssertionResult close_by_bf16_rule(const std::vector<double>& ours,
                                              const std::vector<double>& ref,
                                              const std::vector<double>& ref_bf16, double atol) {
  if (ours.size() != ref.size() || ref_bf16.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size mismatch: ours " << ours.size() << ", ref "
                                         << ref.size() << ", ref_bf16 " << ref_bf16.size();
  }
  const Bf16RuleCheck check = check_bf16_rule(ours, ref, ref_bf16, atol);
  if (!check.ok) {
    const size_t i = static_cast<size_t>(check.first_failure);
    return ::testing::AssertionFailure()
           << "element " << i << ": ours " << ours[i] << ", ref " << ref[i] << ", |diff| "
           << std::abs(ours[i] - ref[i]) << " > bound " << check.bound << " (2 * bf16 error "
           << check.bf16_error << " + atol " << check.atol << ")";
  }
  return ::testing::AssertionSuccess()
         << "max |diff| " << check.worst_error << " at " << std::max<int64_t>(check.worst_index, 0)
         << " <= bound " << check.bound;
}

void expect_close(const std::vector<uint16_t>& ours_bf16, const std::vector<double>& ref,
                  const std::vector<uint16_t>& ref_bf16, const char* what, double atol) {
  EXPECT_TRUE(close_by_bf16_rule(bf16_to_double(ours_bf16), ref, bf16_to_double(ref_bf16), atol))
      << what;
}

void expect_close(const std::vector<double>& ours, const std::vector<double>& ref,
                  const std::vector<double>& ref_bf16, const char* what, double atol) {
  EXPECT_TRUE(close_by_bf16_rule(ours, ref, ref_bf16, atol)) << what;
}

}  // namespace fusedmoe::test
