// Host-side interface of the decode GEMMs: the same arguments and semantics as
// launch_gemm1_swiglu / launch_gemm2 (launch/grouped_gemm.h), built for a few rows per expert
// (decode_heuristics.h says when; kernels/sm90_decode_*.cuh say how). Either pair may compute
// any routing: rows beyond a chunk of 16 per expert re-read the expert's weights, so the
// prefill GEMMs are the faster choice there, never the only correct one.
// Extra requirement: the operands read with 16-byte loads, x and w1 (GEMM1), act and w2 (GEMM2),
// 16-byte aligned (cudaMalloc'd tensors are; act and y may be any bf16 address); else
// cudaErrorMisalignedAddress and nothing is launched.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch/grouped_gemm.h"

namespace fusedmoe::detail {

cudaError_t launch_decode_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                       const int32_t* gather_rows, int64_t hidden_size,
                                       int64_t intermediate_size, const __nv_bfloat16* w1,
                                       __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream,
                                       const GemmEpilogue& epilogue = {});

cudaError_t launch_decode_gemm2(const GroupedRows& rows, const __nv_bfloat16* act,
                                int64_t intermediate_size, int64_t hidden_size,
                                const __nv_bfloat16* w2, __nv_bfloat16* y, bool enable_pdl,
                                cudaStream_t stream, const GemmEpilogue& epilogue = {},
                                const int32_t* gather_rows = nullptr);

}  // namespace fusedmoe::detail
