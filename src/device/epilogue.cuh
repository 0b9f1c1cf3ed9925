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

}  // namespace fusedmoe::device
