// Host side of the one-CTA routing + counting sort (kernels/sm90_route_sort_small.cuh).
#include "decode_heuristics.h"
#include "kernels/sm90_route_sort_small.cuh"
#include "launch/pipeline.h"
#include "launch/routing_params.h"

namespace fusedmoe::detail {

static_assert(RouteSortSmallConfig::kThreads == heuristics::kSmallSortThreads &&
                  RouteSortSmallConfig::kMaxSlots == heuristics::kSmallSortMaxSlots,
              "the host's choice and smem budget assume the kernel's CTA and slot bound");

cudaError_t launch_route_sort_small(const MoeShape& shape, const LogitsRouting& logits,
                                    const RoutedTopK& routed, bool route_here,
                                    const RoutingOutputs& routing, int32_t* expert_offsets,
                                    int32_t* gather_rows, int32_t* permuted_idx, bool enable_pdl,
                                    cudaStream_t stream) {
  const int64_t num_slots = shape.num_tokens * shape.top_k;
  if (!heuristics::use_small_sort(num_slots) || shape.local_num_experts > kMaxNumExperts) {
    return cudaErrorInvalidConfiguration;
  }
  const bool from_logits = logits.logits != nullptr;
  if (route_here && from_logits &&
      !heuristics::use_small_route(shape.num_tokens, shape.num_experts)) {
    return cudaErrorInvalidConfiguration;
  }
  RouteSortSmallParams params{};
  params.routing = !route_here ? SmallRouting::kNone
                               : (from_logits ? SmallRouting::kLogits : SmallRouting::kRouted);
  if (params.routing == SmallRouting::kLogits) {
    params.route = make_route_params(shape, logits, routing);
  }
  if (params.routing == SmallRouting::kRouted) {
    params.decode = make_decode_topk_params(shape, routed, routing);
  }
  params.num_route_warps = heuristics::small_route_warps(shape.num_experts);
  params.slot_key = routing.slot_key;
  params.num_slots = num_slots;
  params.top_k = shape.top_k;
  params.num_local = shape.local_num_experts;
  params.num_segments = heuristics::small_sort_segments(shape.local_num_experts);
  params.expert_offsets = expert_offsets;
  params.gather_rows = gather_rows;
  params.permuted_idx = permuted_idx;
  const int64_t smem_bytes = heuristics::small_sort_smem_bytes(
      params.routing == SmallRouting::kLogits, shape.num_experts, shape.local_num_experts);
  LaunchConfig launch(dim3(1), dim3(RouteSortSmallConfig::kThreads),
                      static_cast<size_t>(smem_bytes), enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, route_sort_small_kernel, params);
}

}  // namespace fusedmoe::detail
