// fusedmoe._ext: the nanobind layer between the Python package and the public C++ API.
//
// Tensors arrive as DLPack views (nb::ndarray, untyped): this file knows no framework. The Python
// side (python/fusedmoe/_checks.py) has already checked device, dtype, shape and contiguity and
// names the argument when one is wrong; this layer only turns views into the raw pointers of
// MoeArguments, reads dtypes off DLPack (float8_e4m3fn tensors come as uint8 views), and turns a
// non-ok Status into a Python exception:
//   kInvalidArgument, kWorkspaceTooSmall -> ValueError
//   kNotImplemented                     -> NotImplementedError
//   kCudaError                          -> RuntimeError
// The CUDA stream comes in as an integer (torch.cuda.current_stream().cuda_stream). The GIL is
// released while the operator runs (the CPU reference takes seconds on big shapes).
#include <cstdint>
#include <optional>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "fusedmoe/fusedmoe.h"

namespace nb = nanobind;

namespace {

// Untyped and unconstrained: a constraint would let nanobind copy a mismatching tensor, and an
// output written into a copy is lost. Python checks contiguity before the call.
using Array = nb::ndarray<>;
using OptArray = std::optional<Array>;

// Raises the Python exception that matches a non-ok Status.
void throw_if_error(const fusedmoe::Status& status) {
  if (status.ok()) return;
  const std::string message =
      std::string("fusedmoe: ") + status.message + " [" + fusedmoe::status_code_name(status.code) + "]";
  switch (status.code) {
    case fusedmoe::StatusCode::kNotImplemented:
      PyErr_SetString(PyExc_NotImplementedError, message.c_str());
      throw nb::python_error();
    case fusedmoe::StatusCode::kCudaError:
      throw std::runtime_error(message);
    default:
      throw nb::value_error(message.c_str());
  }
}

// DLPack dtype -> fusedmoe DType; only bf16 and fp32 name one.
fusedmoe::DType to_dtype(const Array& array, const char* argument) {
  if (array.dtype() == nb::dtype<float>()) return fusedmoe::DType::kFP32;
  const nb::dlpack::dtype bf16{static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
  if (array.dtype() == bf16) return fusedmoe::DType::kBF16;
  throw nb::type_error((std::string(argument) + ": expected bfloat16 or float32").c_str());
}

// One-byte elements: the uint8 views the Python layer makes of float8_e4m3fn tensors.
bool is_byte(const Array& array) { return array.dtype() == nb::dtype<uint8_t>(); }

// A tensor with no elements (T == 0) may export a null data pointer, but MoeArguments tells a
// given input from a missing one by its pointer: a given empty tensor gets this never-read address.
alignas(16) char g_empty_tensor[16];

void* data_of(const Array& array) { return array.data() ? array.data() : g_empty_tensor; }
void* data_of(const OptArray& array) { return array ? data_of(*array) : nullptr; }

fusedmoe::MoeShape make_shape(int64_t num_tokens, int64_t hidden_size, int64_t intermediate_size,
                              int64_t num_experts, int64_t top_k, int64_t local_expert_offset,
                              int64_t local_num_experts) {
  fusedmoe::MoeShape shape;
  shape.num_tokens = num_tokens;
  shape.hidden_size = hidden_size;
  shape.intermediate_size = intermediate_size;
  shape.num_experts = static_cast<int32_t>(num_experts);
  shape.top_k = static_cast<int32_t>(top_k);
  shape.local_expert_offset = static_cast<int32_t>(local_expert_offset);
  shape.local_num_experts = static_cast<int32_t>(local_num_experts);
  return shape;
}

// Runs the operator: on the GPU (run) when `on_gpu`, else the CPU reference (run_reference).
// Exactly one of routing_logits / topk_ids is given; topk_weights == None means packed topk_ids.
void moe(const Array& hidden_states, const Array& gemm1_weights, const Array& gemm2_weights,
         const OptArray& routing_logits, const OptArray& routing_bias, const OptArray& topk_ids,
         const OptArray& topk_weights, int64_t intermediate_size, int64_t num_experts,
         int64_t top_k, int64_t local_expert_offset, int64_t local_num_experts,
         int64_t routing_method, int64_t n_group, int64_t topk_group,
         double routed_scaling_factor, int64_t activation, const OptArray& gemm1_alpha,
         const OptArray& gemm1_beta, const OptArray& gemm1_clamp_limit,
         const OptArray& gemm1_bias, const OptArray& gemm2_bias,
         bool use_routing_scales_on_input, bool expert_weights_fp32, bool do_finalize,
         const OptArray& output, const OptArray& gemm2_output, const OptArray& expert_weights,
         const OptArray& expanded_idx_to_permuted_idx, const OptArray& routing_replay_out,
         const OptArray& workspace, bool enable_pdl, bool on_gpu, uintptr_t stream,
         const OptArray& hidden_states_scale, const OptArray& gemm1_weights_scale,
         const OptArray& gemm2_weights_scale) {
  fusedmoe::MoeArguments args;
  args.shape = make_shape(static_cast<int64_t>(hidden_states.shape(0)),
                          static_cast<int64_t>(hidden_states.shape(1)), intermediate_size,
                          num_experts, top_k, local_expert_offset, local_num_experts);
  args.hidden_states = data_of(hidden_states);
  args.gemm1_weights = data_of(gemm1_weights);
  args.gemm2_weights = data_of(gemm2_weights);
  args.weight_layout = fusedmoe::WeightLayout::kCanonical;
  args.activation = static_cast<fusedmoe::Activation>(activation);
  args.gemm1_alpha = static_cast<const float*>(data_of(gemm1_alpha));
  args.gemm1_beta = static_cast<const float*>(data_of(gemm1_beta));
  args.gemm1_clamp_limit = static_cast<const float*>(data_of(gemm1_clamp_limit));
  if (gemm1_bias) {
    args.gemm1_bias = data_of(gemm1_bias);
    args.gemm1_bias_dtype = to_dtype(*gemm1_bias, "gemm1_bias");
  }
  if (gemm2_bias) {
    args.gemm2_bias = data_of(gemm2_bias);
    args.gemm2_bias_dtype = to_dtype(*gemm2_bias, "gemm2_bias");
  }
  args.use_routing_scales_on_input = use_routing_scales_on_input;
  // The FP8 variant: e4m3 tensors arrive as uint8 views (one byte per element).
  if (is_byte(gemm1_weights)) {
    args.weights_dtype = fusedmoe::DType::kFP8E4M3;
    args.gemm1_weights_scale = static_cast<const float*>(data_of(gemm1_weights_scale));
    args.gemm2_weights_scale = static_cast<const float*>(data_of(gemm2_weights_scale));
  }
  if (is_byte(hidden_states)) {
    args.hidden_states_dtype = fusedmoe::DType::kFP8E4M3;
    args.hidden_states_scale = static_cast<const float*>(data_of(hidden_states_scale));
  }

  if (routing_logits) {
    args.logits.logits = data_of(routing_logits);
    args.logits.logits_dtype = to_dtype(*routing_logits, "routing_logits");
    if (routing_bias) {
      args.logits.bias = data_of(routing_bias);
      args.logits.bias_dtype = to_dtype(*routing_bias, "routing_bias");
    }
    args.logits.method = static_cast<fusedmoe::RoutingMethod>(routing_method);
    args.logits.n_group = static_cast<int32_t>(n_group);
    args.logits.topk_group = static_cast<int32_t>(topk_group);
    args.logits.routed_scaling_factor = static_cast<float>(routed_scaling_factor);
  }
  if (topk_ids) {
    args.routed.topk_ids = static_cast<const int32_t*>(data_of(topk_ids));
    if (topk_weights) {
      args.routed.topk_weights = data_of(topk_weights);
      args.routed.weights_dtype = to_dtype(*topk_weights, "topk_weights");
    }
  }
  args.expert_weights_dtype =
      expert_weights_fp32 ? fusedmoe::DType::kFP32 : fusedmoe::DType::kBF16;

  args.do_finalize = do_finalize;
  args.output = data_of(output);
  args.gemm2_output = data_of(gemm2_output);
  args.expert_weights = data_of(expert_weights);
  args.expanded_idx_to_permuted_idx = static_cast<int32_t*>(data_of(expanded_idx_to_permuted_idx));
  args.routing_replay_out = static_cast<int16_t*>(data_of(routing_replay_out));
  args.enable_pdl = enable_pdl;

  fusedmoe::Status status;
  if (on_gpu) {
    void* workspace_ptr = data_of(workspace);
    const size_t workspace_bytes = workspace ? workspace->nbytes() : 0;
    nb::gil_scoped_release release;
    status = fusedmoe::run(args, workspace_ptr, workspace_bytes,
                           reinterpret_cast<cudaStream_t>(stream));
  } else {
    nb::gil_scoped_release release;
    status = fusedmoe::run_reference(args);
  }
  throw_if_error(status);
}

// Bytes of GPU workspace for a call with this shape (monotone in num_tokens).
int64_t workspace_size(int64_t num_tokens, int64_t hidden_size, int64_t intermediate_size,
                       int64_t num_experts, int64_t top_k, int64_t local_expert_offset,
                       int64_t local_num_experts, bool fp8) {
  size_t bytes = 0;
  throw_if_error(fusedmoe::workspace_size(
      make_shape(num_tokens, hidden_size, intermediate_size, num_experts, top_k,
                 local_expert_offset, local_num_experts),
      fp8 ? fusedmoe::DType::kFP8E4M3 : fusedmoe::DType::kBF16, &bytes));
  return static_cast<int64_t>(bytes);
}

// First slot (t * K + k) whose expert id lies outside [0, E), and that id; (-1, 0) when all are
// valid. Host tensors are read directly; device tensors synchronise `stream`.
nb::tuple validate_routing(const Array& topk_ids, int64_t num_experts, bool packed, bool on_gpu,
                           uintptr_t stream) {
  fusedmoe::RoutingCheck check;
  const auto* ids = static_cast<const int32_t*>(data_of(topk_ids));
  const auto num_tokens = static_cast<int64_t>(topk_ids.shape(0));
  const auto top_k = static_cast<int32_t>(topk_ids.shape(1));
  fusedmoe::Status status;
  {
    nb::gil_scoped_release release;
    status = on_gpu ? fusedmoe::validate_routing(ids, num_tokens, top_k,
                                                 static_cast<int32_t>(num_experts), packed, &check,
                                                 reinterpret_cast<cudaStream_t>(stream))
                    : fusedmoe::validate_routing_host(ids, num_tokens, top_k,
                                                      static_cast<int32_t>(num_experts), packed,
                                                      &check);
  }
  throw_if_error(status);
  return nb::make_tuple(check.first_bad_slot, check.bad_id);
}

}  // namespace

NB_MODULE(_ext, m) {
  m.doc() = "fusedmoe C++ operator (nanobind over DLPack); use the fusedmoe package, not this module";
  m.def("moe", &moe, nb::arg("hidden_states"), nb::arg("gemm1_weights"), nb::arg("gemm2_weights"),
        nb::arg("routing_logits").none(), nb::arg("routing_bias").none(),
        nb::arg("topk_ids").none(), nb::arg("topk_weights").none(),
        nb::arg("intermediate_size"), nb::arg("num_experts"), nb::arg("top_k"),
        nb::arg("local_expert_offset"), nb::arg("local_num_experts"), nb::arg("routing_method"),
        nb::arg("n_group"), nb::arg("topk_group"), nb::arg("routed_scaling_factor"),
        nb::arg("activation"), nb::arg("gemm1_alpha").none(), nb::arg("gemm1_beta").none(),
        nb::arg("gemm1_clamp_limit").none(), nb::arg("gemm1_bias").none(),
        nb::arg("gemm2_bias").none(), nb::arg("use_routing_scales_on_input"),
        nb::arg("expert_weights_fp32"), nb::arg("do_finalize"), nb::arg("output").none(),
        nb::arg("gemm2_output").none(), nb::arg("expert_weights").none(),
        nb::arg("expanded_idx_to_permuted_idx").none(), nb::arg("routing_replay_out").none(),
        nb::arg("workspace").none(), nb::arg("enable_pdl"), nb::arg("on_gpu"), nb::arg("stream"),
        nb::arg("hidden_states_scale").none() = nb::none(),
        nb::arg("gemm1_weights_scale").none() = nb::none(),
        nb::arg("gemm2_weights_scale").none() = nb::none(),
        "Runs the operator (GPU run() or CPU run_reference()) on pre-checked tensors; uint8 "
        "weights (hidden states) are the FP8 variant's e4m3 bytes with their scales.");
  m.def("workspace_size", &workspace_size, nb::arg("num_tokens"), nb::arg("hidden_size"),
        nb::arg("intermediate_size"), nb::arg("num_experts"), nb::arg("top_k"),
        nb::arg("local_expert_offset"), nb::arg("local_num_experts"), nb::arg("fp8") = false,
        "Bytes of GPU workspace that run() needs for this shape (fp8: FP8 weights).");
  m.def("permuted_capacity", &fusedmoe::permuted_capacity, nb::arg("num_tokens"),
        nb::arg("top_k"), nb::arg("local_num_experts"),
        "Rows of gemm2_output for a do_finalize=False call with num_tokens tokens.");
  m.def("validate_routing", &validate_routing, nb::arg("topk_ids"), nb::arg("num_experts"),
        nb::arg("packed"), nb::arg("on_gpu"), nb::arg("stream"),
        "(first_bad_slot, bad_id) of the first expert id outside [0, num_experts), or (-1, 0).");
  m.attr("MAX_TOP_K") = fusedmoe::kMaxTopK;
  m.attr("MAX_NUM_EXPERTS") = fusedmoe::kMaxNumExperts;
  m.attr("SIZE_MULTIPLE") = fusedmoe::kSizeMultiple;
}
