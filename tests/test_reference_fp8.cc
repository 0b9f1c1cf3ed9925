// The FP8 block-scale variant on the CPU: the e4m3 conversions against the format's definition
// (every code, every rounding midpoint, saturation, NaN), the quantiser's rule (scale = amax / 448,
// the largest element at +-448, zero groups, NaN), the reference's FP8 GEMMs against a direct
// fp64 evaluation of the block-promoted sums, the bf16 and e4m3 hidden-state inputs agreeing
// bitwise. The whole operator against an independent PyTorch model: tests/python/test_fp8.py;
// the GPU against this reference: tests/test_gpu_fp8.cu.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/host_data.h"
#include "common/fp8_case.h"
#include "common/moe_case.h"
#include "common/tolerance.h"
#include "reference/bf16.h"
#include "reference/fp8.h"
#include "reference/reference.h"

namespace fusedmoe {
namespace {

using detail::e4m3_to_float;
using detail::float_to_e4m3;

// The value of an e4m3fn code from the format's definition, in fp64.
double e4m3_definition(int code) {
  const int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
  const double magnitude = exponent == 0 ? mantissa * std::ldexp(1.0, -9)
                                         : (1.0 + mantissa / 8.0) * std::ldexp(1.0, exponent - 7);
  return sign ? -magnitude : magnitude;
}

TEST(E4m3, EveryCodeDecodesToItsValueAndEncodesBack) {
  for (int code = 0; code < 256; ++code) {
    SCOPED_TRACE(code);
    const float value = e4m3_to_float(static_cast<uint8_t>(code));
    if ((code & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(value));
      EXPECT_EQ(float_to_e4m3(value), detail::kE4m3Nan);
      continue;
    }
    EXPECT_EQ(static_cast<double>(value), e4m3_definition(code));
    EXPECT_EQ(float_to_e4m3(value), code);
  }
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));
}

TEST(E4m3, RoundsToNearestEvenAndSaturates) {
  // Between each pair of neighbouring positive codes: just below the midpoint rounds down, just
  // above rounds up, the midpoint itself goes to the even code; the same mirrored for negatives.
  for (int code = 0; code < 0x7E; ++code) {
    SCOPED_TRACE(code);
    const float low = e4m3_to_float(static_cast<uint8_t>(code));
    const float high = e4m3_to_float(static_cast<uint8_t>(code + 1));
    const float mid = 0.5f * (low + high);  // exact: one more bit than e4m3 has
    const int even = (code % 2 == 0) ? code : code + 1;
    EXPECT_EQ(float_to_e4m3(mid), even);
    EXPECT_EQ(float_to_e4m3(std::nextafter(mid, 0.0f)), code);
    EXPECT_EQ(float_to_e4m3(std::nextafter(mid, 1000.0f)), code + 1);
    EXPECT_EQ(float_to_e4m3(-mid), 0x80 | even);
  }
  EXPECT_EQ(float_to_e4m3(464.0f), 0x7E);  // would round to 480: saturates to 448
  EXPECT_EQ(float_to_e4m3(1e30f), 0x7E);
  EXPECT_EQ(float_to_e4m3(INFINITY), 0x7E);
  EXPECT_EQ(float_to_e4m3(-INFINITY), 0xFE);
  EXPECT_EQ(float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.0f, -11)), 0x00);  // a quarter of the smallest: to zero
  EXPECT_EQ(float_to_e4m3(NAN), detail::kE4m3Nan);
}

TEST(Fp8Quantize, ScaleIsAmaxOver448AndTheLargestLandsOn448) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> values(3 * kFp8BlockSize);
  for (float& v : values) v = detail::round_to_bf16(normal(rng));
  values[kFp8BlockSize + 5] = -40.0f;                                        // group 1's amax
  std::fill(values.begin() + 2 * kFp8BlockSize, values.end(), 0.0f);         // group 2: zeros
  values[2 * kFp8BlockSize + 3] = NAN;                                       // ... and a NaN
  std::vector<uint8_t> codes(values.size());
  std::vector<float> scales(3);
  detail::quantize_groups_e4m3(values.data(), static_cast<int64_t>(values.size()), codes.data(),
                               scales.data());
  for (int g = 0; g < 2; ++g) {
    float amax = 0.0f;
    for (int i = 0; i < kFp8BlockSize; ++i) amax = std::fmax(amax, std::fabs(values[g * 128 + i]));
    EXPECT_EQ(scales[g], amax / 448.0f);
    for (int i = 0; i < kFp8BlockSize; ++i) {
      const float v = values[g * kFp8BlockSize + i];
      const uint8_t code = codes[g * kFp8BlockSize + i];
      EXPECT_EQ(code, float_to_e4m3(v / scales[g]));
      if (std::fabs(v) == amax) EXPECT_EQ(code & 0x7F, 0x7E) << "amax element not at 448";
      // Dequantised, each element is within half an e4m3 step (2^-4 relative) of its value.
      EXPECT_LE(std::fabs(e4m3_to_float(code) * scales[g] - v), std::fabs(v) / 16 + amax * 1e-3f);
    }
  }
  EXPECT_EQ(codes[kFp8BlockSize + 5], 0xFE);  // -40 is group 1's amax: -448
  EXPECT_EQ(scales[2], 0.0f);
  for (int i = 0; i < kFp8BlockSize; ++i) {
    EXPECT_EQ(codes[2 * kFp8BlockSize + i], i == 3 ? detail::kE4m3Nan : 0) << i;
  }
}

TEST(Fp8Quantize, SignallingNansAreSkippedToo) {
  // A bf16 signalling NaN (quiet bit clear) widens to a float signalling NaN, for which
  // std::fmax returns NaN; the rule skips every NaN (the GPU's fmaxf does too).
  std::vector<float> values(kFp8BlockSize, 1.0f);
  values[7] = -3.0f;
  values[9] = detail::bf16_bits_to_float(0x7F81);  // signalling
  values[11] = detail::bf16_bits_to_float(0xFFC1);  // quiet, negative
  ASSERT_TRUE(std::isnan(values[9]) && std::isnan(values[11]));
  std::vector<uint8_t> codes(values.size());
  float scale = 0.0f;
  detail::quantize_groups_e4m3(values.data(), kFp8BlockSize, codes.data(), &scale);
  EXPECT_EQ(scale, 3.0f / 448.0f);
  EXPECT_EQ(codes[7], 0xFE);
  EXPECT_EQ(codes[9], detail::kE4m3Nan);
  EXPECT_EQ(codes[11], detail::kE4m3Nan);
}

// Random e4m3 weights (no NaN codes) and positive block scales for [E, N, K].
struct RandomFp8Weights {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  RandomFp8Weights(int64_t experts, int64_t n, int64_t k, std::mt19937& rng) {
    std::uniform_int_distribution<int> code(0, 255);
    std::uniform_real_distribution<float> scale(1e-3f, 4e-3f);
    codes.resize(experts * n * k);
    for (uint8_t& c : codes) {
      do c = static_cast<uint8_t>(code(rng)); while ((c & 0x7F) == 0x7F);
    }
    scales.resize(experts * (n / kFp8BlockSize) * (k / kFp8BlockSize));
    for (float& s : scales) s = scale(rng);
  }
  ref::Fp8Weights view() const { return {codes.data(), scales.data()}; }
};

TEST(ReferenceFp8, GemmsMatchTheirBlockPromotedSumsInFp64) {
  // Two experts, 9 rows; H = 256, I = 128, plain SwiGLU; compare GEMM1's activation and GEMM2's
  // rows with fp64 evaluations of sum_b (sa * sw) * dot_b on the same e4m3 operands.
  std::mt19937 rng(5);
  const int64_t T = 9, H = 256, I = 128, N = 2 * I;
  const int32_t K = 1;
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t % 2);
  const ref::Permutation perm = ref::permute_reference(ids, 0, 2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(T * H);
  for (uint16_t& v : x) v = detail::float_to_bf16_bits(normal(rng));
  const ref::Fp8Rows x8 = ref::quantize_rows_fp8(x.data(), T, H);
  const RandomFp8Weights w1(2, N, H, rng), w2(2, H, I, rng);

  const auto block_sum = [](const uint8_t* a, const float* a_scales, const uint8_t* w,
                            const float* w_scales, int64_t n) {
    double acc = 0.0;
    for (int64_t b = 0; b < n / kFp8BlockSize; ++b) {
      double dot = 0.0;
      for (int64_t i = b * kFp8BlockSize; i < (b + 1) * kFp8BlockSize; ++i) {
        dot += static_cast<double>(e4m3_to_float(a[i])) * e4m3_to_float(w[i]);
      }
      acc += static_cast<double>(a_scales[b]) * w_scales[b] * dot;
    }
    return acc;
  };

  const std::vector<uint16_t> act = ref::activation_reference_fp8(x8, w1.view(), I, K, perm);
  const std::vector<uint16_t> y = ref::gemm2_reference_fp8(act, w2.view(), H, I, perm);
  const ref::Fp8Rows act8 = ref::quantize_rows_fp8(act.data(), perm.num_local(), I);
  double worst_act = 0.0, worst_y = 0.0;
  for (int64_t p = 0; p < perm.num_local(); ++p) {
    const int64_t token = perm.permuted_slots[p];
    const int32_t e = ids[token];
    const uint8_t* xa = x8.codes.data() + token * H;
    const float* xs = x8.scales.data() + token * (H / kFp8BlockSize);
    for (int64_t j = 0; j < I; ++j) {
      const auto g = [&](int64_t row) {
        return block_sum(xa, xs, w1.codes.data() + (e * N + row) * H,
                         w1.scales.data() + (e * (N / 128) + row / 128) * (H / 128), H);
      };
      const double up = g(j), gate = g(I + j);
      const double expected = gate / (1.0 + std::exp(-gate)) * up;
      const double ours = detail::bf16_bits_to_float(act[p * I + j]);
      worst_act = std::max(worst_act, std::fabs(ours - expected) / (std::fabs(expected) + 1e-2));
    }
    for (int64_t h = 0; h < H; ++h) {
      const double expected =
          block_sum(act8.codes.data() + p * I, act8.scales.data() + p * (I / 128),
                    w2.codes.data() + (e * H + h) * I,
                    w2.scales.data() + (e * (H / 128) + h / 128) * (I / 128), I);
      const double ours = detail::bf16_bits_to_float(y[p * H + h]);
      worst_y = std::max(worst_y, std::fabs(ours - expected) / (std::fabs(expected) + 1e-2));
    }
  }
  // Both are rounded once to bf16 (2^-9 relative) after fp32 sums: well inside 2^-7.
  EXPECT_LT(worst_act, 1.0 / 128) << "GEMM1 + SwiGLU";
  EXPECT_LT(worst_y, 1.0 / 128) << "GEMM2";
  EXPECT_GT(worst_y, 0.0) << "suspiciously exact: were the rows compared at all?";
}

test::MoeCaseConfig fp8_config(uint64_t seed) {
  test::MoeCaseConfig cfg;
  cfg.shape = test::make_shape(21, 256, 128, 8, 2);
  cfg.shape.local_expert_offset = 2;
  cfg.shape.local_num_experts = 5;
  cfg.seed = seed;
  return cfg;
}

TEST(ReferenceFp8, Fp8HiddenStatesWithTheirScalesGiveTheBf16InputsResultBitwise) {
  test::Fp8Case bf16_input(fp8_config(21));
  ASSERT_TRUE(run_reference(bf16_input.arguments()).ok());

  test::Fp8Case fp8_input(fp8_config(21));
  fp8_input.quantize_hidden_states();
  const MoeArguments args = fp8_input.arguments(/*fp8_input=*/true);
  ASSERT_TRUE(run_reference(args).ok());
  EXPECT_EQ(test::first_difference(fp8_input.c.output, bf16_input.c.output), -1);

  // And FP8 is close to, but not, the BF16 operator on the same weights (quantisation noise of a
  // few per cent, never zero): the FP8 path really ran. (The case's bf16 data, which Fp8Case
  // scales by blocks before quantising, run with bf16 weights.)
  test::Fp8Case bf16(fp8_config(21));
  ASSERT_TRUE(run_reference(bf16.c.arguments()).ok());
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < bf16.c.output.size(); ++i) {
    const double a = detail::bf16_bits_to_float(bf16_input.c.output[i]);
    const double b = detail::bf16_bits_to_float(bf16.c.output[i]);
    diff += (a - b) * (a - b);
    norm += b * b;
  }
  const double relative = std::sqrt(diff / norm);
  EXPECT_GT(relative, 1e-3);
  EXPECT_LT(relative, 0.1);
}

}  // namespace
}  // namespace fusedmoe
