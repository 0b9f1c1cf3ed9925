// Host-side test data: a seeded random generator, random bf16/fp32 vectors, bf16 vector
// conversions, poison fills and checksums. bf16 tensors are std::vector<uint16_t> of raw bits
// (so a test copies them to the device with a plain cudaMemcpy of size() * 2 bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "reference/bf16.h"

namespace fusedmoe::test {

using detail::bf16_bits_to_float;
using detail::float_to_bf16_bits;
using detail::round_to_bf16;

// Poison patterns written into outputs before a run: NaNs (and odd integers) that no correct
// run produces, so an unwritten element is visible. The reference writes canonical NaN 0x7FFF,
// never 0xFFC1.
constexpr uint16_t kPoisonBf16 = 0xFFC1;
constexpr uint32_t kPoisonFp32Bits = 0xFFC0DEADu;
constexpr int32_t kPoisonInt32 = 0x5A5A5A5A;
constexpr int16_t kPoisonInt16 = 0x5A5A;

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(engine_); }
  float normal(float mean, float stddev) {
    return std::normal_distribution<float>(mean, stddev)(engine_);
  }
  int32_t integer(int32_t lo, int32_t hi_inclusive) {
    return std::uniform_int_distribution<int32_t>(lo, hi_inclusive)(engine_);
  }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};

// Uniform in [lo, hi), rounded to bf16 (returned as bits).
std::vector<uint16_t> random_bf16(Rng& rng, size_t count, float lo, float hi);
// Uniform in [lo, hi) in fp32.
std::vector<float> random_fp32(Rng& rng, size_t count, float lo, float hi);
// num_rows rows of `per_row` distinct ids in [0, num_ids), each row a random subset in random order.
std::vector<int32_t> random_distinct_ids(Rng& rng, int64_t num_rows, int32_t per_row,
                                         int32_t num_ids);

std::vector<float> bf16_to_float(const std::vector<uint16_t>& bits);
std::vector<double> bf16_to_double(const std::vector<uint16_t>& bits);
std::vector<uint16_t> float_to_bf16(const std::vector<float>& values);
float fp32_from_bits(uint32_t bits);

void poison(std::vector<uint16_t>& bf16_values);  // kPoisonBf16
void poison(std::vector<float>& values);          // kPoisonFp32Bits
void poison(std::vector<int32_t>& values);        // kPoisonInt32
void poison(std::vector<int16_t>& values);        // kPoisonInt16
bool is_poison_bf16(uint16_t bits);

// FNV-1a over raw bytes: a cheap "was this buffer written?" check.
uint64_t checksum(const void* data, size_t num_bytes);
template <typename T>
uint64_t checksum(const std::vector<T>& values) {
  return checksum(values.data(), values.size() * sizeof(T));
}

}  // namespace fusedmoe::test
