"""Argument checks of the Python API, run before any kernel.

Every failure names the argument: TypeError for a non-tensor or a wrong dtype, ValueError for a
wrong device, shape, stride or value. The C++ layer validates again (SPEC's rules), so these
checks exist to give PyTorch users messages in their own argument names and to stop a CUDA
kernel from ever seeing a tensor whose memory does not match what the pointer promises.
"""

import numbers
from typing import Optional, Sequence, Tuple

import torch

MAX_TOP_K = 32
MAX_NUM_EXPERTS = 1024
SIZE_MULTIPLE = 8
FP8_BLOCK = 128  # the FP8 variant's block: H and I multiples of it

# FlashInfer's ActivationType numbers of the activations fusedmoe computes (api.ActivationType).
SWIGLU_ACTIVATION = 3
SWIGLU_STEP_ACTIVATION = 7
GATED_ACTIVATIONS = (3, 4, 7, 8)  # Swiglu, Geglu, SwigluStep, GegluTanh
NON_GATED_ACTIVATIONS = (0, 1, 2, 6)  # Gelu, Relu, Silu, Relu2


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    tensor,
    dtypes: Sequence[torch.dtype],
    shape: Tuple[Optional[int], ...],
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Checks one tensor argument and returns it.

    ``shape`` entries of None match any size; ``device`` None skips the device check.
    Raises TypeError (not a tensor, wrong dtype) or ValueError (rank, size, device, layout).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in dtypes:
        raise TypeError(
            f"{name}: expected dtype {_dtype_names(dtypes)}, got {str(tensor.dtype).replace('torch.', '')}"
        )
    if tensor.dim() != len(shape):
        raise ValueError(
            f"{name}: expected {len(shape)} dimensions {_shape_text(shape)}, got shape {tuple(tensor.shape)}"
        )
    for expected, actual in zip(shape, tensor.shape):
        if expected is not None and expected != actual:
            raise ValueError(f"{name}: expected shape {_shape_text(shape)}, got {tuple(tensor.shape)}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name}: expected device {device} (that of hidden_states), got {tensor.device}")
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous (row-major) tensor, got strides {tuple(tensor.stride())}"
        )
    return tensor


def _shape_text(shape: Tuple[Optional[int], ...]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """Checks that ``value`` is an int in [low, high] (high None: unbounded) and returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected {bound}, got {value}")
    return value


def check_optional_float(name: str, value, default: float) -> float:
    """Checks that ``value`` is None (giving ``default``) or a real number (an int, a float or a
    NumPy scalar; not a bool, a string or a tensor) and returns it as a float."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or None, got {type(value).__name__}")
    return float(value)


def check_optional_bool(name: str, value, default: bool) -> bool:
    """Checks that ``value`` is None (giving ``default``) or a bool and returns it."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool or None, got {type(value).__name__}")
    return value


def check_activation(activation_type) -> int:
    """The activation as an int: one of FlashInfer's ActivationType values fusedmoe computes."""
    if isinstance(activation_type, bool) or not isinstance(activation_type, int):
        raise TypeError(
            f"activation_type: expected an int or ActivationType, got {type(activation_type).__name__}"
        )
    if activation_type not in GATED_ACTIVATIONS + NON_GATED_ACTIVATIONS:
        raise ValueError(
            "activation_type: expected one of Gelu 0, Relu 1, Silu 2, Swiglu 3, Geglu 4, Relu2 6, "
            f"SwigluStep 7, GegluTanh 8, got {activation_type}"
        )
    return int(activation_type)


def check_problem(
    hidden_states,
    gemm1_weights,
    gemm2_weights,
    num_experts,
    top_k,
    intermediate_size,
    local_expert_offset,
    local_num_experts,
    activation_type=SWIGLU_ACTIVATION,
    fp8=False,
) -> Tuple[int, int, torch.device]:
    """Checks the tensors and sizes every call shares. Returns (num_tokens, hidden_size, device).

    gemm1_weights is [E_loc, 2I, H] for a gated ``activation_type``, [E_loc, I, H] otherwise.
    ``fp8``: the FP8 variant (float8_e4m3fn weights, bf16 or float8_e4m3fn hidden states, H and I
    multiples of 128).
    """
    weight_dtypes = (torch.float8_e4m3fn,) if fp8 else (torch.bfloat16,)
    hidden_dtypes = (torch.bfloat16, torch.float8_e4m3fn) if fp8 else (torch.bfloat16,)
    check_tensor("hidden_states", hidden_states, hidden_dtypes, (None, None))
    device = hidden_states.device
    num_tokens, hidden_size = hidden_states.shape
    num_experts = check_int("num_experts", num_experts, 1, MAX_NUM_EXPERTS)
    check_int("top_k", top_k, 1, min(MAX_TOP_K, num_experts))
    check_int("intermediate_size", intermediate_size, 1)
    if intermediate_size % SIZE_MULTIPLE:
        raise ValueError(
            f"intermediate_size: expected a multiple of {SIZE_MULTIPLE}, got {intermediate_size}"
        )
    if hidden_size == 0 or hidden_size % SIZE_MULTIPLE:
        raise ValueError(
            f"hidden_states: expected hidden size (dim 1) a positive multiple of {SIZE_MULTIPLE}, got {hidden_size}"
        )
    if fp8 and intermediate_size % FP8_BLOCK:
        raise ValueError(
            f"intermediate_size: expected a multiple of {FP8_BLOCK} with FP8 weights, got {intermediate_size}"
        )
    if fp8 and hidden_size % FP8_BLOCK:
        raise ValueError(
            f"hidden_states: expected hidden size (dim 1) a multiple of {FP8_BLOCK} with FP8 weights, "
            f"got {hidden_size}"
        )
    check_int("local_num_experts", local_num_experts, 1, num_experts)
    check_int("local_expert_offset", local_expert_offset, 0, num_experts - local_num_experts)
    gemm1_rows = (2 if activation_type in GATED_ACTIVATIONS else 1) * intermediate_size
    check_tensor(
        "gemm1_weights",
        gemm1_weights,
        weight_dtypes,
        (local_num_experts, gemm1_rows, hidden_size),
        device,
    )
    check_tensor(
        "gemm2_weights",
        gemm2_weights,
        weight_dtypes,
        (local_num_experts, hidden_size, intermediate_size),
        device,
    )
    return num_tokens, hidden_size, device


def check_layout(use_shuffled_weight, weight_layout) -> None:
    """Only fusedmoe's canonical layout exists (SPEC); FlashInfer's shuffled/blocked ones do not."""
    if use_shuffled_weight:
        raise ValueError(
            "use_shuffled_weight: expected False (fusedmoe reads canonical weights: gemm1 "
            "[E_loc, 2I, H] up rows then gate rows (or [E_loc, I, H] for a non-gated activation), "
            "gemm2 [E_loc, H, I]; FlashInfer's shuffled "
            "layout is not accepted), got True"
        )
    if isinstance(weight_layout, bool) or not isinstance(weight_layout, int):
        raise TypeError(
            f"weight_layout: expected an int or WeightLayout, got {type(weight_layout).__name__}"
        )
    if int(weight_layout) != 0:
        raise ValueError(
            f"weight_layout: expected WeightLayout.Canonical (0), got {int(weight_layout)} "
            "(FlashInfer's MajorMn/BlockMajorK layouts are not accepted; use fusedmoe.prepare_weights)"
        )


def check_expert_mlp(
    activation_type: int,
    gemm1_alpha,
    gemm1_beta,
    gemm1_clamp_limit,
    gemm1_bias,
    gemm2_bias,
    use_routing_scales_on_input,
    top_k: int,
    local_num_experts: int,
    intermediate_size: int,
    hidden_size: int,
    device: torch.device,
) -> None:
    """The activation's per-expert parameters, the expert biases and input-side routing weights."""
    names = {3: "Swiglu", 7: "SwigluStep"}
    name = names.get(activation_type, f"activation_type {activation_type}")
    for arg, tensor, allowed in (
        ("gemm1_alpha", gemm1_alpha, (SWIGLU_ACTIVATION,)),
        ("gemm1_beta", gemm1_beta, (SWIGLU_ACTIVATION,)),
        ("gemm1_clamp_limit", gemm1_clamp_limit, (SWIGLU_ACTIVATION, SWIGLU_STEP_ACTIVATION)),
    ):
        if tensor is None:
            continue
        if activation_type not in allowed:
            readers = " and ".join(names[a] for a in allowed)
            raise ValueError(f"{arg}: expected None with {name} (only {readers} read it), got a tensor")
        check_tensor(arg, tensor, (torch.float32,), (local_num_experts,), device)
    gemm1_columns = (2 if activation_type in GATED_ACTIVATIONS else 1) * intermediate_size
    if gemm1_bias is not None:
        check_tensor("gemm1_bias", gemm1_bias, (torch.bfloat16, torch.float32),
                     (local_num_experts, gemm1_columns), device)
    if gemm2_bias is not None:
        check_tensor("gemm2_bias", gemm2_bias, (torch.bfloat16, torch.float32),
                     (local_num_experts, hidden_size), device)
    if not isinstance(use_routing_scales_on_input, bool):
        raise TypeError(
            f"use_routing_scales_on_input: expected a bool, got {type(use_routing_scales_on_input).__name__}"
        )
    if use_routing_scales_on_input and top_k != 1:
        raise ValueError(
            f"use_routing_scales_on_input: expected top_k == 1 (the weight scales the expert's input), got top_k {top_k}"
        )


def check_unsupported(norm_topk_prob=True, gemm1_lora_delta=None) -> None:
    """FlashInfer options fusedmoe does not implement: anything but their defaults is an error."""
    if not norm_topk_prob:
        raise ValueError(
            "norm_topk_prob: expected True (the weights of each routing method are fixed by SPEC), got False"
        )
    if gemm1_lora_delta is not None:
        raise ValueError("gemm1_lora_delta: expected None (LoRA is not supported), got a tensor")


def check_optional_output(
    name: str, tensor, dtype: torch.dtype, shape: Tuple[int, ...], device: torch.device
) -> Optional[torch.Tensor]:
    """Checks an optional caller-given output tensor (None passes)."""
    if tensor is None:
        return None
    return check_tensor(name, tensor, (dtype,), shape, device)
