// Host-side float8_e4m3fn conversions and the FP8 variant's quantiser, for the CPU reference and
// the tests (docs/SPEC.md "FP8 block-scale variant").
//
// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; exponent 0 holds the subnormals m * 2^-9;
// no infinities; 0x7F / 0xFF are NaN; the largest finite value is 0x7E = 448. fp32 -> e4m3 rounds
// to nearest, ties to even, and saturates to +-448 (Inf included), like cvt.rn.satfinite on the
// GPU and like clamping to [-448, 448] before torch's .to(torch.float8_e4m3fn); NaN stays NaN.
//
// Quantising a group of 128 values v (one token's or one activation row's 128 columns):
//   amax = max |v| (NaNs skipped), scale = amax / 448 (fp32),
//   e4m3_i = e4m3(v_i / scale) when scale > 0, else e4m3(v_i) (a group of zeros stays zeros
//   where the DeepSeek recipe's x / 0 makes NaN; a NaN stays NaN either way).
#pragma once

#include <cmath>
#include <cstdint>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

constexpr uint8_t kE4m3Nan = 0x7F;
constexpr uint8_t kE4m3MaxFinite = 0x7E;  // 448

inline float e4m3_to_float(uint8_t code) {
  const float sign = (code & 0x80) ? -1.0f : 1.0f;
  const int exponent = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return NAN;
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
}

inline uint8_t float_to_e4m3(float value) {
  if (std::isnan(value)) return kE4m3Nan;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float magnitude = std::fabs(value);
  if (magnitude >= kFp8E4M3Max) return sign | kE4m3MaxFinite;  // saturate (Inf included)
  if (magnitude == 0.0f) return sign;
  // Below the smallest normal (2^-6) the grid step is 2^-9; in [2^e, 2^(e+1)) it is 2^(e-3).
  // Scaling by a power of two is exact, so nearbyint (ties to even) rounds on the grid; a
  // rounded-up mantissa of 16 carries into the next exponent by the addition below.
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude = f * 2^exponent, f in [0.5, 1)
  const int e = exponent - 1;        // magnitude in [2^e, 2^(e+1))
  if (e < -6) {
    return sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(magnitude, 9)));
  }
  const int q = static_cast<int>(std::nearbyint(std::ldexp(magnitude, 3 - e)));  // in [8, 16]
  return sign | static_cast<uint8_t>(((e + 7) << 3) + (q - 8));
}

// Quantises n = 128 * groups values (widened to fp32) group by group: codes[i] and one scale
// per group (see the file comment).
inline void quantize_groups_e4m3(const float* values, int64_t n, uint8_t* codes, float* scales) {
  for (int64_t g = 0; g * kFp8BlockSize < n; ++g) {
    const float* v = values + g * kFp8BlockSize;
    // A comparison skips every NaN; std::fmax would return NaN for a signalling one.
    float amax = 0.0f;
    for (int i = 0; i < kFp8BlockSize; ++i) {
      const float magnitude = std::fabs(v[i]);
      if (magnitude > amax) amax = magnitude;
    }
    const float scale = amax / kFp8E4M3Max;
    scales[g] = scale;
    for (int i = 0; i < kFp8BlockSize; ++i) {
      codes[g * kFp8BlockSize + i] = float_to_e4m3(scale > 0.0f ? v[i] / scale : v[i]);
    }
  }
}

}  // namespace fusedmoe::detail
