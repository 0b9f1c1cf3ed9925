// Where the time of a prefill call goes (experiment, never linked; issue 5): for the six bench
// models at T = 1024, 4096, 16384 (full grid, logits routing), the stages of run() timed one by
// one with CUDA events (PDL off between them), on the paths run() takes (dev_common.cuh's
// pipeline_stages): route | sort | GEMM1+SwiGLU | GEMM2 | finalize; then the whole run() as a CUDA graph replay with PDL on ("graph", as
// bench_moe.py times it) and off ("nopdl"). Medians of 5 after 2 warm-ups; weights are far
// larger than L2, so no flush.
// Also prints the M-tile occupancy from the routed expert_offsets: useful rows over the rows the
// 128-row tiles compute ("util128"), and over 64-row granularity ("util64").
// Environment: FUSEDMOE_DEV_TOKENS="4096 16384" (token counts, default 1024 4096 16384),
// FUSEDMOE_DEV_MODELS="deepseek gpt-oss" (name substrings, default all), FUSEDMOE_DEV_DUMP=DIR
// (write each point's first output, T x H bf16, to DIR/MODEL_T.bin: two libraries run on the
// same inputs can then be compared bit for bit, as dev/ab_prefill.sh does).
// Build on the device after the library (any libfusedmoe.a of the same API):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc \
//     -I. dev/time_stages.cu build-device/libfusedmoe.a -lcuda -o /tmp/time_stages
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "dev/dev_common.cuh"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"

using namespace fusedmoe;
using namespace fusedmoe::dev;

// The words of an environment variable, or `fallback` when it is unset or empty.
std::vector<std::string> env_words(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  std::istringstream in(value != nullptr && *value != '\0' ? value : fallback);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

bool model_selected(const char* name, const std::vector<std::string>& filters) {
  if (filters.empty()) return true;
  for (const std::string& f : filters) {
    if (std::string(name).find(f) != std::string::npos) return true;
  }
  return false;
}

int main() {
  std::vector<int64_t> token_counts;
  for (const std::string& w : env_words("FUSEDMOE_DEV_TOKENS", "1024 4096 16384")) {
    token_counts.push_back(std::stoll(w));
  }
  const std::vector<std::string> model_filters = env_words("FUSEDMOE_DEV_MODELS", "");
  const char* dump_dir = std::getenv("FUSEDMOE_DEV_DUMP");
  constexpr int kWarm = 2, kReps = 5;
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::printf("%-16s %6s %7s %7s | %8s %8s %8s %8s %8s | %8s %8s %8s | %6s %6s | %6s %6s\n",
              "model", "T", "rows/e", "max", "route", "sort", "gemm1", "gemm2", "final", "sum",
              "graph", "nopdl", "g1TF", "g2TF", "u128", "u64");
  for (const Model& m : bench_models()) {
    if (!model_selected(m.name, model_filters)) continue;
    const DevWeights weights(m, m.E, stream);
    const __nv_bfloat16 *w1 = weights.w1, *w2 = weights.w2;
    for (int64_t T : token_counts) {
      DevCall call(m, T, m.E, w1, w2, stream);
      MoeArguments& args = call.args;
      void* ws = call.ws;
      const size_t ws_bytes = call.ws_bytes;
      const detail::Workspace w = detail::carve_workspace(call.shape, ws, /*fp8=*/false);
      if (!run(args, ws, ws_bytes, stream).ok()) return 1;
      CHECK(cudaStreamSynchronize(stream));
      if (dump_dir != nullptr) {
        std::vector<uint16_t> host(size_t(T) * m.H);
        CHECK(cudaMemcpy(host.data(), call.out, host.size() * 2, cudaMemcpyDeviceToHost));
        const std::string path =
            std::string(dump_dir) + "/" + m.name + "_" + std::to_string(T) + ".bin";
        FILE* f = std::fopen(path.c_str(), "wb");
        if (f == nullptr || std::fwrite(host.data(), 2, host.size(), f) != host.size()) {
          std::fprintf(stderr, "cannot write %s\n", path.c_str());
          return 1;
        }
        std::fclose(f);
      }

      // Stages, one by one (PDL off), on the paths run() takes.
      const std::vector<std::function<void()>> stages =
          pipeline_stages(call, m, w1, w2, /*pdl=*/false, stream).launch;
      const int n = int(stages.size());
      std::vector<cudaEvent_t> ev(n + 1);
      for (auto& e : ev) CHECK(cudaEventCreate(&e));
      std::vector<std::vector<float>> times(n);
      for (int it = 0; it < kWarm + kReps; ++it) {
        for (int s = 0; s < n; ++s) {
          CHECK(cudaEventRecord(ev[s], stream));
          stages[s]();
        }
        CHECK(cudaEventRecord(ev[n], stream));
        CHECK(cudaEventSynchronize(ev[n]));
        if (it < kWarm) continue;
        for (int s = 0; s < n; ++s) {
          float ms = 0;
          CHECK(cudaEventElapsedTime(&ms, ev[s], ev[s + 1]));
          times[s].push_back(ms * 1000.0f);
        }
      }
      // Whole call, graph replay, with PDL (as bench_moe.py) and without.
      auto time_graph = [&](bool pdl) {
        args.enable_pdl = pdl;
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        if (!run(args, ws, ws_bytes, stream).ok()) std::exit(1);
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        std::vector<float> us;
        for (int it = 0; it < kWarm + kReps; ++it) {
          CHECK(cudaEventRecord(ev[0], stream));
          CHECK(cudaGraphLaunch(exec, stream));
          CHECK(cudaEventRecord(ev[1], stream));
          CHECK(cudaEventSynchronize(ev[1]));
          float ms = 0;
          CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
          if (it >= kWarm) us.push_back(ms * 1000.0f);
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        return median(us);
      };
      const float graph_pdl = time_graph(true);
      const float graph_no_pdl = time_graph(false);

      // Tile occupancy of the routed rows.
      std::vector<int32_t> offsets(m.E + 1);
      CHECK(
          cudaMemcpy(offsets.data(), w.expert_offsets, offsets.size() * 4, cudaMemcpyDeviceToHost));
      int64_t useful = 0, rows128 = 0, rows64 = 0, max_rows = 0;
      for (int e = 0; e < m.E; ++e) {
        const int64_t r = offsets[e + 1] - offsets[e];
        useful += r;
        rows128 += (r + 127) / 128 * 128;
        rows64 += (r + 63) / 64 * 64;
        max_rows = std::max(max_rows, r);
      }
      float med[8], sum = 0;
      for (int s = 0; s < n; ++s) sum += (med[s] = median(times[s]));
      const double flops1 = 4.0 * useful * m.H * m.I, flops2 = 2.0 * useful * m.H * m.I;
      std::printf(
          "%-16s %6lld %7.1f %7lld | %8.1f %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f | "
          "%6.0f %6.0f | %5.1f%% %5.1f%%\n",
          m.name, (long long)T, double(useful) / m.E, (long long)max_rows, med[0], med[1], med[2],
          med[3], med[4], sum, graph_pdl, graph_no_pdl, flops1 / med[2] * 1e-6,
          flops2 / med[3] * 1e-6, 100.0 * useful / rows128, 100.0 * useful / rows64);
      std::fflush(stdout);
      for (auto& e : ev) cudaEventDestroy(e);
    }
  }
  return 0;
}
