// A table of invalid MoeArguments, one per validation rule of SPEC / src/validate.cc (and the
// size limits of validate.h): each starts from a valid base MoeCase config, breaks exactly one
// rule and names the argument the message must start with and the value it must end with.
// Shared by the CPU and GPU hostile-input tests (tests/test_hostile.cc, tests/test_gpu_hostile.cu),
// which run every entry through validate(), run(), run_reference() and workspace_size() with
// poisoned outputs. The mutations only change scalars and pointers (never dereferenced: every
// rule is checked before any data is read), so the same table serves host and device buffers.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "common/moe_case.h"
#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::test {

enum class InvalidBase { kLogits, kDeepSeek, kUnfinalized, kPacked, kUnpackedBf16, kUnpackedFp32 };

// A valid config of the given kind: T = 5, H = 16, I = 8, E = 8, K = 2, bias and replay on.
MoeCaseConfig invalid_base_config(InvalidBase base, uint64_t seed);

struct InvalidRule {
  std::string name;
  InvalidBase base;
  std::function<void(MoeArguments&)> mutate;
  std::string argument;  // the message starts with "<argument>: expected "
  std::string got;       // and ends with ", got <got>"
  bool shape_rule;       // workspace_size() must reject it too (same message)
};

const std::vector<InvalidRule>& invalid_rules();

// True when `status` is the rejection the rule describes.
::testing::AssertionResult is_rejection(const Status& status, const InvalidRule& rule);

}  // namespace fusedmoe::test
