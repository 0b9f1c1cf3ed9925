// Host-side TMA descriptors (CUtensorMap), encoded through the driver entry point that the CUDA
// runtime hands out, so the library needs no -lcuda.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_runtime_api.h>

namespace fusedmoe::detail {

// A 3-D bf16 tensor [dim2][dim1][dim0] (dim0 contiguous, dense) read in boxes of
// (box0, box1, 1) elements into shared memory with the 128-byte swizzle; out-of-bound elements
// read as zero. dim0 * 2 bytes must be a multiple of 16 and box0 * 2 bytes at most 128.
cudaError_t make_tensor_map_3d_bf16_sw128(CUtensorMap* map, const void* base, uint64_t dim0,
                                          uint64_t dim1, uint64_t dim2, uint32_t box0,
                                          uint32_t box1);

// The same for bytes (the FP8 variant's e4m3 weights): dim0 a multiple of 16, box0 at most 128.
cudaError_t make_tensor_map_3d_u8_sw128(CUtensorMap* map, const void* base, uint64_t dim0,
                                        uint64_t dim1, uint64_t dim2, uint32_t box0,
                                        uint32_t box1);

}  // namespace fusedmoe::detail
