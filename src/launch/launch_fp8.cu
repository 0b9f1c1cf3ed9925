// Host launchers of the FP8 block-scale pipeline's kernels (launch/fp8_gemm.h): the quantiser's
// grid, the FP8 GEMMs' uint8 tensor maps, parameters, persistent grid, smem and PDL.
#include <cuda.h>
#include <cuda_runtime.h>

#include "decode_heuristics.h"
#include "heuristics.h"
#include "kernels/sm90_decode_gemm_fp8.cuh"
#include "kernels/sm90_gemm_fp8.cuh"
#include "kernels/sm90_quantize_fp8.cuh"
#include "launch/decode_gemm_launch.h"
#include "launch/fp8_gemm.h"
#include "launch/grouped_gemm_launch.h"
#include "launch/tensor_map.h"

namespace fusedmoe::detail {

bool decode_fp8_gemm2_takes_early_lookup(const GroupedRows& rows, int64_t out_cols) {
  const int64_t grid_ctas =
      heuristics::ceil_div_decode(out_cols, kernels::kDecodeFp8ColsPerCta<false>) *
      heuristics::decode_expert_slots(rows.max_rows, rows.num_experts);
  return rows.slot_key != nullptr &&
         heuristics::use_decode_gemm2_early_lookup(rows.max_rows, rows.top_k, grid_ctas);
}

namespace {

constexpr size_t kFp8GemmSmemBytes = sizeof(device::Fp8SharedStorage) + 1024;
static_assert(kFp8GemmSmemBytes <= 227 * 1024, "more smem than an sm_90 CTA may have");

cudaLaunchAttribute pdl_attribute(bool enable_pdl) {
  cudaLaunchAttribute pdl;
  pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl.val.programmaticStreamSerializationAllowed = enable_pdl ? 1 : 0;
  return pdl;
}

// The quantiser and the row permutation: one warp per item (a row's 128-column group, or a row),
// kQuantizeThreads per block, with the PDL attribute.
template <typename Params>
cudaError_t launch_warp_per_item(void (*kernel)(Params), const Params& params, int64_t items,
                                 bool enable_pdl, cudaStream_t stream) {
  constexpr int64_t kItemsPerBlock = kernels::kQuantizeThreads / 32;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>((items + kItemsPerBlock - 1) / kItemsPerBlock));
  config.blockDim = dim3(kernels::kQuantizeThreads);
  config.stream = stream;
  cudaLaunchAttribute pdl = pdl_attribute(enable_pdl);
  config.attrs = &pdl;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, params);
}

// tmap_a: A by TMA ([1, max_rows, k] bytes; only when A is not gathered), else nullptr.
template <bool kGated>
cudaError_t launch_gemm_fp8(const GroupedRows& rows, const kernels::GemmFp8Params& params,
                            const CUtensorMap& tmap, const CUtensorMap* tmap_a, bool enable_pdl,
                            cudaStream_t stream) {
  static_assert(device::Fp8GemmConfig::kNumThreads == device::GroupedGemmConfig::kNumThreads,
                "launch_persistent_gemm launches the BF16 GEMMs' block size");
  const bool claim = rows.tile_counters != nullptr;
  if (tmap_a != nullptr) {
    return launch_persistent_gemm(claim ? kernels::sm90_gemm_fp8_kernel<true, kGated, true>
                                        : kernels::sm90_gemm_fp8_kernel<false, kGated, true>,
                                  params, rows.max_rows, rows.num_experts, enable_pdl, stream,
                                  kFp8GemmSmemBytes, tmap, *tmap_a);
  }
  return launch_persistent_gemm(claim ? kernels::sm90_gemm_fp8_kernel<true, kGated, false>
                                      : kernels::sm90_gemm_fp8_kernel<false, kGated, false>,
                                params, rows.max_rows, rows.num_experts, enable_pdl, stream,
                                kFp8GemmSmemBytes, tmap, tmap);
}

// The operands both GEMMs share.
kernels::GemmFp8Params make_params(const GroupedRows& rows, const Fp8A& a, int64_t k,
                                   const Fp8B& w, int64_t w_rows, __nv_bfloat16* out,
                                   int64_t out_cols, const GemmEpilogue& epilogue) {
  kernels::GemmFp8Params params;
  device::Fp8Operands& op = params.operands;
  op.expert_offsets = rows.expert_offsets;
  op.num_experts = rows.num_experts;
  op.tile_counters = rows.tile_counters;
  op.num_k_blocks = static_cast<int32_t>(k / device::Fp8GemmConfig::kBlockK);
  op.k = k;
  op.a = a.a;
  op.a_scale = a.scale;
  op.scale_stride = a.scale_stride;
  op.gather_rows = a.gather_rows;
  op.b_scale = w.scale;
  op.b_scale_rows = static_cast<int32_t>(w_rows / 128);
  params.out_cols = out_cols;
  params.out = out;
  params.epilogue = epilogue;
  return params;
}


// The FP8 decode GEMMs: kGated over act columns (w rows 2 * out_cols), else over out columns.
template <bool kGated>
cudaError_t launch_decode_fp8(const GroupedRows& rows, const Fp8A& a, int64_t k, const Fp8B& w,
                              int64_t w_rows, __nv_bfloat16* out, int64_t out_cols,
                              const GemmEpilogue& epilogue, bool enable_pdl,
                              cudaStream_t stream) {
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;
  // 16-byte loads of a and w rows (k is a multiple of 128); out takes 2-byte stores.
  if (!heuristics::decode_aligned_16(a.a) || !heuristics::decode_aligned_16(w.w)) {
    return cudaErrorMisalignedAddress;
  }
  kernels::DecodeGemmFp8Params params;
  params.expert_offsets = rows.expert_offsets;
  params.num_experts = rows.num_experts;
  params.a = a.a;
  params.a_scale = a.scale;
  params.scale_stride = a.scale_stride;
  params.gather_rows = a.gather_rows;
  params.w = w.w;
  params.w_scale = w.scale;
  params.w_rows = w_rows;
  params.k = k;
  params.out = out;
  params.out_cols = out_cols;
  params.epilogue = epilogue;
  const int64_t col_slices =
      heuristics::ceil_div_decode(out_cols, kernels::kDecodeFp8ColsPerCta<kGated>);
  // The early start (kernels/sm90_decode_gemm_fp8.cuh), by the BF16 decode GEMMs' rules: a GEMM1
  // (a rows gathered by token) up to kDecodeEarlyStartMaxSlots slots, a GEMM2 on small grids.
  const bool early = a.gather_rows != nullptr
                         ? rows.slot_key != nullptr &&
                               heuristics::use_decode_early_start(rows.max_rows, rows.top_k)
                         : decode_fp8_gemm2_takes_early_lookup(rows, out_cols);
  static_assert(heuristics::kDecodeEarlyStartMaxSlots <= kernels::kDecodeEarlyMaxSlots,
                "the early prologue holds at most kDecodeEarlyMaxSlots keys");
  params.slot_key = early ? rows.slot_key : nullptr;
  params.num_slots = static_cast<int32_t>(rows.max_rows);
  params.top_k = rows.top_k;
  return launch_decode_gemm(
      DecodeGemmKernels<kernels::DecodeGemmFp8Params>{
          kernels::sm90_decode_gemm_fp8_kernel<2, kGated>,
          kernels::sm90_decode_gemm_fp8_kernel<4, kGated>,
          kernels::sm90_decode_gemm_fp8_kernel<8, kGated>},
      params, rows, col_slices, k, enable_pdl, stream);
}

}  // namespace

cudaError_t launch_quantize_fp8(const __nv_bfloat16* in, int64_t rows,
                                const int32_t* num_rows_device, int64_t cols, uint8_t* codes,
                                float* scales, int64_t scale_stride, bool trigger_at_start,
                                bool enable_pdl, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(in) % 8 != 0 || reinterpret_cast<uintptr_t>(codes) % 4 != 0) {
    return cudaErrorMisalignedAddress;
  }
  kernels::QuantizeFp8Params params{in,    rows,   num_rows_device, cols,
                                    codes, scales, scale_stride,    trigger_at_start};
  return launch_warp_per_item(kernels::sm90_quantize_fp8_kernel, params, rows * (cols / 128),
                              enable_pdl, stream);
}

cudaError_t launch_permute_fp8_rows(const Fp8A& in, int64_t rows, const int32_t* num_rows_device,
                                   int64_t cols, uint8_t* codes, float* scales, bool enable_pdl,
                                   cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(in.a) % 16 != 0 || reinterpret_cast<uintptr_t>(codes) % 16 != 0) {
    return cudaErrorMisalignedAddress;
  }
  const kernels::PermuteFp8Params params{
      in.a, in.scale, in.scale_stride, in.gather_rows, rows, num_rows_device, cols, codes, scales};
  return launch_warp_per_item(kernels::sm90_permute_fp8_rows_kernel, params, rows, enable_pdl,
                              stream);
}

cudaError_t launch_gemm1_fp8(const GroupedRows& rows, const Fp8A& x, int64_t hidden_size,
                             int64_t intermediate_size, const Fp8B& w1, uint8_t* act_codes,
                             float* act_scales, int64_t act_scale_stride,
                             const GemmEpilogue& epilogue, bool enable_pdl, cudaStream_t stream) {
  using Config = device::Fp8GemmConfig;
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;
  if (intermediate_size % kernels::kFp8GroupCols != 0) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(x.a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(act_codes) % 16 != 0) {
    return cudaErrorMisalignedAddress;
  }
  CUtensorMap tmap;  // [E_loc, 2I, H] bytes, boxes of (128 of H, 64 rows, 1 expert)
  cudaError_t err = make_tensor_map_3d_u8_sw128(&tmap, w1.w, hidden_size, 2 * intermediate_size,
                                                rows.num_experts, Config::kBlockK,
                                                Config::kBoxRows);
  if (err != cudaSuccess) return err;
  kernels::GemmFp8Params params = make_params(rows, x, hidden_size, w1, 2 * intermediate_size,
                                              nullptr, intermediate_size, epilogue);
  params.out_codes = act_codes;
  params.out_scales = act_scales;
  params.out_scale_stride = act_scale_stride;
  // A scheduler tile is one 128-column scale group, two N blocks of 64 act columns.
  params.operands.num_n_blocks = static_cast<int32_t>(intermediate_size / kernels::kFp8GroupCols);
  params.operands.b_block_stride = Config::kBoxRows;
  params.operands.b_box_stride = static_cast<int32_t>(intermediate_size);
  if (x.gather_rows != nullptr) {
    return launch_gemm_fp8<true>(rows, params, tmap, nullptr, enable_pdl, stream);
  }
  CUtensorMap tmap_a;  // x in expert order: [1, max_rows, H] bytes, boxes of (128 of H, 128 rows)
  err = make_tensor_map_3d_u8_sw128(&tmap_a, x.a, hidden_size, rows.max_rows, 1, Config::kBlockK,
                                    Config::kBlockM);
  if (err != cudaSuccess) return err;
  return launch_gemm_fp8<true>(rows, params, tmap, &tmap_a, enable_pdl, stream);
}

cudaError_t launch_gemm2_fp8(const GroupedRows& rows, const Fp8A& a, int64_t k, int64_t n,
                             const Fp8B& w, __nv_bfloat16* y, const GemmEpilogue& epilogue,
                             bool enable_pdl, cudaStream_t stream) {
  using Config = device::Fp8GemmConfig;
  if (rows.max_rows <= 0 || rows.num_experts <= 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(a.a) % 16 != 0) return cudaErrorMisalignedAddress;
  CUtensorMap tmap;  // [E_loc, n, k] bytes, boxes of (128 of k, 64 rows, 1 expert)
  cudaError_t err = make_tensor_map_3d_u8_sw128(&tmap, w.w, k, n, rows.num_experts,
                                                Config::kBlockK, Config::kBoxRows);
  if (err != cudaSuccess) return err;
  kernels::GemmFp8Params params = make_params(rows, a, k, w, n, y, n, epilogue);
  params.operands.num_n_blocks = static_cast<int32_t>((n + Config::kBlockN - 1) / Config::kBlockN);
  params.operands.b_block_stride = Config::kBlockN;
  params.operands.b_box_stride = Config::kBoxRows;
  if (a.gather_rows != nullptr) {
    return launch_gemm_fp8<false>(rows, params, tmap, nullptr, enable_pdl, stream);
  }
  CUtensorMap tmap_a;  // [1, max_rows, k] bytes, boxes of (128 of k, 128 rows)
  err = make_tensor_map_3d_u8_sw128(&tmap_a, a.a, k, rows.max_rows, 1, Config::kBlockK,
                                    Config::kBlockM);
  if (err != cudaSuccess) return err;
  return launch_gemm_fp8<false>(rows, params, tmap, &tmap_a, enable_pdl, stream);
}

cudaError_t launch_decode_gemm1_fp8(const GroupedRows& rows, const Fp8A& x, int64_t hidden_size,
                                    int64_t intermediate_size, const Fp8B& w1,
                                    __nv_bfloat16* act, const GemmEpilogue& epilogue,
                                    bool enable_pdl, cudaStream_t stream) {
  return launch_decode_fp8<true>(rows, x, hidden_size, w1, 2 * intermediate_size, act,
                                 intermediate_size, epilogue, enable_pdl, stream);
}

cudaError_t launch_decode_gemm2_fp8(const GroupedRows& rows, const Fp8A& a, int64_t k, int64_t n,
                                    const Fp8B& w, __nv_bfloat16* y,
                                    const GemmEpilogue& epilogue, bool enable_pdl,
                                    cudaStream_t stream) {
  return launch_decode_fp8<false>(rows, a, k, w, n, y, n, epilogue, enable_pdl, stream);
}

}  // namespace fusedmoe::detail
