// Finalize: the weighted sum of each token's expert outputs (SPEC math step 4, DESIGN "Numerics").
//
//   y [T * K, H] bf16 (expert-sorted rows), slot_weight [T * K] fp32, permuted_idx [T * K]
//   ->  out [T, H] bf16: out[t] = bf16(acc), acc = 0; for k ascending, local slots only:
//       acc = fmaf(w[t*K+k], float(y[permuted_idx[t*K+k]]), acc)   (fp32)
//
// An explicit fma chain in ascending k, exactly the CPU reference's (src/reference/reference.h);
// with bf16 weights the product is exact, so a caller reducing the do_finalize=false triple
// with mul + add gets the same bits. A token with no local slot gets a zero row. kWeighted false:
// every weight is 1 (use_routing_scales_on_input, where the weights scaled the input instead).
// Grid: (T, column blocks); each thread owns kVec consecutive columns (16-byte accesses when
// kVec == 8). The slot table of the token (K <= 32 entries) is staged in shared memory.
// Limiter: HBM (reads K rows of y per token, writes one row); at small T the latency of those
// reads. kLoadBatch rows' loads are issued together (8: 101 registers, 4 CTAs per SM) at small T
// and where a token has many local rows; else one at a time (32 registers, 16 CTAs per SM), four
// times the threads in flight (decode_heuristics.h: finalize_load_batch).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::detail {

struct FinalizeConfig {
  static constexpr int kThreads = 128;
  static_assert(kThreads >= kMaxTopK, "one thread stages one slot of the token");
};

template <int kVec>
struct alignas(kVec * 2) Bf16Vec {
  __nv_bfloat16 value[kVec];
};

// kWeighted false: every weight is 1 and slot_weight is not read (routing weights on the input).
// kLoadBatch: rows of y loaded before their fmas (registers: kLoadBatch x 16 B); the sums are the
// same bits for any batch.
template <int kVec, bool kWeighted, int kLoadBatch>
__global__ void __launch_bounds__(FinalizeConfig::kThreads)
    finalize_kernel(const __nv_bfloat16* y, const float* slot_weight, const int32_t* permuted_idx,
                    int32_t top_k, int64_t hidden_size, __nv_bfloat16* output) {
  static_assert(kVec == 1 || kVec == 8, "scalar or 16-byte columns");
  static_assert(kLoadBatch >= 1, "at least one row per batch");
  using Vec = Bf16Vec<kVec>;
  __shared__ int32_t smem_row[kMaxTopK];   // (K): row of y, or -1
  __shared__ float smem_weight[kMaxTopK];  // (K)

  // PDL: y comes from GEMM2.
  cudaGridDependencySynchronize();

  const int64_t token = blockIdx.x;
  if (threadIdx.x < top_k) {
    const int64_t slot = token * top_k + threadIdx.x;
    smem_row[threadIdx.x] = permuted_idx[slot];
    smem_weight[threadIdx.x] = kWeighted ? slot_weight[slot] : 1.0f;
  }
  __syncthreads();

  const int64_t column = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * kVec;
  if (column >= hidden_size) return;

  float acc[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) acc[i] = 0.0f;
  // kLoadBatch rows' loads are issued before the first of their fmas, so that a token's K rows
  // cost one L2 round trip per batch instead of one per row; the fma chain keeps ascending k.
  for (int k0 = 0; k0 < top_k; k0 += kLoadBatch) {
    Vec in[kLoadBatch];
    int32_t row[kLoadBatch];
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) {
      row[j] = k0 + j < top_k ? smem_row[k0 + j] : -1;
      if (row[j] >= 0) {
        in[j] =
            *reinterpret_cast<const Vec*>(y + static_cast<int64_t>(row[j]) * hidden_size + column);
      }
    }
#pragma unroll
    for (int j = 0; j < kLoadBatch; ++j) {
      if (row[j] < 0) continue;
      const float weight = smem_weight[k0 + j];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        acc[i] = __fmaf_rn(weight, __bfloat162float(in[j].value[i]), acc[i]);
      }
    }
  }
  Vec result;
#pragma unroll
  for (int i = 0; i < kVec; ++i) result.value[i] = __float2bfloat16_rn(acc[i]);
  *reinterpret_cast<Vec*>(output + token * hidden_size + column) = result;
}

}  // namespace fusedmoe::detail
