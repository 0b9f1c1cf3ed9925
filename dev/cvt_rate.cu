// How fast an SM turns e4m3 into f16 (experiment, never linked; issue 18): the FP8 decode GEMMs
// feed mma.sync m16n8k32 e4m3, which ptxas runs on sm_90a as F2FP.F16.E4M3.UNPACK_B conversions
// and HMMA.16816 on f16 (40 conversions per 2 KiB of weights a warp multiplies at one token). This
// measures the rate of that conversion against a conversion by integer bit operations, alone and
// issued side by side, in warp instructions per clock per SM (clock64 around each CTA's loop; 16
// warps per SM, as the decode GEMMs run).
//   f2fp   cvt.rn.f16x2.e4m3x2 on each 16-bit half of a word (two conversions per 4 values)
//   bits   per word w of 4 e4m3: ((w & 0x80008000) | ((w & 0x7F007F00) >> 1)) and the same of
//          w << 8: the bytes as f16 times 2^-8 (exact, subnormals included), in the pairs
//          (b1, b3) and (b0, b2)
//   mixed  half the words each way
// Measured once (NVIDIA H200, 2026-12-05, before the volatile pin below): f2fp 12.5 words = 50
// e4m3 per clock per SM, with its SHF and two LOP3 per word beside it; bits and mixed invalid.
// Build: nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cvt_rate.cu -o /tmp/cvt_rate
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

constexpr int kWords = 8, kIters = 4096, kThreads = 256;

__device__ __forceinline__ uint32_t f2fp(uint16_t h) {
  uint32_t out;
  asm volatile("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(out) : "h"(h));
  return out;
}

__device__ __forceinline__ void bits(uint32_t w, uint32_t& odd, uint32_t& even) {
  odd = (w & 0x80008000u) | ((w & 0x7F007F00u) >> 1);
  const uint32_t v = w << 8;
  even = (v & 0x80008000u) | ((v & 0x7F007F00u) >> 1);
}

template <int kMode>  // 0 f2fp, 1 bits, 2 mixed
__global__ void __launch_bounds__(kThreads) rate(const uint32_t* in, uint32_t* out,
                                                 long long* cycles) {
  uint32_t w[kWords], acc = 0;
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = in[(threadIdx.x * kWords + i) % 1024];
  __syncthreads();
  const long long t0 = clock64();
  for (int it = 0; it < kIters; ++it) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      uint32_t a, b;
      if (kMode == 0 || (kMode == 2 && i % 2 == 0)) {
        a = f2fp(static_cast<uint16_t>(w[i]));
        b = f2fp(static_cast<uint16_t>(w[i] >> 16));
      } else {
        bits(w[i], a, b);
      }
      // a dependency that keeps every conversion, cheap beside it: the next input depends on it;
      // the empty volatile asm keeps the loop between the two clock reads (the first run's "bits"
      // loop, plain arithmetic, was scheduled after them: 64 cycles)
      w[i] ^= (a ^ b) & 0x01010101u;
      asm volatile("" : "+r"(w[i]));
    }
  }
  const long long t1 = clock64();
#pragma unroll
  for (int i = 0; i < kWords; ++i) acc ^= w[i];
  out[blockIdx.x * kThreads + threadIdx.x] = acc;
  if (threadIdx.x == 0) cycles[blockIdx.x] = t1 - t0;
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int blocks = sms * 2;  // 2 x 8 warps = 16 warps per SM
  uint32_t *in, *out;
  long long* cycles;
  cudaMalloc(&in, 4096);
  cudaMalloc(&out, size_t(blocks) * kThreads * 4);
  cudaMalloc(&cycles, blocks * sizeof(long long));
  uint32_t host[1024];
  for (int i = 0; i < 1024; ++i) host[i] = 0x3A5C1E27u * (i + 1);
  cudaMemcpy(in, host, sizeof(host), cudaMemcpyHostToDevice);
  const char* names[] = {"f2fp", "bits", "mixed"};
  // conversion-work instructions per word (excluding the shared dependency ops): f2fp 2, bits 7
  for (int mode = 0; mode < 3; ++mode) {
    for (int rep = 0; rep < 2; ++rep) {
      if (mode == 0) rate<0><<<blocks, kThreads>>>(in, out, cycles);
      if (mode == 1) rate<1><<<blocks, kThreads>>>(in, out, cycles);
      if (mode == 2) rate<2><<<blocks, kThreads>>>(in, out, cycles);
    }
    if (cudaDeviceSynchronize() != cudaSuccess) { std::printf("error\n"); return 1; }
    long long c[4096];
    cudaMemcpy(c, cycles, blocks * sizeof(long long), cudaMemcpyDeviceToHost);
    long long worst = 0;
    for (int b = 0; b < blocks; ++b) worst = c[b] > worst ? c[b] : worst;
    // words converted per SM per clock: 16 warps x 32 lanes x kWords x kIters / cycles
    const double words = 16.0 * 32 * kWords * kIters;
    std::printf("%-6s %9lld cycles  %6.1f words (4 e4m3) per clock per SM = %6.1f e4m3 per clock"
                " per SM\n", names[mode], worst, words / worst, 4 * words / worst);
  }
  return 0;
}
