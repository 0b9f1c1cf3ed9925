// validate_routing(): the device-pointer version of SPEC's debugging helper. Synchronous (it
// waits for `stream` and allocates a few bytes), so it is never part of run() or a graph.
#include <algorithm>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "fusedmoe/fusedmoe.h"
#include "kernels/sm90_validate_routing.cuh"
#include "validate.h"

namespace fusedmoe {
namespace {

Status cuda_status(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status::Ok();
  return Status::Error(StatusCode::kCudaError, std::string(what) +
                                                   ": expected cudaSuccess, got " +
                                                   cudaGetErrorName(error));
}

}  // namespace

Status validate_routing(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k,
                        int32_t num_experts, bool packed, RoutingCheck* result,
                        cudaStream_t stream) {
  if (Status s = detail::validate_routing_arguments(topk_ids, num_tokens, top_k, num_experts,
                                                    result);
      !s.ok()) {
    return s;
  }

  *result = RoutingCheck{};
  const int64_t num_slots = num_tokens * top_k;
  if (num_slots == 0) return Status::Ok();

  constexpr unsigned long long kNone = ~0ull;
  unsigned long long* d_first_bad = nullptr;
  if (Status s = cuda_status(cudaMallocAsync(&d_first_bad, sizeof(*d_first_bad), stream),
                             "cudaMallocAsync");
      !s.ok()) {
    return s;
  }
  const int threads = detail::ValidateRoutingConfig::kThreads;
  const int64_t blocks = std::min<int64_t>(4096, (num_slots + threads - 1) / threads);
  unsigned long long first_bad = kNone;
  cudaError_t error = cudaMemcpyAsync(d_first_bad, &first_bad, sizeof(first_bad),
                                      cudaMemcpyHostToDevice, stream);
  if (error == cudaSuccess) {
    detail::validate_routing_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        topk_ids, num_slots, num_experts, packed, d_first_bad);
    error = cudaGetLastError();
  }
  if (error == cudaSuccess) {
    error = cudaMemcpyAsync(&first_bad, d_first_bad, sizeof(first_bad), cudaMemcpyDeviceToHost,
                            stream);
  }
  int32_t word = 0;
  if (error == cudaSuccess) error = cudaStreamSynchronize(stream);
  if (error == cudaSuccess && first_bad != kNone) {
    error = cudaMemcpy(&word, topk_ids + first_bad, sizeof(word), cudaMemcpyDeviceToHost);
  }
  const cudaError_t free_error = cudaFreeAsync(d_first_bad, stream);
  if (Status s = cuda_status(error, "validate_routing"); !s.ok()) return s;
  if (Status s = cuda_status(free_error, "cudaFreeAsync"); !s.ok()) return s;
  if (first_bad != kNone) {
    result->first_bad_slot = static_cast<int64_t>(first_bad);
    result->bad_id = packed ? unpack_topk_id(word) : word;
  }
  return Status::Ok();
}

}  // namespace fusedmoe
