// Host-side interface of the two grouped GEMMs of the pipeline (src/moe.cu calls these).
//
// Rows of both GEMMs are the permuted local slots p in [0, max_rows): expert-sorted, so the rows
// of local expert e are [expert_offsets[e], expert_offsets[e + 1]). expert_offsets lives on the
// device (the counts depend on routing data), so tile scheduling is device-side; the host only
// knows the upper bound max_rows (= T * K). Rows at or past expert_offsets[num_experts] are not
// read or written.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "launch/gemm_epilogue.h"

namespace fusedmoe::detail {

struct GroupedRows {
  const int32_t* expert_offsets = nullptr;  // device [num_experts + 1], ascending, [0] == 0
  int32_t num_experts = 0;                  // E_loc
  int64_t max_rows = 0;                     // host-known bound on expert_offsets[num_experts]
  // Optional device int32[2], zero before a launch; every launch leaves them zero. Given, CTAs
  // claim tiles dynamically, in tile order, as they become free, so the tiles in flight stay
  // neighbours that share their weight block through L2 even when tile times differ; nullptr: a
  // static stride. Launches sharing the counters must not run concurrently.
  int32_t* tile_counters = nullptr;
  // Optional device int32[max_rows] with top_k: the routing's local expert id per slot (E_loc:
  // non-local), slot = token * top_k + k, from which the sort derived expert_offsets and
  // gather_rows. Given, the decode GEMM1 may start from them while the sort still runs
  // (decode_heuristics.h: use_decode_early_start); the results are the same.
  const int32_t* slot_key = nullptr;
  int32_t top_k = 0;
};

// GEMM1 + a gated activation, rows of x gathered on the fly:
//   g[p, :] = x[gather_rows[p], :] . w1[e]^T            (fp32 accumulation; g is [2I])
//   act[p, j] = bf16( silu(g[p, I + j]) * g[p, j] )     (up = rows [0, I) of w1, gate = [I, 2I))
// or, with a general `epilogue` (its activation gated), its bias and activation instead.
// x: [T, H] bf16; gather_rows: device [max_rows] int32; w1: [E_loc, 2I, H]; act: [max_rows, I].
cudaError_t launch_gemm1_swiglu(const GroupedRows& rows, const __nv_bfloat16* x,
                                const int32_t* gather_rows, int64_t hidden_size,
                                int64_t intermediate_size, const __nv_bfloat16* w1,
                                __nv_bfloat16* act, bool enable_pdl, cudaStream_t stream,
                                const GemmEpilogue& epilogue = {});

// GEMM2: y[p, h] = bf16( act[row(p), :] . w2[e][h, :] )   (fp32 accumulation), row(p) =
// gather_rows[p] when given, else p; with a general `epilogue`, its bias (and activation) added
// before the rounding. act: [*, I] bf16; w2: [E_loc, H, I]; y: [max_rows, H] bf16. The pipeline
// also runs a non-gated GEMM1 through it: act = x, gather_rows, I = H, H = I, w2 = w1, y = act.
cudaError_t launch_gemm2(const GroupedRows& rows, const __nv_bfloat16* act,
                         int64_t intermediate_size, int64_t hidden_size,
                         const __nv_bfloat16* w2, __nv_bfloat16* y, bool enable_pdl,
                         cudaStream_t stream, const GemmEpilogue& epilogue = {},
                         const int32_t* gather_rows = nullptr);

}  // namespace fusedmoe::detail
