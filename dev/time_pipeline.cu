// Timing of the pipeline's non-GEMM stages against a whole run() (experiment, never linked).
// Each stage is captured 20 times into a CUDA graph; the graph is replayed and timed with events
// (warm L2: these stages touch kilobytes to a few MB). Build on the device after the library:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc \
//     -I. dev/time_pipeline.cu build-device/libfusedmoe.a -lcuda -o /tmp/time_pipeline
#include <cstdio>
#include <functional>
#include <vector>

#include "dev/dev_common.cuh"
#include "launch/pipeline.h"

using namespace fusedmoe;
using namespace fusedmoe::dev;

float time_us(cudaStream_t stream, const std::function<void()>& enqueue) {
  constexpr int kPerGraph = 20, kReplays = 10;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kPerGraph; ++i) enqueue();
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CHECK(cudaGraphLaunch(exec, stream));
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  CHECK(cudaEventRecord(start, stream));
  for (int r = 0; r < kReplays; ++r) CHECK(cudaGraphLaunch(exec, stream));
  CHECK(cudaEventRecord(stop, stream));
  CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms * 1000.0f / (kPerGraph * kReplays);
}

int main() {
  struct Case {
    const char* name;
    int64_t T, H, I;
    int32_t E, K, E_loc;
    RoutingMethod method;
  };
  const Case cases[] = {
      {"dsv3-shard T=1", 1, 7168, 2048, 256, 8, 32, RoutingMethod::kDeepSeekV3},
      {"dsv3-shard T=16", 16, 7168, 2048, 256, 8, 32, RoutingMethod::kDeepSeekV3},
      {"dsv3-shard T=128", 128, 7168, 2048, 256, 8, 32, RoutingMethod::kDeepSeekV3},
      {"dsv3-shard T=4096", 4096, 7168, 2048, 256, 8, 32, RoutingMethod::kDeepSeekV3},
      {"mixtral T=1", 1, 4096, 14336, 8, 2, 8, RoutingMethod::kRenormalize},
      {"mixtral T=4096", 4096, 4096, 14336, 8, 2, 8, RoutingMethod::kRenormalize},
      {"qwen3 T=4096", 4096, 4096, 1536, 128, 8, 128, RoutingMethod::kRenormalize},
      {"E1024 K32 T=4096", 4096, 2048, 768, 1024, 32, 64, RoutingMethod::kDefault},
  };
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::printf("%-20s %9s %9s %9s %9s %9s\n", "case", "route", "permute", "finalize", "run()",
              "pdl run()");
  for (const Case& c : cases) {
    void *w1, *w2;
    CHECK(cudaMalloc(&w1, size_t(c.E_loc) * 2 * c.I * c.H * 2));
    CHECK(cudaMalloc(&w2, size_t(c.E_loc) * c.H * c.I * 2));
    CHECK(cudaMemset(w1, 0x1c, size_t(c.E_loc) * 2 * c.I * c.H * 2));
    CHECK(cudaMemset(w2, 0x1c, size_t(c.E_loc) * c.H * c.I * 2));
    const Model m{c.name, c.H, c.I, c.E, c.K, c.method};
    DevCall call(m, c.T, c.E_loc, w1, w2, stream);
    const MoeShape& shape = call.shape;
    MoeArguments& args = call.args;
    void* ws = call.ws;
    const size_t ws_bytes = call.ws_bytes;
    void* out = call.out;
    const detail::Workspace w = detail::carve_workspace(shape, ws, /*fp8=*/false);
    const int64_t slots = c.T * c.K;
    detail::RoutingOutputs routing;
    routing.slot_key = w.slot_key;
    routing.slot_weight = w.slot_weight;
    if (!run(args, ws, ws_bytes, stream).ok()) return 1;
    CHECK(cudaStreamSynchronize(stream));

    const float route = time_us(
        stream, [&] { CHECK(detail::launch_route(shape, args.logits, routing, false, stream)); });
    const float permute = time_us(stream, [&] {
      CHECK(detail::launch_expert_count(w.slot_key, slots, c.E_loc, w.chunk_prefix, false, stream));
      CHECK(detail::launch_expert_offsets(slots, c.E_loc, w.chunk_prefix, w.expert_offsets, false,
                                          stream));
      CHECK(detail::launch_permute(w.slot_key, slots, c.K, c.E_loc, w.chunk_prefix,
                                   w.expert_offsets, w.gather_rows, w.permuted_idx, false, stream));
    });
    const float finalize = time_us(stream, [&] {
      CHECK(detail::launch_finalize(w.y, w.slot_weight, w.permuted_idx, c.T, c.K, c.E, c.E_loc, c.H,
                                    static_cast<__nv_bfloat16*>(out), false, stream));
    });
    const float whole = time_us(stream, [&] { run(args, ws, ws_bytes, stream); });
    args.enable_pdl = true;
    const float whole_pdl = time_us(stream, [&] { run(args, ws, ws_bytes, stream); });
    std::printf("%-20s %9.2f %9.2f %9.2f %9.2f %9.2f   (us per call)\n", c.name, route, permute,
                finalize, whole, whole_pdl);
    cudaFree(w1);
    cudaFree(w2);
  }
  return 0;
}
