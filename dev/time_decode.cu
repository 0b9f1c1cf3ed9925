// Decode latency of whole run() calls (experiment, never linked; issue 6): for the bench models
// at small T (full grid, logits routing), the median of CUDA-graph replays with PDL, L2 flushed
// before each replay (a 512 MiB memset, not timed), against the bytes floor of the experts hit.
// Run it under ncu for the per-kernel picture (FUSEDMOE_DEV_REPS=1 keeps that short):
//   ncu --kernel-name regex:sm90_ --metrics gpu__time_duration.sum,... /tmp/time_decode
//   qwen3-30b-a3b 1
// Build on the device after the library:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc -I. \
//     dev/time_decode.cu build-device/libfusedmoe.a -lcuda -o /tmp/time_decode
// Then, per point, the graph of each prefix of the pipeline (route | +sort | +GEMM1 | +GEMM2 |
// +finalize, the launchers run() uses, PDL on, same flush): the marginal cost of each stage in
// the chain ("stages" lines).
// Arguments: [model|all] [T ...] (default: all, 1 4 16 64 256); env FUSEDMOE_DEV_BW (GB/s, default
// 4254: the H200 copy bandwidth of bench/results), FUSEDMOE_DEV_REPS (default 20), FUSEDMOE_DEV_EP
// (1: shard 0 of 8, E_loc = E / 8, ids over all E).
#include <cstring>
#include <functional>
#include <string>

#include "decode_heuristics.h"
#include "dev/dev_common.cuh"
#include "launch/decode_gemm.h"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"

using namespace fusedmoe;
using namespace fusedmoe::dev;

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  std::vector<int64_t> token_counts;
  for (int i = 2; i < argc; ++i) token_counts.push_back(std::atoll(argv[i]));
  if (token_counts.empty()) token_counts = {1, 4, 16, 64, 256};
  const double bw =
      std::getenv("FUSEDMOE_DEV_BW") ? std::atof(std::getenv("FUSEDMOE_DEV_BW")) : 4254;
  const int reps =
      std::getenv("FUSEDMOE_DEV_REPS") ? std::atoi(std::getenv("FUSEDMOE_DEV_REPS")) : 20;
  const bool ep = std::getenv("FUSEDMOE_DEV_EP") && std::atoi(std::getenv("FUSEDMOE_DEV_EP")) != 0;
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const size_t flush_bytes = size_t(512) << 20;
  void* flush;
  CHECK(cudaMalloc(&flush, flush_bytes));
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  // us of each of `reps` replays of a graph (after 2 untimed), L2 flushed before each.
  auto time_flushed = [&](cudaGraphExec_t exec) {
    std::vector<float> us;
    for (int it = 0; it < reps + 2; ++it) {
      CHECK(cudaMemsetAsync(flush, it & 0xFF, flush_bytes, stream));
      CHECK(cudaEventRecord(start, stream));
      CHECK(cudaGraphLaunch(exec, stream));
      CHECK(cudaEventRecord(stop, stream));
      CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (it >= 2) us.push_back(ms * 1000.0f);
    }
    return us;
  };
  std::printf("%-16s %5s %5s | %9s %9s %7s\n", "model", "T", "hit", "floor us", "graph us",
              "% floor");
  for (const Model& m : bench_models()) {
    if (which != "all" && which != m.name) continue;
    // FUSEDMOE_DEV_EP=1: the expert-parallel grid of bench/README.md, shard 0 of 8 (E_loc = E / 8).
    const int32_t e_loc = ep ? m.E / 8 : m.E;
    const DevWeights weights(m, e_loc, stream);
    const __nv_bfloat16 *w1 = weights.w1, *w2 = weights.w2;
    for (int64_t T : token_counts) {
      DevCall call(m, T, e_loc, w1, w2, stream);
      MoeArguments& args = call.args;
      void* ws = call.ws;
      const size_t ws_bytes = call.ws_bytes;
      args.enable_pdl = true;
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      if (!run(args, ws, ws_bytes, stream).ok()) return 1;
      CHECK(cudaStreamEndCapture(stream, &graph));
      CHECK(cudaGraphInstantiate(&exec, graph, 0));
      const std::vector<float> us = time_flushed(exec);
      // Prefix graphs: marginal cost of each stage in the PDL chain.
      char stage_line[512];
      {
        const Stages stages = pipeline_stages(call, m, w1, w2, /*pdl=*/true, stream);
        int len = std::snprintf(stage_line, sizeof(stage_line),
                                "  stages (gemm1 %s, gemm2 %s), marginal us:",
                                stages.decode1 ? "decode" : "prefill",
                                stages.decode2 ? "decode" : "prefill");
        float previous = 0;
        for (size_t n = 1; n <= stages.launch.size(); ++n) {
          cudaGraph_t g;
          cudaGraphExec_t e;
          CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
          for (size_t i = 0; i < n; ++i) stages.launch[i]();
          CHECK(cudaStreamEndCapture(stream, &g));
          CHECK(cudaGraphInstantiate(&e, g, 0));
          const float total = median(time_flushed(e));
          len += std::snprintf(stage_line + len, sizeof(stage_line) - len, " %s %.1f",
                               Stages::kNames[n - 1], total - previous);
          previous = total;
          cudaGraphExecDestroy(e);
          cudaGraphDestroy(g);
        }
        std::snprintf(stage_line + len, sizeof(stage_line) - len, " | total %.1f", previous);
      }
      // The experts hit, for the floor: rerun once with the routing replay (int16 [T, K] ids).
      std::vector<int32_t> ids(size_t(T) * m.K);
      int16_t* replay;
      CHECK(cudaMalloc(&replay, ids.size() * 2));
      args.routing_replay_out = replay;
      if (!run(args, ws, ws_bytes, stream).ok()) return 1;
      std::vector<int16_t> host_replay(ids.size());
      CHECK(cudaMemcpy(host_replay.data(), replay, ids.size() * 2, cudaMemcpyDeviceToHost));
      std::vector<char> hit(e_loc, 0);
      for (int16_t e : host_replay)
        if (e >= 0 && e < e_loc) hit[e] = 1;
      int64_t hits = 0;
      for (char h : hit) hits += h;
      const double bytes = double(hits) * 3 * m.H * m.I * 2 + 2.0 * T * m.H * 2;
      const double floor_us = bytes / bw * 1e-3;
      const float med = us.empty() ? 0.0f : median(us);
      std::printf("%-16s %5lld %5lld | %9.1f %9.1f %6.1f%%\n", m.name, (long long)T,
                  (long long)hits, floor_us, med, med > 0 ? 100.0 * floor_us / med : 0.0);
      std::printf("%s\n", stage_line);
      std::fflush(stdout);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      cudaFree(replay);
    }
  }
  return 0;
}
