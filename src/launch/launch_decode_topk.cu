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
  params.x = out.x;
  params.num_tokens = shape.num_tokens;
  params.hidden_size = shape.hidden_size;
  params.x8 = out.x8;
  params.x_scale = out.x_scale;

  // Grid-stride loops: a few waves of blocks are plenty for a 4-8 byte per slot decode; with x
  // quantised, a warp per (token, 128-column group), the quantiser kernel's grid.
  constexpr int64_t kMaxBlocks = 4096;
  constexpr int64_t kWarps = DecodeTopKConfig::kThreads / 32;
  const int64_t x_items =
      out.x8 != nullptr ? shape.num_tokens * (shape.hidden_size / kFp8BlockSize) : 0;
  const int64_t blocks = std::max(
      std::min<int64_t>(kMaxBlocks, (params.num_slots + DecodeTopKConfig::kThreads - 1) /
                                        DecodeTopKConfig::kThreads),
      (x_items + kWarps - 1) / kWarps);
  LaunchConfig launch(dim3(static_cast<unsigned>(blocks)), dim3(DecodeTopKConfig::kThreads), 0,
                      enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, decode_topk_kernel, params);
}

}  // namespace fusedmoe::detail
