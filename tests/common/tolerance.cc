// docs/STYLE.md's tolerance rule (see tolerance.h).
#include "common/tolerance.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/host_data.h"

namespace fusedmoe::test {

double default_atol(const std::vector<double>& ref) {
  double max_ref = 0.0;
  for (double r : ref) {
    if (std::isfinite(r)) max_ref = std::max(max_ref, std::abs(r));
  }
  return 1e-3 * max_ref + 1e-6;
}

::testing::AssertionResult close_by_bf16_rule(const std::vector<double>& ours,
                                              const std::vector<double>& ref,
                                              const std::vector<double>& ref_bf16, double atol) {
  if (ours.size() != ref.size() || ref_bf16.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size mismatch: ours " << ours.size() << ", ref "
                                         << ref.size() << ", ref_bf16 " << ref_bf16.size();
  }
  if (atol < 0) atol = default_atol(ref);
  double bf16_error = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isfinite(ref[i])) bf16_error = std::max(bf16_error, std::abs(ref_bf16[i] - ref[i]));
  }
  const double bound = 2.0 * bf16_error + atol;

  double worst = 0.0;
  size_t worst_idx = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(ref[i])) continue;  // the rule speaks about finite references only
    const double error = std::abs(ours[i] - ref[i]);
    if (!(error <= bound)) {  // also catches NaN
      return ::testing::AssertionFailure()
             << "element " << i << ": ours " << ours[i] << ", ref " << ref[i] << ", |diff| "
             << error << " > bound " << bound << " (2 * bf16 error " << bf16_error << " + atol "
             << atol << ")";
    }
    if (error > worst) {
      worst = error;
      worst_idx = i;
    }
  }
  return ::testing::AssertionSuccess() << "max |diff| " << worst << " at " << worst_idx
                                       << " <= bound " << bound;
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
