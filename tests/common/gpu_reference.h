// A plain GPU reference of the operator after routing, for shapes too large for the CPU
// reference: per-expert cuBLAS GEMMs (cublasGemmEx) on the reference's routing and permutation
// (src/reference/), plus small SIMT kernels for the gather, the activation, the biases and
// finalize. It computes two results from the same bf16 inputs:
//   * design: the roundings of docs/DESIGN.md (act and y in bf16, fma chain in ascending k, bf16
//     output) - what run_reference computes, up to the GEMMs' summation order;
//   * truth:  fp32 GEMMs (bf16 inputs widened exactly) with no intermediate rounding and an fp64
//     weighted sum - the `ref` of docs/STYLE.md's tolerance rule.
// The expert MLP's options (GpuReferenceMlp: every activation with its per-expert parameters,
// expert biases, routing weights on the input) follow run_reference: the experts' input is
// bf16(x * w) when the weights go into the input (both results: that rounding is the operator's
// definition), GEMM1's fp32 output + gemm1_bias goes through src/activation.h's fp32 formulas
// (design: rounded to bf16; truth: not rounded; plain SwiGLU keeps the pinned silu(gate) * up,
// its truth in fp64), GEMM2's fp32 output + gemm2_bias is rounded to bf16 (design) or not
// (truth), and finalize weights by 1 when the weights went into the input.
// The test suite checks this reference itself against the CPU reference on small shapes.
// FUSEDMOE_TEST_GPU_REFERENCE=simt swaps cuBLAS for a plain SIMT GEMM (fp32 sums, one thread per
// output): scripts/sanitize.sh sets it for racecheck, synccheck and initcheck, under which
// cuBLAS's own sm90 kernels fail (H200: racecheck "failed to handle a hardware exception"
// inside cublasGemmEx; initcheck flags its split-K reduction's reads of its own workspace).
// Header-only; include from .cu tests only (it defines kernels).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "activation.h"
#include "common/gpu_buffers.h"
#include "fusedmoe/fusedmoe.h"
#include "reference/reference.h"

namespace fusedmoe::test {

struct GpuReferenceResult {
  std::vector<uint16_t> out_design;  // [T, H] bf16 bits
  std::vector<double> out_truth;     // [T, H]
  std::vector<uint16_t> y_design;    // [P, H] bf16 bits (only when asked for)
  std::vector<double> y_truth;       // [P, H]
};

// The expert MLP's options as gpu_reference reads them: MoeArguments' fields with DEVICE
// pointers. The default is plain SwiGLU without parameters or biases, weights applied at finalize.
struct GpuReferenceMlp : ref::ExpertMlp {  // the CPU reference's options, device pointers
  bool scales_on_input = false;             // use_routing_scales_on_input (K == 1)
};

// The options of a MoeArguments whose pointers are device pointers (e.g. the arguments of run()).
inline GpuReferenceMlp gpu_reference_mlp(const MoeArguments& device_args) {
  GpuReferenceMlp mlp;
  static_cast<ref::ExpertMlp&>(mlp) = ref::expert_mlp(device_args);
  mlp.scales_on_input = device_args.use_routing_scales_on_input;
  return mlp;
}

namespace gpu_ref_detail {

inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(what) + ": cuBLAS status " +
                             std::to_string(static_cast<int>(status)));
  }
}

__device__ __forceinline__ float widen(uint16_t bf16_bits) {
  return __uint_as_float(static_cast<uint32_t>(bf16_bits) << 16);
}
__device__ __forceinline__ float widen(float value) { return value; }

// c[p, j] = sum over kk of a[j, kk] * b[p, kk] in fp32, ascending kk: cublasGemmEx(OP_T, OP_N,
// m, n, k, a (lda = k), b (ldb = k), c (ldc = m)) as the reference calls it.
template <typename T>
__global__ void gemm_nt_simt_kernel(const T* a, const T* b, float* c, int64_t m, int64_t n,
                                    int64_t k) {
  const int64_t total = m * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t p = i / m, j = i % m;
    float acc = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) acc += widen(a[j * k + kk]) * widen(b[p * k + kk]);
    c[i] = acc;
  }
}

inline bool simt_gemms() {
  const char* choice = std::getenv("FUSEDMOE_TEST_GPU_REFERENCE");
  return choice != nullptr && std::strcmp(choice, "simt") == 0;
}

// The reference's GEMM, c [n, m] = b [n, k] . a [m, k]^T with fp32 output and accumulation; T is
// uint16_t (bf16 bits) or float.
template <typename T>
void gemm_nt(cublasHandle_t handle, const T* a, const T* b, float* c, int64_t m, int64_t n,
             int64_t k, const char* what) {
  if (simt_gemms()) {
    gemm_nt_simt_kernel<<<1024, 256>>>(a, b, c, m, n, k);
    if (cudaGetLastError() != cudaSuccess) throw std::runtime_error(std::string(what) + ": launch");
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType type = sizeof(T) == 2 ? CUDA_R_16BF : CUDA_R_32F;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m),
                            static_cast<int>(n), static_cast<int>(k), &alpha, a, type,
                            static_cast<int>(k), b, type, static_cast<int>(k), &beta, c, CUDA_R_32F,
                            static_cast<int>(m), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               what);
}

// out[row] = x[tokens[row]], or bf16(x * row_scale[row]) (fp32 product, rounded once: the
// routing weight on the input, as scale_input_reference) when row_scale is given.
__global__ void gather_kernel(const uint16_t* x, const int32_t* tokens, const float* row_scale,
                              int64_t rows, int64_t hidden_size, uint16_t* out) {
  const int64_t total = rows * hidden_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / hidden_size, h = i % hidden_size;
    const uint16_t value = x[static_cast<int64_t>(tokens[row]) * hidden_size + h];
    out[i] =
        row_scale == nullptr
            ? value
            : __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(widen(value), row_scale[row])));
  }
}

// Element `index` of an expert bias in bf16 or fp32, widened.
__device__ __forceinline__ float bias_at(const void* bias, DType dtype, int64_t index) {
  return dtype == DType::kFP32 ? static_cast<const float*>(bias)[index]
                               : widen(static_cast<const uint16_t*>(bias)[index]);
}

// values [rows, n] += bias[row_expert[row], :] (fp32 adds: GEMM1's output + gemm1_bias).
__global__ void add_bias_kernel(float* values, const int32_t* row_expert, const void* bias,
                                DType dtype, int64_t rows, int64_t n) {
  const int64_t total = rows * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / n, j = i % n;
    values[i] = __fadd_rn(values[i], bias_at(bias, dtype, row_expert[row] * n + j));
  }
}

// Plain SwiGLU: g [rows, 2I] fp32 -> act_design bf16 = bf16(silu(gate) * up), act_truth fp32
// from an fp64 silu (no rounding).
__global__ void swiglu_kernel(const float* g_design, const float* g_truth, int64_t rows,
                              int64_t inter, uint16_t* act_design, float* act_truth) {
  const int64_t total = rows * inter;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / inter, j = i % inter;
    const float up = g_design[row * 2 * inter + j], gate = g_design[row * 2 * inter + inter + j];
    const float silu = gate / (1.0f + expf(-gate));
    act_design[i] = __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(silu, up)));
    const double up_t = g_truth[row * 2 * inter + j];
    const double gate_t = g_truth[row * 2 * inter + inter + j];
    act_truth[i] = static_cast<float>(gate_t / (1.0 + exp(-gate_t)) * up_t);
  }
}

// Any other activation (src/activation.h's fp32 formulas, the expert's parameters): g [rows, n]
// with n = 2I (gated: up [0, I), gate [I, 2I)) or I -> act_design = bf16(a), act_truth = a.
__global__ void activation_kernel(const float* g, const int32_t* row_expert, int64_t rows,
                                  int64_t inter, Activation kind, const float* alpha,
                                  const float* beta, const float* clamp_limit, uint16_t* act_design,
                                  float* act_truth) {
  const bool gated = kind == Activation::kSwiglu || kind == Activation::kGeglu ||
                     kind == Activation::kSwigluStep || kind == Activation::kGegluTanh;
  const int64_t n = gated ? 2 * inter : inter;
  const int64_t total = rows * inter;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / inter, j = i % inter;
    const float* g_row = g + row * n;
    float a;
    if (gated) {
      const activation::ExpertParams params =
          activation::expert_params(kind, alpha, beta, clamp_limit, row_expert[row]);
      a = activation::gated(kind, g_row[inter + j], g_row[j], params);
    } else {
      a = activation::plain(kind, g_row[j]);
    }
    act_design[i] = __bfloat16_as_ushort(__float2bfloat16_rn(a));
    act_truth[i] = a;
  }
}

__global__ void bf16_to_fp32_kernel(const uint16_t* in, int64_t count, float* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
  }
}

// GEMM2's rows [rows, H]: y_design = bf16(y_acc + bias), y_truth += bias (fp32 adds; no bias:
// y_design = bf16(y_acc)).
__global__ void finish_rows_kernel(const float* y_acc, float* y_truth, const int32_t* row_expert,
                                   const void* bias, DType dtype, int64_t rows, int64_t hidden_size,
                                   uint16_t* y_design) {
  const int64_t total = rows * hidden_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    float value = y_acc[i];
    if (bias != nullptr) {
      const int64_t row = i / hidden_size, h = i % hidden_size;
      const float b = bias_at(bias, dtype, row_expert[row] * hidden_size + h);
      value = __fadd_rn(value, b);
      y_truth[i] = __fadd_rn(y_truth[i], b);
    }
    y_design[i] = __bfloat16_as_ushort(__float2bfloat16_rn(value));
  }
}

// unweighted: every weight 1 (the weights went into the input).
__global__ void finalize_kernel(const uint16_t* y_design, const float* y_truth,
                                const int32_t* permuted_idx, const float* weights, bool unweighted,
                                int64_t num_tokens, int32_t top_k, int64_t hidden_size,
                                uint16_t* out_design, double* out_truth) {
  const int64_t total = num_tokens * hidden_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t t = i / hidden_size, h = i % hidden_size;
    float acc = 0.0f;
    double truth = 0.0;
    for (int32_t k = 0; k < top_k; ++k) {
      const int32_t row = permuted_idx[t * top_k + k];
      if (row < 0) continue;
      const float w = unweighted ? 1.0f : weights[t * top_k + k];
      const int64_t at = static_cast<int64_t>(row) * hidden_size + h;
      acc = __fmaf_rn(w, __bfloat162float(__ushort_as_bfloat16(y_design[at])), acc);
      truth += static_cast<double>(w) * y_truth[at];
    }
    out_design[i] = __bfloat16_as_ushort(__float2bfloat16_rn(acc));
    out_truth[i] = truth;
  }
}

constexpr int kBlocks = 1024, kThreads = 256;

}  // namespace gpu_ref_detail

// d_x [T, H], d_w1 [E_loc, 2I, H] ([E_loc, I, H] for a non-gated activation), d_w2 [E_loc, H, I]:
// device bf16. routing/permutation: the reference's (host). with_rows: also return the permuted
// rows y (the do_finalize=false triple). cublas: a handle to use (the soak keeps one for
// thousands of calls); nullptr creates one for the call. mlp: the expert MLP's options (device
// pointers; the default is plain SwiGLU).
inline GpuReferenceResult gpu_reference(const MoeShape& shape, const uint16_t* d_x,
                                        const uint16_t* d_w1, const uint16_t* d_w2,
                                        const ref::Routing& routing,
                                        const ref::Permutation& permutation, bool with_rows,
                                        cublasHandle_t cublas = nullptr,
                                        const GpuReferenceMlp& mlp = {}) {
  using namespace gpu_ref_detail;
  const int64_t T = shape.num_tokens, H = shape.hidden_size, I = shape.intermediate_size;
  const int32_t K = shape.top_k;
  const int64_t P = permutation.num_local();
  const int64_t rows_alloc = std::max<int64_t>(P, 1);
  const int64_t N = ref::gemm1_rows(mlp.activation, I);  // GEMM1's output columns: 2I or I
  const bool plain_swiglu = mlp.activation == Activation::kSwiglu && mlp.alpha == nullptr &&
                            mlp.beta == nullptr && mlp.clamp_limit == nullptr;

  // Per permuted row: its token, its local expert and (weights on the input) its slot's weight.
  std::vector<int32_t> tokens(rows_alloc, 0), row_expert(rows_alloc, 0);
  std::vector<float> row_scale(rows_alloc, 1.0f);
  for (int64_t p = 0; p < P; ++p) {
    tokens[p] = permutation.permuted_slots[p] / K;
    row_scale[p] = routing.weights[permutation.permuted_slots[p]];
  }
  for (int32_t e = 0; e + 1 < static_cast<int32_t>(permutation.expert_offsets.size()); ++e) {
    for (int64_t p = permutation.expert_offsets[e]; p < permutation.expert_offsets[e + 1]; ++p) {
      row_expert[p] = e;
    }
  }
  DeviceArray<int32_t> d_tokens(tokens);
  DeviceArray<int32_t> d_row_expert(row_expert);
  DeviceArray<float> d_row_scale(mlp.scales_on_input ? row_scale : std::vector<float>{});
  DeviceArray<int32_t> d_map(permutation.expanded_idx_to_permuted_idx);
  DeviceArray<float> d_weights(routing.weights);
  DeviceArray<uint16_t> x_rows(rows_alloc * H);
  DeviceArray<float> g(rows_alloc * N);
  DeviceArray<uint16_t> act_design(rows_alloc * I);
  DeviceArray<float> act_truth(rows_alloc * I);
  DeviceArray<float> y_acc(rows_alloc * H);
  DeviceArray<uint16_t> y_design(rows_alloc * H);
  DeviceArray<float> y_truth(rows_alloc * H);
  DeviceArray<float> w2_fp32(H * I);
  // cuBLAS fills g, y_acc and y_truth for every row p < P; zeroing them first keeps initcheck
  // (scripts/sanitize.sh, which leaves cuBLAS's kernels uninstrumented) from reporting the reads
  // of those rows by the activation and finalize kernels as uninitialized.
  check_cuda(cudaMemset(g.get(), 0, rows_alloc * N * sizeof(float)), "cudaMemset g");
  check_cuda(cudaMemset(y_acc.get(), 0, rows_alloc * H * sizeof(float)), "cudaMemset y_acc");
  check_cuda(cudaMemset(y_truth.get(), 0, rows_alloc * H * sizeof(float)), "cudaMemset y_truth");

  cublasHandle_t handle = cublas;
  if (cublas == nullptr) check_cublas(cublasCreate(&handle), "cublasCreate");
  if (P > 0) {
    gather_kernel<<<kBlocks, kThreads>>>(
        d_x, d_tokens.get(), mlp.scales_on_input ? d_row_scale.get() : nullptr, P, H, x_rows.get());
    // g = x_rows . W1[e]^T per expert (fp32 out). bf16 x bf16 products are exact in fp32, so
    // the same g serves both results.
    for (int32_t e = 0; e + 1 < static_cast<int32_t>(permutation.expert_offsets.size()); ++e) {
      const int64_t begin = permutation.expert_offsets[e];
      const int64_t n = permutation.expert_offsets[e + 1] - begin;
      if (n == 0) continue;
      gemm_nt(handle, d_w1 + e * N * H, x_rows.get() + begin * H, g.get() + begin * N, N, n, H,
              "gemm1");
    }
    if (mlp.gemm1_bias != nullptr) {
      add_bias_kernel<<<kBlocks, kThreads>>>(g.get(), d_row_expert.get(), mlp.gemm1_bias,
                                             mlp.gemm1_bias_dtype, P, N);
    }
    if (plain_swiglu) {
      swiglu_kernel<<<kBlocks, kThreads>>>(g.get(), g.get(), P, I, act_design.get(),
                                           act_truth.get());
    } else {
      activation_kernel<<<kBlocks, kThreads>>>(g.get(), d_row_expert.get(), P, I, mlp.activation,
                                               mlp.alpha, mlp.beta, mlp.clamp_limit,
                                               act_design.get(), act_truth.get());
    }
    for (int32_t e = 0; e + 1 < static_cast<int32_t>(permutation.expert_offsets.size()); ++e) {
      const int64_t begin = permutation.expert_offsets[e];
      const int64_t n = permutation.expert_offsets[e + 1] - begin;
      if (n == 0) continue;
      const uint16_t* w2 = d_w2 + e * H * I;
      gemm_nt(handle, w2, act_design.get() + begin * I, y_acc.get() + begin * H, H, n, I,
              "gemm2 design");
      bf16_to_fp32_kernel<<<kBlocks, kThreads>>>(w2, H * I, w2_fp32.get());
      gemm_nt(handle, static_cast<const float*>(w2_fp32.get()),
              static_cast<const float*>(act_truth.get()) + begin * I, y_truth.get() + begin * H, H,
              n, I, "gemm2 truth");
    }
    finish_rows_kernel<<<kBlocks, kThreads>>>(y_acc.get(), y_truth.get(), d_row_expert.get(),
                                              mlp.gemm2_bias, mlp.gemm2_bias_dtype, P, H,
                                              y_design.get());
  }
  DeviceArray<uint16_t> out_design(std::max<int64_t>(T * H, 1));
  DeviceArray<double> out_truth(std::max<int64_t>(T * H, 1));
  finalize_kernel<<<kBlocks, kThreads>>>(y_design.get(), y_truth.get(), d_map.get(),
                                         d_weights.get(), mlp.scales_on_input, T, K, H,
                                         out_design.get(), out_truth.get());
  check_cuda(cudaGetLastError(), "gpu_reference kernels");
  check_cuda(cudaDeviceSynchronize(), "gpu_reference");
  if (cublas == nullptr) cublasDestroy(handle);

  GpuReferenceResult result;
  result.out_design = out_design.download();
  result.out_truth = out_truth.download();
  result.out_design.resize(T * H);
  result.out_truth.resize(T * H);
  if (with_rows) {
    result.y_design = y_design.download();
    result.y_design.resize(P * H);
    const std::vector<float> y = y_truth.download();
    result.y_truth.assign(y.begin(), y.begin() + P * H);
  }
  return result;
}

}  // namespace fusedmoe::test
