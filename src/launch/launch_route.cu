// Host side of the logits routing kernels (kernels/sm90_route.cuh): a block per token at small T
// (decode_heuristics.h: use_block_route), which may also quantise x (RoutingOutputs::x8), else a
// warp per token.
#include "decode_heuristics.h"
#include "kernels/sm90_route.cuh"
#include "launch/pipeline.h"
#include "validate.h"

namespace fusedmoe::detail {

cudaError_t launch_route(const MoeShape& shape, const LogitsRouting& logits,
                         const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream) {
  const GroupConfig groups = resolve_groups(logits);
  RouteParams params{};
  params.logits = logits.logits;
  params.logits_dtype = logits.logits_dtype;
  params.bias = logits.bias;
  params.bias_dtype = logits.bias_dtype;
  params.method = logits.method;
  params.n_group = groups.n_group;
  params.topk_group = groups.topk_group;
  params.routed_scaling_factor = logits.routed_scaling_factor;
  params.num_tokens = shape.num_tokens;
  params.num_experts = shape.num_experts;
  params.top_k = shape.top_k;
  params.local_offset = shape.local_expert_offset;
  params.num_local = shape.local_num_experts;
  params.slot_key = out.slot_key;
  params.slot_weight = out.slot_weight;
  params.expert_weights = out.expert_weights;
  params.expert_weights_dtype = out.expert_weights_dtype;
  params.routing_replay_out = out.routing_replay_out;
  params.x = out.x;
  params.hidden_size = shape.hidden_size;
  params.x8 = out.x8;
  params.x_scale = out.x_scale;

  if (heuristics::use_block_route(shape.num_tokens)) {
    const int64_t x_groups = out.x8 != nullptr ? shape.hidden_size / kFp8BlockSize : 0;
    LaunchConfig launch(dim3(static_cast<unsigned>(shape.num_tokens)),
                        dim3(RouteBlockConfig::threads(shape.num_experts, x_groups)),
                        RouteBlockConfig::smem_bytes(shape.num_experts, groups.n_group), enable_pdl,
                        stream);
    return cudaLaunchKernelEx(&launch.config, route_block_kernel, params);
  }
  if (out.x8 != nullptr) return cudaErrorInvalidValue;  // x is quantised by the block form only
  const dim3 grid(
      static_cast<unsigned>((shape.num_tokens + RouteConfig::kWarps - 1) / RouteConfig::kWarps));
  LaunchConfig launch(grid, dim3(RouteConfig::kThreads), RouteConfig::smem_bytes(shape.num_experts),
                      enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, route_kernel, params);
}

}  // namespace fusedmoe::detail
