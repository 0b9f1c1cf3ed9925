// Host-side bf16 <-> fp32 conversions for the CPU reference and the tests.
//
// bf16 values are carried as their raw uint16_t bits (the upper half of an IEEE fp32). Rounding
// is round-to-nearest-even, the same as cvt.rn.bf16.f32 on the GPU and __float2bfloat16_rn; a NaN
// stays NaN and becomes the canonical 0x7FFF, as the CUDA conversion does, so outputs compare
// bitwise. Deliberately free of cuda_bf16.h so plain C++ code (and its host operators' quirks)
// never depend on the CUDA headers.
#pragma once

#include <cstdint>
#include <cstring>

namespace fusedmoe::detail {

constexpr uint16_t kBf16CanonicalNan = 0x7FFF;

inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

inline uint16_t float_to_bf16_bits(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7FFFFFFFu) > 0x7F800000u) return kBf16CanonicalNan;
  // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate.
  // Overflow past the largest finite bf16 correctly carries into +-inf.
  word += 0x7FFFu + ((word >> 16) & 1u);
  return static_cast<uint16_t>(word >> 16);
}

// The bits of a float that already holds a bf16 value (its lower half is zero): the upper half,
// exactly, NaN sign and payload included (float_to_bf16_bits would make a NaN canonical).
inline uint16_t bf16_value_to_bits(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  return static_cast<uint16_t>(word >> 16);
}

// fp32 -> bf16 -> fp32: the value a bf16 store keeps.
inline float round_to_bf16(float value) { return bf16_bits_to_float(float_to_bf16_bits(value)); }

}  // namespace fusedmoe::detail
