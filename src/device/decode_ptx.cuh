// PTX wrappers of the decode GEMMs (kernels/sm90_decode_*.cuh), beside the shared ptx layer
// (device/ptx.cuh, read-only here). Each comment says what the caller must guarantee.
//
//   ld.global.nc   16-byte loads: streamed weights (no L1 allocation, 256-byte L2 prefetch) and
//                  reused activations (default caching)
//   cp.async       commit and wait_group of this thread's 16-byte copies (the copies themselves:
//                  ptx::cp_async_16_zfill in device/ptx.cuh)
//   mma.sync       m16n8k16 bf16 and m16n8k32 e4m3 -> fp32 (the warp-level tensor core ops: no
//                  smem operands)
// None is volatile, so the compiler schedules them freely: loads of data an earlier kernel wrote
// stay after griddepcontrol.wait because their addresses depend on expert_offsets read after it.
#pragma once

#include <cstdint>

namespace fusedmoe::ptx {

// 16 bytes of read-only global memory that no thread of this kernel writes; `ptr` 16-byte aligned.
// Weights are read exactly once: skip L1 (keeps it for the activations) and ask L2 to fetch the
// surrounding 256 bytes, which the following loads of the same row use.
__device__ __forceinline__ uint4 ldg_stream_16(const void* ptr) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
}

// 16 bytes of read-only global memory that many warps re-read (activation rows): cached in L1.
__device__ __forceinline__ uint4 ldg_16(const void* ptr) {
  uint4 v;
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
}

// cp.async of 16 bytes (zero fill when !valid, gmem then unread but mapped), asking L2 to fetch
// the surrounding 256 bytes, which the following copies of the same weight row use.
__device__ __forceinline__ void cp_async_16_zfill_l2_256(void* smem, const void* gmem,
                                                         bool valid) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(
                   static_cast<uint32_t>(__cvta_generic_to_shared(smem))),
               "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}

// Closes the group of this thread's cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// Blocks until at most kPending of this thread's committed groups are still in flight; the
// copies of every older group have landed in smem and are visible to this thread.
template <int kPending>
__device__ __forceinline__ void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// D(16x8, fp32) += A(16x16, bf16, row-major) * B(16x8, bf16, col-major), per warp. Fragments
// (g = lane / 4, t = lane % 4; each b32 holds two bf16, the lower k in the low half):
//   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]   d[2..3] = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], uint32_t a0, uint32_t a1,
                                                  uint32_t a2, uint32_t a3, uint32_t b0,
                                                  uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// D(16x8, fp32) = A(16x32, e4m3, row-major) * B(32x8, e4m3, col-major), per warp, from zero
// (the FP8 decode GEMM promotes each result into its fp32 sums itself). Fragments (each b32 holds
// four e4m3, the lowest k in the low byte): the bytes of the bf16 form's slots, so the same
// 16-byte loads feed both:
//   a[0] = A[g][4t..4t+3]   a[1] = A[g+8][4t..4t+3]   a[2] = A[g][4t+16..]   a[3] = A[g+8][4t+16..]
//   b[0] = B[4t..4t+3][g]   b[1] = B[4t+16..4t+19][g]
//   d[0..1] = D[g][2t..2t+1]   d[2..3] = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_m16n8k32_e4m3(float (&d)[4], uint32_t a0, uint32_t a1,
                                                  uint32_t a2, uint32_t a3, uint32_t b0,
                                                  uint32_t b1) {
  const float zero = 0.0f;
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %10, %10, %10};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(zero));
}

// The same, accumulating: D += A * B.
__device__ __forceinline__ void mma_m16n8k32_e4m3_acc(float (&d)[4], uint32_t a0, uint32_t a1,
                                                      uint32_t a2, uint32_t a3, uint32_t b0,
                                                      uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace fusedmoe::ptx
