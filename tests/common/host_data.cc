// Random data, conversions, poison and checksums for tests (see host_data.h).
#include "common/host_data.h"

#include <algorithm>
#include <cstring>
#include <numeric>

namespace fusedmoe::test {

std::vector<uint16_t> random_bf16(Rng& rng, size_t count, float lo, float hi) {
  std::vector<uint16_t> values(count);
  for (uint16_t& v : values) v = float_to_bf16_bits(rng.uniform(lo, hi));
  return values;
}

std::vector<float> random_fp32(Rng& rng, size_t count, float lo, float hi) {
  std::vector<float> values(count);
  for (float& v : values) v = rng.uniform(lo, hi);
  return values;
}

std::vector<int32_t> random_distinct_ids(Rng& rng, int64_t num_rows, int32_t per_row,
                                         int32_t num_ids) {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(num_rows) * per_row);
  std::vector<int32_t> pool(num_ids);
  for (int64_t row = 0; row < num_rows; ++row) {
    std::iota(pool.begin(), pool.end(), 0);
    // Partial Fisher-Yates: the first per_row entries become a uniform random subset.
    for (int32_t k = 0; k < per_row; ++k) {
      std::swap(pool[k], pool[rng.integer(k, num_ids - 1)]);
      ids.push_back(pool[k]);
    }
  }
  return ids;
}

std::vector<float> bf16_to_float(const std::vector<uint16_t>& bits) {
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = bf16_bits_to_float(bits[i]);
  return values;
}

std::vector<double> bf16_to_double(const std::vector<uint16_t>& bits) {
  std::vector<double> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = bf16_bits_to_float(bits[i]);
  return values;
}

std::vector<uint16_t> float_to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = float_to_bf16_bits(values[i]);
  return bits;
}

float fp32_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

void poison(std::vector<uint16_t>& bf16_values) {
  std::fill(bf16_values.begin(), bf16_values.end(), kPoisonBf16);
}
void poison(std::vector<float>& values) {
  std::fill(values.begin(), values.end(), fp32_from_bits(kPoisonFp32Bits));
}
void poison(std::vector<int32_t>& values) { std::fill(values.begin(), values.end(), kPoisonInt32); }
void poison(std::vector<int16_t>& values) { std::fill(values.begin(), values.end(), kPoisonInt16); }

bool is_poison_bf16(uint16_t bits) { return bits == kPoisonBf16; }

uint64_t checksum(const void* data, size_t num_bytes) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint64_t hash = 1469598103934665603ull;
  for (size_t i = 0; i < num_bytes; ++i) {
    hash ^= bytes[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace fusedmoe::test
