"""The public Python API: FlashInfer-compatible entry points plus fusedmoe's helpers.

``trtllm_bf16_moe`` and ``trtllm_bf16_routed_moe`` take FlashInfer's parameters with its names,
order and defaults (FlashInfer 0.7's Python API: through ``activation_type``,
``routing_replay_out``, ``gemm1_alpha``, ``gemm1_beta``, ``gemm1_clamp_limit``, ``output`` and
``workspace_buffer``), then fusedmoe's keyword-only extras (``gemm1_bias=``, ``gemm2_bias=``,
``use_routing_scales_on_input=``, ``expert_weights_dtype=``, and ``workspace=``, the older name of
``workspace_buffer``). Differences, all SPEC's:

* ``use_shuffled_weight`` / ``weight_layout`` name fusedmoe's layouts; the defaults select the
  canonical layout (FlashInfer's defaults select its shuffled BlockMajorK layout, which is an error
  here);
* ``routing_method_type`` 0 (Default) is implemented; every method reads fp32 or bf16 logits;
* packed ids are decoded with SPEC's masked encoding (see ``pack_topk``).
"""

import contextlib
import enum
from typing import List, Optional, Tuple, Union

import torch

from . import _checks, _ext, _layouts, _ops


class RoutingMethod(enum.IntEnum):
    """Routing methods, numbered as SPEC pins them (FlashInfer's RoutingMethodType values)."""

    Default = 0  # top-K of softmax over all E; weights = those probabilities
    Renormalize = 1  # top-K of logits; weights = softmax over the K selected logits
    DeepSeekV3 = 2  # sigmoid + bias, group-limited top-K; s * scale / (sum s + 1e-20)
    Llama4 = 3  # K == 1; argmax of logits; weight = sigmoid(logit)
    RenormalizeNaive = 4  # top-K of softmax over all E; p / sum of the selected p
    TopK = 5  # top-K of logits; weights = raw logits
    SigmoidRenorm = 6  # top-K of sigmoid; s / sum of the selected s
    MiniMax2 = 7  # top-K of sigmoid + bias; s * scale / (sum s + 1e-20)
    Sigmoid = 8  # top-K of sigmoid; weights = s
    TopKSigmoid = 9  # top-K of logits; weights = sigmoid(logit)


class ActivationType(enum.IntEnum):
    """The activation between the GEMMs, with FlashInfer's ActivationType numbers.

    Gated (gemm1 [E_loc, 2I, H], rows [0, I) up, [I, 2I) gate): Swiglu (default; per-expert
    ``gemm1_alpha``, ``gemm1_beta``, ``gemm1_clamp_limit``), Geglu, SwigluStep, GegluTanh.
    Non-gated (gemm1 [E_loc, I, H]): Gelu, Relu, Silu, Relu2. FlashInfer's other values
    (SwigluBias 5, Identity 9, ...) are not offered: a ValueError.
    """

    Gelu = 0  # gelu(g), erf form
    Relu = 1  # max(g, 0)
    Silu = 2  # g * sigmoid(g)
    Swiglu = 3  # min(gate, l) * sigmoid(alpha * min(gate, l)) * (clamp(up, -l, l) + beta)
    Geglu = 4  # gelu(gate) * up, erf form
    Relu2 = 6  # max(g, 0)^2 (Nemotron-H)
    SwigluStep = 7  # min(silu(gate), l) * clamp(up, -l, l), l = gemm1_clamp_limit or 7
    GegluTanh = 8  # gelu_tanh(gate) * up

    @property
    def is_gated(self) -> bool:
        """True for the activations that read a gate and an up half of GEMM1's output."""
        return int(self) in _checks.GATED_ACTIVATIONS


class Fp8QuantizationType(enum.IntEnum):
    """FlashInfer's FP8 recipes (same numbers). fusedmoe offers DeepSeekFp8: float8_e4m3fn with one
    fp32 scale per 128x128 weight block and per 128-column group of each activation row."""

    NoneFp8 = 0
    DeepSeekFp8 = 1
    MxFp8 = 2
    PerTensorFp8 = 3
    PerChannelFp8 = 4


class WeightLayout(enum.IntEnum):
    """Weight layouts fusedmoe reads. Canonical: gemm1 [E_loc, 2I, H] (rows [0, I) up, [I, 2I)
    gate), gemm2 [E_loc, H, I], both row-major. Its value 0 equals FlashInfer's MajorK."""

    Canonical = 0


def permuted_capacity(num_tokens: int, top_k: int, local_num_experts: int) -> int:
    """Rows of ``gemm2_output`` for a do_finalize=False call with ``num_tokens`` tokens (T * K)."""
    _checks.check_int("num_tokens", num_tokens, 0)
    _checks.check_int("top_k", top_k, 1, _checks.MAX_TOP_K)
    _checks.check_int("local_num_experts", local_num_experts, 1, _checks.MAX_NUM_EXPERTS)
    return int(_ext.permuted_capacity(num_tokens, top_k, local_num_experts))


def workspace_size(
    num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    local_expert_offset: int = 0,
    local_num_experts: Optional[int] = None,
    *,
    weights_dtype: torch.dtype = torch.bfloat16,
) -> int:
    """Bytes of GPU workspace a call needs; a buffer sized for the largest T serves every smaller T.

    Only needed to pass ``workspace=`` yourself (one workspace per stream with calls in flight);
    otherwise each call takes its scratch from PyTorch's caching allocator on its stream.
    ``weights_dtype=torch.float8_e4m3fn`` sizes it for the FP8 block-scale variant (more: the
    quantised hidden states and activation).

    Raises:
        TypeError (a non-int size) or ValueError (a size out of range, another weights_dtype)
        naming the argument.
    """
    _check_sizes(num_tokens, hidden_size, intermediate_size, num_experts, top_k,
                 local_expert_offset, local_num_experts)
    if local_num_experts is None:
        local_num_experts = num_experts
    if weights_dtype not in (torch.bfloat16, torch.float8_e4m3fn):
        raise ValueError(
            f"weights_dtype: expected torch.bfloat16 or torch.float8_e4m3fn, got {weights_dtype}")
    return int(
        _ext.workspace_size(
            num_tokens, hidden_size, intermediate_size, num_experts, top_k, local_expert_offset,
            local_num_experts, weights_dtype == torch.float8_e4m3fn,
        )
    )


_INT64_MAX = 2**63 - 1  # num_tokens, H and I are int64 in the C++ API


def _check_sizes(num_tokens, hidden_size, intermediate_size, num_experts, top_k,
                 local_expert_offset, local_num_experts) -> None:
    """The integer arguments of workspace_size, each by its name, before the extension casts
    them (E, K, the offset and E_loc to int32: 2**32 + 64 experts would read as 64)."""
    _checks.check_int("num_tokens", num_tokens, 0, _INT64_MAX)
    _checks.check_int("hidden_size", hidden_size, 1, _INT64_MAX)
    _checks.check_int("intermediate_size", intermediate_size, 1, _INT64_MAX)
    _checks.check_int("num_experts", num_experts, 1, _checks.MAX_NUM_EXPERTS)
    _checks.check_int("top_k", top_k, 1, min(_checks.MAX_TOP_K, num_experts))
    if local_num_experts is not None:
        _checks.check_int("local_num_experts", local_num_experts, 1, num_experts)
    local = num_experts if local_num_experts is None else local_num_experts
    _checks.check_int("local_expert_offset", local_expert_offset, 0, num_experts - local)


def reserve_workspace(
    max_num_tokens: int,
    hidden_size: int,
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    local_expert_offset: int = 0,
    local_num_experts: Optional[int] = None,
    device=None,
    *,
    weights_dtype: torch.dtype = torch.bfloat16,
) -> int:
    """Optional warm-up: leaves a scratch block for up to ``max_num_tokens`` in PyTorch's cache.

    Calls without ``workspace=`` take their scratch per call from PyTorch's stream-ordered caching
    allocator on the current stream (so concurrent calls on different streams never share it).
    This allocates and frees that much on the current stream of ``device`` (default: current), so
    that the first call of that size finds the block cached instead of calling cudaMalloc. Calls
    are correct without it; CUDA graph capture draws from the graph's own pool either way.
    ``weights_dtype`` as in ``workspace_size`` (``torch.float8_e4m3fn`` for the FP8 variant, whose
    calls need more). Returns the bytes a call with ``max_num_tokens`` tokens needs.
    """
    needed = workspace_size(max_num_tokens, hidden_size, intermediate_size, num_experts, top_k,
                            local_expert_offset, local_num_experts, weights_dtype=weights_dtype)
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device: expected a cuda device, got {device}")
    _ops.call_scratch(device, needed)  # freed at once: the block stays in the cache
    return needed


def pack_topk(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """Packs ids [T, K] and weights [T, K] into int32 words: ``(id << 16) | (bf16_bits(w) & 0xFFFF)``.

    The weight is rounded to bf16. The mask keeps a negative weight from sign-extending into the
    id (FlashInfer's idiom corrupts it). The id field is a signed int16: an id outside
    [-2^15, 2^15) is packed as -1 (an id outside [0, num_experts), which contributes nothing),
    never wrapped onto a valid expert. No host synchronisation.
    """
    _checks.check_tensor(
        "topk_ids", topk_ids, (torch.int32, torch.int64, torch.int16), (None, None)
    )
    _checks.check_tensor(
        "topk_weights",
        topk_weights,
        (torch.bfloat16, torch.float32, torch.float16),
        tuple(topk_ids.shape),
        topk_ids.device,
    )
    weight_bits = topk_weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    ids = topk_ids
    if ids.dtype != torch.int16:  # int32 / int64 ids may not fit the 16-bit field
        fits = (ids >= -(2**15)) & (ids < 2**15)
        ids = torch.where(fits, ids, torch.full_like(ids, -1))
    return (ids.to(torch.int32) << 16) | weight_bits


def unpack_topk(packed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Splits packed int32 words [T, K] into (ids int32 [T, K], weights bf16 [T, K])."""
    _checks.check_tensor("packed", packed, (torch.int32,), (None, None))
    ids = packed >> 16  # arithmetic shift: the id is a signed int16
    weights = (packed & 0xFFFF).to(torch.int16).view(torch.bfloat16)
    return ids, weights


def prepare_weights(
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    weight_layout: int = WeightLayout.Canonical,
    *,
    gate_up: str = "up_gate",
    transposed: bool = False,
    gated: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Converts expert weights once, at load time, into fusedmoe's layout ``weight_layout``.

    Canonical: gemm1 [E_loc, 2I, H] with rows [0, I) up and [I, 2I) gate, gemm2 [E_loc, H, I]
    (``y = W @ x`` per expert), bf16, contiguous. ``w1, w2 = prepare_weights(w1, w2)`` validates
    canonical weights and returns them unchanged (no copy). The keyword options describe how a
    checkpoint stores them; a tensor that needs reordering or transposing comes back as a new
    contiguous canonical tensor (one copy, made here, once), one already in the canonical layout
    and contiguous comes back as is (gemm2 whenever ``transposed=False``, gemm1 with
    ``gated=False`` and ``transposed=False``):

    Args:
        gemm1_weights, gemm2_weights: bf16 expert weights (any strides when converted).
        weight_layout: the layout to produce; only ``WeightLayout.Canonical`` exists.
        gate_up: order of the 2I gate/up rows of gemm1: ``"up_gate"`` (canonical, rows [up; gate]),
            ``"gate_up"`` (rows [gate; up]: Hugging Face's ``gate_up_proj``, Qwen3-MoE, Mixtral,
            DeepSeek, Llama 4) or ``"interleaved"`` (row 2j gate j, row 2j+1 up j: GPT-OSS's
            ``gate_up_proj[..., ::2]`` is gate, ``[..., 1::2]`` up).
        transposed: True when stored for ``y = x @ W``: gemm1 [E, H, 2I] (the gate/up order then
            runs along the last dimension) and gemm2 [E, I, H] (GPT-OSS, Llama 4).
        gated: False for non-gated experts (``act(up) -> down``): gemm1 [E, I, H] ([E, H, I]
            transposed); ``gate_up`` must then stay "up_gate".

    Returns:
        (gemm1 [E_loc, 2I or I, H], gemm2 [E_loc, H, I]) to pass with ``use_shuffled_weight=False,
        weight_layout=weight_layout``.

    Raises:
        TypeError (a non-tensor, a dtype other than bf16, a non-bool option) or ValueError (shape,
        device, option value) naming the argument.
    """
    return _layouts.prepare_weights(gemm1_weights, gemm2_weights, weight_layout, gate_up, transposed, gated)


def prepare_gemm1_bias(bias: torch.Tensor, *, gate_up: str = "up_gate", gated: bool = True) -> torch.Tensor:
    """Converts a gemm1 bias once, at load time, into the canonical row order of ``prepare_weights``.

    ``bias`` is [E_loc, 2I] (gated) in the ``gate_up`` order of its weights (GPT-OSS's
    ``gate_up_proj_bias`` is "interleaved"), or [E_loc, I] with ``gated=False``; bf16 or fp32 (kept).
    Returns a contiguous [E_loc, 2I] tensor with [up; gate] columns (or the [E_loc, I] bias as is,
    made contiguous). The gemm2 bias [E_loc, H] has no gate/up order and needs no conversion.
    """
    return _layouts.prepare_gemm1_bias(bias, gate_up, gated)


def validate_routing(topk_ids, num_experts: int) -> Optional[Tuple[int, int]]:
    """Debugging helper: the first (slot t*K+k, id) whose expert id is outside [0, num_experts).

    ``topk_ids`` is packed int32 [T, K] or an (ids, weights) tuple. Returns None when every id is
    valid. Synchronous on CUDA tensors: never call it inside CUDA graph capture.
    """
    packed = not isinstance(topk_ids, (tuple, list))
    ids = topk_ids if packed else topk_ids[0]
    _checks.check_tensor("topk_ids", ids, (torch.int32,), (None, None))
    _checks.check_int("num_experts", num_experts, 1, _checks.MAX_NUM_EXPERTS)
    on_gpu = ids.device.type == "cuda"
    stream = torch.cuda.current_stream(ids.device).cuda_stream if on_gpu else 0
    # The kernel launches on the current device: that of the ids and of their stream.
    with torch.cuda.device(ids.device) if on_gpu else contextlib.nullcontext():
        slot, bad_id = _ext.validate_routing(ids, num_experts, packed, on_gpu, stream)
    return None if slot < 0 else (int(slot), int(bad_id))


def _expert_weights_fp32(expert_weights_dtype) -> bool:
    if expert_weights_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(
            f"expert_weights_dtype: expected torch.bfloat16 or torch.float32, got {expert_weights_dtype}"
        )
    return expert_weights_dtype == torch.float32


def _workspace_argument(workspace_buffer, workspace):
    """FlashInfer's ``workspace_buffer`` or fusedmoe's older keyword ``workspace`` (one of them)."""
    if workspace is not None and workspace_buffer is not None:
        raise ValueError("workspace: expected None when workspace_buffer is given (they are one argument)")
    return workspace_buffer if workspace_buffer is not None else workspace


def _run(
    hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
    topk_weights, num_experts, top_k, n_group, topk_group, intermediate_size, local_expert_offset,
    local_num_experts, routed_scaling_factor, routing_method_type, do_finalize, enable_pdl,
    tune_max_num_tokens, routing_replay_out, output, workspace, expert_weights_fp32, mlp,
    fp8_scales=None,
):
    """Checks what the entry points share, then calls the custom op. ``mlp``: (activation_type,
    gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
    use_routing_scales_on_input). ``fp8_scales``: None (BF16), or the FP8 variant's
    (hidden_states_scale, gemm1_weights_scale, gemm2_weights_scale)."""
    activation = _checks.check_activation(mlp[0])
    num_tokens, hidden_size, device = _checks.check_problem(
        hidden_states, gemm1_weights, gemm2_weights, num_experts, top_k, intermediate_size,
        local_expert_offset, local_num_experts, activation, fp8=fp8_scales is not None,
    )
    _checks.check_expert_mlp(activation, *mlp[1:], top_k, local_num_experts, intermediate_size,
                             hidden_size, device)
    if fp8_scales is not None:
        _check_fp8_scales(hidden_states, gemm1_weights, gemm2_weights, *fp8_scales)
    else:
        fp8_scales = (None, None, None)
    _checks.check_int("tune_max_num_tokens", tune_max_num_tokens, 0)
    _checks.check_optional_output(
        "routing_replay_out", routing_replay_out, torch.int16, (num_tokens, top_k), device
    )
    if workspace is not None:
        _checks.check_tensor("workspace_buffer", workspace, (torch.uint8,), (None,), device)
        if device.type != "cuda":
            raise ValueError("workspace_buffer: expected None for cpu tensors (the CPU reference needs none)")
    args = (
        hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
        topk_weights, intermediate_size, num_experts, top_k, local_expert_offset,
        local_num_experts, routing_method_type, n_group, topk_group, routed_scaling_factor,
        activation, *mlp[1:],
    )
    tail = (expert_weights_fp32, _checks.check_optional_bool("enable_pdl", enable_pdl, True))
    if not do_finalize:
        if output is not None:
            raise ValueError("output: expected None when do_finalize=False (the outputs are returned)")
        return list(torch.ops.fusedmoe.moe_unfinalized(
            *args, *tail, routing_replay_out, workspace, *fp8_scales))
    if output is None:
        output = hidden_states.new_empty((num_tokens, hidden_size), dtype=torch.bfloat16)
    else:
        _checks.check_tensor("output", output, (torch.bfloat16,), (num_tokens, hidden_size), device)
    torch.ops.fusedmoe.moe_out(*args, *tail, output, routing_replay_out, workspace, *fp8_scales)
    return output


def _check_fp8_scales(hidden_states, gemm1_weights, gemm2_weights, hidden_states_scale,
                      gemm1_weights_scale, gemm2_weights_scale) -> None:
    """The FP8 variant's scales against the (already checked) tensors: float32, the block
    shapes, contiguous, on the device of hidden_states."""
    device = hidden_states.device
    num_tokens, hidden_size = hidden_states.shape
    num_local, rows, _ = gemm1_weights.shape
    intermediate_size = gemm2_weights.shape[2]
    block = _checks.FP8_BLOCK
    if hidden_states.dtype == torch.float8_e4m3fn:
        _checks.check_tensor("hidden_states_scale", hidden_states_scale, (torch.float32,),
                             (hidden_size // block, num_tokens), device)
    elif hidden_states_scale is not None:
        raise ValueError(
            "hidden_states_scale: expected None for bfloat16 hidden_states (the operator quantises "
            "them per token and 128-column group), got a tensor"
        )
    _checks.check_tensor("gemm1_weights_scale", gemm1_weights_scale, (torch.float32,),
                         (num_local, rows // block, hidden_size // block), device)
    _checks.check_tensor("gemm2_weights_scale", gemm2_weights_scale, (torch.float32,),
                         (num_local, hidden_size // block, intermediate_size // block), device)


def trtllm_bf16_moe(
    routing_logits: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float] = None,
    routing_method_type: int = RoutingMethod.Default,
    use_shuffled_weight: bool = False,
    weight_layout: int = WeightLayout.Canonical,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = True,
    tune_max_num_tokens: int = 8192,
    activation_type: int = ActivationType.Swiglu,
    norm_topk_prob: bool = True,
    routing_replay_out: Optional[torch.Tensor] = None,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    workspace_buffer: Optional[torch.Tensor] = None,
    *,
    gemm1_bias: Optional[torch.Tensor] = None,
    gemm2_bias: Optional[torch.Tensor] = None,
    use_routing_scales_on_input: bool = False,
    expert_weights_dtype: torch.dtype = torch.bfloat16,
    workspace: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """BF16 MoE layer routed from logits (FlashInfer's ``trtllm_bf16_moe``, on Hopper).

    Args:
        routing_logits: [T, num_experts] float32 or bfloat16.
        routing_bias: optional [num_experts] float32 or bfloat16 (DeepSeekV3 and MiniMax2 read it).
        hidden_states: [T, H] bfloat16 (T may be 0). CPU tensors run the CPU reference.
        gemm1_weights: [local_num_experts, 2 * intermediate_size, H] bfloat16, rows [0, I) up,
            rows [I, 2I) gate (canonical layout, or the output of ``prepare_weights``);
            [local_num_experts, intermediate_size, H] for a non-gated activation_type.
        gemm2_weights: [local_num_experts, H, intermediate_size] bfloat16.
        num_experts: E, global number of experts (ids are global, 0..E-1).
        top_k: K, experts per token (1..32).
        n_group, topk_group: DeepSeekV3 expert groups; None means not grouped.
        intermediate_size: I (a multiple of 8).
        local_expert_offset, local_num_experts: the experts held here (expert parallelism:
            slots routed elsewhere contribute zero; sum the outputs across ranks).
        routed_scaling_factor: DeepSeekV3 and MiniMax2 scale; None means 1.0.
        routing_method_type: a ``RoutingMethod`` (default 0, Default: softmax then top-K).
        use_shuffled_weight, weight_layout: must select the layout the weights are in: False and
            ``WeightLayout.Canonical`` (the defaults) for canonical weights.
        do_finalize: True returns the output [T, H] bf16; False returns ``[gemm2_output [T*K, H]
            bf16 (unweighted, expert-sorted rows), expert_weights [T, K], expanded_idx_to_permuted_idx
            [T*K] int32 (-1 for a slot routed elsewhere)]``.
        enable_pdl: programmatic dependent launch between the GPU pipeline's kernels; None
            (FlashInfer's "auto") means True, as on every entry point.
        tune_max_num_tokens: accepted for compatibility (FlashInfer's autotuner cap; fusedmoe has
            no autotuner).
        norm_topk_prob: must be True.
        routing_replay_out: optional [T, K] int16, receives the selected global expert ids.
        expert_weights_dtype: (keyword) torch.float32 keeps the routing weights in fp32 (used by
            finalize and returned as expert_weights); bf16 (SPEC's default) rounds them once.
        activation_type: an ``ActivationType`` (default 3, Swiglu). Non-gated ones (Gelu 0,
            Relu 1, Silu 2, Relu2 6) take gemm1_weights [local_num_experts, I, H].
        gemm1_alpha, gemm1_beta: optional [local_num_experts] float32, Swiglu only: a =
            gate' * sigmoid(alpha * gate') * (up' + beta) (defaults 1 and 0; GPT-OSS: 1.702, 1).
        gemm1_clamp_limit: optional [local_num_experts] float32: Swiglu clamps gate from above
            and up to [-limit, limit] (default: no clamp; GPT-OSS: 7); SwigluStep clamps silu(gate)
            from above and up to [-limit, limit] (default 7).
        output: optional [T, H] bf16 tensor written in place and returned (do_finalize only).
        workspace_buffer: optional uint8 CUDA tensor of at least ``workspace_size(...)`` bytes,
            used instead of per-call scratch from PyTorch's caching allocator. It serves one
            stream at a time: calls in flight together on different streams need one each.
        gemm1_bias: (keyword) optional [local_num_experts, 2I] (gated, up columns then gate
            columns, like gemm1's rows) or [local_num_experts, I] bf16/float32, added to GEMM1's
            fp32 output before the activation.
        gemm2_bias: (keyword) optional [local_num_experts, H] bf16/float32, added to GEMM2's fp32
            output before the routing weight (inside gemm2_output when do_finalize=False).
        use_routing_scales_on_input: (keyword) top_k == 1 only: the expert computes on
            bf16(w * x) and its output is not weighted again (Llama 4). With do_finalize=False,
            expert_weights still holds w and gemm2_output rows are already scaled: sum them
            unweighted.
        workspace: (keyword) the older name of workspace_buffer.

    Raises:
        TypeError, ValueError naming the argument, before any kernel runs.
    """
    _checks.check_layout(use_shuffled_weight, weight_layout)
    _checks.check_unsupported(norm_topk_prob)
    _checks.check_tensor("hidden_states", hidden_states, (torch.bfloat16,), (None, None))
    method, n_group, topk_group, scale = _logits_routing(
        routing_logits, routing_bias, hidden_states, num_experts, routing_method_type, n_group,
        topk_group, routed_scaling_factor,
    )
    return _run(
        hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, None, None,
        num_experts, top_k, n_group, topk_group, intermediate_size, local_expert_offset,
        local_num_experts, scale, method, do_finalize, enable_pdl, tune_max_num_tokens,
        routing_replay_out, output, _workspace_argument(workspace_buffer, workspace),
        _expert_weights_fp32(expert_weights_dtype),
        (activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
         use_routing_scales_on_input),
    )


def trtllm_bf16_routed_moe(
    topk_ids: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float] = None,
    routing_method_type: int = RoutingMethod.Default,
    use_shuffled_weight: bool = False,
    weight_layout: int = WeightLayout.Canonical,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = True,
    gemm1_lora_delta: Optional[torch.Tensor] = None,
    tune_max_num_tokens: int = 8192,
    activation_type: int = ActivationType.Swiglu,
    routing_replay_out: Optional[torch.Tensor] = None,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    workspace_buffer: Optional[torch.Tensor] = None,
    *,
    gemm1_bias: Optional[torch.Tensor] = None,
    gemm2_bias: Optional[torch.Tensor] = None,
    use_routing_scales_on_input: bool = False,
    workspace: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """BF16 MoE layer with routing computed by the caller (FlashInfer's ``trtllm_bf16_routed_moe``).

    ``topk_ids`` is either packed int32 [T, K] (``pack_topk``: id in bits 31..16, bf16 weight
    bits in 15..0) or a tuple ``(ids int32 [T, K], weights [T, K] bf16 or fp32)``. The weights are
    used exactly as given: ``n_group``, ``topk_group`` and ``routed_scaling_factor`` are accepted
    for FlashInfer compatibility and ignored; ``routing_method_type`` is validated (a value that is
    not a ``RoutingMethod`` raises), then ignored. With fp32
    weights, do_finalize=False returns fp32 ``expert_weights``. Ids outside [0, num_experts) are
    treated as routed elsewhere (see ``validate_routing``). With use_routing_scales_on_input the
    given weights scale the expert's input. Everything else, the expert MLP's options included,
    is as in ``trtllm_bf16_moe``.
    """
    _checks.check_layout(use_shuffled_weight, weight_layout)
    _checks.check_unsupported(True, gemm1_lora_delta)
    _checks.check_tensor("hidden_states", hidden_states, (torch.bfloat16,), (None, None))
    ids, weights = _routed_input(topk_ids, hidden_states, top_k)
    _routing_method(routing_method_type)
    return _run(
        hidden_states, gemm1_weights, gemm2_weights, None, None, ids, weights, num_experts, top_k,
        0, 0, intermediate_size, local_expert_offset, local_num_experts, 1.0,
        int(RoutingMethod.Default), do_finalize, enable_pdl, tune_max_num_tokens,
        routing_replay_out, output, _workspace_argument(workspace_buffer, workspace),
        weights is not None and weights.dtype == torch.float32,
        (activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
         use_routing_scales_on_input),
    )


def trtllm_fp8_block_scale_moe(
    routing_logits: torch.Tensor,
    routing_bias: Optional[torch.Tensor],
    hidden_states: torch.Tensor,
    hidden_states_scale: Optional[torch.Tensor],
    gemm1_weights: torch.Tensor,
    gemm1_weights_scale: torch.Tensor,
    gemm2_weights: torch.Tensor,
    gemm2_weights_scale: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float],
    routing_method_type: int = RoutingMethod.Default,
    use_shuffled_weight: bool = False,
    weight_layout: int = WeightLayout.Canonical,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = None,
    tune_max_num_tokens: int = 8192,
    fp8_quantization_type: int = Fp8QuantizationType.DeepSeekFp8,
    num_fused_shared_experts: Optional[int] = None,
    activation_type: int = ActivationType.Swiglu,
    norm_topk_prob: bool = True,
    routing_replay_out: Optional[torch.Tensor] = None,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    valid_hidden_size: Optional[int] = None,
    valid_intermediate_size: Optional[int] = None,
    *,
    gemm1_bias: Optional[torch.Tensor] = None,
    gemm2_bias: Optional[torch.Tensor] = None,
    expert_weights_dtype: torch.dtype = torch.bfloat16,
    workspace_buffer: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """FP8 block-scale MoE layer routed from logits (FlashInfer's ``trtllm_fp8_block_scale_moe``).

    The contract of ``trtllm_bf16_moe`` with FP8 experts (docs/SPEC.md "FP8 block-scale variant"):
    float8_e4m3fn weights with one fp32 scale per 128x128 block, activations quantised per token
    and 128-column group (scale = amax / 448), fp32 accumulation promoted per 128-deep block, the
    activation rounded to bf16 and quantised the same way before GEMM2, bf16 output.
    CUDA tensors run the Hopper kernels, CPU tensors the CPU reference.

    Args:
        hidden_states: [T, H] bfloat16 (quantised inside) or float8_e4m3fn with
            ``hidden_states_scale`` [H / 128, T] float32 (``fp8.quantize_fp8_activations`` makes
            both from bf16; the result is then bitwise the bf16 input's). None for bf16 input.
        gemm1_weights: float8_e4m3fn [E_loc, 2I, H] (rows [0, I) up, [I, 2I) gate) or
            [E_loc, I, H] for a non-gated activation; ``gemm1_weights_scale`` float32
            [E_loc, 2I / 128 (or I / 128), H / 128].
        gemm2_weights: float8_e4m3fn [E_loc, H, I]; ``gemm2_weights_scale`` float32
            [E_loc, H / 128, I / 128]. ``fp8.prepare_fp8_weights`` converts checkpoints.
        intermediate_size, H: multiples of 128.
        fp8_quantization_type: ``Fp8QuantizationType.DeepSeekFp8`` (the only recipe offered).
        num_fused_shared_experts: None or 0. valid_hidden_size, valid_intermediate_size: None or
            the full sizes (no padded weights).
        Everything else as in ``trtllm_bf16_moe`` (``enable_pdl`` None means True; the expert
        MLP's options and biases included; no ``use_routing_scales_on_input``).

    Raises:
        TypeError, ValueError naming the argument.
    """
    _checks.check_layout(use_shuffled_weight, weight_layout)
    _checks.check_unsupported(norm_topk_prob)
    _check_fp8_options(fp8_quantization_type, num_fused_shared_experts, valid_hidden_size,
                       valid_intermediate_size, hidden_states, intermediate_size)
    method, n_group, topk_group, scale = _logits_routing(
        routing_logits, routing_bias, hidden_states, num_experts, routing_method_type, n_group,
        topk_group, routed_scaling_factor,
    )
    return _run(
        hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, None, None,
        num_experts, top_k, n_group, topk_group, intermediate_size, local_expert_offset,
        local_num_experts, scale, method, do_finalize, enable_pdl,
        tune_max_num_tokens, routing_replay_out, output, workspace_buffer,
        _expert_weights_fp32(expert_weights_dtype),
        (activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias, False),
        (hidden_states_scale, gemm1_weights_scale, gemm2_weights_scale),
    )


def trtllm_fp8_block_scale_routed_moe(
    topk_ids: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
    routing_bias: Optional[torch.Tensor],
    hidden_states: torch.Tensor,
    hidden_states_scale: Optional[torch.Tensor],
    gemm1_weights: torch.Tensor,
    gemm1_weights_scale: torch.Tensor,
    gemm2_weights: torch.Tensor,
    gemm2_weights_scale: torch.Tensor,
    num_experts: int,
    top_k: int,
    n_group: Optional[int],
    topk_group: Optional[int],
    intermediate_size: int,
    local_expert_offset: int,
    local_num_experts: int,
    routed_scaling_factor: Optional[float],
    routing_method_type: int = RoutingMethod.Default,
    use_shuffled_weight: bool = False,
    weight_layout: int = WeightLayout.Canonical,
    do_finalize: bool = True,
    enable_pdl: Optional[bool] = None,
    gemm1_lora_delta: Optional[torch.Tensor] = None,
    output: Optional[torch.Tensor] = None,
    tune_max_num_tokens: int = 8192,
    fp8_quantization_type: int = Fp8QuantizationType.DeepSeekFp8,
    activation_type: int = ActivationType.Swiglu,
    gemm1_alpha: Optional[torch.Tensor] = None,
    gemm1_beta: Optional[torch.Tensor] = None,
    gemm1_clamp_limit: Optional[torch.Tensor] = None,
    valid_hidden_size: Optional[int] = None,
    valid_intermediate_size: Optional[int] = None,
    *,
    gemm1_bias: Optional[torch.Tensor] = None,
    gemm2_bias: Optional[torch.Tensor] = None,
    workspace_buffer: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, List[torch.Tensor]]:
    """FP8 block-scale MoE layer with routing given (FlashInfer's ``trtllm_fp8_block_scale_routed_moe``).

    ``topk_ids`` as in ``trtllm_bf16_routed_moe`` (packed, or an (ids, weights) pair with bf16 or
    fp32 weights used exactly as given); ``routing_bias``, ``n_group``, ``topk_group`` and
    ``routed_scaling_factor`` are accepted for FlashInfer compatibility and ignored;
    ``routing_method_type`` is validated (a value that is not a ``RoutingMethod`` raises), then
    ignored. Everything else as in ``trtllm_fp8_block_scale_moe``.
    """
    _checks.check_layout(use_shuffled_weight, weight_layout)
    _checks.check_unsupported(True, gemm1_lora_delta)
    _check_fp8_options(fp8_quantization_type, None, valid_hidden_size, valid_intermediate_size,
                       hidden_states, intermediate_size)
    ids, weights = _routed_input(topk_ids, hidden_states, top_k)
    _routing_method(routing_method_type)
    return _run(
        hidden_states, gemm1_weights, gemm2_weights, None, None, ids, weights, num_experts, top_k,
        0, 0, intermediate_size, local_expert_offset, local_num_experts, 1.0,
        int(RoutingMethod.Default), do_finalize, enable_pdl,
        tune_max_num_tokens, None, output, workspace_buffer,
        weights is not None and weights.dtype == torch.float32,
        (activation_type, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias, False),
        (hidden_states_scale, gemm1_weights_scale, gemm2_weights_scale),
    )


def _check_fp8_options(fp8_quantization_type, num_fused_shared_experts, valid_hidden_size,
                       valid_intermediate_size, hidden_states, intermediate_size) -> None:
    """FlashInfer's FP8 options beyond the DeepSeekFp8 recipe: anything but their defaults (or
    the full sizes) is an error; also checks hidden_states' dtype and rank."""
    if isinstance(fp8_quantization_type, bool) or not isinstance(fp8_quantization_type, int):
        raise TypeError(
            f"fp8_quantization_type: expected an int or Fp8QuantizationType, got "
            f"{type(fp8_quantization_type).__name__}"
        )
    if int(fp8_quantization_type) != Fp8QuantizationType.DeepSeekFp8:
        raise ValueError(
            f"fp8_quantization_type: expected Fp8QuantizationType.DeepSeekFp8 (1: 128x128 block "
            f"scales), got {int(fp8_quantization_type)}"
        )
    if num_fused_shared_experts not in (None, 0):
        raise ValueError(
            f"num_fused_shared_experts: expected None or 0 (shared experts are not fused), got "
            f"{num_fused_shared_experts}"
        )
    _checks.check_tensor("hidden_states", hidden_states, (torch.bfloat16, torch.float8_e4m3fn),
                         (None, None))
    for name, value, full in (("valid_hidden_size", valid_hidden_size, hidden_states.shape[1]),
                              ("valid_intermediate_size", valid_intermediate_size, intermediate_size)):
        if value is not None and value != full:
            raise ValueError(f"{name}: expected None or {full} (padded weights are not supported), got {value}")


def _logits_routing(routing_logits, routing_bias, hidden_states, num_experts, routing_method_type,
                    n_group, topk_group, routed_scaling_factor):
    """Checks the logits routing arguments (hidden_states already checked). Returns (method,
    n_group, topk_group, scale) with FlashInfer's None defaults resolved."""
    device = hidden_states.device
    num_tokens = hidden_states.shape[0]
    _checks.check_int("num_experts", num_experts, 1, _checks.MAX_NUM_EXPERTS)
    _checks.check_tensor(
        "routing_logits", routing_logits, (torch.float32, torch.bfloat16), (num_tokens, num_experts), device
    )
    if routing_bias is not None:
        _checks.check_tensor(
            "routing_bias", routing_bias, (torch.float32, torch.bfloat16), (num_experts,), device
        )
    method = _routing_method(routing_method_type)
    n_group = _checks.check_int("n_group", 0 if n_group is None else n_group, 0, num_experts)
    topk_group = _checks.check_int("topk_group", 0 if topk_group is None else topk_group, 0, num_experts)
    scale = _checks.check_optional_float("routed_scaling_factor", routed_scaling_factor, 1.0)
    return method, n_group, topk_group, scale


def _routed_input(topk_ids, hidden_states, top_k):
    """Checks the routed input (packed tensor or (ids, weights) pair). Returns (ids, weights or None)."""
    device = hidden_states.device
    num_tokens = hidden_states.shape[0]
    _checks.check_int("top_k", top_k, 1, _checks.MAX_TOP_K)
    if isinstance(topk_ids, (tuple, list)):
        if len(topk_ids) != 2:
            raise ValueError(
                f"topk_ids: expected a packed tensor or an (ids, weights) pair, got {len(topk_ids)} items"
            )
        ids, weights = topk_ids
        _checks.check_tensor("topk_ids", ids, (torch.int32,), (num_tokens, top_k), device)
        _checks.check_tensor(
            "topk_weights", weights, (torch.bfloat16, torch.float32), (num_tokens, top_k), device
        )
        return ids, weights
    _checks.check_tensor("topk_ids", topk_ids, (torch.int32,), (num_tokens, top_k), device)
    return topk_ids, None


def _routing_method(routing_method_type) -> int:
    if isinstance(routing_method_type, bool) or not isinstance(routing_method_type, int):
        raise TypeError(
            f"routing_method_type: expected an int or RoutingMethod, got {type(routing_method_type).__name__}"
        )
    if routing_method_type not in RoutingMethod._value2member_map_:
        raise ValueError(
            f"routing_method_type: expected one of {[int(m) for m in RoutingMethod]}, got {routing_method_type}"
        )
    return int(routing_method_type)
