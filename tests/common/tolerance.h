// docs/STYLE.md's tolerance rule: ours passes when
//   max|ours - ref| <= 2 * max|ref_bf16 - ref| + atol,
// with ref computed in fp64 (or fp32) from the same bf16 inputs and ref_bf16 the same math done
// with the bf16 roundings of the design (e.g. run_reference's output). A NaN or inf anywhere in
// ours where ref is finite fails. Use bitwise comparisons where the design promises equality.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

namespace fusedmoe::test {

// Default atol: 1e-3 * max|ref| + 1e-6 (well below one bf16 ulp of the largest element).
double default_atol(const std::vector<double>& ref);

// The rule's verdict with its numbers, for callers that report rather than assert (the soak,
// tests/soak/): close_by_bf16_rule below is this plus a gtest message.
struct Bf16RuleCheck {
  bool ok = true;
  double bound = 0.0;       // 2 * bf16_error + atol
  double bf16_error = 0.0;  // max|ref_bf16 - ref| over finite ref
  double atol = 0.0;
  double worst_error = 0.0;    // max|ours - ref| over finite ref (inf when ours is NaN/inf there)
  int64_t worst_index = -1;    // where worst_error is (-1: no finite ref element)
  int64_t first_failure = -1;  // first element over the bound, -1 when ok
  // worst_error / bound: <= 1 passes; the soak's "normalised error".
  double ratio() const {
    if (bound > 0.0) return worst_error / bound;
    return worst_error > 0.0 ? std::numeric_limits<double>::infinity() : 0.0;
  }
};
Bf16RuleCheck check_bf16_rule(const std::vector<double>& ours, const std::vector<double>& ref,
                              const std::vector<double>& ref_bf16, double atol = -1.0);
// The same with ours and ref_bf16 as bf16 bits (what kernels write), without widened copies.
Bf16RuleCheck check_bf16_rule(const std::vector<uint16_t>& ours_bf16,
                              const std::vector<double>& ref, const std::vector<uint16_t>& ref_bf16,
                              double atol = -1.0);

// The rule as a gtest predicate: EXPECT_TRUE(close_by_bf16_rule(...)). atol < 0 = default_atol.
::testing::AssertionResult close_by_bf16_rule(const std::vector<double>& ours,
                                              const std::vector<double>& ref,
                                              const std::vector<double>& ref_bf16,
                                              double atol = -1.0);

// EXPECT form; `what` labels the failure. ours/ref_bf16 as bf16 bits (what kernels write).
void expect_close(const std::vector<uint16_t>& ours_bf16, const std::vector<double>& ref,
                  const std::vector<uint16_t>& ref_bf16, const char* what, double atol = -1.0);
void expect_close(const std::vector<double>& ours, const std::vector<double>& ref,
                  const std::vector<double>& ref_bf16, const char* what, double atol = -1.0);

// Index of the first element whose bytes differ, or -1 when the two are bitwise equal (sizes
// too; a size mismatch reports 0). Bitwise, so NaN == NaN and 0 != -0 for floats.
template <typename T>
int64_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace fusedmoe::test
