// gpu_soak: thousands of randomly drawn operator calls against the reference, within a time
// budget (issue 13). Usage:
//   gpu_soak [--seed S] [--seconds B] [--problems N] [--max-problem-seconds X]
//   gpu_soak --seed S --problem N     problem N of run S again, alone (a failure prints this line)
//   gpu_soak --only P                 the problem of seed P alone
//   gpu_soak --dry-run [--seed S] [--problems N] [--seconds B] [--self-tests M] [--list]
// A problem (soak_draw.h) is drawn from its seed: shape, routing input and method, dtypes,
// the expert MLP (activation, its parameters, expert biases, weights on the input),
// expert-parallel window, output mode, replay ids, PDL, hostile input, graph replay or an eager
// rerun. Its expert weights and hidden states are filled on the device, its routing input comes
// from a routing-only MoeCase (soak_inputs.h); the truth is the CPU reference's routing and
// permutation and the cuBLAS reference of the expert MLPs (tests/common/gpu_reference.h),
// compared by soak_compare.h's rules. A graph problem is captured once (workspace sized for a
// larger T) and replayed on fresh inputs copied into the same buffers, each replay compared,
// then run eagerly on the last inputs: the same bits. A problem with a rerun runs again with PDL
// flipped: the same bits. T = 0: nothing written, workspace untouched.
//
// Output: a line per problem, printed before it runs (a crash or a hang names it) and finished
// with its verdict, its time against the estimate and its normalised error (max|ours - ref| /
// bound of STYLE's rule, <= 1 passes); a report per path and axis; and as the last line
//   soak: N problems, D differed, worst R (...), ...
// Exit: 0 all matched; 1 a problem differed or a CUDA error; 2 bad usage; 3 a problem hung
// (watchdog); 77 no CUDA device (ctest's skip code). The dry run needs no device (soak_dry_run.h).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "common/gpu_buffers.h"
#include "common/gpu_reference.h"
#include "fusedmoe/fusedmoe.h"
#include "soak/soak_compare.h"
#include "soak/soak_draw.h"
#include "soak/soak_dry_run.h"
#include "soak/soak_inputs.h"
#include "soak/soak_tally.h"

namespace fusedmoe::soak {
namespace {

using test::check_cuda;
using test::DeviceArray;
using test::MoeCase;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ------------------------------------------------------------------------------------------------
// The device side of one problem: weights and hidden states filled on the device, the routing
// input copied in, outputs and workspace poisoned. A graph problem's rounds load new inputs into
// the same buffers (a captured graph holds their addresses).
// ------------------------------------------------------------------------------------------------
class DeviceProblem {
 public:
  explicit DeviceProblem(const SoakProblem& p) : p_(p) {
    const MoeShape& s = p.shape();
    const int64_t T = s.num_tokens, H = s.hidden_size, I = s.intermediate_size;
    const int64_t K = s.top_k, E_loc = s.local_num_experts;
    w1_.resize(E_loc * ref::gemm1_rows(p.config.activation, I) * H);  // 2I rows gated, I not
    w2_.resize(E_loc * H * I);
    const float scale1 = gemm1_weights_scale(s), scale2 = gemm2_weights_scale(s);
    test::fill_uniform_bf16(w1_, gemm1_weights_seed(p), -scale1, scale1);
    test::fill_uniform_bf16(w2_, gemm2_weights_seed(p), -scale2, scale2);
    x_.resize(T * H);
    // Outputs hold a few elements at least, so T = 0's "nothing written" has bytes to check.
    auto at_least = [](int64_t n) { return static_cast<size_t>(std::max<int64_t>(n, 8)); };
    if (p.config.do_finalize) {
      output_.resize(at_least(T * H));
    } else {
      gemm2_output_.resize(at_least(permuted_capacity(T, s.top_k, s.local_num_experts) * H));
      expert_weights_.resize(at_least(T * K));  // 4 bytes each: bf16 or fp32
      map_.resize(at_least(T * K));
    }
    if (p.config.with_replay) replay_.resize(at_least(T * K));
    MoeShape workspace_shape = s;
    workspace_shape.num_tokens = p.workspace_tokens;
    const Status status = workspace_size(workspace_shape, &workspace_bytes_);
    if (!status.ok()) throw std::runtime_error("workspace_size: " + status.message);
    workspace_.resize(workspace_bytes_);
  }

  // A round's inputs: hidden states from `x_seed` on the device, the routing input copied in.
  void load(const MoeCase& input, uint64_t x_seed) {
    test::fill_uniform_bf16(x_, x_seed, -1.0f, 1.0f);
    copy_in(logits_fp32_, input.logits_fp32);
    copy_in(logits_bf16_, input.logits_bf16);
    copy_in(bias_fp32_, input.bias_fp32);
    copy_in(bias_bf16_, input.bias_bf16);
    copy_in(topk_ids_, input.topk_ids);
    copy_in(topk_weights_fp32_, input.topk_weights_fp32);
    copy_in(topk_weights_bf16_, input.topk_weights_bf16);
    // The expert MLP's parameters and biases: fresh per round too (a graph replay reads them
    // from the same buffers).
    copy_in(alpha_, input.gemm1_alpha);
    copy_in(beta_, input.gemm1_beta);
    copy_in(clamp_limit_, input.gemm1_clamp_limit);
    copy_in(gemm1_bias_fp32_, input.gemm1_bias_fp32);
    copy_in(gemm1_bias_bf16_, input.gemm1_bias_bf16);
    copy_in(gemm2_bias_fp32_, input.gemm2_bias_fp32);
    copy_in(gemm2_bias_bf16_, input.gemm2_bias_bf16);
  }

  // Every output and workspace byte 0xFF (bf16 NaN 0xFFFF, id -1): unwritten elements show,
  // and the pipeline must not depend on a clean workspace.
  void poison() {
    for (DeviceArray<uint16_t>* a : {&output_, &gemm2_output_}) poison(*a);
    poison(expert_weights_);
    poison(map_);
    poison(replay_);
    poison(workspace_);
  }

  // The input's MoeArguments on the device buffers.
  MoeArguments arguments(MoeCase& input) const {
    MoeArguments args = input.arguments();  // host routing pointers; the rest null
    const MoeCaseConfig& c = p_.config;
    args.hidden_states = x_.get();
    args.gemm1_weights = w1_.get();
    args.gemm2_weights = w2_.get();
    if (args.logits.logits) {
      args.logits.logits = c.logits_dtype == DType::kBF16
                               ? static_cast<const void*>(logits_bf16_.get())
                               : logits_fp32_.get();
      if (args.logits.bias) {
        args.logits.bias = c.bias_dtype == DType::kBF16 ? static_cast<const void*>(bias_bf16_.get())
                                                        : bias_fp32_.get();
      }
    } else {
      args.routed.topk_ids = topk_ids_.get();
      if (args.routed.topk_weights) {
        args.routed.topk_weights = c.routed_weights_dtype == DType::kBF16
                                       ? static_cast<const void*>(topk_weights_bf16_.get())
                                       : topk_weights_fp32_.get();
      }
    }
    // The MLP options the input's arguments name (host vectors) on their device copies.
    if (args.gemm1_alpha) args.gemm1_alpha = alpha_.get();
    if (args.gemm1_beta) args.gemm1_beta = beta_.get();
    if (args.gemm1_clamp_limit) args.gemm1_clamp_limit = clamp_limit_.get();
    if (args.gemm1_bias) {
      const bool fp32 = c.expert_bias_dtype == DType::kFP32;
      args.gemm1_bias =
          fp32 ? static_cast<const void*>(gemm1_bias_fp32_.get()) : gemm1_bias_bf16_.get();
      args.gemm2_bias =
          fp32 ? static_cast<const void*>(gemm2_bias_fp32_.get()) : gemm2_bias_bf16_.get();
    }
    if (c.do_finalize) {
      args.output = output_.get();
    } else {
      args.gemm2_output = gemm2_output_.get();
      args.expert_weights = expert_weights_.get();
      args.expanded_idx_to_permuted_idx = map_.get();
    }
    args.routing_replay_out = c.with_replay ? replay_.get() : nullptr;
    args.enable_pdl = p_.enable_pdl;
    return args;
  }

  // What run() wrote: the output mode's tensors, gemm2_output's first num_local rows.
  Outputs download(int64_t num_local) const {
    const MoeShape& s = p_.shape();
    const int64_t T = s.num_tokens, H = s.hidden_size, slots = T * s.top_k;
    Outputs o;
    if (p_.config.do_finalize) {
      o.output = test::download(output_.get(), T * H);
    } else {
      o.rows = test::download(gemm2_output_.get(), num_local * H);
      o.map = test::download(map_.get(), slots);
      const void* weights = expert_weights_.get();
      if (p_.config.expert_weights_dtype == DType::kFP32) {
        o.weights_fp32 = test::download(static_cast<const float*>(weights), slots);
      } else {
        o.weights_bf16 = test::download(static_cast<const uint16_t*>(weights), slots);
      }
    }
    if (p_.config.with_replay) o.replay = test::download(replay_.get(), slots);
    return o;
  }

  // True when every output and workspace byte still holds the poison (a T = 0 call).
  bool untouched() const {
    return poisoned(output_) && poisoned(gemm2_output_) && poisoned(expert_weights_) &&
           poisoned(map_) && poisoned(replay_) && poisoned(workspace_);
  }

  void* workspace() const { return workspace_.get(); }
  size_t workspace_bytes() const { return workspace_bytes_; }
  const uint16_t* x() const { return x_.get(); }
  const uint16_t* w1() const { return w1_.get(); }
  const uint16_t* w2() const { return w2_.get(); }

 private:
  // Allocated on the first round (an empty vector still gets an address: validate() tells the
  // routing inputs apart by their pointers); later rounds must fit the same buffer.
  template <typename T>
  static void copy_in(DeviceArray<T>& device, const std::vector<T>& host) {
    if (device.get() == nullptr) device.resize(host.size());
    if (device.size() != host.size()) throw std::logic_error("a round's input changed size");
    if (host.empty()) return;
    check_cuda(
        cudaMemcpy(device.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
        "copy inputs");
  }
  template <typename T>
  static void poison(DeviceArray<T>& device) {
    if (device.get() != nullptr) device.fill_bytes(0xFF);
  }
  template <typename T>
  static bool poisoned(const DeviceArray<T>& device) {
    if (device.get() == nullptr) return true;
    const std::vector<uint8_t> bytes = test::download(
        reinterpret_cast<const uint8_t*>(device.get()), int64_t(device.size() * sizeof(T)));
    return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0xFF; });
  }

  const SoakProblem& p_;
  DeviceArray<uint16_t> x_, w1_, w2_;
  DeviceArray<float> logits_fp32_, bias_fp32_, topk_weights_fp32_;
  DeviceArray<uint16_t> logits_bf16_, bias_bf16_, topk_weights_bf16_;
  DeviceArray<int32_t> topk_ids_;
  DeviceArray<float> alpha_, beta_, clamp_limit_, gemm1_bias_fp32_, gemm2_bias_fp32_;
  DeviceArray<uint16_t> gemm1_bias_bf16_, gemm2_bias_bf16_;
  DeviceArray<uint16_t> output_, gemm2_output_;
  DeviceArray<uint32_t> expert_weights_;
  DeviceArray<int32_t> map_;
  DeviceArray<int16_t> replay_;
  DeviceArray<uint8_t> workspace_;
  size_t workspace_bytes_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Running a problem: eager (maybe rerun) or captured and replayed.
// ------------------------------------------------------------------------------------------------

// run() on `stream` and a wait; false (and a failed verdict) when it returned an error.
bool run_and_wait(const MoeArguments& args, const DeviceProblem& d, bool pdl, cudaStream_t stream,
                  Verdict& v) {
  MoeArguments call = args;
  call.enable_pdl = pdl;
  const Status status = run(call, d.workspace(), d.workspace_bytes(), stream);
  check_cuda(cudaGetLastError(), "run (launch)");
  check_cuda(cudaStreamSynchronize(stream), "run (kernels)");
  if (!status.ok())
    v.fail(std::string("run() returned ") + status_code_name(status.code) + ": " + status.message);
  return status.ok();
}

// The truth of a round: reference routing and permutation (CPU), the expert MLPs (cuBLAS) with
// the round's activation parameters and biases (device copies) and weights on the input.
struct RoundTruth {
  ReferenceRouting routing;
  test::GpuReferenceResult gpu;
  Truth view() const {
    return {routing.routing, routing.permutation, gpu.out_design,
            gpu.out_truth,   gpu.y_design,        gpu.y_truth};
  }
};

RoundTruth compute_truth(const SoakProblem& p, MoeCase& input, const DeviceProblem& d,
                         cublasHandle_t cublas) {
  RoundTruth truth;
  truth.routing = reference_routing(p, input);
  truth.gpu = test::gpu_reference(p.shape(), d.x(), d.w1(), d.w2(), truth.routing.routing,
                                  truth.routing.permutation, !p.config.do_finalize, cublas,
                                  test::gpu_reference_mlp(d.arguments(input)));
  return truth;
}

// Compares a round that has run; returns what it wrote (for the bitwise checks).
Outputs check_round(const SoakProblem& p, MoeCase& input, const DeviceProblem& d,
                    cublasHandle_t cublas, const std::string& label, Verdict& v) {
  const RoundTruth truth = compute_truth(p, input, d, cublas);
  Outputs ours = d.download(truth.routing.permutation.num_local());
  Verdict round;
  compare_outputs(p, input, truth.view(), ours, round);
  v.ratio = std::max(v.ratio, round.ratio);
  v.weight_ulps = std::max(v.weight_ulps, round.weight_ulps);
  if (!round.ok) v.fail(label + round.failure);
  return ours;
}

int64_t local_rows(const Outputs& o, const SoakProblem& p) {
  return int64_t(o.rows.size()) / p.shape().hidden_size;
}

Verdict run_eager(const SoakProblem& p, DeviceProblem& d, cublasHandle_t cublas) {
  Verdict v;
  MoeCase input = make_routing_input(p, 0);
  d.load(input, round_seed(p, 0));
  d.poison();
  const MoeArguments args = d.arguments(input);
  if (!run_and_wait(args, d, p.enable_pdl, nullptr, v)) return v;
  if (p.shape().num_tokens == 0) {
    if (!d.untouched()) v.fail("T = 0: run() wrote an output or workspace byte");
    return v;
  }
  const Outputs first = check_round(p, input, d, cublas, "", v);
  if (!p.rerun) return v;
  // Deterministic with or without PDL (docs/reliability.md): a rerun repeats every bit.
  d.poison();
  if (!run_and_wait(args, d, !p.enable_pdl, nullptr, v)) return v;
  compare_bitwise(first, d.download(local_rows(first, p)), "rerun with PDL flipped", v);
  return v;
}

// The graph objects of one capture, released however the problem ends.
struct Capture {
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Capture() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (stream) cudaStreamDestroy(stream);
  }
};

Verdict run_graph(const SoakProblem& p, DeviceProblem& d, cublasHandle_t cublas) {
  Verdict v;
  MoeCase input = make_routing_input(p, 0);
  d.load(input, round_seed(p, 0));
  const MoeArguments args = d.arguments(input);
  Capture capture;
  check_cuda(cudaStreamCreateWithFlags(&capture.stream, cudaStreamNonBlocking), "stream");
  check_cuda(cudaStreamBeginCapture(capture.stream, cudaStreamCaptureModeThreadLocal), "capture");
  const Status status = run(args, d.workspace(), d.workspace_bytes(), capture.stream);
  check_cuda(cudaStreamEndCapture(capture.stream, &capture.graph), "end capture");
  if (!status.ok()) {
    v.fail("run() under capture returned " + status.message);
    return v;
  }
  check_cuda(cudaGraphInstantiate(&capture.exec, capture.graph, 0), "instantiate");

  Outputs last;
  for (int round = 0; round < p.graph_rounds; ++round) {
    if (round > 0) {  // fresh inputs, the same buffers
      input = make_routing_input(p, round);
      d.load(input, round_seed(p, round));
    }
    d.poison();
    check_cuda(cudaDeviceSynchronize(), "inputs ready");  // they went in on the legacy stream
    check_cuda(cudaGraphLaunch(capture.exec, capture.stream), "graph launch");
    check_cuda(cudaStreamSynchronize(capture.stream), "graph replay");
    last = check_round(p, input, d, cublas, "replay " + std::to_string(round) + ": ", v);
  }
  // Eager on the last inputs: the same bits as the replay (docs/reliability.md, determinism).
  d.poison();
  if (!run_and_wait(args, d, p.enable_pdl, nullptr, v)) return v;
  compare_bitwise(last, d.download(local_rows(last, p)), "eager vs graph replay", v);
  return v;
}

// ------------------------------------------------------------------------------------------------
// The watchdog: ends the soak when a problem runs far past its estimate (a kernel that never
// finishes would otherwise hold the device call to its limit and leave no summary line).
// ------------------------------------------------------------------------------------------------
class Watchdog {
 public:
  Watchdog() : thread_([this] { watch(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  // After `seconds`, print `last_words` (the problem, its rerun line, the summary) and exit 3.
  void arm(double seconds, std::string last_words) {
    std::lock_guard<std::mutex> lock(mutex_);
    deadline_ = Clock::now() +
                std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    last_words_ = std::move(last_words);
    armed_ = true;
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
  }

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::seconds(1));
      if (armed_ && Clock::now() > deadline_) {
        std::fputs(last_words_.c_str(), stdout);
        std::fflush(stdout);
        std::_Exit(3);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false, armed_ = false;
  Clock::time_point deadline_;
  std::string last_words_;
  std::thread thread_;  // last: starts once the members above exist
};

// ------------------------------------------------------------------------------------------------
// The soak loop and its report.
// ------------------------------------------------------------------------------------------------
struct Options {
  uint64_t run_seed = 1;
  double seconds = 300;
  int64_t problems = -1;                            // at most this many (-1: until the budget)
  int64_t only_index = -1;                          // --problem
  uint64_t only_seed = 0;                           // --only
  double max_problem_seconds = kMaxProblemSeconds;  // skip problems estimated above it
  bool dry_run = false;
  bool list = false;
  int64_t self_tests = 300;
  bool problems_given = false;
};

struct Worst {
  double ratio = 0.0;
  int64_t index = -1;
  uint64_t seed = 0;
  std::string paths;
};

// "input=logits output=finalize ..." for the report's worst problem.
std::string path_labels(const SoakProblem& p, int num_sms) {
  std::string labels;
  for (const Axis& axis : draw_axes()) {
    if (!axis.is_path) continue;
    labels +=
        (labels.empty() ? "" : " ") + std::string(axis.name) + "=" + axis.label_of(p, num_sms);
  }
  return labels;
}

std::string rerun_line(const char* program, const Options& o, int64_t index, uint64_t seed) {
  char line[256];
  if (index >= 0) {
    std::snprintf(line, sizeof(line), "%s --seed %llu --problem %lld", program,
                  static_cast<unsigned long long>(o.run_seed), static_cast<long long>(index));
  } else {
    std::snprintf(line, sizeof(line), "%s --only %llu", program,
                  static_cast<unsigned long long>(seed));
  }
  return line;
}

std::string summary_line(int64_t ran, int64_t differed, const Worst& worst, double seconds,
                         const Options& o, const std::string& ending) {
  char line[1024];
  std::snprintf(line, sizeof(line),
                "soak: %lld problems, %lld differed, worst %.4f of the tolerance bound "
                "(#%lld seed %llu: %s), %.0f s, run seed %llu%s\n",
                static_cast<long long>(ran), static_cast<long long>(differed), worst.ratio,
                static_cast<long long>(worst.index), static_cast<unsigned long long>(worst.seed),
                worst.paths.c_str(), seconds, static_cast<unsigned long long>(o.run_seed),
                ending.c_str());
  return line;
}

int soak(const Options& o, const char* program) {
  if (!test::gpu_available()) {
    std::printf("soak: skipped: no CUDA device\n");
    return 77;
  }
  int device = 0, num_sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device), "SMs");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  std::printf("soak: %s (%d SMs), run seed %llu, budget %.0f s\n", prop.name, num_sms,
              static_cast<unsigned long long>(o.run_seed), o.seconds);
  cublasHandle_t cublas = nullptr;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");

  Tally tally(num_sms);
  Watchdog watchdog;
  Worst worst;
  int64_t ran = 0, differed = 0, skipped = 0;
  double estimated = 0.0;
  const Clock::time_point start = Clock::now();
  const bool one = o.only_index >= 0 || o.only_seed != 0;
  for (int64_t index = one ? o.only_index : 0;; ++index) {
    if (one && ran + skipped > 0) break;
    if (o.problems >= 0 && ran >= o.problems) break;
    const uint64_t seed = o.only_seed != 0 ? o.only_seed : problem_seed(o.run_seed, index);
    const SoakProblem p = draw_problem(seed);
    const double estimate = estimate_cost(p).seconds;
    const double elapsed = seconds_since(start);
    if (!one && elapsed + estimate > o.seconds) {
      std::printf("budget: %.0f s spent, #%lld would take ~%.1f s more: stopping\n", elapsed,
                  static_cast<long long>(index), estimate);
      break;
    }
    if (!one && estimate > o.max_problem_seconds) {
      ++skipped;
      continue;
    }
    std::printf("#%lld seed=%llu %s:", static_cast<long long>(index),
                static_cast<unsigned long long>(seed), describe(p).c_str());
    std::fflush(stdout);
    const std::string rerun = rerun_line(program, o, one && o.only_seed ? -1 : index, seed);
    // A hang: 60 s or 10x the estimate (80 s at the 8 s cap), well inside soak.sh's outer limit.
    watchdog.arm(std::max(60.0, 10.0 * estimate),
                 " HUNG\n  rerun: " + rerun + "\n" +
                     summary_line(ran, differed + 1, worst, seconds_since(start), o,
                                  ", problem #" + std::to_string(index) + " hung"));
    const Clock::time_point problem_start = Clock::now();
    Verdict v;
    try {
      DeviceProblem d(p);
      v = p.graph ? run_graph(p, d, cublas) : run_eager(p, d, cublas);
    } catch (const std::exception& e) {
      v.fail(std::string("error: ") + e.what());
    }
    // A fault poisons the context: nothing after it can be trusted, so the soak stops.
    const cudaError_t sticky = cudaDeviceSynchronize();
    cudaGetLastError();  // clears a non-sticky error (e.g. an allocation that failed)
    watchdog.disarm();
    const double took = seconds_since(problem_start);
    ++ran;
    estimated += estimate;
    if (sticky != cudaSuccess) v.fail(std::string("CUDA error: ") + cudaGetErrorName(sticky));
    if (!v.ok) ++differed;
    if (worst.index < 0 || v.ratio > worst.ratio) {
      worst = {v.ratio, index, seed, path_labels(p, num_sms)};
    }
    tally.add(p, index, !v.ok, v.ratio, took);
    if (v.ok) {
      std::printf(" ok %.1f ms (est %.1f) err %.4f ulps %lld\n", 1e3 * took, 1e3 * estimate,
                  v.ratio, static_cast<long long>(v.weight_ulps));
    } else {
      std::printf(" DIFFERED %.1f ms: %s\n  rerun: %s\n", 1e3 * took, v.failure.c_str(),
                  rerun.c_str());
    }
    if (sticky != cudaSuccess) break;
  }
  cublasDestroy(cublas);

  const double total = seconds_since(start);
  std::printf(
      "\nreport (count, differed, worst normalised error = max|ours - ref| / bound of "
      "STYLE's rule, and its problem):\n");
  tally.print_report(stdout);
  std::printf(
      "time: %.0f s for %lld problems, the cost model estimated %.0f s; %lld skipped as "
      "over --max-problem-seconds\n",
      total, static_cast<long long>(ran), estimated, static_cast<long long>(skipped));
  std::fputs(summary_line(ran, differed, worst, total, o, "").c_str(), stdout);
  return differed > 0 ? 1 : 0;
}

// ------------------------------------------------------------------------------------------------
// Arguments.
// ------------------------------------------------------------------------------------------------
bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(name) + ": expected a value");
      return argv[++i];
    };
    if (arg == "--seed") {
      o.run_seed = std::strtoull(value("--seed"), nullptr, 0);
    } else if (arg == "--seconds") {
      o.seconds = std::atof(value("--seconds"));
    } else if (arg == "--problems") {
      o.problems = std::atoll(value("--problems"));
      o.problems_given = true;
    } else if (arg == "--problem") {
      o.only_index = std::atoll(value("--problem"));
    } else if (arg == "--only") {
      o.only_seed = std::strtoull(value("--only"), nullptr, 0);
    } else if (arg == "--max-problem-seconds") {
      o.max_problem_seconds = std::atof(value("--max-problem-seconds"));
    } else if (arg == "--dry-run") {
      o.dry_run = true;
    } else if (arg == "--list") {
      o.list = true;
    } else if (arg == "--self-tests") {
      o.self_tests = std::atoll(value("--self-tests"));
    } else {
      std::fprintf(stderr,
                   "gpu_soak: unknown argument %s (see the head of tests/soak/gpu_soak.cu)\n",
                   arg.c_str());
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace fusedmoe::soak

int main(int argc, char** argv) {
  using namespace fusedmoe::soak;
  Options o;
  try {
    if (!parse(argc, argv, o)) return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_soak: %s\n", e.what());
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.dry_run) {
    DryRunOptions d;
    d.run_seed = o.run_seed;
    if (o.problems_given) d.problems = o.problems;
    d.only_index = o.only_index;
    d.only_seed = o.only_seed;
    d.budget_seconds = o.seconds;
    d.self_tests = o.self_tests;
    d.list = o.list;
    return dry_run(d);
  }
  try {
    return soak(o, argv[0]);
  } catch (const std::exception& e) {  // outside any problem: the device itself
    std::printf("soak: 0 problems, 1 differed, error before the first problem: %s\n", e.what());
    return 1;
  }
}
