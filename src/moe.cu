// The GPU pipeline of the operator (docs/SPEC.md "Execution contract", DESIGN "GPU pipeline"):
//
//   route (logits) | decode (routed ids)  ->  slot_key, slot_weight  [T * K]
//   [scale x by the weights (use_routing_scales_on_input) -> x' [T, H], in the y region]
//   [FP8 weights: x quantised per token and 128-group -> x8, x_scale (docs/fp8.md)]
//   count -> offsets -> permute           ->  expert_offsets [E_loc + 1], gather_rows, permuted_idx
//   GEMM1 + activation (rows gathered)    ->  act [T * K, I]
//   [FP8 weights: act quantised the same way -> act8, act_scale]
//   GEMM2 (+ bias)                        ->  y [T * K, H]   (or straight into gemm2_output)
//   finalize (do_finalize only)           ->  output [T, H]
//
// Every size the host needs is known from the shape (T * K rows at most); the device decides
// the rest from expert_offsets, so run() enqueues a fixed sequence of kernels: no allocation,
// no synchronisation, no host read of device data, and a captured graph replays with new inputs.
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "decode_heuristics.h"
#include "fusedmoe/fusedmoe.h"
#include "heuristics.h"
#include "launch/decode_gemm.h"
#include "launch/fp8_gemm.h"
#include "launch/grouped_gemm.h"
#include "launch/pipeline.h"
#include "validate.h"

// Return early with the failing Status (or a CUDA error turned into one, named by `what`).
#define FUSEDMOE_RETURN_IF_ERROR(expr)                          \
  do {                                                          \
    if (Status status_ = (expr); !status_.ok()) return status_; \
  } while (0)
#define FUSEDMOE_CUDA_RETURN_IF_ERROR(call, what) \
  FUSEDMOE_RETURN_IF_ERROR(detail::cuda_status((call), (what)))

namespace fusedmoe {
namespace detail {
namespace {

constexpr size_t kWorkspaceAlignment = 256;

size_t align_up(size_t bytes) {
  return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// The regions of the workspace in order, as byte sizes; carve_workspace walks the same list.
struct LayoutSizes {
  size_t slot_key, slot_weight, chunk_prefix, expert_offsets, gather_rows, permuted_idx, act, y,
      tile_counters, x8, x_scale, act8, act_scale;
};

// fp8: the FP8 variant's extra regions (the quantised x and activation with their scales).
LayoutSizes layout_sizes(const MoeShape& shape, bool fp8) {
  const size_t num_slots = static_cast<size_t>(shape.num_tokens) * shape.top_k;
  const size_t num_local = static_cast<size_t>(shape.local_num_experts);
  LayoutSizes sizes{};
  sizes.slot_key = align_up(num_slots * sizeof(int32_t));
  sizes.slot_weight = align_up(num_slots * sizeof(float));
  sizes.chunk_prefix = align_up(num_permute_chunks(num_slots) * num_local * sizeof(int32_t));
  sizes.expert_offsets = align_up((num_local + 1) * sizeof(int32_t));
  sizes.gather_rows = align_up(num_slots * sizeof(int32_t));
  sizes.permuted_idx = align_up(num_slots * sizeof(int32_t));
  sizes.act = align_up(num_slots * shape.intermediate_size * sizeof(__nv_bfloat16));
  sizes.y = align_up(num_slots * shape.hidden_size * sizeof(__nv_bfloat16));
  sizes.tile_counters = align_up(2 * sizeof(int32_t));
  if (fp8) {
    const size_t tokens = static_cast<size_t>(shape.num_tokens);
    sizes.x8 = align_up(tokens * shape.hidden_size);
    sizes.x_scale = align_up(tokens * (shape.hidden_size / kFp8BlockSize) * sizeof(float));
    sizes.act8 = align_up(num_slots * shape.intermediate_size);
    sizes.act_scale =
        align_up(num_slots * (shape.intermediate_size / kFp8BlockSize) * sizeof(float));
  }
  return sizes;
}

Status cuda_status(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return Status::Ok();
  return Status::Error(StatusCode::kCudaError, std::string(what) + ": expected cudaSuccess, got " +
                                                   cudaGetErrorName(error) + " (" +
                                                   cudaGetErrorString(error) + ")");
}

Status check_aligned(const void* pointer, const char* name) {
  constexpr uintptr_t kAlignment = 16;
  const uintptr_t address = reinterpret_cast<uintptr_t>(pointer);
  if (address % kAlignment == 0) return Status::Ok();
  return invalid_argument(
      name, "a 16-byte aligned address on the GPU path",
      "an address " + std::to_string(address % kAlignment) + " bytes past a 16-byte boundary");
}

// The GEMMs' epilogues of a call (launch/gemm_epilogue.h).
GemmEpilogue gemm1_epilogue(const MoeArguments& args) {
  GemmEpilogue epilogue;
  epilogue.has_activation = true;
  epilogue.activation = args.activation;
  epilogue.alpha = args.gemm1_alpha;
  epilogue.beta = args.gemm1_beta;
  epilogue.clamp_limit = args.gemm1_clamp_limit;
  epilogue.bias = args.gemm1_bias;
  epilogue.bias_fp32 = args.gemm1_bias_dtype == DType::kFP32;
  epilogue.bias_stride = (is_gated(args.activation) ? 2 : 1) * args.shape.intermediate_size;
  return epilogue;
}

GemmEpilogue gemm2_epilogue(const MoeArguments& args) {
  GemmEpilogue epilogue;
  epilogue.bias = args.gemm2_bias;
  epilogue.bias_fp32 = args.gemm2_bias_dtype == DType::kFP32;
  epilogue.bias_stride = args.shape.hidden_size;
  return epilogue;
}

// The FP8 variant's x: the caller's e4m3 hidden states, or x quantised per token and 128-group
// (before the sort, so that a decode GEMM1 that starts early finds it complete: the sort lets its
// successor launch only after its own wait), by the routing kernel where fp8_x_by_routing says so
// (routed ids: always; logits: the block routing kernel's sizes), else by the quantiser here. Its
// rows are gathered by gather_rows.
bool fp8_x_by_routing(const MoeArguments& args) {
  return args.hidden_states_dtype != DType::kFP8E4M3 &&
         (args.logits.logits == nullptr || heuristics::use_block_route(args.shape.num_tokens));
}

Status quantize_fp8_x(const MoeArguments& args, const Workspace& ws, const __nv_bfloat16* x,
                      Fp8A* x8, cudaStream_t stream) {
  const int64_t T = args.shape.num_tokens;
  *x8 = Fp8A{ws.x8, ws.x_scale, T, ws.gather_rows};
  if (args.hidden_states_dtype == DType::kFP8E4M3) {
    x8->a = static_cast<const uint8_t*>(args.hidden_states);
    x8->scale = args.hidden_states_scale;
    return Status::Ok();
  }
  if (fp8_x_by_routing(args)) return Status::Ok();
  FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_quantize_fp8(x, T, nullptr, args.shape.hidden_size, ws.x8,
                                                    ws.x_scale, T, false, args.enable_pdl, stream),
                                "launch_quantize_fp8 (hidden_states)");
  return Status::Ok();
}

// The prefill GEMM1's x8 in expert order (row p of it is token gather_rows[p]'s, one copy per
// slot), so that GEMM1 loads its A tiles by TMA instead of gathering rows. Copied after the sort
// into the y region, which nothing else uses before GEMM2 writes y (FP8 calls take no routing
// weights on the input, which would put x' there), and GEMM2 writes y only after its wait, once
// GEMM1 has finished (the act quantiser between them waits for GEMM1).
bool fp8_x_permuted(const MoeShape& shape, bool decode1) {
  const size_t num_slots = static_cast<size_t>(shape.num_tokens) * shape.top_k;
  const size_t needed = align_up(num_slots * shape.hidden_size) +
                        num_slots * (shape.hidden_size / kFp8BlockSize) * sizeof(float);
  return !decode1 && needed <= layout_sizes(shape, true).y;
}

Status permute_fp8_x(const MoeArguments& args, const Workspace& ws, Fp8A* x8,
                     cudaStream_t stream) {
  const MoeShape& shape = args.shape;
  const int64_t num_slots = shape.num_tokens * shape.top_k, H = shape.hidden_size;
  auto* codes = reinterpret_cast<uint8_t*>(ws.y);
  auto* scales = reinterpret_cast<float*>(codes + align_up(static_cast<size_t>(num_slots * H)));
  FUSEDMOE_CUDA_RETURN_IF_ERROR(
      launch_permute_fp8_rows(*x8, num_slots, ws.expert_offsets + shape.local_num_experts, H,
                              codes, scales, args.enable_pdl, stream),
      "launch_permute_fp8_rows (hidden_states)");
  *x8 = Fp8A{codes, scales, num_slots, nullptr};
  return Status::Ok();
}

// The FP8 variant's GEMMs (docs/fp8.md): GEMM1 on x8 (quantize_fp8_x) with its activation
// quantised per 128-column group into act8 (by the grouped gated GEMM1's epilogue itself, else
// into the bf16 act and then by the quantiser), GEMM2 into y.
// decode1 / decode2: the decode forms of GEMM1 / GEMM2 (decode_heuristics.h).
Status run_fp8_gemms(const MoeArguments& args, const Workspace& ws, GroupedRows rows, bool claim2,
                     bool decode1, bool decode2, const Fp8A& x8, __nv_bfloat16* y,
                     const GemmEpilogue& epilogue1, const GemmEpilogue& epilogue2,
                     cudaStream_t stream) {
  const MoeShape& shape = args.shape;
  const int64_t T = shape.num_tokens, H = shape.hidden_size, I = shape.intermediate_size;
  const int64_t num_slots = T * shape.top_k;
  const bool pdl = args.enable_pdl;
  const Fp8B w1{static_cast<const uint8_t*>(args.gemm1_weights), args.gemm1_weights_scale};
  const Fp8B w2{static_cast<const uint8_t*>(args.gemm2_weights), args.gemm2_weights_scale};
  const auto gemm2 = decode2 ? launch_decode_gemm2_fp8 : launch_gemm2_fp8;
  const bool gated = is_gated(args.activation);
  if (gated && !decode1) {  // act quantised in GEMM1's epilogue
    FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_gemm1_fp8(rows, x8, H, I, w1, ws.act8, ws.act_scale,
                                                   num_slots, epilogue1, pdl, stream),
                                  "launch_gemm1_fp8");
  } else {  // bf16 act, then the quantiser
    if (gated) {
      FUSEDMOE_CUDA_RETURN_IF_ERROR(
          launch_decode_gemm1_fp8(rows, x8, H, I, w1, ws.act, epilogue1, pdl, stream),
          "launch_decode_gemm1_fp8");
    } else {
      const auto nongated1 = decode1 ? launch_decode_gemm2_fp8 : launch_gemm2_fp8;
      FUSEDMOE_CUDA_RETURN_IF_ERROR(nongated1(rows, x8, H, I, w1, ws.act, epilogue1, pdl, stream),
                                    "launch_gemm2_fp8 (non-gated GEMM1)");
    }
    // The act quantiser lets GEMM2 launch as it starts only when GEMM2 has work before its wait:
    // the decode GEMM2's early lookup and first weight copies (launch_decode_fp8's rule).
    const bool gemm2_early = decode2 && decode_fp8_gemm2_takes_early_lookup(rows, H);
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        launch_quantize_fp8(ws.act, num_slots, ws.expert_offsets + shape.local_num_experts, I,
                            ws.act8, ws.act_scale, num_slots, gemm2_early, pdl, stream),
        "launch_quantize_fp8 (activation)");
  }
  rows.tile_counters = claim2 ? ws.tile_counters : nullptr;
  const Fp8A act8{ws.act8, ws.act_scale, num_slots, nullptr};
  FUSEDMOE_CUDA_RETURN_IF_ERROR(gemm2(rows, act8, I, H, w2, y, epilogue2, pdl, stream),
                                "launch_gemm2_fp8");
  return Status::Ok();
}

}  // namespace

size_t workspace_layout_bytes(const MoeShape& shape, bool fp8) {
  const LayoutSizes s = layout_sizes(shape, fp8);
  return s.slot_key + s.slot_weight + s.chunk_prefix + s.expert_offsets + s.gather_rows +
         s.permuted_idx + s.act + s.y + s.tile_counters + s.x8 + s.x_scale + s.act8 +
         s.act_scale;
}

Workspace carve_workspace(const MoeShape& shape, void* base, bool fp8) {
  const LayoutSizes s = layout_sizes(shape, fp8);
  char* cursor = static_cast<char*>(base);
  auto take = [&cursor](size_t bytes) {
    char* region = cursor;
    cursor += bytes;
    return region;
  };
  Workspace ws;
  ws.slot_key = reinterpret_cast<int32_t*>(take(s.slot_key));
  ws.slot_weight = reinterpret_cast<float*>(take(s.slot_weight));
  ws.chunk_prefix = reinterpret_cast<int32_t*>(take(s.chunk_prefix));
  ws.expert_offsets = reinterpret_cast<int32_t*>(take(s.expert_offsets));
  ws.gather_rows = reinterpret_cast<int32_t*>(take(s.gather_rows));
  ws.permuted_idx = reinterpret_cast<int32_t*>(take(s.permuted_idx));
  ws.act = reinterpret_cast<__nv_bfloat16*>(take(s.act));
  ws.y = reinterpret_cast<__nv_bfloat16*>(take(s.y));
  ws.tile_counters = reinterpret_cast<int32_t*>(take(s.tile_counters));
  ws.x8 = reinterpret_cast<uint8_t*>(take(s.x8));
  ws.x_scale = reinterpret_cast<float*>(take(s.x_scale));
  ws.act8 = reinterpret_cast<uint8_t*>(take(s.act8));
  ws.act_scale = reinterpret_cast<float*>(take(s.act_scale));
  return ws;
}

}  // namespace detail

Status workspace_size(const MoeShape& shape, size_t* workspace_bytes) {
  FUSEDMOE_RETURN_IF_ERROR(detail::validate_shape(shape));
  if (workspace_bytes == nullptr) {
    return detail::invalid_argument("workspace_bytes", "a pointer", "nullptr");
  }
  *workspace_bytes = detail::workspace_layout_bytes(shape, false);
  return Status::Ok();
}

Status workspace_size(const MoeShape& shape, DType weights_dtype, size_t* workspace_bytes) {
  FUSEDMOE_RETURN_IF_ERROR(detail::validate_shape(shape));
  if (weights_dtype != DType::kBF16 && weights_dtype != DType::kFP8E4M3) {
    return detail::invalid_argument("weights_dtype", "bf16 (0) or fp8_e4m3 (2)",
                                    detail::dtype_str(weights_dtype));
  }
  if (weights_dtype == DType::kFP8E4M3) FUSEDMOE_RETURN_IF_ERROR(detail::validate_fp8_shape(shape));
  if (workspace_bytes == nullptr) {
    return detail::invalid_argument("workspace_bytes", "a pointer", "nullptr");
  }
  *workspace_bytes = detail::workspace_layout_bytes(shape, weights_dtype == DType::kFP8E4M3);
  return Status::Ok();
}

Status run(const MoeArguments& args, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using namespace detail;
  FUSEDMOE_RETURN_IF_ERROR(validate(args));
  const bool fp8 = args.weights_dtype == DType::kFP8E4M3;
  const MoeShape& shape = args.shape;
  if (shape.num_tokens == 0) return Status::Ok();  // nothing to do; the workspace may be null
  const size_t needed_bytes = workspace_layout_bytes(shape, fp8);
  if (workspace_bytes < needed_bytes) {
    return Status::Error(StatusCode::kWorkspaceTooSmall,
                         "workspace_bytes: expected >= " + std::to_string(needed_bytes) +
                             " (workspace_size for num_tokens " + std::to_string(shape.num_tokens) +
                             (fp8 ? " and fp8 weights" : "") +
                             "), got " + std::to_string(workspace_bytes));
  }
  if (workspace == nullptr) return invalid_argument("workspace", "a pointer", "nullptr");
  // The kernels read x, the weights and every workspace region with 16-byte copies (cp.async,
  // TMA, vector loads; the regions lie at 256-byte multiples from the workspace's start):
  // checked here, before anything is enqueued, so a rejected call writes nothing.
  FUSEDMOE_RETURN_IF_ERROR(check_aligned(workspace, "workspace"));
  FUSEDMOE_RETURN_IF_ERROR(check_aligned(args.hidden_states, "hidden_states"));
  FUSEDMOE_RETURN_IF_ERROR(check_aligned(args.gemm1_weights, "gemm1_weights"));
  FUSEDMOE_RETURN_IF_ERROR(check_aligned(args.gemm2_weights, "gemm2_weights"));

  // Few rows per expert: the weight-streaming decode GEMMs, same arguments, each GEMM chosen on
  // its own (decode_heuristics.h). The choice depends on host-known sizes only, so a captured
  // graph keeps its path.
  int num_sms = 0;
  FUSEDMOE_CUDA_RETURN_IF_ERROR(current_num_sms(&num_sms),
                                "cudaGetDevice / cudaDeviceGetAttribute (SM count)");
  // A non-gated GEMM1 is GEMM2-shaped (N = I output columns, each its own activation): it runs
  // on GEMM2's kernels with the rows of x gathered.
  const bool gated = is_gated(args.activation);
  // The FP8 variant takes the same choice for its decode GEMMs (the BF16 crossover: the FP8
  // kernels halve both forms' weight bytes alike).
  const bool decode1 =
      gated ? heuristics::use_decode_gemm1(shape.num_tokens, shape.top_k, shape.num_experts,
                                           shape.local_num_experts, shape.intermediate_size,
                                           num_sms)
            : heuristics::use_decode_gemm2(shape.num_tokens, shape.top_k, shape.num_experts,
                                           shape.local_num_experts, shape.intermediate_size,
                                           num_sms);
  const bool decode2 = heuristics::use_decode_gemm2(shape.num_tokens, shape.top_k,
                                                    shape.num_experts, shape.local_num_experts,
                                                    shape.hidden_size, num_sms);
  const auto gemm2 = decode2 ? launch_decode_gemm2 : launch_gemm2;
  const GemmEpilogue epilogue1 = gemm1_epilogue(args), epilogue2 = gemm2_epilogue(args);

  const Workspace ws = carve_workspace(shape, workspace, fp8);
  const int64_t num_slots = shape.num_tokens * shape.top_k;
  const int32_t num_local = shape.local_num_experts;
  const bool pdl = args.enable_pdl;
  // !do_finalize: the map and y go straight into the caller's tensors.
  int32_t* permuted_idx = args.do_finalize ? ws.permuted_idx : args.expanded_idx_to_permuted_idx;
  __nv_bfloat16* y = args.do_finalize ? ws.y : static_cast<__nv_bfloat16*>(args.gemm2_output);
  // A prefill GEMM that claims its tiles (heuristics::grouped_claim_tiles) does so through two
  // counters that must start at zero; the workspace holds anything, so they are zeroed first,
  // before the routing kernel (not between kernels, where a memset would break the PDL chain).
  // Each launch leaves them zero for the next.
  const bool claim1 = !decode1 && heuristics::grouped_claim_tiles(shape.num_tokens, shape.top_k,
                                                                  shape.num_experts,
                                                                  shape.hidden_size);
  const bool claim2 = !decode2 &&
                      heuristics::grouped_claim_tiles(shape.num_tokens, shape.top_k,
                                                      shape.num_experts, shape.intermediate_size);
  if (claim1 || claim2) {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(ws.tile_counters, 0, 2 * sizeof(int32_t), stream), "cudaMemsetAsync");
  }

  // 1. Routing: per slot, its local expert key and weight.
  RoutingOutputs routing;
  routing.slot_key = ws.slot_key;
  routing.slot_weight = ws.slot_weight;
  routing.expert_weights = args.do_finalize ? nullptr : args.expert_weights;
  routing.expert_weights_dtype = args.expert_weights_dtype;
  routing.routing_replay_out = args.routing_replay_out;
  if (fp8 && fp8_x_by_routing(args)) {  // FP8 calls take no routing weights on the input
    routing.x = static_cast<const __nv_bfloat16*>(args.hidden_states);
    routing.x8 = ws.x8;
    routing.x_scale = ws.x_scale;
  }
  if (args.logits.logits) {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_route(shape, args.logits, routing, pdl, stream),
                                  "launch_route");
  } else {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_decode_topk(shape, args.routed, routing, pdl, stream),
                                  "launch_decode_topk");
  }

  // 1b. Routing weights on the input (K == 1): x' = bf16(x * w) into the y region, which nothing
  // else uses before GEMM2 writes it (after GEMM1, its only reader, has finished); ws.y even
  // when !do_finalize, since a caller's gemm2_output may be unaligned for GEMM1's 16-byte loads.
  const auto* x = static_cast<const __nv_bfloat16*>(args.hidden_states);
  if (args.use_routing_scales_on_input) {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_scale_rows(x, ws.slot_weight, shape.num_tokens,
                                                    shape.hidden_size, ws.y, pdl, stream),
                                  "launch_scale_rows");
    x = ws.y;
  }

  // 1c. FP8: x quantised, before the sort (quantize_fp8_x; fp8_x_by_routing: the routing kernel
  // did it).
  Fp8A x8;
  if (fp8) FUSEDMOE_RETURN_IF_ERROR(quantize_fp8_x(args, ws, x, &x8, stream));

  // 2. Permutation: local slots sorted by (local expert, slot), stable and deterministic; at
  // decode sizes (T * K <= 4096) one CTA instead of three kernels (decode_heuristics.h).
  if (heuristics::use_small_sort(num_slots)) {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        launch_expert_sort_small(ws.slot_key, num_slots, shape.top_k, num_local, ws.expert_offsets,
                                 ws.gather_rows, permuted_idx, pdl, stream),
        "launch_expert_sort_small");
  } else {
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        launch_expert_count(ws.slot_key, num_slots, num_local, ws.chunk_prefix, pdl, stream),
        "launch_expert_count");
    FUSEDMOE_CUDA_RETURN_IF_ERROR(launch_expert_offsets(num_slots, num_local, ws.chunk_prefix,
                                                        ws.expert_offsets, pdl, stream),
                                  "launch_expert_offsets");
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        launch_permute(ws.slot_key, num_slots, shape.top_k, num_local, ws.chunk_prefix,
                       ws.expert_offsets, ws.gather_rows, permuted_idx, pdl, stream),
        "launch_permute");
  }

  // 2b. FP8 prefill: x8 in expert order (fp8_x_permuted).
  if (fp8 && fp8_x_permuted(shape, decode1)) {
    FUSEDMOE_RETURN_IF_ERROR(permute_fp8_x(args, ws, &x8, stream));
  }

  // 3. The grouped GEMMs over the expert-sorted rows.
  GroupedRows rows;
  rows.expert_offsets = ws.expert_offsets;
  rows.num_experts = num_local;
  rows.max_rows = num_slots;
  rows.slot_key = ws.slot_key;  // the decode GEMM1 may start from them (use_decode_early_start)
  rows.top_k = shape.top_k;
  const auto* w1 = static_cast<const __nv_bfloat16*>(args.gemm1_weights);
  const auto* w2 = static_cast<const __nv_bfloat16*>(args.gemm2_weights);
  const int64_t H = shape.hidden_size, I = shape.intermediate_size;
  rows.tile_counters = claim1 ? ws.tile_counters : nullptr;
  if (fp8) {
    FUSEDMOE_RETURN_IF_ERROR(run_fp8_gemms(args, ws, rows, claim2, decode1, decode2, x8, y,
                                           epilogue1, epilogue2, stream));
  } else if (gated) {
    const auto gemm1 = decode1 ? launch_decode_gemm1_swiglu : launch_gemm1_swiglu;
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        gemm1(rows, x, ws.gather_rows, H, I, w1, ws.act, pdl, stream, epilogue1),
        "launch_gemm1_swiglu");
  } else {
    const auto gemm1 = decode1 ? launch_decode_gemm2 : launch_gemm2;
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        gemm1(rows, x, H, I, w1, ws.act, pdl, stream, epilogue1, ws.gather_rows),
        "launch_gemm2 (non-gated GEMM1)");
  }
  if (!fp8) {
    rows.tile_counters = claim2 ? ws.tile_counters : nullptr;
    FUSEDMOE_CUDA_RETURN_IF_ERROR(
        gemm2(rows, ws.act, I, H, w2, y, pdl, stream, epilogue2, nullptr), "launch_gemm2");
  }
  if (!args.do_finalize) return Status::Ok();

  // 4. Finalize: the weighted sum per token, in ascending k (weights of 1 when they went into
  // the input).
  const float* weights = args.use_routing_scales_on_input ? nullptr : ws.slot_weight;
  FUSEDMOE_CUDA_RETURN_IF_ERROR(
      launch_finalize(y, weights, ws.permuted_idx, shape.num_tokens, shape.top_k, shape.num_experts,
                      shape.local_num_experts, H, static_cast<__nv_bfloat16*>(args.output), pdl,
                      stream),
      "launch_finalize");
  return Status::Ok();
}

}  // namespace fusedmoe
