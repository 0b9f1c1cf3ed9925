// Shared pieces of the two decode GEMMs (sm90_decode_gemm1_swiglu.cuh, sm90_decode_gemm2.cuh):
// the config, the lookup of a CTA's expert, the warp mainloop and the cross-warp reduction.
//
// Decode (few rows per expert) is bound by reading each hit expert's weights once, so the weights
// are the big operand and the expert's rows the small one: a CTA owns kRowsM = 32 weight rows of
// one expert (an "M slice") and streams them into mma.sync A fragments (weights as M = 16, tokens
// as N = 8: the swapped-operand GEMM on warp-level tensor cores). The 4 (or 8) warps split K and
// reduce through smem in a fixed order.
//
// Loads: each lane cp.asyncs its own 16-byte pieces of weights and activations into its warp's
// ring of kStages smem slots and reads back exactly those pieces (no lane reads another's), so
// cp.async.wait_group alone orders them: kStages - 1 k blocks of weights AND activations are in
// flight while one is multiplied, with no registers held for them. (The earlier form loaded the
// weights into a register ring one block ahead and the activations just in time: ncu on an H200
// showed 42-75 % of peak DRAM throughput at T = 1, bench/NOTES.md.)
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
#include "device/ptx.cuh"

namespace fusedmoe::kernels {

// The tile, the same for both warp counts: kRowsM weight rows per CTA, chunks of kChunkRows
// expert rows, kUnroll 32-wide k blocks per warp iteration, kStages slots in each warp's ring
// (kStages - 1 iterations in flight). Measured on an H200 (bench/NOTES.md, "Decode GEMMs (issue
// 6)"): 16-row chunks beat 32 (~10 % more bandwidth at <= 16 rows); 64 rows per CTA lost 5-15 %.
struct DecodeTile {
  static constexpr int kTilesM = 2;               // m16 tiles per CTA
  static constexpr int kRowsM = 16 * kTilesM;     // weight rows per CTA
  static constexpr int kNTiles = 2;               // n8 tiles per row chunk
  static constexpr int kChunkRows = 8 * kNTiles;  // expert rows per pass over the weights
  static constexpr int kUnroll = 1;               // 32-wide k blocks per warp iteration
  static constexpr int kStages = 4;               // ring slots per warp
  static constexpr int kL2Prefetch256 = 1;        // weight copies ask L2 for 256-byte lines
  static constexpr int kWarpK = 32 * kUnroll;     // k per warp iteration
  static constexpr int kAccPerLane = kTilesM * kNTiles * 4;
  static_assert(kTilesM >= 1 && kNTiles >= 1 && kUnroll >= 1, "non-empty tiles");
  static_assert(kStages >= 2, "at least the next iteration loads during this one's math");
  static_assert(kWarpK % 32 == 0, "a lane loads 8 of every 32 k: K % 8 == 0 keeps loads whole");
};

// One warp's ring: slot s holds, per lane, the 16-byte pieces of one warp iteration.
struct DecodeWarpRing {
  uint4 a[DecodeTile::kStages][DecodeTile::kUnroll][DecodeTile::kTilesM][2][32];  // weights
  uint4 b[DecodeTile::kStages][DecodeTile::kUnroll][DecodeTile::kNTiles][32];     // activations
};
static_assert(sizeof(float) * DecodeTile::kAccPerLane * 32 <= sizeof(DecodeWarpRing),
              "a warp's partial sums fit in its own ring (decode_reduce_warps)");

// The early start of the decode GEMM1 (decode_cta_expert_from_keys): at most this many slots,
// 8 per lane of one warp, and the rows of one expert listed in shared memory.
constexpr int kDecodeEarlyMaxSlots = 256;
constexpr int kDecodeHitWords = 1024 / 32;  // a bit per local expert (E_loc <= 1024, validated)

// kWarps warps split K: 4 by default, 8 when the grid has too few CTAs to fill the SMs
// (decode_heuristics.h: decode_warps_per_cta), 2 for the FP8 kernels on grids of many waves
// (decode_fp8_warps_per_cta).
template <int kWarps_>
struct DecodeGemmConfig : DecodeTile {
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kCtaK = kWarpK * kWarps;  // k per CTA iteration (warps interleave)
  // 16 warps per SM: 16 x (kStages - 1) x 2 KiB = 96 KiB of weights in flight per SM, ~3 us of
  // one SM's share of HBM (Little's law), in 16 x 12 KiB of rings (kStages = 4).
  static constexpr int kMinCtasPerSm = 16 / kWarps;
  static_assert(kWarps >= 1 && kWarps <= 16 && 16 % kWarps == 0, "16 warps per SM in whole CTAs");
};

// Dynamic shared memory of a decode GEMM CTA (the launchers pass sizeof; > 48 KiB at 8 warps).
template <class Config>
struct DecodeSharedStorage {
  // The warps' rings; after a chunk's mainloop, warp w > 0 parks its partial sums in its own ring
  // for warp 0 to add in order (decode_reduce_warps).
  DecodeWarpRing ring[Config::kWarps];
  int32_t warp_count[Config::kWarps];  // non-empty experts per warp's range
  int32_t expert;                      // the CTA's expert, or -1
  // decode_cta_expert_from_keys: a bit per hit local expert, the expert's first permuted row and
  // row count, and the token of each of its rows.
  uint32_t hit[kDecodeHitWords];
  int32_t early_begin, early_count;
  int32_t early_tokens[kDecodeEarlyMaxSlots];
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

// The rows [begin, end) of one expert in the expert-sorted order.
struct DecodeExpertRows {
  int32_t expert, begin, end;
};

// The decode GEMMs' prologue: waits for the kernels before (PDL: expert_offsets and the A rows
// come from them), lets the next kernel launch, and finds this CTA's expert (the
// blockIdx.y-th non-empty one) and its rows. false: fewer experts have rows; the CTA exits.
template <class Config>
__device__ __forceinline__ bool decode_cta_expert(const int32_t* expert_offsets,
                                                  int32_t num_experts,
                                                  DecodeSharedStorage<Config>& smem,
                                                  DecodeExpertRows& rows) {
  ptx::griddepcontrol_wait();
  ptx::griddepcontrol_launch_dependents();
  rows.expert = find_nonempty_expert(expert_offsets, num_experts, int32_t(blockIdx.y), smem);
  if (rows.expert < 0) return false;
  rows.begin = expert_offsets[rows.expert];
  rows.end = expert_offsets[rows.expert + 1];
  return true;
}

// Whether an early-start CTA that found no expert (decode_cta_expert_from_keys false) may leave
// at once, without waiting for the kernels before it: every CTA but (0, 0). A grid completes
// when all its CTAs have, so one waiting CTA keeps this grid's completion after its
// predecessors' (what a kernel that waits for this one relies on: the sort's outputs behind
// the GEMMs), while the other empty CTAs free their SM slots at once instead of holding them
// until the predecessor ends. On an expert-parallel shard with nothing local every CTA is empty:
// grids of up to 2816 CTAs (2-6 waves) would otherwise run their waves one after another
// behind the sort (bench/NOTES.md, "The EP fixed cost").
__device__ __forceinline__ bool decode_empty_cta_leaves_now() {
  return blockIdx.x != 0 || blockIdx.y != 0;
}

// The decode GEMM1's early prologue: decode_cta_expert's answer (the blockIdx.y-th non-empty
// expert and its rows), and the token of each row, computed from the routing's slot keys (local
// expert per slot; E_loc or anything outside [0, E_loc): non-local) instead of the sort's
// expert_offsets and gather_rows, so that it needs nothing the sort writes and the GEMM runs while
// the sort does. Exactly the sort's answer (expert_sort_small_kernel: experts ascending, slots
// ascending within each, token = slot / top_k): the expert's first row is the number of local
// slots with a smaller key, its r-th row the r-th slot with its key. The routing kernel has
// finished when this kernel starts: the sort waited for it (griddepcontrol.wait) before it let
// this kernel launch, and the keys are read through L2 (ld.global.cg), not from L1. Warp 0 does
// it all: num_slots <= kDecodeEarlyMaxSlots keys, 8 per lane, one round of loads. All threads
// call it; false: fewer experts have rows. kTokens false: rows only, no smem.early_tokens (GEMM2
// reads its rows in permuted order and needs no tokens).
template <class Config, bool kTokens = true>
__device__ __forceinline__ bool decode_cta_expert_from_keys(const int32_t* slot_key,
                                                            int32_t num_slots, int32_t top_k,
                                                            int32_t num_experts,
                                                            DecodeSharedStorage<Config>& smem,
                                                            DecodeExpertRows& rows) {
  constexpr int kPerLane = kDecodeEarlyMaxSlots / 32;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const unsigned lower_lanes = (1u << lane) - 1u;
    int32_t key[kPerLane];  // slot 32 i + lane; -1: non-local or past the slots
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int32_t slot = 32 * i + lane;
      key[i] = slot < num_slots ? __ldcg(slot_key + slot) : -1;
      if (key[i] >= num_experts || key[i] >= 32 * kDecodeHitWords) key[i] = -1;
    }
    smem.hit[lane] = 0u;
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (key[i] >= 0) atomicOr(&smem.hit[key[i] / 32], 1u << (key[i] % 32));
    }
    __syncwarp();
    // The blockIdx.y-th set bit: word `lane`'s count, an inclusive scan over the words.
    const uint32_t word = smem.hit[lane];
    const int count = __popc(word);
    int below = count;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int v = __shfl_up_sync(0xFFFFFFFFu, below, d);
      if (lane >= d) below += v;
    }
    below -= count;
    if (lane == 0) smem.expert = -1;
    __syncwarp();
    const int32_t wanted = int32_t(blockIdx.y);
    if (wanted >= below && wanted < below + count) {
      smem.expert = 32 * lane + int32_t(__fns(word, 0, wanted - below + 1));
    }
    __syncwarp();
    const int32_t expert = smem.expert;
    if (expert >= 0) {
      int32_t begin = 0, n = 0;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        begin += __popc(__ballot_sync(0xFFFFFFFFu, key[i] >= 0 && key[i] < expert));
        const unsigned mine = __ballot_sync(0xFFFFFFFFu, key[i] == expert);
        if (kTokens && key[i] == expert) {
          smem.early_tokens[n + __popc(mine & lower_lanes)] = (32 * i + lane) / top_k;
        }
        n += __popc(mine);
      }
      if (lane == 0) {
        smem.early_begin = begin;
        smem.early_count = n;
      }
    }
  }
  __syncthreads();
  rows.expert = smem.expert;
  if (rows.expert < 0) return false;
  rows.begin = smem.early_begin;
  rows.end = smem.early_begin + smem.early_count;
  return true;
}

// One warp's share of K for a (kRowsM weight rows) x (kChunkRows expert rows) block, for either
// element type (Elem: bf16, or uint8 for the FP8 variant's e4m3 codes): streams the operands
// through the warp's ring and calls
//   multiply(k0, a, b)   a[m][h]: the lane's 16 bytes of weight row (m, h); b[n]: of token 8 n + g
// once per 64-byte k unit, k0 its first k (in elements), the lane's bytes being those at
// 16 t .. 16 t + 15 of the unit (the K permutation above; any element type maps the same bytes
// onto the same fragment slots of its mma). w_row[m][h]: this lane's weight row (h = 0: fragment
// row g, h = 1: row g + 8), valid when w_ok[m][h]; b_row[n]: the lane's activation row (token
// 8 n + g), valid when b_ok[n]; any_row: a mapped global address (read by no copy: the source of
// zero fills). Invalid rows and k >= K read as zeros. n_active (warp-uniform): n-tiles with any
// valid row; b[n] for n >= n_active is not loaded. The warp takes the 64-byte units
// warp + i * kWarps (unrolled kUnroll at a time) through `ring` (its own): iteration
// i + kStages - 1 is issued before iteration i is multiplied. Returns with none of the warp's
// copies pending.
// The weight copies of a warp's iteration whose k starts at kb into ring slot `slot`,
// uncommitted (lane, t = lane % 4): what decode_warp_stream issues for an iteration's weights.
template <class Config, class Elem>
__device__ __forceinline__ void decode_issue_weight_copies(
    const Elem* const (&w_row)[DecodeTile::kTilesM][2], const bool (&w_ok)[DecodeTile::kTilesM][2],
    const void* any_row, int64_t k_total, int64_t kb, int slot, int lane, int t,
    DecodeWarpRing& ring) {
  constexpr int kLaneK = 16 / int(sizeof(Elem));
  constexpr int kUnitK = 4 * kLaneK;
#pragma unroll
  for (int u = 0; u < Config::kUnroll; ++u) {
    const int64_t k = kb + kUnitK * u + kLaneK * t;
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool valid = w_ok[m][h] && k < k_total;
        const void* src = valid ? static_cast<const void*>(w_row[m][h] + k) : any_row;
        if constexpr (Config::kL2Prefetch256 != 0) {
          ptx::cp_async_16_zfill_l2_256(&ring.a[slot][u][m][h][lane], src, valid);
        } else {
          ptx::cp_async_16_zfill(&ring.a[slot][u][m][h][lane], src, valid);
        }
      }
    }
  }
}

// This warp's share of K in decode_warp_stream: iteration i covers the kWarpK elements from
// k_begin + i * kCtaK, for i < blocks.
template <class Config, class Elem>
struct DecodeWarpK {
  static constexpr int64_t kWarpK = int64_t(4 * (16 / int(sizeof(Elem)))) * Config::kUnroll;
  static constexpr int64_t kCtaK = kWarpK * Config::kWarps;
  int64_t k_begin, blocks;
  __device__ __forceinline__ explicit DecodeWarpK(int64_t k_total)
      : k_begin(int64_t(threadIdx.x / 32) * kWarpK),
        blocks(k_begin < k_total ? (k_total - k_begin + kCtaK - 1) / kCtaK : 0) {}
};

// Issues the weight copies of the first kStages - 1 iterations of decode_warp_stream, without
// committing them, so that a kernel can start its weights streaming before its PDL wait (the
// weights are inputs, not written by earlier kernels); decode_warp_stream<Config, true> then
// issues only the activations of those iterations, each in the commit group its weights would
// have shared (the first group holds the early weights), so its wait_group counts are unchanged.
template <class Config, class Elem>
__device__ __forceinline__ void decode_warp_issue_weights(
    const Elem* const (&w_row)[DecodeTile::kTilesM][2], const bool (&w_ok)[DecodeTile::kTilesM][2],
    const void* any_row, int64_t k_total, DecodeWarpRing& ring) {
  const DecodeWarpK<Config, Elem> range(k_total);
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int s = 0; s < Config::kStages - 1; ++s) {
    if (s < range.blocks) {
      decode_issue_weight_copies<Config>(w_row, w_ok, any_row, k_total,
                                         range.k_begin + s * range.kCtaK, s, lane, lane % 4, ring);
    }
  }
}

// One warp's share of K for a (kRowsM weight rows) x (kChunkRows expert rows) block, for either
// element type (Elem: bf16, or uint8 for the FP8 variant's e4m3 codes): streams the operands
// through the warp's ring and calls
//   multiply(k0, a, b)   a[m][h]: the lane's 16 bytes of weight row (m, h); b[n]: of token 8 n + g
// once per 64-byte k unit, k0 its first k (in elements), the lane's bytes being those at
// 16 t .. 16 t + 15 of the unit (the K permutation above; any element type maps the same bytes
// onto the same fragment slots of its mma). w_row[m][h]: this lane's weight row (h = 0: fragment
// row g, h = 1: row g + 8), valid when w_ok[m][h]; b_row[n]: the lane's activation row (token
// 8 n + g), valid when b_ok[n]; any_row: a mapped global address (read by no copy: the source of
// zero fills). Invalid rows and k >= K read as zeros. n_active (warp-uniform): n-tiles with any
// valid row; b[n] for n >= n_active is not loaded. The warp takes the 64-byte units
// warp + i * kWarps (unrolled kUnroll at a time) through `ring` (its own): iteration
// i + kStages - 1 is issued before iteration i is multiplied. Returns with none of the warp's
// copies pending. kWeightsIssued: decode_warp_issue_weights issued the first iterations' weights.
template <class Config, bool kWeightsIssued = false, class Elem, class Multiply>
__device__ __forceinline__ void decode_warp_stream(
    const Elem* const (&w_row)[DecodeTile::kTilesM][2], const bool (&w_ok)[DecodeTile::kTilesM][2],
    const Elem* const (&b_row)[DecodeTile::kNTiles], const bool (&b_ok)[DecodeTile::kNTiles],
    const void* any_row, int n_active, int64_t k_total, DecodeWarpRing& ring, Multiply&& multiply) {
  constexpr int kTilesM = Config::kTilesM, kNTiles = Config::kNTiles, kUnroll = Config::kUnroll;
  constexpr int kStages = Config::kStages;
  constexpr int kLaneK = 16 / int(sizeof(Elem));  // elements in a lane's 16 bytes
  constexpr int kUnitK = 4 * kLaneK;              // elements in a 64-byte unit
  using WarpK = DecodeWarpK<Config, Elem>;
  constexpr int64_t kCtaK = WarpK::kCtaK;
  static_assert(WarpK::kWarpK == int64_t(kUnitK) * kUnroll, "kUnroll 64-byte units per iteration");
  static_assert(WarpK::kWarpK == Config::kWarpK * 2 / int(sizeof(Elem)),
                "64-byte units, bf16 k 32");
  const int lane = threadIdx.x % 32, t = lane % 4;
  const WarpK range(k_total);
  const int64_t k_begin = range.k_begin, blocks = range.blocks;

  // Copies of warp iteration i into slot i % kStages; one commit group per iteration, empty past
  // the last block, so wait_group counts stay uniform. with_weights false: the activations only.
  auto issue = [&](int64_t i, bool with_weights) {
    if (i < blocks) {
      const int slot = int(i % kStages);
      const int64_t kb = k_begin + i * kCtaK;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = kb + kUnitK * u + kLaneK * t;
        // The weights as in decode_issue_weight_copies, written out here: calling it moved
        // instructions of the kernels that never pre-issue (GEMM1, FP8), 2008 -> 2016.
#pragma unroll
        for (int m = 0; m < kTilesM; ++m) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (!with_weights) continue;
            const bool valid = w_ok[m][h] && k < k_total;
            const void* src = valid ? static_cast<const void*>(w_row[m][h] + k) : any_row;
            if constexpr (Config::kL2Prefetch256 != 0) {
              ptx::cp_async_16_zfill_l2_256(&ring.a[slot][u][m][h][lane], src, valid);
            } else {
              ptx::cp_async_16_zfill(&ring.a[slot][u][m][h][lane], src, valid);
            }
          }
        }
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          if (n >= n_active) continue;
          const bool valid = b_ok[n] && k < k_total;
          ptx::cp_async_16_zfill(&ring.b[slot][u][n][lane],
                                 valid ? static_cast<const void*>(b_row[n] + k) : any_row, valid);
        }
      }
    }
    ptx::cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s, !kWeightsIssued);
#pragma unroll 1
  for (int64_t i = 0; i < blocks; ++i) {
    issue(i + kStages - 1, true);
    ptx::cp_async_wait_group<kStages - 1>();  // this lane's copies of block i have landed
    const int slot = int(i % kStages);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      uint4 a[kTilesM][2], b[kNTiles];
#pragma unroll
      for (int m = 0; m < kTilesM; ++m) {
        a[m][0] = ring.a[slot][u][m][0][lane];
        a[m][1] = ring.a[slot][u][m][1][lane];
      }
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        if (n < n_active) b[n] = ring.b[slot][u][n][lane];
      }
      multiply(k_begin + i * kCtaK + kUnitK * u, a, b);
    }
  }
  ptx::cp_async_wait_group<0>();  // only empty groups can remain; the ring is free again
}

// The BF16 decode GEMMs' mainloop: decode_warp_stream with
//   acc[m][n][v] += sum over the warp's k of W[row(m, v)][k] * B[token(n, v)][k]
// where row(m, v) = tile m's row g (v < 2) or g + 8 (v >= 2) and token(n, v) = 8 n + 2 t + v % 2.
template <class Config, bool kWeightsIssued = false>
__device__ __forceinline__ void decode_warp_mainloop(
    const __nv_bfloat16* const (&w_row)[DecodeTile::kTilesM][2],
    const bool (&w_ok)[DecodeTile::kTilesM][2],
    const __nv_bfloat16* const (&b_row)[DecodeTile::kNTiles],
    const bool (&b_ok)[DecodeTile::kNTiles], const void* any_row, int n_active, int64_t k_total,
    DecodeWarpRing& ring, float (&acc)[DecodeTile::kTilesM][DecodeTile::kNTiles][4]) {
  decode_warp_stream<Config, kWeightsIssued>(
      w_row, w_ok, b_row, b_ok, any_row, n_active, k_total, ring,
      [&](int64_t, const uint4(&a)[DecodeTile::kTilesM][2], const uint4(&b)[DecodeTile::kNTiles]) {
#pragma unroll
        for (int n = 0; n < Config::kNTiles; ++n) {
          if (n >= n_active) continue;
#pragma unroll
          for (int m = 0; m < Config::kTilesM; ++m) {
            const uint4& lo = a[m][0];
            const uint4& hi = a[m][1];
            ptx::mma_m16n8k16_bf16(acc[m][n], lo.x, hi.x, lo.y, hi.y, b[n].x, b[n].y);
            ptx::mma_m16n8k16_bf16(acc[m][n], lo.z, hi.z, lo.w, hi.w, b[n].z, b[n].w);
          }
        }
      });
}

// Sums the warps' accumulators into warp 0's, in ascending warp order (deterministic). All
// threads call it, after decode_warp_mainloop; on return only warp 0's acc is the total. Warp
// w > 0 parks its sums in its own ring (free: the mainloop left no copy pending, and __syncwarp
// orders its lanes' last reads of the ring before the writes). Ends with a barrier, so the rings
// may be refilled by the next chunk.
template <class Config>
__device__ __forceinline__ void decode_reduce_warps(
    float (&acc)[DecodeTile::kTilesM][DecodeTile::kNTiles][4], DecodeSharedStorage<Config>& smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  using Partial = float[Config::kAccPerLane][32];
  if (warp > 0) {
    __syncwarp();
    Partial& mine = *reinterpret_cast<Partial*>(&smem.ring[warp]);
#pragma unroll
    for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
      for (int n = 0; n < Config::kNTiles; ++n) {
#pragma unroll
        for (int v = 0; v < 4; ++v) mine[(m * Config::kNTiles + n) * 4 + v][lane] = acc[m][n][v];
      }
    }
  }
  __syncthreads();
  if (warp == 0) {
    for (int w = 1; w < Config::kWarps; ++w) {
      const Partial& theirs = *reinterpret_cast<const Partial*>(&smem.ring[w]);
#pragma unroll
      for (int m = 0; m < Config::kTilesM; ++m) {
#pragma unroll
        for (int n = 0; n < Config::kNTiles; ++n) {
#pragma unroll
          for (int v = 0; v < 4; ++v)
            acc[m][n][v] += theirs[(m * Config::kNTiles + n) * 4 + v][lane];
        }
      }
    }
  }
  __syncthreads();
}

}  // namespace fusedmoe::kernels
