// Host-side interface of the FP8 block-scale pipeline's kernels (src/moe.cu calls these; the
// kernels are kernels/sm90_quantize_fp8.cuh and kernels/sm90_gemm_fp8.cuh, docs/fp8.md).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "launch/gemm_epilogue.h"
#include "launch/grouped_gemm.h"

namespace fusedmoe::detail {

// codes [rows, cols] e4m3 and scales [cols / 128, scale_stride] from bf16 in [rows, cols];
// rows at or past *num_rows_device (when given) are skipped. cols a multiple of 128.
// trigger_at_start: the next kernel may launch as this one starts (a decode GEMM next), else as
// it ends (kernels/sm90_quantize_fp8.cuh).
cudaError_t launch_quantize_fp8(const __nv_bfloat16* in, int64_t rows,
                                const int32_t* num_rows_device, int64_t cols, uint8_t* codes,
                                float* scales, int64_t scale_stride, bool trigger_at_start,
                                bool enable_pdl, cudaStream_t stream);

// Whether launch_decode_gemm2_fp8 over out_cols columns takes its early lookup (finds its expert
// and issues its first weights before its griddepcontrol.wait).
bool decode_fp8_gemm2_takes_early_lookup(const GroupedRows& rows, int64_t out_cols);

// An e4m3 operand A with its row scales: a [*, k], scale of row r in K block b at
// scale[b * scale_stride + r]; row(p) = gather_rows[p] when given, else p. Without gather_rows
// the grouped kernels load A by TMA in tiles of 128 rows, so a must hold GroupedRows::max_rows
// rows (rows past an expert's are read, never stored).
struct Fp8A {
  const uint8_t* a = nullptr;
  const float* scale = nullptr;
  int64_t scale_stride = 0;
  const int32_t* gather_rows = nullptr;
};

// The rows of `in` in gathered order: codes row p (cols bytes) and its scales (scales
// [cols / 128, rows]) are in's row in.gather_rows[p], for p < *num_rows_device (rows past it are
// skipped). The prefill GEMM1's x in expert order, which it then loads by TMA.
cudaError_t launch_permute_fp8_rows(const Fp8A& in, int64_t rows, const int32_t* num_rows_device,
                                   int64_t cols, uint8_t* codes, float* scales, bool enable_pdl,
                                   cudaStream_t stream);

// An e4m3 weight [E_loc, n, k] with block scales [E_loc, n / 128, k / 128].
struct Fp8B {
  const uint8_t* w = nullptr;
  const float* scale = nullptr;
};

// GEMM1 with a gated activation, its output quantised as GEMM2 reads it: act codes
// [max_rows, I] e4m3 (16-byte aligned) and scales [I / 128, act_scale_stride] from A = x (k = H)
// and w1 [E_loc, 2I, H], each row's 128-column group by launch_quantize_fp8's rule, bitwise (the
// bf16 activation it would have written, quantised); `epilogue` has the activation (plain: SwiGLU)
// and bias. I must be a multiple of 128 (else cudaErrorInvalidValue, nothing launched).
cudaError_t launch_gemm1_fp8(const GroupedRows& rows, const Fp8A& x, int64_t hidden_size,
                             int64_t intermediate_size, const Fp8B& w1, uint8_t* act_codes,
                             float* act_scales, int64_t act_scale_stride,
                             const GemmEpilogue& epilogue, bool enable_pdl, cudaStream_t stream);

// GEMM2 (and a non-gated GEMM1): y [max_rows, n] bf16 from A (k columns) and w [E_loc, n, k];
// `epilogue`: bias, and a non-gated activation when has_activation.
cudaError_t launch_gemm2_fp8(const GroupedRows& rows, const Fp8A& a, int64_t k, int64_t n,
                             const Fp8B& w, __nv_bfloat16* y, const GemmEpilogue& epilogue,
                             bool enable_pdl, cudaStream_t stream);

// The decode forms of both (kernels/sm90_decode_gemm_fp8.cuh): the same arguments and results
// (but GEMM1's act is bf16, for launch_quantize_fp8), built for a few rows per expert (the weights are streamed once per 16 rows of an expert);
// decode_heuristics.h says when. x / a and the weights must be 16-byte aligned, else
// cudaErrorMisalignedAddress and nothing is launched.
cudaError_t launch_decode_gemm1_fp8(const GroupedRows& rows, const Fp8A& x, int64_t hidden_size,
                                    int64_t intermediate_size, const Fp8B& w1,
                                    __nv_bfloat16* act, const GemmEpilogue& epilogue,
                                    bool enable_pdl, cudaStream_t stream);
cudaError_t launch_decode_gemm2_fp8(const GroupedRows& rows, const Fp8A& a, int64_t k, int64_t n,
                                    const Fp8B& w, __nv_bfloat16* y,
                                    const GemmEpilogue& epilogue, bool enable_pdl,
                                    cudaStream_t stream);

}  // namespace fusedmoe::detail
