// The harness shared by the GEMM-level GPU tests (test_gpu_grouped_gemm.cu, test_gpu_decode.cu):
// the sm_90 check, an owning device buffer, fp64-accumulating SIMT references of GEMM1 + SwiGLU
// and GEMM2 over expert-sorted rows, the comparison helpers and a hash-based bf16 fill.
// Header-only; include from at most one .cu per test executable (it defines kernels).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "common/host_data.h"

#define FUSEDMOE_ASSERT_CUDA(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr

namespace fusedmoe::test {

inline bool has_sm90_gpu() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return false;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
  return prop.major == 9 && prop.minor == 0;
}

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (cudaMalloc(&ptr_, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& host) {
    cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  T* get() const { return ptr_; }
  template <typename U>
  U* as() const { return reinterpret_cast<U*>(ptr_); }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

// ---- reference kernels: one thread per output element, fp64 accumulation ----------------------
__device__ inline int expert_of_row(const int32_t* offsets, int num_experts, int p) {
  int lo = 0, hi = num_experts;  // offsets[lo] <= p < offsets[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= p) lo = mid; else hi = mid;
  }
  return lo;
}

// ref[p, j] = silu(g[I + j]) * g[j], g = x[gather[p]] . w1[e]^T, for p < offsets[E].
__global__ void reference_gemm1_swiglu(const int32_t* offsets, int num_experts,
                                       const __nv_bfloat16* x, const int32_t* gather, int64_t h,
                                       int64_t inter, const __nv_bfloat16* w1, double* ref) {
  const int64_t total = offsets[num_experts];
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= total * inter) return;
  const int p = static_cast<int>(idx / inter);
  const int64_t j = idx % inter;
  const int e = expert_of_row(offsets, num_experts, p);
  const __nv_bfloat16* xr = x + int64_t(gather[p]) * h;
  const __nv_bfloat16* wu = w1 + (int64_t(e) * 2 * inter + j) * h;
  const __nv_bfloat16* wg = wu + inter * h;
  double up = 0.0, gate = 0.0;
  for (int64_t k = 0; k < h; ++k) {
    const double xv = __bfloat162float(xr[k]);
    up += xv * double(__bfloat162float(wu[k]));
    gate += xv * double(__bfloat162float(wg[k]));
  }
  ref[idx] = gate / (1.0 + exp(-gate)) * up;
}

// ref[p, n] = act[p] . w2[e][n], for p < offsets[E].
__global__ void reference_gemm2(const int32_t* offsets, int num_experts, const __nv_bfloat16* act,
                                int64_t inter, int64_t h, const __nv_bfloat16* w2, double* ref) {
  const int64_t total = offsets[num_experts];
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= total * h) return;
  const int p = static_cast<int>(idx / h);
  const int64_t n = idx % h;
  const int e = expert_of_row(offsets, num_experts, p);
  const __nv_bfloat16* ar = act + int64_t(p) * inter;
  const __nv_bfloat16* wr = w2 + (int64_t(e) * h + n) * inter;
  double acc = 0.0;
  for (int64_t k = 0; k < inter; ++k) {
    acc += double(__bfloat162float(ar[k])) * double(__bfloat162float(wr[k]));
  }
  ref[idx] = acc;
}

inline std::vector<double> round_all_to_bf16(const std::vector<double>& values) {
  std::vector<double> rounded(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    rounded[i] = bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(values[i])));
  }
  return rounded;
}

// ours[p, :] for p < total, as doubles.
inline std::vector<double> rows_as_double(const std::vector<uint16_t>& bits, int64_t total,
                                   int64_t width) {
  return bf16_to_double(std::vector<uint16_t>(bits.begin(), bits.begin() + total * width));
}

inline void expect_rows_poisoned(const std::vector<uint16_t>& bits, int64_t first_row, int64_t width,
                          const char* what) {
  int64_t written = 0;
  for (size_t i = first_row * width; i < bits.size(); ++i) written += bits[i] != kPoisonBf16;
  EXPECT_EQ(written, 0) << what << ": elements written in rows past the experts";
}

// Uniform in [-scale, scale) from a hash of the index (fills GB-sized weights on the device).
__global__ void fill_random_bf16(__nv_bfloat16* data, size_t count, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2654435761u ^ seed;
    v ^= v >> 15;
    v *= 2246822519u;
    v ^= v >> 13;
    data[i] = __float2bfloat16(scale * (float(v & 0xFFFF) / 32768.0f - 1.0f));
  }
}

}  // namespace fusedmoe::test
