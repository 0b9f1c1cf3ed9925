// Shared pieces of the two decode GEMMs (sm90_decode_gemm1_swiglu.cuh, sm90_decode_gemm2.cuh):
// the config, the lookup of a CTA's expert, the warp mainloop and the cross-warp reduction.
//
// Decode (few rows per expert) is bound by reading each hit expert's weights once, so the weights
// are the big operand and the expert's rows the small one: a CTA owns kRowsM = 32 weight rows of
// one expert (an "M slice") and streams them with 16-byte loads straight into mma.sync A
// fragments (weights as M = 16, tokens as N = 8: the swapped-operand GEMM on warp-level tensor
// cores, no smem staging). The 4 (or 8) warps split K and reduce through smem in a fixed order.
//
// The K permutation that makes both operands 16-byte loads: lane (g = lane / 4, t = lane % 4)
// loads 8 consecutive k at kb + 8 t of weight rows g and g + 8 and of the activation row of
// token g; k-step s of the m16n8k16 uses words {2s, 2s + 1} of each load as the fragment's
// (k = 2t..2t+1, 2t+8..2t+9). That maps logical k of the 32-block onto physical k bijectively,
// the same map for A and B, so the dot products are unchanged (only the fp32 summation order
// differs from a plain loop, and it is fixed: deterministic).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "device/decode_ptx.cuh"

namespace fusedmoe::kernels {

// The tile, the same for both warp counts: kRowsM weight rows per CTA, chunks of kChunkRows
// expert rows, kUnroll 32-wide k blocks per warp iteration, kStages - 1 iterations in flight.
// Measured on an H200 (bench/NOTES.md, "Decode GEMMs (issue 6)"): 16-row chunks beat 32 (fewer
// registers, ~10 % more bandwidth at <= 16 rows); a deeper register ring (kStages 3-4) or
// kUnroll 1 did not help; 64 rows per CTA lost 5-15 %.
struct DecodeTile {
  static constexpr int kTilesM = 2;               // m16 tiles per CTA
  static constexpr int kRowsM = 16 * kTilesM;     // weight rows per CTA
  static constexpr int kNTiles = 2;               // n8 tiles per row chunk
  static constexpr int kChunkRows = 8 * kNTiles;  // expert rows per pass over the weights
  static constexpr int kUnroll = 2;               // 32-wide k blocks per warp iteration
  static constexpr int kStages = 2;               // warp iterations of weights in flight + 1
  static constexpr int kWarpK = 32 * kUnroll;     // k per warp iteration
  static constexpr int kAccPerLane = kTilesM * kNTiles * 4;
  static_assert(kTilesM >= 1 && kNTiles >= 1 && kUnroll >= 1, "non-empty tiles");
  static_assert(kStages >= 2, "at least the next iteration's weights load during this one's math");
  static_assert(kWarpK % 32 == 0, "a lane loads 8 of every 32 k: K % 8 == 0 keeps loads whole");
};

// kWarps warps split K: 4 by default, 8 when the grid has too few CTAs to fill the SMs
// (decode_heuristics.h: decode_warps_per_cta).
template <int kWarps_>
struct DecodeGemmConfig : DecodeTile {
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kCtaK = kWarpK * kWarps;  // k per CTA iteration (warps interleave)
  // 16 warps per SM cap registers at 128 per thread: 16 warps x 32 lanes x 128 B of weights in
  // flight = 64 KiB per SM, ~2 us of one SM's HBM share (Little's law).
  static constexpr int kMinCtasPerSm = 16 / kWarps;
  static_assert(kWarps >= 1 && kWarps <= 16 && 16 % kWarps == 0, "16 warps per SM in whole CTAs");
};

template <class Config>
struct DecodeSharedStorage {
  // (kWarps - 1, kAccPerLane, 32): partial sums of warps 1.. for warp 0 to add in order
  float partial[Config::kWarps - 1][Config::kAccPerLane][32];
  int32_t warp_count[Config::kWarps];  // non-empty experts per warp's range
  int32_t expert;                      // the CTA's expert, or -1
};

// The slot-th non-empty expert (experts with expert_offsets[e + 1] > expert_offsets[e], in
// ascending e), or -1 when fewer are non-empty. All threads call it; all get the answer. One
// round of loads: thread i scans the experts [i * per, (i + 1) * per), per = ceil(E / threads).
template <class Config>
__device__ __forceinline__ int32_t find_nonempty_expert(const int32_t* expert_offsets,
                                                        int32_t num_experts, int32_t slot,
                                                        DecodeSharedStorage<Config>& smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int32_t per = (num_experts + Config::kThreads - 1) / Config::kThreads;
  const int32_t begin = min(int32_t(threadIdx.x) * per, num_experts);
  const int32_t end = min(begin + per, num_experts);
  int32_t count = 0;
  if (begin < end) {
    int32_t prev = expert_offsets[begin];
#pragma unroll 8
    for (int32_t e = begin; e < end; ++e) {
      const int32_t next = expert_offsets[e + 1];
      count += next > prev;
      prev = next;
    }
  }
  int32_t inclusive = count;  // inclusive scan over the warp, then over warps
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int32_t v = __shfl_up_sync(0xFFFFFFFFu, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  if (lane == 31) smem.warp_count[warp] = inclusive;
  if (threadIdx.x == 0) smem.expert = -1;
  __syncthreads();
  for (int w = 0; w < warp; ++w) inclusive += smem.warp_count[w];
  const int32_t exclusive = inclusive - count;
  if (slot >= exclusive && slot < inclusive) {  // exactly one thread: walk its range again
    int32_t remaining = slot - exclusive;
    int32_t prev = expert_offsets[begin];
    for (int32_t e = begin; e < end; ++e) {
      const int32_t next = expert_offsets[e + 1];
      if (next > prev && remaining-- == 0) {
        smem.expert = e;
        break;
      }
      prev = next;
    }
  }
  __syncthreads();
  return smem.expert;
}

// One warp's share of K for a (kRowsM weight rows) x (kChunkRows expert rows) block:
//   acc[m][n][v] += sum over the warp's k of W[row(m, v)][k] * B[token(n, v)][k]
// with row(m, v) = tile m's row g (v < 2) or g + 8 (v >= 2) and token(n, v) = 8 n + 2 t + v % 2.
// w_row[m][h]: this lane's weight row (h = 0: fragment row g, h = 1: row g + 8), valid when
// w_ok[m][h]; b_row[n]: the lane's activation row (token 8 n + g), valid when b_ok[n]. Invalid
// rows and k >= K read as zeros. n_active (warp-uniform): n-tiles with any valid row.
// The warp takes the k blocks warp * kWarpK + i * kCtaK; the weights of the next kStages - 1
// blocks load during the current one's math, so each lane keeps (kStages - 1) x kUnroll x
// kTilesM x 2 16-byte loads of weights in flight.
template <class Config>
__device__ __forceinline__ void decode_warp_mainloop(
    const __nv_bfloat16* const (&w_row)[DecodeTile::kTilesM][2],
    const bool (&w_ok)[DecodeTile::kTilesM][2],
    const __nv_bfloat16* const (&b_row)[DecodeTile::kNTiles],
    const bool (&b_ok)[DecodeTile::kNTiles], int n_active, int64_t k_total,
    float (&acc)[DecodeTile::kTilesM][DecodeTile::kNTiles][4]) {
  constexpr int kTilesM = Config::kTilesM, kNTiles = Config::kNTiles, kUnroll = Config::kUnroll;
  const int warp = threadIdx.x / 32, t = threadIdx.x % 4;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  // (kStages, kUnroll, kTilesM, 2 halves) 16-byte weight loads, 8 bf16 of k each: a ring in
  // registers, stage s of the unrolled loop below reads a[s] and refills a[s - 1].
  uint4 a[Config::kStages][kUnroll][kTilesM][2];
  auto load_a = [&](uint4(&dst)[kUnroll][kTilesM][2], int64_t kb) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = kb + 32 * u + 8 * t;
#pragma unroll
      for (int m = 0; m < kTilesM; ++m) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          dst[u][m][h] = (w_ok[m][h] && k < k_total) ? ptx::ldg_stream_16(w_row[m][h] + k) : zero;
        }
      }
    }
  };

  const int64_t k_begin = int64_t(warp) * Config::kWarpK;
#pragma unroll
  for (int s = 0; s < Config::kStages - 1; ++s) load_a(a[s], k_begin + s * Config::kCtaK);
  for (int64_t kb0 = k_begin; kb0 < k_total; kb0 += Config::kStages * Config::kCtaK) {
#pragma unroll
    for (int s = 0; s < Config::kStages; ++s) {
      const int64_t kb = kb0 + s * Config::kCtaK;
      if (kb >= k_total) break;  // warp-uniform
      load_a(a[(s + Config::kStages - 1) % Config::kStages],
             kb + (Config::kStages - 1) * Config::kCtaK);
      uint4 b[kUnroll][kNTiles];  // (kUnroll, kNTiles) 16-byte activation loads
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = kb + 32 * u + 8 * t;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          b[u][n] = (n < n_active && b_ok[n] && k < k_total) ? ptx::ldg_16(b_row[n] + k) : zero;
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          if (n >= n_active) continue;
#pragma unroll
          for (int m = 0; m < kTilesM; ++m) {
            const uint4& lo = a[s][u][m][0];
            const uint4& hi = a[s][u][m][1];
            ptx::mma_m16n8k16_bf16(acc[m][n], lo.x, hi.x, lo.y, hi.y, b[u][n].x, b[u][n].y);
            ptx::mma_m16n8k16_bf16(acc[m][n], lo.z, hi.z, lo.w, hi.w, b[u][n].z, b[u][n].w);
          }
        }
      }
    }
  }
}

// Sums the warps' accumulators into warp 0's, in ascending warp order (deterministic). All
// threads call it; on return only warp 0's acc is the total. Ends with a barrier, so the smem
// may be reused by the next chunk.
template <class Config>
__device__ __forceinline__ void decode_reduce_warps(
    float (&acc)[DecodeTile::kTilesM][DecodeTile::kNTiles][4], DecodeSharedStorage<Config>& smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (warp > 0) {
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
      for (int n = 0; n < Config::kNTiles; ++n) {
#pragma unroll
        for (int v = 0; v < 4; ++v)
          smem.partial[warp - 1][(m * Config::kNTiles + n) * 4 + v][lane] = acc[m][n][v];
      }
    }
  }
  __syncthreads();
  if (warp == 0) {
    for (int w = 0; w < Config::kWarps - 1; ++w) {
#pragma unroll
      for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
        for (int n = 0; n < Config::kNTiles; ++n) {
#pragma unroll
          for (int v = 0; v < 4; ++v)
            acc[m][n][v] += smem.partial[w][(m * Config::kNTiles + n) * 4 + v][lane];
        }
      }
    }
  }
  __syncthreads();
}

}  // namespace fusedmoe::kernels
