// Host launch shared by launch_gemm1_swiglu.cu and launch_gemm2.cu: picks the cluster size
// (heuristics.h), sizes the persistent grid to the clusters that fit at once, sets the smem limit
// and launches with the optional PDL attribute. Include only from .cu files.
#pragma once

#include <cstdint>

#include <cuda.h>
#include <cuda_runtime.h>

#include "device/grouped_mainloop.cuh"
#include "heuristics.h"

namespace fusedmoe::detail {

template <typename Params>
using GroupedGemmKernel = void (*)(CUtensorMap, Params);

// Bytes of dynamic smem: the storage plus room to realign it to 1024 bytes.
constexpr size_t kGroupedGemmSmemBytes = sizeof(device::SharedStorage) + 1024;

// Launches `kernel` (built for clusters of cluster_m CTAs) on `grid` CTAs, a multiple of cluster_m.
template <typename Params>
cudaError_t launch_grouped_gemm_as(GroupedGemmKernel<Params> kernel, int cluster_m, int grid,
                                   const CUtensorMap& tmap, const Params& params, bool enable_pdl,
                                   cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kGroupedGemmSmemBytes));
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(device::GroupedGemmConfig::kNumThreads);
  config.dynamicSmemBytes = kGroupedGemmSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute attributes[2];
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = enable_pdl ? 1 : 0;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = static_cast<unsigned>(cluster_m);
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  config.attrs = attributes;
  config.numAttrs = 2;
  return cudaLaunchKernelEx(&config, kernel, tmap, params);
}

// CTAs of `kernel` resident at once: one per SM, or as many clusters as the GPCs can place.
template <typename Params>
cudaError_t grouped_gemm_max_ctas(GroupedGemmKernel<Params> kernel, int cluster_m, int* max_ctas) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(max_ctas, cudaDevAttrMultiProcessorCount, device)) !=
      cudaSuccess)
    return err;
  if (cluster_m == 1) return cudaSuccess;
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kGroupedGemmSmemBytes))) != cudaSuccess)
    return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster_m));
  config.blockDim = dim3(device::GroupedGemmConfig::kNumThreads);
  config.dynamicSmemBytes = kGroupedGemmSmemBytes;
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(cluster_m);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  int max_clusters = 0;
  if ((err = cudaOccupancyMaxActiveClusters(&max_clusters, kernel, &config)) != cudaSuccess)
    return err;
  if (max_clusters < 1) return cudaErrorInvalidConfiguration;
  *max_ctas = max_clusters * cluster_m;
  return cudaSuccess;
}

// The heuristic launch: cluster size and persistent grid from heuristics.h.
template <typename Params>
cudaError_t launch_grouped_gemm(GroupedGemmKernel<Params> kernel_single,
                                GroupedGemmKernel<Params> kernel_pair, const CUtensorMap& tmap,
                                const Params& params, int64_t max_rows, int32_t num_experts,
                                bool enable_pdl, cudaStream_t stream) {
  const int cluster_m = heuristics::grouped_gemm_cluster_m(max_rows, num_experts);
  const GroupedGemmKernel<Params> kernel = cluster_m == 1 ? kernel_single : kernel_pair;
  int max_ctas = 0;
  if (const cudaError_t err = grouped_gemm_max_ctas(kernel, cluster_m, &max_ctas);
      err != cudaSuccess)
    return err;
  const int grid = heuristics::grouped_gemm_grid_size(max_ctas, max_rows, num_experts,
                                                      params.operands.num_n_blocks, cluster_m);
  return launch_grouped_gemm_as(kernel, cluster_m, grid, tmap, params, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
