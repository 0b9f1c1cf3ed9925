// GPU tests of the grouped GEMMs (src/launch/grouped_gemm.h): GEMM1 + SwiGLU with gathered rows,
// and GEMM2, against an fp64-accumulating SIMT reference on the same bf16 inputs, by STYLE's
// tolerance rule. Ragged experts (0, 1, 63, 64, 65, 1000 rows), K and N tails (H, I = 8 * odd),
// many experts, poisoned outputs whose rows past the experts must stay untouched, garbage gather
// indices past the experts (must never be read), bitwise reruns.
// Set FUSEDMOE_GEMM_BENCH=1 to run the throughput experiment (GroupedGemmBench), which prints
// TFLOP/s beside cuBLAS on the same card; it is skipped otherwise.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "common/gpu_gemm_harness.h"
#include "common/host_data.h"
#include "common/tolerance.h"
#include "launch/grouped_gemm.h"

namespace fusedmoe::test {
namespace {

// ---- one case --------------------------------------------------------------------------------
struct GemmCase {
  const char* name;
  int64_t hidden;
  int64_t inter;
  std::vector<int32_t> rows_per_expert;
  int64_t extra_rows;  // poisoned rows past the experts (max_rows = total + extra_rows)
  int64_t num_tokens;
  bool enable_pdl;
  int64_t output_offset = 0;  // elements: 1 = act and y start 2 bytes past a 16-byte boundary
};

void run_case(const GemmCase& c) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(std::string(c.name) + " seed " + std::to_string(seed));
  Rng rng(seed);
  const int32_t num_experts = static_cast<int32_t>(c.rows_per_expert.size());
  std::vector<int32_t> offsets(num_experts + 1, 0);
  for (int32_t e = 0; e < num_experts; ++e) offsets[e + 1] = offsets[e] + c.rows_per_expert[e];
  const int64_t total = offsets[num_experts];
  const int64_t max_rows = total + c.extra_rows;
  const int64_t h = c.hidden, inter = c.inter;

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
  const int64_t off = c.output_offset;
  DeviceBuffer<uint16_t> d_act(off + max_rows * inter), d_y(off + max_rows * h);
  __nv_bfloat16* act_out = d_act.as<__nv_bfloat16>() + off;
  __nv_bfloat16* y_out = d_y.as<__nv_bfloat16>() + off;
  DeviceBuffer<double> d_ref1(std::max<int64_t>(total * inter, 1));
  DeviceBuffer<double> d_ref2(std::max<int64_t>(total * h, 1));
  ASSERT_NE(d_y.get(), nullptr);

  std::vector<uint16_t> poisoned_act(off + max_rows * inter), poisoned_y(off + max_rows * h);
  poison(poisoned_act);
  poison(poisoned_y);
  d_act.upload(poisoned_act);
  d_y.upload(poisoned_y);

  detail::GroupedRows rows;
  rows.expert_offsets = d_offsets.get();
  rows.num_experts = num_experts;
  rows.max_rows = max_rows;
  FUSEDMOE_ASSERT_CUDA(detail::launch_gemm1_swiglu(
      rows, d_x.as<__nv_bfloat16>(), d_gather.get(), h, inter, d_w1.as<__nv_bfloat16>(),
      act_out, c.enable_pdl, nullptr));
  FUSEDMOE_ASSERT_CUDA(detail::launch_gemm2(rows, d_act_in.as<__nv_bfloat16>(), inter, h,
                                            d_w2.as<__nv_bfloat16>(), y_out, c.enable_pdl,
                                            nullptr));
  FUSEDMOE_ASSERT_CUDA(cudaDeviceSynchronize());
  // The outputs without the offset (the skipped leading elements must keep their poison too).
  auto download_output = [&](const DeviceBuffer<uint16_t>& buffer) {
    std::vector<uint16_t> all = buffer.download();
    for (int64_t i = 0; i < off; ++i) EXPECT_EQ(all[i], kPoisonBf16) << "written before the output";
    return std::vector<uint16_t>(all.begin() + off, all.end());
  };
  const std::vector<uint16_t> act = download_output(d_act);
  const std::vector<uint16_t> y = download_output(d_y);

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
    EXPECT_TRUE(close_by_bf16_rule(rows_as_double(act, total, inter), ref1,
                                   round_all_to_bf16(ref1)))
        << "gemm1+swiglu";
    EXPECT_TRUE(close_by_bf16_rule(rows_as_double(y, total, h), ref2, round_all_to_bf16(ref2)))
        << "gemm2";
  }
  expect_rows_poisoned(act, total, inter, "gemm1+swiglu");
  expect_rows_poisoned(y, total, h, "gemm2");

  // Deterministic: a rerun into freshly poisoned outputs gives the same bits, here with tiles
  // claimed dynamically (the first run took a static stride), and the claim counters are zero
  // again after both launches.
  d_act.upload(poisoned_act);
  d_y.upload(poisoned_y);
  DeviceBuffer<int32_t> d_counters(std::vector<int32_t>{0, 0});
  rows.tile_counters = d_counters.get();
  FUSEDMOE_ASSERT_CUDA(detail::launch_gemm1_swiglu(
      rows, d_x.as<__nv_bfloat16>(), d_gather.get(), h, inter, d_w1.as<__nv_bfloat16>(),
      act_out, c.enable_pdl, nullptr));
  FUSEDMOE_ASSERT_CUDA(detail::launch_gemm2(rows, d_act_in.as<__nv_bfloat16>(), inter, h,
                                            d_w2.as<__nv_bfloat16>(), y_out, c.enable_pdl,
                                            nullptr));
  FUSEDMOE_ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(first_difference(act, download_output(d_act)), -1) << "gemm1 rerun differs";
  EXPECT_EQ(first_difference(y, download_output(d_y)), -1) << "gemm2 rerun differs";
  EXPECT_EQ(d_counters.download(), (std::vector<int32_t>{0, 0})) << "tile counters not reset";
}

class GroupedGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!has_sm90_gpu()) GTEST_SKIP() << "needs an sm_90 GPU";
  }
};

TEST_F(GroupedGemm, RaggedExpertsWithKAndNTails) {
  // H = 296 = 4 * 64 + 40 (K tail of GEMM1, N tail of GEMM2), I = 200 = 128 + 72 (N tail of
  // GEMM1, K tail of GEMM2); experts of 0, 1, 63, 64, 65, 1000 and 129 rows.
  run_case({"ragged", 296, 200, {0, 1, 63, 64, 65, 1000, 129, 0}, 37, 777, false});
}

TEST_F(GroupedGemm, OutputsNotSixteenByteAligned) {
  // act and y 2 bytes past a 16-byte boundary (e.g. a caller's gemm2_output view): the epilogue
  // falls back from 16-byte to 2-byte stores.
  run_case({"misaligned outputs", 296, 200, {0, 1, 63, 64, 65, 1000, 129, 0}, 37, 777, false, 1});
}

TEST_F(GroupedGemm, ModelShape2048x768WithPdl) {
  run_case({"2048x768", 2048, 768, {300, 0, 700, 129}, 5, 600, true});
}

TEST_F(GroupedGemm, Shape2880NotATileMultiple) {
  run_case({"2880x2880", 2880, 2880, {250, 131}, 3, 300, false});
}

TEST_F(GroupedGemm, ManySmallExpertsTinyIntermediate) {
  // I = 8: one N block with 120 masked columns; up box reads past I into gate rows.
  std::vector<int32_t> sizes(300);
  Rng rng(std::random_device{}());
  for (int32_t& s : sizes) s = rng.integer(0, 20);
  run_case({"300 experts, I=8", 136, 8, sizes, 11, 50, false});
}

TEST_F(GroupedGemm, ThousandExpertsFewRows) {
  std::vector<int32_t> sizes(1024);
  Rng rng(std::random_device{}());
  for (int32_t& s : sizes) s = rng.integer(0, 3);
  run_case({"1024 experts", 64, 72, sizes, 1, 40, false});
}

TEST_F(GroupedGemm, OnlyTheLastOfAThousandExperts) {
  // The scheduler's warp-wide walk crosses 31 all-empty groups of 32 experts, then finds the
  // rows in a last group that is only partly inside E_loc (1000 = 31 * 32 + 8).
  std::vector<int32_t> sizes(1000, 0);
  sizes[999] = 300;
  run_case({"last of 1000 experts", 64, 136, sizes, 9, 100, false});
}

TEST_F(GroupedGemm, AllRowsOnOneExpertOfMany) {
  std::vector<int32_t> sizes(16, 0);
  sizes[9] = 2000;
  run_case({"one busy expert", 512, 384, sizes, 2100, 2000, false});
}

TEST_F(GroupedGemm, NoRowsAtAll) {
  run_case({"no rows", 128, 128, {0, 0, 0}, 17, 4, false});
}

// ---- throughput experiment (FUSEDMOE_GEMM_BENCH=1) ---------------------------------------------
template <typename Launch>
double median_ms(Launch&& launch, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 2; ++i) launch();
  std::vector<float> times;
  for (int i = 0; i < reps; ++i) {
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
  return times[times.size() / 2];
}

// C[m, n] = A[m, :] . B[n, :] (both K-major), bf16 in and out, fp32 accumulation.
void cublas_nt(cublasHandle_t handle, const void* a, const void* b, void* c, int64_t m, int64_t n,
               int64_t k) {
  const float alpha = 1.0f, beta = 0.0f;
  cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b, CUDA_R_16BF,
               int(k), a, CUDA_R_16BF, int(k), &beta, c, CUDA_R_16BF, int(n), CUBLAS_COMPUTE_32F,
               CUBLAS_GEMM_DEFAULT);
}

TEST(GroupedGemmBench, Throughput) {
  if (std::getenv("FUSEDMOE_GEMM_BENCH") == nullptr) GTEST_SKIP() << "set FUSEDMOE_GEMM_BENCH=1";
  if (!has_sm90_gpu()) GTEST_SKIP() << "needs an sm_90 GPU";
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  {  // cuBLAS dense peak on this card
    const int64_t n = 8192;
    DeviceBuffer<uint16_t> a(n * n), b(n * n), c(n * n);
    fill_random_bf16<<<1024, 256>>>(a.as<__nv_bfloat16>(), n * n, 1, 1.0f);
    fill_random_bf16<<<1024, 256>>>(b.as<__nv_bfloat16>(), n * n, 2, 1.0f);
    const double ms = median_ms([&] { cublas_nt(handle, a.get(), b.get(), c.get(), n, n, n); }, 10);
    std::printf("cuBLAS dense 8192^3: %.3f ms, %.1f TFLOP/s\n", ms, 2.0 * n * n * n / ms / 1e9);
  }

  // active_stride: only experts e % active_stride == 0 get rows (decode-like sparse routing).
  struct BenchCase { int64_t num_experts, rows_per_expert, hidden, inter, active_stride; };
  for (const BenchCase bc :
       {BenchCase{128, 256, 4096, 1536, 1}, BenchCase{8, 4096, 4096, 14336, 1},
        BenchCase{256, 64, 7168, 2048, 1}, BenchCase{16, 2048, 5120, 8192, 1},
        BenchCase{1024, 8, 2048, 768, 8}}) {
    const int64_t h = bc.hidden, inter = bc.inter;
    std::vector<int32_t> offsets(bc.num_experts + 1, 0);
    for (int64_t e = 0; e < bc.num_experts; ++e) {
      offsets[e + 1] = offsets[e] + int32_t(e % bc.active_stride == 0 ? bc.rows_per_expert : 0);
    }
    const int64_t rows_total = offsets[bc.num_experts];
    std::vector<int32_t> gather(rows_total);
    Rng rng(7);
    for (int32_t& g : gather) g = rng.integer(0, int32_t(rows_total) - 1);
    DeviceBuffer<int32_t> d_offsets(offsets), d_gather(gather);
    DeviceBuffer<uint16_t> x(rows_total * h), w1(bc.num_experts * 2 * inter * h),
        w2(bc.num_experts * h * inter), act(rows_total * inter), y(rows_total * h),
        dense_out(rows_total * std::max(2 * inter, h));
    ASSERT_NE(dense_out.get(), nullptr);
    fill_random_bf16<<<1024, 256>>>(x.as<__nv_bfloat16>(), rows_total * h, 3, 1.0f);
    fill_random_bf16<<<1024, 256>>>(w1.as<__nv_bfloat16>(), bc.num_experts * 2 * inter * h, 4,
                                    0.05f);
    fill_random_bf16<<<1024, 256>>>(w2.as<__nv_bfloat16>(), bc.num_experts * h * inter, 5, 0.05f);
    detail::GroupedRows rows{d_offsets.get(), int32_t(bc.num_experts), rows_total};

    const double flops1 = 2.0 * rows_total * 2 * inter * h;
    const double flops2 = 2.0 * rows_total * h * inter;
    auto ours1 = [&] {
      detail::launch_gemm1_swiglu(rows, x.as<__nv_bfloat16>(), d_gather.get(), h, inter,
                                  w1.as<__nv_bfloat16>(), act.as<__nv_bfloat16>(), false, nullptr);
    };
    auto ours2 = [&] {
      detail::launch_gemm2(rows, act.as<__nv_bfloat16>(), inter, h, w2.as<__nv_bfloat16>(),
                           y.as<__nv_bfloat16>(), false, nullptr);
    };
    // Same FLOPs as one dense GEMM (all rows against expert 0's weights): cuBLAS's ceiling.
    auto dense1 = [&] {
      cublas_nt(handle, x.get(), w1.get(), dense_out.get(), rows_total, 2 * inter, h);
    };
    auto dense2 = [&] {
      cublas_nt(handle, act.get(), w2.get(), dense_out.get(), rows_total, h, inter);
    };
    // Interleaved rounds, median of the rounds' medians: the card's clock drifts with its
    // temperature by ~10 %, and ours and cuBLAS should see the same clocks.
    std::vector<double> t1, t2, d1, d2;
    for (int round = 0; round < 3; ++round) {
      t1.push_back(median_ms(ours1, 7));
      d1.push_back(median_ms(dense1, 7));
      t2.push_back(median_ms(ours2, 7));
      d2.push_back(median_ms(dense2, 7));
    }
    for (auto* v : {&t1, &t2, &d1, &d2}) std::sort(v->begin(), v->end());
    const double ms1 = t1[1], ms2 = t2[1], dense_ms1 = d1[1], dense_ms2 = d2[1];
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::printf(
        "E=%lld x %lld rows (1 in %lld active), H=%lld I=%lld | gemm1+swiglu %.3f ms %.1f TFLOP/s = %.0f %% of "
        "cuBLAS dense same shape (%.1f) | gemm2 %.3f ms %.1f TFLOP/s = %.0f %% of cuBLAS (%.1f)\n",
        (long long)bc.num_experts, (long long)bc.rows_per_expert, (long long)bc.active_stride,
        (long long)h, (long long)inter, ms1, flops1 / ms1 / 1e9, 100.0 * dense_ms1 / ms1, flops1 / dense_ms1 / 1e9, ms2,
        flops2 / ms2 / 1e9, 100.0 * dense_ms2 / ms2, flops2 / dense_ms2 / 1e9);
  }
  cublasDestroy(handle);
}

}  // namespace
}  // namespace fusedmoe::test
