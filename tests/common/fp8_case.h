// A MoeCase with FP8 weights (docs/fp8.md): the case's bf16 weights quantised per 128x128
// block with scale = amax / 448 (like fusedmoe.fp8.quantize_fp8_weights), for the CPU and GPU
// FP8 tests. Header-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/moe_case.h"
#include "reference/bf16.h"
#include "reference/fp8.h"

namespace fusedmoe::test {

// A MoeCase run with FP8 weights: the case's bf16 weights quantised per 128x128 block.
struct Fp8Case {
  test::MoeCase c;
  std::vector<uint8_t> w1, w2;
  std::vector<float> w1_scales, w2_scales;

  explicit Fp8Case(const test::MoeCaseConfig& cfg) : c(cfg) {
    const MoeShape& s = c.shape();
    // Each 128x128 weight block and each (token, 128-column group) of x scaled by a power of two
    // of its own (2^-3..2^3 and 2^-2..2^2: exact in bf16), so that the blocks' scales differ by
    // up to 64x. With the uniform random data alone every block has about the same amax, so its
    // scale would be the same number everywhere and a wrong scale index would change nothing.
    uint64_t state = cfg.seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    scale_by_blocks(c.gemm1_weights, s.local_num_experts * c.gemm1_rows(), s.hidden_size, 128, 3,
                    state);
    scale_by_blocks(c.gemm2_weights, s.local_num_experts * s.hidden_size, s.intermediate_size, 128,
                    3, state);
    scale_by_blocks(c.hidden_states, s.num_tokens, s.hidden_size, 1, 2, state);
    quantize_blocks(c.gemm1_weights, s.local_num_experts, c.gemm1_rows(), s.hidden_size, w1,
                    w1_scales);
    quantize_blocks(c.gemm2_weights, s.local_num_experts, s.hidden_size, s.intermediate_size, w2,
                    w2_scales);
  }
  // values [rows, cols] (bf16 bits): every block of block_rows x 128 multiplied by 2^u, u uniform
  // in [-max_shift, max_shift] from `state` (rows a multiple of block_rows, cols of 128).
  static void scale_by_blocks(std::vector<uint16_t>& values, int64_t rows, int64_t cols,
                              int64_t block_rows, int max_shift, uint64_t& state) {
    for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
      for (int64_t c0 = 0; c0 < cols; c0 += 128) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const int shift = static_cast<int>((state >> 33) % (2 * max_shift + 1)) - max_shift;
        const float factor = std::ldexp(1.0f, shift);
        for (int64_t r = r0; r < std::min(rows, r0 + block_rows); ++r) {
          for (int64_t i = c0; i < std::min(cols, c0 + 128); ++i) {
            uint16_t& v = values[r * cols + i];
            v = detail::float_to_bf16_bits(detail::bf16_bits_to_float(v) * factor);
          }
        }
      }
    }
  }

  // amax / 448 per block, like the Python package's quantize_fp8_weights.
  static void quantize_blocks(const std::vector<uint16_t>& bf16, int64_t experts, int64_t n,
                              int64_t k, std::vector<uint8_t>& codes, std::vector<float>& scales) {
    codes.resize(bf16.size());
    scales.assign(experts * (n / 128) * (k / 128), 0.0f);
    for (int64_t e = 0; e < experts; ++e) {
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t i = 0; i < k; ++i) {
          float& scale = scales[(e * (n / 128) + r / 128) * (k / 128) + i / 128];
          scale = std::fmax(scale, std::fabs(detail::bf16_bits_to_float(bf16[(e * n + r) * k + i])));
        }
      }
    }
    for (float& s : scales) s /= 448.0f;
    for (int64_t e = 0; e < experts; ++e) {
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t i = 0; i < k; ++i) {
          const int64_t at = (e * n + r) * k + i;
          const float scale = scales[(e * (n / 128) + r / 128) * (k / 128) + i / 128];
          const float v = detail::bf16_bits_to_float(bf16[at]);
          codes[at] = detail::float_to_e4m3(scale > 0.0f ? v / scale : v);
        }
      }
    }
  }
  // The hidden states in e4m3 with group-major scales [H / 128, T], quantised by the reference's
  // rule (fp8_input arguments then give bitwise the bf16 input's result).
  std::vector<uint8_t> x8;
  std::vector<float> x_scale;
  void quantize_hidden_states() {
    const int64_t T = c.shape().num_tokens, H = c.shape().hidden_size, groups = H / 128;
    std::vector<float> row(H), scales(groups);
    x8.resize(T * H);
    x_scale.assign(std::max<int64_t>(groups * T, 1), 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < H; ++h) row[h] = detail::bf16_bits_to_float(c.hidden_states[t * H + h]);
      detail::quantize_groups_e4m3(row.data(), H, x8.data() + t * H, scales.data());
      for (int64_t g = 0; g < groups; ++g) x_scale[g * T + t] = scales[g];
    }
  }

  // Host arguments: FP8 weights, and e4m3 hidden states when fp8_input (quantize_hidden_states
  // first).
  MoeArguments arguments(bool fp8_input = false) {
    MoeArguments a = c.arguments();
    a.weights_dtype = DType::kFP8E4M3;
    a.gemm1_weights = w1.data();
    a.gemm2_weights = w2.data();
    a.gemm1_weights_scale = w1_scales.data();
    a.gemm2_weights_scale = w2_scales.data();
    if (fp8_input) {
      a.hidden_states_dtype = DType::kFP8E4M3;
      a.hidden_states = x8.data();
      a.hidden_states_scale = x_scale.data();
    }
    return a;
  }
};

}  // namespace fusedmoe::test
