// Experiment (never linked): GEMM1/GEMM2 at 8 experts x 4096 rows, (H, I) = (4096, 14336), with
// the cluster size and grid forced, to separate the effect of B multicast from that of the grid
// that cudaOccupancyMaxActiveClusters allows. Build:
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Isrc \
//     -Iinclude dev/grouped_gemm_cluster_probe.cu src/launch/tensor_map.cu -o probe
#include <algorithm>
#include <cstdio>
#include <vector>

#include "heuristics.h"
#include "kernels/sm90_gemm1_swiglu.cuh"
#include "kernels/sm90_gemm2.cuh"
#include "launch/grouped_gemm_launch.h"
#include "launch/tensor_map.h"

using namespace fusedmoe;

__global__ void fill(__nv_bfloat16* data, size_t count, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t v = uint32_t(i) * 2654435761u ^ seed;
    v ^= v >> 15;
    v *= 2246822519u;
    v ^= v >> 13;
    data[i] = __float2bfloat16(scale * (float(v & 0xFFFF) / 32768.0f - 1.0f));
  }
}

template <typename Launch>
float median_ms(Launch&& launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();
  launch();
  std::vector<float> times;
  for (int i = 0; i < 7; ++i) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  return times[3];
}

int main(int argc, char** argv) {
  const bool once = argc > 1;  // one launch of each GEMM without clusters (for ncu)
  const int64_t num_experts = 8, rows_per_expert = 4096, h = 4096, inter = 14336;
  const int64_t rows = num_experts * rows_per_expert;
  std::vector<int32_t> offsets(num_experts + 1), gather(rows);
  for (int64_t e = 0; e <= num_experts; ++e) offsets[e] = int32_t(e * rows_per_expert);
  for (int64_t p = 0; p < rows; ++p) gather[p] = int32_t((p * 7919) % rows);
  int32_t *d_offsets, *d_gather;
  __nv_bfloat16 *x, *w1, *w2, *act, *y;
  cudaMalloc(&d_offsets, offsets.size() * 4);
  cudaMalloc(&d_gather, gather.size() * 4);
  cudaMemcpy(d_offsets, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_gather, gather.data(), gather.size() * 4, cudaMemcpyHostToDevice);
  cudaMalloc(&x, rows * h * 2);
  cudaMalloc(&w1, num_experts * 2 * inter * h * 2);
  cudaMalloc(&w2, num_experts * h * inter * 2);
  cudaMalloc(&act, rows * inter * 2);
  cudaMalloc(&y, rows * h * 2);
  fill<<<1024, 256>>>(x, rows * h, 1, 1.0f);
  fill<<<1024, 256>>>(w1, num_experts * 2 * inter * h, 2, 0.05f);
  fill<<<1024, 256>>>(w2, num_experts * h * inter, 3, 0.05f);
  fill<<<1024, 256>>>(act, rows * inter, 4, 1.0f);

  using Config = device::GroupedGemmConfig;
  CUtensorMap tmap_w1, tmap_w2;
  detail::make_tensor_map_3d_bf16_sw128(&tmap_w1, w1, h, 2 * inter, num_experts, Config::kBlockK,
                                        Config::kHalfN);
  detail::make_tensor_map_3d_bf16_sw128(&tmap_w2, w2, inter, h, num_experts, Config::kBlockK,
                                        Config::kHalfN);
  kernels::Gemm1SwigluParams p1;
  p1.operands = {d_offsets, int32_t(num_experts), int32_t(heuristics::gemm1_num_n_blocks(inter)),
                 int32_t(heuristics::grouped_num_k_blocks(h)), h, x, d_gather, Config::kHalfN,
                 int32_t(inter)};
  p1.intermediate_size = inter;
  p1.act = act;
  kernels::Gemm2Params p2;
  p2.operands = {d_offsets, int32_t(num_experts), int32_t(heuristics::gemm2_num_n_blocks(h)),
                 int32_t(heuristics::grouped_num_k_blocks(inter)), inter, act, nullptr,
                 2 * Config::kHalfN, Config::kHalfN};
  p2.hidden_size = h;
  p2.y = y;

  int sms = 0, pair_ctas = 0;
  detail::grouped_gemm_max_ctas(kernels::sm90_gemm1_swiglu_kernel<1>, 1, &sms);
  detail::grouped_gemm_max_ctas(kernels::sm90_gemm1_swiglu_kernel<2>, 2, &pair_ctas);
  std::printf("SMs %d, CTAs in clusters of 2 resident at once: %d\n", sms, pair_ctas);
  const double flops1 = 2.0 * rows * 2 * inter * h, flops2 = 2.0 * rows * h * inter;
  if (once) {
    detail::launch_grouped_gemm_as(kernels::sm90_gemm1_swiglu_kernel<1>, 1, sms, tmap_w1, p1,
                                   false, nullptr);
    detail::launch_grouped_gemm_as(kernels::sm90_gemm2_kernel<1>, 1, sms, tmap_w2, p2, false,
                                   nullptr);
    std::printf("%s\n", cudaGetErrorString(cudaDeviceSynchronize()));
    return 0;
  }
  struct Variant { int cluster_m, grid; };
  for (const Variant v : {Variant{1, sms}, Variant{2, pair_ctas}, Variant{2, sms & ~1},
                          Variant{1, pair_ctas}}) {
    auto k1 = v.cluster_m == 1 ? kernels::sm90_gemm1_swiglu_kernel<1>
                               : kernels::sm90_gemm1_swiglu_kernel<2>;
    auto k2 = v.cluster_m == 1 ? kernels::sm90_gemm2_kernel<1> : kernels::sm90_gemm2_kernel<2>;
    const float ms1 = median_ms([&] {
      detail::launch_grouped_gemm_as(k1, v.cluster_m, v.grid, tmap_w1, p1, false, nullptr);
    });
    const float ms2 = median_ms([&] {
      detail::launch_grouped_gemm_as(k2, v.cluster_m, v.grid, tmap_w2, p2, false, nullptr);
    });
    std::printf("cluster %d grid %3d: gemm1 %.3f ms %.1f TFLOP/s | gemm2 %.3f ms %.1f TFLOP/s | %s\n",
                v.cluster_m, v.grid, ms1, flops1 / ms1 / 1e9, ms2, flops2 / ms2 / 1e9,
                cudaGetErrorString(cudaGetLastError()));
  }
  return 0;
}
