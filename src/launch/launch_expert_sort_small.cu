// Host side of the one-CTA counting sort (kernels/sm90_expert_sort_small.cuh).
#include "decode_heuristics.h"
#include "kernels/sm90_expert_sort_small.cuh"
#include "launch/pipeline.h"

namespace fusedmoe::detail {

static_assert(ExpertSortSmallConfig::kThreads == heuristics::kSmallSortThreads &&
                  ExpertSortSmallConfig::kMaxSlots == heuristics::kSmallSortMaxSlots,
              "the host's choice and smem budget assume the kernel's CTA and slot bound");

cudaError_t launch_expert_sort_small(const int32_t* slot_key, int64_t num_slots, int32_t top_k,
                                     int32_t num_local, int32_t* expert_offsets,
                                     int32_t* gather_rows, int32_t* permuted_idx, bool enable_pdl,
                                     cudaStream_t stream) {
  if (!heuristics::use_small_sort(num_slots) || num_local < 1 || num_local > kMaxNumExperts) {
    return cudaErrorInvalidConfiguration;
  }
  ExpertSortSmallParams params{};
  params.slot_key = slot_key;
  params.num_slots = num_slots;
  params.top_k = top_k;
  params.num_local = num_local;
  params.num_segments = heuristics::small_sort_segments(num_local, num_slots);
  params.expert_offsets = expert_offsets;
  params.gather_rows = gather_rows;
  params.permuted_idx = permuted_idx;
  LaunchConfig launch(dim3(1), dim3(ExpertSortSmallConfig::kThreads),
                      static_cast<size_t>(heuristics::small_sort_smem_bytes(num_local, num_slots)),
                      enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, expert_sort_small_kernel, params);
}

}  // namespace fusedmoe::detail
