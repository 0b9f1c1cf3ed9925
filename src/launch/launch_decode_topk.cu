// Host side of the routed top-k decode kernel (kernels/sm90_decode_topk.cuh).
#include <algorithm>

#include "kernels/sm90_decode_topk.cuh"
#include "launch/pipeline.h"
#include "launch/routing_params.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_topk(const MoeShape& shape, const RoutedTopK& routed,
                               const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream) {
  const DecodeTopKParams params = make_decode_topk_params(shape, routed, out);
  // Grid-stride loop: a few waves of blocks are plenty for a 4-8 byte per slot decode.
  constexpr int64_t kMaxBlocks = 4096;
  const int64_t blocks = std::min<int64_t>(
      kMaxBlocks, (params.num_slots + DecodeTopKConfig::kThreads - 1) / DecodeTopKConfig::kThreads);
  LaunchConfig launch(dim3(static_cast<unsigned>(blocks)), dim3(DecodeTopKConfig::kThreads), 0,
                      enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, decode_topk_kernel, params);
}

}  // namespace fusedmoe::detail
