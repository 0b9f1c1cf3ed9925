// Quantises bf16 rows to e4m3 per 128-column group (docs/fp8.md, src/reference/fp8.h):
//   amax = max |v| (NaNs skipped), scale = amax / 448, e4m3 = RNE(v / scale) saturated to +-448
//   (v itself when scale == 0; NaN stays NaN).
// codes [rows, cols] e4m3; scales group-major [cols / 128, scale_stride] (the layout of the FP8
// GEMMs' row scales and of FlashInfer's hidden_states_scale). One warp per (row, group): lane l
// holds values 4 l .. 4 l + 3 of the group (device/e4m3_divisor.cuh: warp_quantize_fp8_group,
// which the routing kernels also run on x). Rows at or past *num_rows_device (when given; the
// activation's row count is only known on the device) are skipped.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "device/e4m3_divisor.cuh"
#include "device/ptx.cuh"

namespace fusedmoe::kernels {

struct QuantizeFp8Params {
  const __nv_bfloat16* in;          // [rows, cols]
  int64_t rows;                     // host bound (the grid covers it)
  const int32_t* num_rows_device;   // nullptr: all `rows`
  int64_t cols;                     // a multiple of 128
  uint8_t* codes;                   // [rows, cols]
  float* scales;                    // [cols / 128, scale_stride]
  int64_t scale_stride;
  bool trigger_at_start;            // PDL: the next kernel may launch as this one starts
};

constexpr int kQuantizeThreads = 256;

__global__ void __launch_bounds__(kQuantizeThreads)
    sm90_quantize_fp8_kernel(const QuantizeFp8Params params) {
  // PDL, trigger_at_start: the next kernel may launch at once. Everything it reads of ours it reads
  // after its own griddepcontrol.wait, which returns once this grid has completed; before that
  // wait a decode GEMM2 with its early lookup finds its expert and issues its first weight copies
  // (sm90_decode_gemm_fp8.cuh), which then overlap GEMM1's tail. Otherwise the trigger comes at the
  // end: a successor with nothing to do before its wait would only hold SM slots there.
  if (params.trigger_at_start) ptx::griddepcontrol_launch_dependents();
  ptx::griddepcontrol_wait();
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t(blockIdx.x) * kQuantizeThreads + threadIdx.x) / 32;
  const int64_t groups = params.cols / 128;
  const int64_t row = warp / groups, group = warp % groups;
  const int64_t limit = params.num_rows_device ? *params.num_rows_device : params.rows;
  if (row < limit && row < params.rows) {
    const int64_t at = row * params.cols + group * 128;
    device::warp_quantize_fp8_group(params.in + at, params.codes + at,
                                    &params.scales[group * params.scale_stride + row], lane);
  }
  if (!params.trigger_at_start) ptx::griddepcontrol_launch_dependents();
}

// Rows of e4m3 codes and their group-major scales copied into gathered order (launch/fp8_gemm.h,
// launch_permute_fp8_rows): one warp per output row, 16-byte copies.
struct PermuteFp8Params {
  const uint8_t* in_codes;         // [*, cols]
  const float* in_scales;          // [cols / 128, in_scale_stride]
  int64_t in_scale_stride;
  const int32_t* gather_rows;      // [rows]: the input row of each output row
  int64_t rows;                    // host bound (the grid covers it)
  const int32_t* num_rows_device;  // rows at or past it are skipped
  int64_t cols;                    // a multiple of 128
  uint8_t* codes;                  // [rows, cols]
  float* scales;                   // [cols / 128, rows]
};

__global__ void __launch_bounds__(kQuantizeThreads)
    sm90_permute_fp8_rows_kernel(const PermuteFp8Params params) {
  ptx::griddepcontrol_wait();
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t(blockIdx.x) * kQuantizeThreads + threadIdx.x) / 32;
  if (row < *params.num_rows_device && row < params.rows) {
    const int64_t source = params.gather_rows[row];
    const auto* in = reinterpret_cast<const uint4*>(params.in_codes + source * params.cols);
    auto* out = reinterpret_cast<uint4*>(params.codes + row * params.cols);
    for (int64_t i = lane; i < params.cols / 16; i += 32) out[i] = in[i];
    for (int64_t g = lane; g < params.cols / 128; g += 32) {
      params.scales[g * params.rows + row] = params.in_scales[g * params.in_scale_stride + source];
    }
  }
  ptx::griddepcontrol_launch_dependents();
}

}  // namespace fusedmoe::kernels
