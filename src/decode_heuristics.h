// When the pipeline takes the decode GEMMs (launch/decode_gemm.h) instead of the prefill ones
// (launch/grouped_gemm.h), and the decode launchers' grid arithmetic: pure host functions of
// host-known values, tested on the CPU (tests/test_decode_heuristics.cc).
//
// The decode kernels stream each hit expert's weights once per chunk of 32 rows, on every SM
// (a CTA per 32 weight rows); the prefill kernels run one 128-row x 256-column tile per SM and
// compute 128 rows whatever the expert holds. Measured in bench/NOTES.md ("Decode GEMMs
// (issue 6)"), which sets the thresholds below.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fusedmoe::heuristics {

constexpr int64_t ceil_div_decode(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Expert slots of the decode grid: at most min(E_loc, rows) experts can hold a row.
constexpr int64_t decode_expert_slots(int64_t max_rows, int64_t num_experts) {
  return std::min(max_rows, num_experts);
}

inline bool decode_aligned_16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Rows a hit local expert holds on average when T * K slots pick uniformly among E_loc experts:
// slots / E_loc (1 - (1 - 1/E_loc)^slots). An upper bound under expert parallelism, where only
// a share of the slots is local.
inline double expected_rows_per_hit_expert(int64_t num_tokens, int top_k,
                                           int local_num_experts) {
  const double slots = double(num_tokens) * top_k;
  const double e = local_num_experts;
  if (slots <= 0 || e <= 0) return 0.0;
  const double hit = e * -std::expm1(slots * std::log1p(-1.0 / e));  // e (1 - (1 - 1/e)^slots)
  return slots / std::max(hit, 1.0);
}

// Decode GEMMs while a hit expert averages at most this many rows: one 32-row chunk per
// expert keeps the weights read once (bench/NOTES.md, "Decode GEMMs (issue 6)").
constexpr double kDecodeMaxRowsPerExpert = 24.0;

// The pipeline's choice: true = launch_decode_gemm1_swiglu + launch_decode_gemm2.
inline bool use_decode_gemms(int64_t num_tokens, int top_k, int local_num_experts,
                             int64_t hidden, int64_t inter, int num_sms) {
  (void)hidden;
  (void)inter;
  (void)num_sms;
  if (num_tokens <= 0 || top_k <= 0 || local_num_experts <= 0) return false;
  return expected_rows_per_hit_expert(num_tokens, top_k, local_num_experts) <=
         kDecodeMaxRowsPerExpert;
}

}  // namespace fusedmoe::heuristics
