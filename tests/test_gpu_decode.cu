// GPU tests of the decode GEMMs (src/launch/decode_gemm.h): GEMM1 + SwiGLU with gathered rows,
// and GEMM2, against an fp64-accumulating SIMT reference on the same bf16 inputs, by STYLE's
// tolerance rule. Ragged experts (0, 1, 3, 8, 17, 33, 64 rows), all rows on one expert of many,
// K and N tails (H, I = 8 * odd), 1024 experts, PDL between the two, poisoned outputs whose rows
// past the experts must stay untouched, garbage gather indices and NaN act rows past the experts
// (must never be read), bitwise reruns, the early start from slot keys bitwise the sorted path.
// Set FUSEDMOE_DECODE_BENCH=1 to run the bandwidth experiment (DecodeGemmBench): weights GB/s of
// the decode pair at the bench's model shapes for T = 1, 4, 16, 64, 256 beside a device-to-device
// copy and the prefill pair (launch/grouped_gemm.h), all in the same process; skipped otherwise.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/gpu_buffers.h"
#include "common/gpu_gemm_harness.h"
#include "common/host_data.h"
#include "common/tolerance.h"
#include "decode_heuristics.h"
#include "kernels/sm90_decode_gemm1_swiglu.cuh"
#include "kernels/sm90_decode_gemm2.cuh"
#include "launch/decode_gemm.h"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"
#include "reference/bf16.h"

namespace fusedmoe::test {
namespace {

// ---- one case --------------------------------------------------------------------------------
struct DecodeCase {
  const char* name;
  int64_t hidden;
  int64_t inter;
  std::vector<int32_t> rows_per_expert;
  int64_t extra_rows;  // poisoned rows past the experts (max_rows = total + extra_rows)
  int64_t num_tokens;
  bool enable_pdl;
  int expected_warps = 0;  // the CTA size both GEMMs must take (decode_heuristics.h), 0: either
};

void run_case(const DecodeCase& c) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(std::string(c.name) + " seed " + std::to_string(seed));
  Rng rng(seed);
  const int32_t num_experts = static_cast<int32_t>(c.rows_per_expert.size());
  std::vector<int32_t> offsets(num_experts + 1, 0);
  for (int32_t e = 0; e < num_experts; ++e) offsets[e + 1] = offsets[e] + c.rows_per_expert[e];
  const int64_t total = offsets[num_experts];
  const int64_t max_rows = total + c.extra_rows;
  const int64_t h = c.hidden, inter = c.inter;
  if (c.expected_warps != 0) {
    const int64_t slots = heuristics::decode_expert_slots(max_rows, num_experts);
    const int64_t ctas1 =
        heuristics::ceil_div_decode(inter, kernels::kDecodeGemm1ColsPerCta) * slots;
    const int64_t ctas2 = heuristics::ceil_div_decode(h, kernels::kDecodeGemm2ColsPerCta) * slots;
    ASSERT_EQ(heuristics::decode_warps_per_cta(ctas1, num_sms()), c.expected_warps);
    ASSERT_EQ(heuristics::decode_warps_per_cta(ctas2, num_sms()), c.expected_warps);
  }

  // Inputs: fresh random bf16, weights scaled so that g and y stay O(1).
  const std::vector<uint16_t> x = random_bf16(rng, c.num_tokens * h, -1.0f, 1.0f);
  const float w1_scale = 2.0f / std::sqrt(float(h));
  const float w2_scale = 2.0f / std::sqrt(float(inter));
  const std::vector<uint16_t> w1 =
      random_bf16(rng, size_t(num_experts) * 2 * inter * h, -w1_scale, w1_scale);
  const std::vector<uint16_t> w2 =
      random_bf16(rng, size_t(num_experts) * h * inter, -w2_scale, w2_scale);
  std::vector<int32_t> gather(max_rows);
  for (int64_t p = 0; p < max_rows; ++p) {
    // Past the experts: an index that faults if the kernel ever reads it.
    gather[p] = p < total ? rng.integer(0, static_cast<int32_t>(c.num_tokens) - 1) : 0x3FFFFFFF;
  }
  // GEMM2's input: random rows inside the experts, NaN rows past them (never to be read).
  std::vector<uint16_t> act_in = random_bf16(rng, max_rows * inter, -1.0f, 1.0f);
  std::fill(act_in.begin() + total * inter, act_in.end(), uint16_t(0x7FC0));

  DeviceBuffer<int32_t> d_offsets(offsets), d_gather(gather);
  DeviceBuffer<uint16_t> d_x(x), d_w1(w1), d_w2(w2), d_act_in(act_in);
  DeviceBuffer<uint16_t> d_act(max_rows * inter), d_y(max_rows * h);
  DeviceBuffer<double> d_ref1(std::max<int64_t>(total * inter, 1));
  DeviceBuffer<double> d_ref2(std::max<int64_t>(total * h, 1));
  ASSERT_NE(d_w1.get(), nullptr);
  ASSERT_NE(d_y.get(), nullptr);

  std::vector<uint16_t> poisoned_act(max_rows * inter), poisoned_y(max_rows * h);
  poison(poisoned_act);
  poison(poisoned_y);

  detail::GroupedRows rows;
  rows.expert_offsets = d_offsets.get();
  rows.num_experts = num_experts;
  rows.max_rows = max_rows;
  auto run_both = [&] {
    d_act.upload(poisoned_act);
    d_y.upload(poisoned_y);
    ASSERT_EQ(cudaSuccess,
              detail::launch_decode_gemm1_swiglu(rows, d_x.as<__nv_bfloat16>(), d_gather.get(), h,
                                                 inter, d_w1.as<__nv_bfloat16>(),
                                                 d_act.as<__nv_bfloat16>(), c.enable_pdl, nullptr));
    ASSERT_EQ(cudaSuccess,
              detail::launch_decode_gemm2(rows, d_act_in.as<__nv_bfloat16>(), inter, h,
                                          d_w2.as<__nv_bfloat16>(), d_y.as<__nv_bfloat16>(),
                                          c.enable_pdl, nullptr));
    ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
  };
  run_both();
  const std::vector<uint16_t> act = d_act.download();
  const std::vector<uint16_t> y = d_y.download();

  if (total > 0) {
    reference_gemm1_swiglu<<<unsigned((total * inter + 255) / 256), 256>>>(
        d_offsets.get(), num_experts, d_x.as<__nv_bfloat16>(), d_gather.get(), h, inter,
        d_w1.as<__nv_bfloat16>(), d_ref1.get());
    reference_gemm2<<<unsigned((total * h + 255) / 256), 256>>>(
        d_offsets.get(), num_experts, d_act_in.as<__nv_bfloat16>(), inter, h,
        d_w2.as<__nv_bfloat16>(), d_ref2.get());
    FUSEDMOE_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<double> ref1 = d_ref1.download(), ref2 = d_ref2.download();
    ref1.resize(total * inter);
    ref2.resize(total * h);
    EXPECT_TRUE(
        close_by_bf16_rule(rows_as_double(act, total, inter), ref1, round_all_to_bf16(ref1)))
        << "decode gemm1+swiglu";
    EXPECT_TRUE(close_by_bf16_rule(rows_as_double(y, total, h), ref2, round_all_to_bf16(ref2)))
        << "decode gemm2";
  }
  expect_rows_poisoned(act, total, inter, "decode gemm1+swiglu");
  expect_rows_poisoned(y, total, h, "decode gemm2");

  // Deterministic: a rerun into freshly poisoned outputs gives the same bits.
  run_both();
  EXPECT_EQ(first_difference(act, d_act.download()), -1) << "gemm1 rerun differs";
  EXPECT_EQ(first_difference(y, d_y.download()), -1) << "gemm2 rerun differs";
}

// The early start of GEMM1 (use_decode_early_start): given the routing's slot keys, each CTA
// finds its expert, rows and tokens from them instead of the sort's outputs; GEMM2 its expert
// and rows, before its wait. Keys drawn per slot
// (a local expert with probability local_share, else E_loc: non-local), expert_offsets and
// gather_rows from them by a host stable counting sort (the sort kernel's order); the output with
// the keys must be bitwise the output without them, which must match the reference.
void run_early_case(const char* name, int64_t num_tokens, int32_t top_k, int32_t num_experts,
                    int64_t h, int64_t inter, double local_share, bool enable_pdl) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(std::string(name) + " seed " + std::to_string(seed));
  Rng rng(seed);
  const int64_t num_slots = num_tokens * top_k;
  std::vector<int32_t> keys(num_slots);
  for (int32_t& key : keys) {
    key = rng.uniform(0.0f, 1.0f) < local_share ? rng.integer(0, num_experts - 1) : num_experts;
  }
  std::vector<int32_t> offsets(num_experts + 1, 0), gather(std::max<int64_t>(num_slots, 1), 0);
  for (int32_t key : keys) {
    if (key < num_experts) ++offsets[key + 1];
  }
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
  std::vector<int32_t> next(offsets.begin(), offsets.end() - 1);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    if (keys[slot] < num_experts) gather[next[keys[slot]]++] = static_cast<int32_t>(slot / top_k);
  }
  const int64_t total = offsets[num_experts];
  SCOPED_TRACE("early path " +
               std::string(heuristics::use_decode_early_start(num_slots, top_k) ? "on" : "off") +
               ", " + std::to_string(total) + " local rows");

  const std::vector<uint16_t> x = random_bf16(rng, num_tokens * h, -1.0f, 1.0f);
  const float w1_scale = 2.0f / std::sqrt(float(h));
  const std::vector<uint16_t> w1 =
      random_bf16(rng, size_t(num_experts) * 2 * inter * h, -w1_scale, w1_scale);
  DeviceBuffer<int32_t> d_offsets(offsets), d_gather(gather), d_keys(keys);
  DeviceBuffer<uint16_t> d_x(x), d_w1(w1), d_act(std::max<int64_t>(num_slots, 1) * inter);
  DeviceBuffer<double> d_ref(std::max<int64_t>(total * inter, 1));
  ASSERT_NE(d_w1.get(), nullptr);
  std::vector<uint16_t> poisoned(std::max<int64_t>(num_slots, 1) * inter);
  poison(poisoned);

  detail::GroupedRows rows;
  rows.expert_offsets = d_offsets.get();
  rows.num_experts = num_experts;
  rows.max_rows = num_slots;
  auto run = [&](const int32_t* slot_key) {
    rows.slot_key = slot_key;
    rows.top_k = top_k;
    d_act.upload(poisoned);
    EXPECT_EQ(cudaSuccess, detail::launch_decode_gemm1_swiglu(
                               rows, d_x.as<__nv_bfloat16>(), d_gather.get(), h, inter,
                               d_w1.as<__nv_bfloat16>(), d_act.as<__nv_bfloat16>(), enable_pdl,
                               nullptr));
    EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
    return d_act.download();
  };
  const std::vector<uint16_t> late = run(nullptr), early = run(d_keys.get());
  EXPECT_EQ(first_difference(late, early), -1) << "the early start changed the output";
  expect_rows_poisoned(early, total, inter, "early gemm1");
  if (total > 0) {
    reference_gemm1_swiglu<<<unsigned((total * inter + 255) / 256), 256>>>(
        d_offsets.get(), num_experts, d_x.as<__nv_bfloat16>(), d_gather.get(), h, inter,
        d_w1.as<__nv_bfloat16>(), d_ref.get());
    FUSEDMOE_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<double> ref = d_ref.download();
    ref.resize(total * inter);
    EXPECT_TRUE(close_by_bf16_rule(rows_as_double(early, total, inter), ref, round_all_to_bf16(ref)))
        << "early gemm1";
  }
  // Rerun: the same bits.
  EXPECT_EQ(first_difference(early, run(d_keys.get())), -1) << "early rerun differs";

  // GEMM2 (H x I weights over act rows) finds its expert and rows from the keys too.
  const float w2_scale = 2.0f / std::sqrt(float(inter));
  const std::vector<uint16_t> w2 =
      random_bf16(rng, size_t(num_experts) * h * inter, -w2_scale, w2_scale);
  const std::vector<uint16_t> act_in =
      random_bf16(rng, std::max<int64_t>(num_slots, 1) * inter, -1.0f, 1.0f);
  DeviceBuffer<uint16_t> d_w2(w2), d_act_in(act_in), d_y(std::max<int64_t>(num_slots, 1) * h);
  DeviceBuffer<double> d_ref2(std::max<int64_t>(total * h, 1));
  std::vector<uint16_t> poisoned_y(std::max<int64_t>(num_slots, 1) * h);
  poison(poisoned_y);
  auto run2 = [&](const int32_t* slot_key) {
    rows.slot_key = slot_key;
    d_y.upload(poisoned_y);
    EXPECT_EQ(cudaSuccess, detail::launch_decode_gemm2(rows, d_act_in.as<__nv_bfloat16>(), inter,
                                                       h, d_w2.as<__nv_bfloat16>(),
                                                       d_y.as<__nv_bfloat16>(), enable_pdl,
                                                       nullptr));
    EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
    return d_y.download();
  };
  const std::vector<uint16_t> y_late = run2(nullptr), y_early = run2(d_keys.get());
  EXPECT_EQ(first_difference(y_late, y_early), -1) << "the early lookup changed GEMM2's output";
  expect_rows_poisoned(y_early, total, h, "early gemm2");
  if (total > 0) {
    reference_gemm2<<<unsigned((total * h + 255) / 256), 256>>>(
        d_offsets.get(), num_experts, d_act_in.as<__nv_bfloat16>(), inter, h,
        d_w2.as<__nv_bfloat16>(), d_ref2.get());
    FUSEDMOE_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<double> ref2 = d_ref2.download();
    ref2.resize(total * h);
    EXPECT_TRUE(
        close_by_bf16_rule(rows_as_double(y_early, total, h), ref2, round_all_to_bf16(ref2)))
        << "early gemm2";
  }
}

class DecodeGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!has_sm90_gpu()) GTEST_SKIP() << "needs an sm_90 GPU";
  }
};

TEST_F(DecodeGemm, RaggedExpertsWithKAndNTails) {
  // H = 296 = 8 * 37 (K tail of GEMM1: 296 = 256 + 40; N tail of GEMM2: 296 = 9 * 32 + 8),
  // I = 200 = 8 * 25 (N tail of GEMM1: 200 = 12 * 16 + 8, the last CTA's second tile empty).
  // Small grids (13 x 9 and 10 x 9 CTAs): 8-warp CTAs.
  run_case({"ragged", 296, 200, {0, 1, 3, 8, 17, 0, 64, 33, 2}, 37, 91, false, 8});
}

TEST_F(DecodeGemm, RaggedExpertsWithPdl) {
  run_case({"ragged, pdl", 296, 200, {5, 0, 0, 31, 32, 1}, 5, 40, true});
}

TEST_F(DecodeGemm, AllRowsOnOneExpertOfMany) {
  // 8 chunks of 32 rows + 1: the weights stream once per chunk, every chunk must land.
  std::vector<int32_t> sizes(16, 0);
  sizes[11] = 257;
  run_case({"one busy expert", 520, 136, sizes, 3, 257, false});
}

TEST_F(DecodeGemm, ModelShape2048x768Decode) {
  // qwen3-30b-a3b at T = 2: 16 slots over 8 of 128 experts, the rest empty.
  std::vector<int32_t> sizes(128, 0);
  for (int e : {3, 17, 40, 41, 77, 100, 101, 127}) sizes[e] = 2;
  // 48 x 16 and 64 x 16 CTAs: 4-warp CTAs.
  run_case({"2048x768", 2048, 768, sizes, 0, 2, true, 4});
}

TEST_F(DecodeGemm, ThousandExpertsFewRows) {
  std::vector<int32_t> sizes(1024);
  Rng rng(std::random_device{}());
  for (int32_t& s : sizes) s = rng.integer(0, 3);
  run_case({"1024 experts", 64, 72, sizes, 1, 40, false, 4});
}

TEST_F(DecodeGemm, TinyIntermediate) {
  // I = 8: one tile of 8 up + 8 gate rows per CTA, the second tile past I; H = 8: one k load.
  run_case({"I = 8", 8, 8, {2, 0, 9, 1}, 4, 6, false});
}

TEST_F(DecodeGemm, EarlyStartFromSlotKeysMatchesTheSortedPath) {
  // qwen3-30b at T = 1 and 16 (4-warp CTAs), a shard where about half the slots are elsewhere,
  // the largest slot count of the early path (256) and the first past it (264: the sorted path
  // both times), 1024 experts, the same expert twice in a token, no local slot at all, K = 1.
  run_early_case("qwen3-30b T=1", 1, 8, 128, 2048, 768, 1.0, true);
  run_early_case("T=16 pdl", 16, 8, 64, 296, 200, 1.0, true);
  run_early_case("T=16 shard", 16, 8, 16, 296, 200, 0.5, false);
  run_early_case("256 slots", 32, 8, 32, 136, 72, 0.9, true);
  run_early_case("264 slots", 33, 8, 32, 136, 72, 0.9, true);
  run_early_case("1024 experts", 20, 8, 1024, 64, 24, 1.0, true);
  run_early_case("duplicates", 6, 16, 3, 64, 24, 1.0, true);
  run_early_case("nothing local", 4, 8, 8, 64, 24, 0.0, true);
  run_early_case("K = 1", 7, 1, 16, 520, 136, 1.0, true);
}

TEST_F(DecodeGemm, NoRowsAtAll) { run_case({"no rows", 128, 128, {0, 0, 0}, 17, 4, false}); }

TEST_F(DecodeGemm, RejectsMisalignedPointers) {
  DeviceBuffer<int32_t> d_offsets(std::vector<int32_t>{0, 1});
  DeviceBuffer<uint16_t> buf(4096);
  detail::GroupedRows rows{d_offsets.get(), 1, 1};
  const auto* base = buf.as<__nv_bfloat16>();
  EXPECT_EQ(cudaErrorMisalignedAddress,
            detail::launch_decode_gemm2(rows, base + 1, 8, 8, base, buf.as<__nv_bfloat16>(), false,
                                        nullptr));
  EXPECT_EQ(cudaErrorMisalignedAddress,
            detail::launch_decode_gemm1_swiglu(rows, base, d_offsets.get(), 8, 8, base + 4,
                                               buf.as<__nv_bfloat16>(), false, nullptr));
}

// ---- bandwidth experiment (FUSEDMOE_DECODE_BENCH=1) --------------------------------------------
// Median of `reps` event-timed runs of `launch`, each after a 256 MiB write that evicts L2.
template <typename Launch>
double median_us(Launch&& launch, void* flush, size_t flush_bytes, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  launch();
  std::vector<float> times;
  for (int i = 0; i < reps; ++i) {
    cudaMemsetAsync(flush, i & 0xFF, flush_bytes);
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return 1e3 * times[times.size() / 2];
}

double max_rel_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, size_t n) {
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double va = bf16_bits_to_float(a[i]), vb = bf16_bits_to_float(b[i]);
    max_ref = std::max(max_ref, std::abs(vb));
    const double d = std::abs(va - vb);
    max_diff = (d == d) ? std::max(max_diff, d) : INFINITY;
  }
  return max_diff / std::max(max_ref, 1e-30);
}

TEST(DecodeGemmBench, WeightBandwidth) {
  if (std::getenv("FUSEDMOE_DECODE_BENCH") == nullptr)
    GTEST_SKIP() << "set FUSEDMOE_DECODE_BENCH=1";
  if (!has_sm90_gpu()) GTEST_SKIP() << "needs an sm_90 GPU";
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const int reps = 15;
  const size_t flush_bytes = size_t(256) << 20;
  DeviceBuffer<uint8_t> flush(flush_bytes);

  double copy_gbs = 0.0;
  {  // device-to-device copy: bytes read + written over time
    const size_t bytes = size_t(1) << 30;
    DeviceBuffer<uint8_t> src(bytes), dst(bytes);
    cudaMemset(src.get(), 1, bytes);
    const double us =
        median_us([&] { cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice); },
                  flush.get(), flush_bytes, 10);
    copy_gbs = 2.0 * bytes / us / 1e3;
  }
  std::printf("device: %s, %d SMs, L2 %d MiB; D2D copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_gbs);
  std::printf("%-14s %4s | %4s %5s | %8s | %8s %8s %8s %6s %5s | %8s %8s %8s %6s | %s\n", "model",
              "T", "hit", "max_r", "w MB", "dec g1", "dec g2", "dec us", "GB/s", "%copy", "pre g1",
              "pre g2", "pre us", "x pre", "heuristic");

  struct Model {
    const char* name;
    int64_t h, inter;
    int e, k;
  };
  for (const Model md :
       {Model{"qwen3-30b-a3b", 2048, 768, 128, 8}, Model{"qwen3-235b", 4096, 1536, 128, 8},
        Model{"gpt-oss-120b", 2880, 2880, 128, 4}, Model{"deepseek-v3", 7168, 2048, 256, 8},
        Model{"mixtral-8x7b", 4096, 14336, 8, 2}, Model{"llama4-scout", 5120, 8192, 16, 1}}) {
    const int64_t h = md.h, inter = md.inter;
    const size_t w1_count = size_t(md.e) * 2 * inter * h, w2_count = size_t(md.e) * h * inter;
    DeviceBuffer<uint16_t> w1(w1_count), w2(w2_count);
    ASSERT_NE(w1.get(), nullptr) << md.name;
    ASSERT_NE(w2.get(), nullptr) << md.name;
    fill_random_bf16<<<4096, 256>>>(w1.as<__nv_bfloat16>(), w1_count, 4,
                                    2.0f / std::sqrt(float(h)));
    fill_random_bf16<<<4096, 256>>>(w2.as<__nv_bfloat16>(), w2_count, 5,
                                    2.0f / std::sqrt(float(inter)));
    for (const int64_t t : {1, 4, 16, 64, 256}) {
      // Uniform routing: each token picks K distinct experts; rows sorted by (expert, slot).
      Rng rng(1000 + t);
      const std::vector<int32_t> ids = random_distinct_ids(rng, t, md.k, md.e);
      std::vector<int32_t> slots(t * md.k);
      std::iota(slots.begin(), slots.end(), 0);
      std::stable_sort(slots.begin(), slots.end(),
                       [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
      std::vector<int32_t> offsets(md.e + 1, 0), gather(t * md.k);
      for (int32_t id : ids) ++offsets[id + 1];
      for (int e = 0; e < md.e; ++e) offsets[e + 1] += offsets[e];
      for (size_t p = 0; p < slots.size(); ++p) gather[p] = slots[p] / md.k;
      int hit = 0, max_r = 0;
      for (int e = 0; e < md.e; ++e) {
        hit += offsets[e + 1] > offsets[e];
        max_r = std::max(max_r, offsets[e + 1] - offsets[e]);
      }
      const int64_t rows_total = t * md.k;
      DeviceBuffer<int32_t> d_offsets(offsets), d_gather(gather);
      DeviceBuffer<uint16_t> x(t * h), act_dec(rows_total * inter), act_pre(rows_total * inter),
          y_dec(rows_total * h), y_pre(rows_total * h);
      fill_random_bf16<<<256, 256>>>(x.as<__nv_bfloat16>(), t * h, 3 + uint32_t(t), 1.0f);
      detail::GroupedRows rows{d_offsets.get(), md.e, rows_total};
      auto* xb = x.as<__nv_bfloat16>();
      auto* w1b = w1.as<__nv_bfloat16>();
      auto* w2b = w2.as<__nv_bfloat16>();
      auto dec1 = [&] {
        detail::launch_decode_gemm1_swiglu(rows, xb, d_gather.get(), h, inter, w1b,
                                           act_dec.as<__nv_bfloat16>(), true, nullptr);
      };
      auto dec2 = [&] {
        detail::launch_decode_gemm2(rows, act_dec.as<__nv_bfloat16>(), inter, h, w2b,
                                    y_dec.as<__nv_bfloat16>(), true, nullptr);
      };
      auto pre1 = [&] {
        detail::launch_gemm1_swiglu(rows, xb, d_gather.get(), h, inter, w1b,
                                    act_pre.as<__nv_bfloat16>(), true, nullptr);
      };
      auto pre2 = [&] {
        detail::launch_gemm2(rows, act_pre.as<__nv_bfloat16>(), inter, h, w2b,
                             y_pre.as<__nv_bfloat16>(), true, nullptr);
      };
      auto pre = [&] {
        pre1();
        pre2();
      };
      auto dec = [&] {
        dec1();
        dec2();
      };
      // Interleaved: the pair, then each GEMM alone, then the prefill pair (same clocks).
      const double us_dec = median_us(dec, flush.get(), flush_bytes, reps);
      const double us_g1 = median_us(dec1, flush.get(), flush_bytes, reps);
      const double us_g2 = median_us(dec2, flush.get(), flush_bytes, reps);
      const double us_pre = median_us(pre, flush.get(), flush_bytes, reps);
      const double us_p1 = median_us(pre1, flush.get(), flush_bytes, reps);
      const double us_p2 = median_us(pre2, flush.get(), flush_bytes, reps);
      ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize()) << md.name << " T " << t;

      // Check before trusting: the two paths compute the same function (different fp32 orders).
      const double d_act = max_rel_diff(act_dec.download(), act_pre.download(), rows_total * inter);
      const double d_y = max_rel_diff(y_dec.download(), y_pre.download(), rows_total * h);
      EXPECT_LT(d_act, 2e-2) << md.name << " T " << t << ": act differs from the prefill path";
      EXPECT_LT(d_y, 2e-2) << md.name << " T " << t << ": y differs from the prefill path";

      const double weight_bytes = double(hit) * 3.0 * h * inter * 2.0;
      const double gbs = weight_bytes / us_dec / 1e3;
      const int sms = prop.multiProcessorCount;
      const bool decode1 = heuristics::use_decode_gemm1(t, md.k, md.e, md.e, inter, sms);
      const bool decode2 = heuristics::use_decode_gemm2(t, md.k, md.e, md.e, h, sms);
      const bool mispick = decode1 != (us_g1 < us_p1) || decode2 != (us_g2 < us_p2);
      std::printf(
          "%-14s %4lld | %4d %5d | %8.1f | %8.1f %8.1f %8.1f %6.0f %5.1f | %8.1f %8.1f %8.1f %6.2f "
          "| %s %s%s\n",
          md.name, (long long)t, hit, max_r, weight_bytes / 1e6, us_g1, us_g2, us_dec, gbs,
          100.0 * gbs / copy_gbs, us_p1, us_p2, us_pre, us_pre / us_dec,
          decode1 ? "decode" : "prefill", decode2 ? "decode" : "prefill",
          mispick ? " (MISPICK)" : "");
    }
  }
}

// ---- the finalize's two load forms (decode_heuristics.h: finalize_load_batch) -------------------
// Row loads kFinalizeLoadBatch at a time (a grid of one wave, or many local rows a token) or one
// at a time (else): both must give the fma chain of the CPU reference, bitwise (acc =
// fmaf(w, y, acc) over local k ascending, from 0; no local slot: a zero row). The small call's
// tokens are the large call's first ones.
// K = 8 (one full batch) and 10 (a batch and a remainder), weighted and not, 16-byte and scalar
// columns (a y offset by one element), with rows elsewhere (-1) and tokens with none local.
TEST(Finalize, BatchedAndSingleRowLoadsMatchTheFmaChainBitwise) {
  if (!has_sm90_gpu()) GTEST_SKIP() << "needs an sm_90 GPU";
  const int64_t h = 1032;  // 2 column blocks of 1024 (16-byte columns), the second partial
  const int64_t small_t = 16;
  const int64_t large_t = heuristics::kFinalizeBatchedCtasPerSm * num_sms() / 2 + 1;
  // E = 64 experts, all local at K = 8 (8 local rows a token: batched at any T), or E_loc = 8 of
  // them (1 row a token: batched only on the small grid).
  constexpr int32_t kExperts = 64, kFewLocal = 8;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Rng rng(seed);
  for (int32_t k : {8, 10}) {
    for (bool weighted : {true, false}) {
      for (int64_t y_offset : {0, 1}) {
        SCOPED_TRACE("K " + std::to_string(k) + (weighted ? " weighted" : " unweighted") +
                     " y offset " + std::to_string(y_offset));
        // The grid: T x column blocks of 128 threads x 8 columns (16-byte), or x 1 (scalar).
        const int64_t blocks =
            (h + 128 * (y_offset == 0 ? 8 : 1) - 1) / (128 * (y_offset == 0 ? 8 : 1));
        ASSERT_EQ(
            heuristics::finalize_load_batch(small_t * blocks, num_sms(), k, kExperts, kFewLocal),
            heuristics::kFinalizeLoadBatch);
        ASSERT_EQ(
            heuristics::finalize_load_batch(large_t * blocks, num_sms(), k, kExperts, kFewLocal),
            1);
        ASSERT_EQ(
            heuristics::finalize_load_batch(large_t * blocks, num_sms(), k, kExperts, kExperts),
            heuristics::kFinalizeLoadBatch);
        // Slots: about two thirds local, on rows of y in a shuffled order; token 3 has none.
        const int64_t slots = large_t * k;
        std::vector<int32_t> map(slots);
        std::vector<int32_t> rows(slots);
        std::iota(rows.begin(), rows.end(), 0);
        std::shuffle(rows.begin(), rows.end(), rng.engine());
        for (int64_t i = 0; i < slots; ++i) {
          map[i] = (i / k == 3 || rng.integer(0, 2) == 0) ? -1 : rows[i];
        }
        const std::vector<float> weight = random_fp32(rng, slots, -1.0f, 1.0f);
        const std::vector<uint16_t> y = random_bf16(rng, slots * h + y_offset, -2.0f, 2.0f);
        DeviceBuffer<int32_t> d_map(map);
        DeviceBuffer<float> d_weight(weight);
        DeviceBuffer<uint16_t> d_y(y), d_out(large_t * h);
        // (T, E_loc): batched, one row at a time, batched for its many local rows.
        const std::pair<int64_t, int32_t> calls[] = {
            {small_t, kFewLocal}, {large_t, kFewLocal}, {large_t, kExperts}};
        for (const auto& [t_count, local] : calls) {
          std::vector<uint16_t> poisoned(large_t * h);
          poison(poisoned);
          d_out.upload(poisoned);
          ASSERT_EQ(cudaSuccess, detail::launch_finalize(d_y.as<__nv_bfloat16>() + y_offset,
                                                         weighted ? d_weight.get() : nullptr,
                                                         d_map.get(), t_count, k, kExperts, local,
                                                         h, d_out.as<__nv_bfloat16>(),
                                                         /*enable_pdl=*/false, nullptr));
          ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
          const std::vector<uint16_t> out = d_out.download();
          for (int64_t t = 0; t < large_t; ++t) {
            for (int64_t c = 0; c < h; ++c) {
              const uint16_t got = out[t * h + c];
              if (t >= t_count) {  // past the call's tokens: untouched
                ASSERT_EQ(got, poisoned[t * h + c])
                    << "T " << t_count << " E_loc " << local << " token " << t;
                continue;
              }
              float acc = 0.0f;
              for (int32_t j = 0; j < k; ++j) {
                const int32_t row = map[t * k + j];
                if (row < 0) continue;
                const float w = weighted ? weight[t * k + j] : 1.0f;
                acc = std::fma(w, detail::bf16_bits_to_float(y[y_offset + row * h + c]), acc);
              }
              ASSERT_EQ(got, detail::float_to_bf16_bits(acc))
                  << "T " << t_count << " E_loc " << local << " token " << t << " column " << c;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace fusedmoe::test
