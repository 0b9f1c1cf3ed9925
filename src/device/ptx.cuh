// The thin PTX layer: every inline asm of fusedmoe's Hopper kernels lives here (STYLE: no asm in
// kernel bodies). Wrappers are named after the instruction they issue; each comment says what the
// caller must guarantee.
//
//   mbarrier      init / arrive / arrive.expect_tx / try_wait.parity (phase-parity waits)
//   cp.async      16-byte copies with zero fill, completing on an mbarrier (.noinc arrive)
//   TMA           cp.async.bulk.tensor 3-D tile loads completing on an mbarrier (complete_tx)
//   fences        fence.proxy.async (generic-proxy writes -> async-proxy readers), barrier init
//   wgmma         fence / commit_group / wait_group, smem descriptors, m64n256k16 bf16 -> fp32
//   stmatrix      accumulator fragments -> smem staging of the epilogue
//   ld / st       16-byte shared loads and global stores of the epilogue (the compiler emits a
//                 generic load and four 4-byte stores for the same C++)
//   setmaxnreg    per-warpgroup register budgets (needs __launch_bounds__(threads, 1))
//   griddepcontrol programmatic dependent launch (no-ops when launched without PDL)
#pragma once

#include <cstdint>

#include <cuda.h>  // CUtensorMap (type only; the driver is reached through the runtime)

namespace fusedmoe::ptx {

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// ---- mbarrier ---------------------------------------------------------------------------------
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrival_count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(arrival_count)
               : "memory");
}

// Makes initialised barriers visible to the async proxy (TMA) and to the other threads once a
// __syncthreads() follows.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

// One arrival that also announces `bytes` of TMA traffic the current phase must wait for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t phase_parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(phase_parity)
      : "memory");
  return done != 0;
}

// Blocks until the phase with parity `phase_parity` has completed. A fresh barrier counts its
// (virtual) previous phase, parity 1, as completed: producers start waiting on "empty" with 1.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t phase_parity) {
  while (!mbarrier_try_wait(bar, phase_parity)) {
  }
}

// ---- cp.async (16 bytes, zero fill) -----------------------------------------------------------
// Copies 16 bytes when `valid`, else writes 16 zero bytes without reading gmem (gmem must still
// be a mapped address; callers pass the tensor base).
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

// Arrives on `bar` once every cp.async this thread issued so far has landed. .noinc: the arrival
// counts against the barrier's expected count (so the count includes one per issuing thread).
__device__ __forceinline__ void cp_async_mbarrier_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(bar))
               : "memory");
}

// ---- TMA --------------------------------------------------------------------------------------
__device__ __forceinline__ void tma_prefetch_descriptor(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory");
}

// Loads the box at coordinates (c0 innermost, c1, c2) of a 3-D tensor map into smem; out-of-bound
// elements are zero-filled and the full box size is counted on `bar`.
__device__ __forceinline__ void tma_load_3d(void* smem_dst, const CUtensorMap* map, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(smem_u32(smem_dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
}

// ---- fences -----------------------------------------------------------------------------------
// Orders this thread's view of generic-proxy smem writes (st.shared, cp.async) before later
// async-proxy accesses (wgmma operand reads, TMA).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// ---- wgmma ------------------------------------------------------------------------------------
// Shared-memory matrix descriptor for a K-major tile stored with the 128-byte swizzle: rows of
// 64 bf16 (128 bytes), 8-row atoms of 1024 bytes (stride byte offset), atoms 1024-byte aligned.
// Advancing K by 16 elements inside the atom adds 32 bytes (2 in the >>4 encoded address).
//   bits 0-13: start address >> 4;  bits 16-29: leading byte offset (unused here, 1);
//   bits 32-45: stride byte offset = 8 rows * 128 B (>> 4);  bits 62-63: layout = 128-byte swizzle.
// The low word (start address, leading byte offset) varies with the tile's address; the high word
// is a constant. Kernels that step through stages and k steps may add to the low word alone: a
// shared-memory address >> 4 stays below 2^14, so the sum never carries out of bits 0-13.
__device__ __forceinline__ uint32_t smem_desc_lo_k_major_sw128(const void* smem) {
  return ((smem_u32(smem) & 0x3FFFF) >> 4) | (1u << 16);
}
__device__ __forceinline__ uint64_t smem_desc_k_major_sw128(uint32_t lo) {
  return (uint64_t((1024 >> 4) | (1u << 30)) << 32) | lo;
}
__device__ __forceinline__ uint64_t make_smem_desc_k_major_sw128(const void* smem) {
  return smem_desc_k_major_sw128(smem_desc_lo_k_major_sw128(smem));
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accumulator reads/writes across wgmma fences and waits.
template <int kN>
__device__ __forceinline__ void fence_operands(float (&d)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D(64x256, fp32) (+)= A(64x16, bf16, smem) * B(16x256, bf16, smem)^T, both K-major with 128-byte
// swizzle. d holds the thread's 128 accumulators in wgmma's fragment order: d[4 i + 2 h + v] is
// row 16 * warp + lane / 4 + 8 h, column 8 i + 2 * (lane % 4) + v. accumulate == 0 overwrites D.
__device__ __forceinline__ void wgmma_m64n256k16_bf16(float (&d)[128], uint64_t desc_a,
                                                      uint64_t desc_b, uint32_t accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16\n"
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},\n"
      "%128, %129, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D(64x128, fp32) (+)= A(64x32, e4m3, smem) * B(32x128, e4m3, smem)^T, both K-major (FP8 wgmma
// has no transposed form) with 128-byte swizzle: a 128-byte row holds 128 e4m3 values, so
// advancing K by 32 adds 32 bytes (2 in the encoded address), as for bf16 k16. d[4 i + 2 h + v]
// is row 16 * warp + lane / 4 + 8 h, column 8 i + 2 * (lane % 4) + v. accumulate == 0 overwrites.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a,
                                                      uint64_t desc_b, uint32_t accumulate) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3\n"
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},\n"
      "%64, %65, p, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// ---- fp8 conversion -----------------------------------------------------------------------------
// Two fp32 values to e4m3 (round to nearest even, saturated to +-448, NaN kept): lo in bits 0-7,
// hi in bits 8-15 (the reference's float_to_e4m3, src/reference/fp8.h).
__device__ __forceinline__ uint16_t cvt_e4m3x2(float lo, float hi) {
  uint16_t out;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  return out;
}

// ---- stmatrix ---------------------------------------------------------------------------------
// Stores four 8x8 bf16 matrices: register m of lane t holds row t / 4, columns 2 (t % 4) + {0, 1}
// of matrix m (a wgmma accumulator fragment, packed); lane 8 m + r gives the smem address of row
// r of matrix m (16 bytes, 16-byte aligned).
__device__ __forceinline__ void stmatrix_x4(void* smem_row, uint32_t m0, uint32_t m1, uint32_t m2,
                                            uint32_t m3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(
                   smem_u32(smem_row)),
               "r"(m0), "r"(m1), "r"(m2), "r"(m3)
               : "memory");
}

// ---- 16-byte shared loads and global stores ------------------------------------------------------
// The epilogue's staging buffer is reached through a pointer the compiler cannot place in shared
// memory (the dynamic smem base is realigned through an integer), so a plain C++ load of it is
// a generic LD, tracked like a global load; and a uint4 store through a bf16 pointer came out as
// four 4-byte STGs. These say what is meant. smem and gmem must be 16-byte aligned.
__device__ __forceinline__ uint4 ld_shared_v4(const void* smem) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smem_u32(smem))
               : "memory");
  return v;
}

__device__ __forceinline__ void st_shared_v4(void* smem, const uint4& v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(smem_u32(smem)), "r"(v.x),
               "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ void st_shared_u16(void* smem, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;" ::"r"(smem_u32(smem)), "h"(v) : "memory");
}

__device__ __forceinline__ void st_global_v4(void* gmem, const uint4& v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(gmem), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

// ---- registers and launch control --------------------------------------------------------------
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// Waits until the grids this one depends on (PDL) have completed and flushed their memory.
__device__ __forceinline__ void griddepcontrol_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}
// Lets the next PDL grid in the stream start launching (its own griddepcontrol_wait still waits
// for this grid to finish).
__device__ __forceinline__ void griddepcontrol_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

}  // namespace fusedmoe::ptx
