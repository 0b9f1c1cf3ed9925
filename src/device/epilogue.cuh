// Epilogue piece shared by the grouped GEMMs: one warp's 16 x 128 bf16 output block goes from
// wgmma fragments to global memory through a 4 KiB smem staging buffer, so that global stores
// are 16-byte and row-contiguous (a warp instruction writes two full 256-byte row segments)
// instead of the fragments' 4-byte pieces spread over 8 rows.
//
// Staging layout (per warp, 16 rows x 256 bytes): 16-byte chunk c of row r lives at
// r * 256 + 16 * (c ^ (r % 8)), so both the stmatrix writes (8 rows, same chunk) and the 16-byte
// reads are free of bank conflicts.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "device/ptx.cuh"

namespace fusedmoe::device {

constexpr int kStagingBytesPerWarp = 16 * 256;

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ int staging_offset(int row, int chunk) {
  return row * 256 + 16 * (chunk ^ (row % 8));
}

// packed[i][h]: the lane's bf16 pair of n8 chunk i (columns 8 i + 2 (lane % 4) + {0, 1}) in
// fragment row lane / 4 + 8 h. Row r of the block is global row first_row + r (stored only when
// < row_end); column 8 c is global column col0 + 8 c (stored only when < num_cols, a multiple
// of 8). out_aligned: out and row_stride allow 16-byte stores (else 2-byte stores).
__device__ __forceinline__ void store_warp_block_16x128(uint8_t* staging,
                                                        const uint32_t (&packed)[16][2],
                                                        __nv_bfloat16* out, int64_t row_stride,
                                                        int32_t first_row, int32_t row_end,
                                                        int64_t col0, int64_t num_cols,
                                                        bool out_aligned) {
  const int lane = threadIdx.x % 32;
  // Fragments -> staging: matrices (chunk i, rows 0-7), (i, 8-15), (i+1, 0-7), (i+1, 8-15).
  const int matrix_row = lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
  for (int i = 0; i < 16; i += 2) {
    const int chunk = i + lane / 16;
    ptx::stmatrix_x4(staging + staging_offset(matrix_row, chunk), packed[i][0], packed[i][1],
                     packed[i + 1][0], packed[i + 1][1]);
  }
  __syncwarp();
  // Staging -> global: lane l moves chunk l % 16 of rows l / 16 + 2 k.
  const int chunk = lane % 16;
  const int64_t col = col0 + 8 * chunk;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int row = lane / 16 + 2 * k;
    const uint4 v = *reinterpret_cast<const uint4*>(staging + staging_offset(row, chunk));
    const int32_t p = first_row + row;
    if (p >= row_end || col >= num_cols) continue;
    __nv_bfloat16* dst = out + int64_t(p) * row_stride + col;
    if (out_aligned) {
      *reinterpret_cast<uint4*>(dst) = v;
    } else {
      const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = e[j];
    }
  }
  __syncwarp();  // the staging buffer is reused by the next block
}

// store_warp_block_16x128 for a 16 x 64 block (packed[8][2]: the FP8 GEMM1's activation columns):
// the same staging (rows use the first 128 of their 256 bytes), lane l moving chunk l % 8 of rows
// l / 8 + 4 k.
__device__ __forceinline__ void store_warp_block_16x64(uint8_t* staging,
                                                       const uint32_t (&packed)[8][2],
                                                       __nv_bfloat16* out, int64_t row_stride,
                                                       int32_t first_row, int32_t row_end,
                                                       int64_t col0, int64_t num_cols,
                                                       bool out_aligned) {
  const int lane = threadIdx.x % 32;
  const int matrix_row = lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    const int chunk = i + lane / 16;
    ptx::stmatrix_x4(staging + staging_offset(matrix_row, chunk), packed[i][0], packed[i][1],
                     packed[i + 1][0], packed[i + 1][1]);
  }
  __syncwarp();
  const int chunk = lane % 8;
  const int64_t col = col0 + 8 * chunk;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int row = lane / 8 + 4 * k;
    const uint4 v = *reinterpret_cast<const uint4*>(staging + staging_offset(row, chunk));
    const int32_t p = first_row + row;
    if (p >= row_end || col >= num_cols) continue;
    __nv_bfloat16* dst = out + int64_t(p) * row_stride + col;
    if (out_aligned) {
      *reinterpret_cast<uint4*>(dst) = v;
    } else {
      const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = e[j];
    }
  }
  __syncwarp();
}

}  // namespace fusedmoe::device
