// Epilogue piece shared by the grouped GEMMs: one warp's 16 x 128 (or 16 x 64) bf16 output block
// goes from wgmma fragments to global memory through a 4 KiB smem staging buffer, so that global stores
// are 16-byte and row-contiguous (a warp instruction writes two full 256-byte row segments)
// instead of the fragments' 4-byte pieces spread over 8 rows.
//
// Staging layout (per warp, 16 rows x 256 bytes): 16-byte chunk c of row r lives at
// r * 256 + 16 * (c ^ (r % 8)), so both the stmatrix writes (8 rows, same chunk) and the 16-byte
// reads are free of bank conflicts.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "device/e4m3_divisor.cuh"
#include "device/ptx.cuh"

namespace fusedmoe::device {

// silu(v) = v / (1 + exp(-v)) with the fast exp and divide, as every plain SwiGLU epilogue
// (prefill and decode, BF16 and FP8) computes it, so that all paths round alike: 4 instructions
// instead of ~40 for expf and IEEE division (GEMM1 gained 5-6 % with this and the n256 wgmma:
// bench/NOTES.md step 2); the difference, a few fp32 ulp, vanishes in the bf16 rounding of act.
// v < -88: exp(-v) = inf and the result is -0.
__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

constexpr int kStagingBytesPerWarp = 16 * 256;

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ int staging_offset(int row, int chunk) {
  return row * 256 + 16 * (chunk ^ (row % 8));
}

// One warp's 16-row block of kChunks n8 chunks (16: 128 columns; 8: 64, the FP8 GEMM1's
// activation columns). packed[i][h]: the lane's bf16 pair of chunk i (columns 8 i + 2 (lane % 4)
// + {0, 1}) in fragment row lane / 4 + 8 h. Row r of the block is global row first_row + r
// (stored only when < row_end); column 8 c is global column col0 + 8 c (stored only when
// < num_cols, a multiple of 8). out_aligned: out and row_stride allow 16-byte stores (else
// 2-byte stores). A 64-column block uses the first 128 of its staging rows' 256 bytes.
template <int kChunks>
__device__ __forceinline__ void store_warp_block(uint8_t* staging,
                                                 const uint32_t (&packed)[kChunks][2],
                                                 __nv_bfloat16* out, int64_t row_stride,
                                                 int32_t first_row, int32_t row_end, int64_t col0,
                                                 int64_t num_cols, bool out_aligned) {
  static_assert(kChunks == 8 || kChunks == 16, "a block is 64 or 128 columns");
  const int lane = threadIdx.x % 32;
  // Fragments -> staging: matrices (chunk i, rows 0-7), (i, 8-15), (i+1, 0-7), (i+1, 8-15).
  const int matrix_row = lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
  for (int i = 0; i < kChunks; i += 2) {
    const int chunk = i + lane / 16;
    ptx::stmatrix_x4(staging + staging_offset(matrix_row, chunk), packed[i][0], packed[i][1],
                     packed[i + 1][0], packed[i + 1][1]);
  }
  __syncwarp();
  // Staging -> global: lane l moves chunk l % kChunks of rows l / kChunks + (32 / kChunks) k.
  constexpr int kRowsPerPass = 32 / kChunks;
  const int chunk = lane % kChunks;
  const int64_t col = col0 + 8 * chunk;
  // All of the lane's chunks are read before the first store, so the reads overlap.
  constexpr int kPasses = 16 / kRowsPerPass;
  uint4 v[kPasses];
#pragma unroll
  for (int k = 0; k < kPasses; ++k) {
    v[k] = ptx::ld_shared_v4(staging + staging_offset(lane / kChunks + kRowsPerPass * k, chunk));
  }
#pragma unroll
  for (int k = 0; k < kPasses; ++k) {
    const int row = lane / kChunks + kRowsPerPass * k;
    const int32_t p = first_row + row;
    if (p >= row_end || col >= num_cols) continue;
    __nv_bfloat16* dst = out + int64_t(p) * row_stride + col;
    if (out_aligned) {
      ptx::st_global_v4(dst, v[k]);
    } else {
      const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = e[j];
    }
  }
  __syncwarp();  // the staging buffer is reused by the next block
}

// The lane's packed[8][2] of a 64-column half block, kept in the lower 2 KiB of its warp's staging
// buffer (lane-major, 16 bytes per lane and instruction: no bank conflicts) while the other half
// is computed: in registers they would sit beside the mainloop's 192.
__device__ __forceinline__ void hold_half_block(uint8_t* staging, const uint32_t (&packed)[8][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    ptx::st_shared_v4(staging + 512 * j + 16 * lane,
                      make_uint4(packed[2 * j][0], packed[2 * j][1], packed[2 * j + 1][0],
                                 packed[2 * j + 1][1]));
  }
}

__device__ __forceinline__ void load_half_block(const uint8_t* staging, uint32_t (&packed)[8][2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint4 v = ptx::ld_shared_v4(staging + 512 * j + 16 * lane);
    packed[2 * j][0] = v.x;
    packed[2 * j][1] = v.y;
    packed[2 * j + 1][0] = v.z;
    packed[2 * j + 1][1] = v.w;
  }
}

// One warp's 16-row block of 128 activation columns, quantised to e4m3 per row as one 128-column
// group by the activation quantiser's rule (kernels/sm90_quantize_fp8.cuh), bitwise: the same bf16
// values, amax and scale, and the codes of E4m3Divisor; so GEMM1 writes GEMM2's operand itself.
// half[s][i][h]: the lane's bf16 pair of columns 64 s + 8 i + 2 (lane % 4) + {0, 1} in fragment
// row lane / 4 + 8 h (the two 64-column halves of store_warp_block's packed). Row r of the block is
// global row first_row + r, stored only when < row_end: codes at codes[p * row_stride + col0 + c],
// its scale at scales[p] (scales: the group's column of the group-major scales).
// Staging (per warp, 16 rows x 128 bytes, in the upper 2 KiB of the buffer): 16-byte chunk c of
// row r at 2048 + r * 128 + 16 * (c ^ (r % 8)), free of bank conflicts both ways.
__device__ __forceinline__ void store_warp_block_e4m3(uint8_t* staging,
                                                      const uint32_t (&half0)[8][2],
                                                      const uint32_t (&half1)[8][2],
                                                      uint8_t* codes, int64_t row_stride,
                                                      float* scales, int32_t first_row,
                                                      int32_t row_end, int64_t col0) {
  const int lane = threadIdx.x % 32;
  uint8_t* block = staging + 2048;
  const auto unpack = [](uint32_t pair) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pair));
  };
  float scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 a = unpack(half0[i][h]), b = unpack(half1[i][h]);
      amax = fmaxf(fmaxf(amax, fabsf(a.x)), fabsf(a.y));  // fmaxf skips NaN
      amax = fmaxf(fmaxf(amax, fabsf(b.x)), fabsf(b.y));
    }
    // A row's 128 columns are spread over the 4 lanes of a quad.
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, 2));
    scale[h] = __fdiv_rn(amax, 448.0f);
  }
  const E4m3Divisor divisor[2] = {E4m3Divisor(scale[0]), E4m3Divisor(scale[1])};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = lane / 4 + 8 * h;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int col = 8 * i + 2 * (lane % 4);
      const uint16_t codes = divisor[h].codes(i < 8 ? half0[i][h] : half1[i - 8][h]);
      ptx::st_shared_u16(block + row * 128 + 16 * ((col / 16) ^ (row % 8)) + col % 16, codes);
    }
  }
  __syncwarp();
  // Staging -> global: lane l moves chunk l % 8 of rows l / 8 + 4 k.
  const int chunk = lane % 8;
  uint4 v[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int row = lane / 8 + 4 * k;
    v[k] = ptx::ld_shared_v4(block + row * 128 + 16 * (chunk ^ (row % 8)));
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int32_t p = first_row + lane / 8 + 4 * k;
    if (p < row_end) ptx::st_global_v4(codes + int64_t(p) * row_stride + col0 + 16 * chunk, v[k]);
  }
  if (lane % 4 == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t p = first_row + lane / 4 + 8 * h;
      if (p < row_end) scales[p] = scale[h];
    }
  }
  __syncwarp();  // the staging buffer is reused by the next block
}

}  // namespace fusedmoe::device
