// Host side of the logits routing kernel (kernels/sm90_route.cuh).
#include "kernels/sm90_route.cuh"
#include "launch/pipeline.h"
#include "launch/routing_params.h"

namespace fusedmoe::detail {

cudaError_t launch_route(const MoeShape& shape, const LogitsRouting& logits,
                         const RoutingOutputs& out, bool enable_pdl, cudaStream_t stream) {
  const RouteParams params = make_route_params(shape, logits, out);
  const dim3 grid(static_cast<unsigned>((shape.num_tokens + RouteConfig::kWarps - 1) /
                                        RouteConfig::kWarps));
  LaunchConfig launch(grid, dim3(RouteConfig::kThreads),
                      RouteConfig::smem_bytes(shape.num_experts), enable_pdl, stream);
  return cudaLaunchKernelEx(&launch.config, route_kernel, params);
}

}  // namespace fusedmoe::detail
