// Host side of the routed top-k decode kernel (kernels/sm90_decode_topk.cuh).
#include <algorithm>

#include "kernels/sm90_decode_topk.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_topk(const MoeShape& shape, const RoutedTopK& routed,
                               const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream) {
  DecodeTopKParams params{};
  params.topk_ids = routed.topk_ids;
  params.topk_weights = routed.topk_weights;
  params.weights_dtype = routed.topk_weights ? routed.weights_dtype : DType::kBF16;
  params.num_slots = shape.num_tokens * shape.top_k;
  params.local_offset = shape.local_expert_offset;
  params.num_local = shape.local_num_experts;
  params.slot_key = out.slot_key;
  params.slot_weight = out.slot_weight;
  params.expert_weights = out.expert_weights;
  params.routing_replay_out = out.routing_replay_out;

  // Grid-stride loop: a few waves of blocks are plenty for a 4-8 byte per slot decode.
  constexpr int64_t kMaxBlocks = 4096;
  const int64_t blocks = std::min<int64_t>(
      kMaxBlocks, (params.num_slots + DecodeTopKConfig::kThreads - 1) / DecodeTopKConfig::kThreads);
  LaunchConfig launch(dim3(static_cast<unsigned>(blocks)), dim3(DecodeTopKConfig::kThreads), 0,
                      enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, decode_topk_kernel, params);
}

}  // namespace fusedmoe::detail
