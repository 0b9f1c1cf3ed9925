"""The operator as torch.library custom ops (namespace ``fusedmoe``), with fake implementations.

Two ops share one argument list:
  * ``fusedmoe::moe_out`` writes the finalized output into ``output`` (declared mutated; the
    Python API allocates it when the caller gives none). Not a functional op returning a fresh
    tensor: torch 2.15's inductor fails to lower a mutating custom op with a single Tensor return
    when all its mutable arguments are None ("getitem is not an OpOverload").
  * ``fusedmoe::moe_unfinalized`` returns fresh
    ``(gemm2_output, expert_weights, expanded_idx_to_permuted_idx)`` (do_finalize=False).
Both may also write ``routing_replay_out`` and a caller ``workspace`` (declared mutated). Their
last three arguments (default None) are the FP8 variant's scales: with float8_e4m3fn weights,
``gemm1_weights_scale`` and ``gemm2_weights_scale``; with float8_e4m3fn hidden states,
``hidden_states_scale``.

Tensors reach the C++ layer (``fusedmoe._ext``) as DLPack views. CUDA tensors run ``run()`` on
the current stream of their device; CPU tensors run ``run_reference()``. Nothing is allocated
beyond the outputs and, when the caller passes no ``workspace``, the call's scratch from PyTorch's
stream-ordered caching allocator (``call_scratch``).
"""

import contextlib
from typing import Optional, Tuple

import torch

from . import _ext

# ---- per-call scratch -----------------------------------------------------------------------------
# Without a caller workspace, each call takes its scratch from PyTorch's caching allocator on the
# call's stream and drops it when it returns. The allocator is stream-ordered: the block goes back
# to that stream's pool and is handed out again only to later work on the same stream (ordered
# after this call's kernels), never to a call in flight on another stream; so calls on different
# streams or threads can never share scratch (one shared per-device buffer made two streams corrupt
# each other's routing and activations). In steady state the block comes from the cache: no
# cudaMalloc and no synchronisation. Under CUDA graph capture it comes from the graph's private
# pool, which the graph keeps for as long as it lives, so replays need nothing from Python.
def call_scratch(device: torch.device, needed_bytes: int) -> torch.Tensor:
    """A uint8 scratch buffer of ``needed_bytes`` on ``device`` for one call on its current stream."""
    return torch.empty(max(int(needed_bytes), 1), dtype=torch.uint8, device=device)


# ---- the call into C++ --------------------------------------------------------------------------
def _launch(
    hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
    topk_weights, intermediate_size, num_experts, top_k, local_expert_offset, local_num_experts,
    routing_method, n_group, topk_group, routed_scaling_factor, activation, gemm1_alpha,
    gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias, use_routing_scales_on_input,
    expert_weights_fp32, do_finalize, enable_pdl, output, gemm2_output, expert_weights,
    expanded_idx_to_permuted_idx, routing_replay_out, workspace, hidden_states_scale=None,
    gemm1_weights_scale=None, gemm2_weights_scale=None,
):
    """Calls fusedmoe._ext.moe: run() on the current stream for CUDA tensors (with the caller's
    workspace or per-call scratch), run_reference() for CPU tensors. float8_e4m3fn tensors (the
    FP8 variant) go as uint8 views with their scales."""
    as_bytes = lambda t: t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t  # noqa: E731
    hidden_states, gemm1_weights, gemm2_weights = (
        as_bytes(hidden_states), as_bytes(gemm1_weights), as_bytes(gemm2_weights))
    device = hidden_states.device
    on_gpu = device.type == "cuda"
    stream = 0
    if on_gpu:
        num_tokens, hidden_size = hidden_states.shape
        shape = (hidden_size, intermediate_size, num_experts, top_k, local_expert_offset,
                 local_num_experts)
        needed = _ext.workspace_size(num_tokens, *shape, gemm1_weights.dtype == torch.uint8)
        if workspace is not None and workspace.numel() < needed:
            fp8 = ", weights_dtype=torch.float8_e4m3fn" if gemm1_weights.dtype == torch.uint8 else ""
            raise ValueError(
                f"workspace_buffer: expected >= {needed} bytes (workspace_size for {num_tokens} "
                f"tokens{fp8}), got {workspace.numel()}"
            )
        if workspace is None:
            workspace = call_scratch(device, needed)
        stream = torch.cuda.current_stream(device).cuda_stream
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():
        _ext.moe(
            hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
            topk_weights, intermediate_size, num_experts, top_k, local_expert_offset,
            local_num_experts, routing_method, n_group, topk_group, routed_scaling_factor,
            activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
            use_routing_scales_on_input, expert_weights_fp32, do_finalize, output, gemm2_output,
            expert_weights,
            expanded_idx_to_permuted_idx, routing_replay_out, workspace, enable_pdl, on_gpu,
            stream, hidden_states_scale, gemm1_weights_scale, gemm2_weights_scale,
        )


def expert_weights_dtype(topk_weights: Optional[torch.Tensor], expert_weights_fp32: bool) -> torch.dtype:
    """dtype of the returned expert_weights: fp32 on request or for fp32 unpacked weights (SPEC)."""
    if topk_weights is not None:
        return topk_weights.dtype
    return torch.float32 if expert_weights_fp32 else torch.bfloat16


def _unfinalized_outputs(hidden_states, top_k, topk_weights, expert_weights_fp32):
    """Fresh (gemm2_output, expert_weights, expanded_idx_to_permuted_idx), real or fake."""
    # P = permuted_capacity(T, K, E_loc) = T * K (docs/DESIGN.md "Permutation"); written out here
    # so the fake implementation works with symbolic T. tests/python checks the two agree.
    num_tokens, hidden_size = hidden_states.shape
    return (
        hidden_states.new_empty((num_tokens * top_k, hidden_size), dtype=torch.bfloat16),
        hidden_states.new_empty(
            (num_tokens, top_k), dtype=expert_weights_dtype(topk_weights, expert_weights_fp32)
        ),
        hidden_states.new_empty((num_tokens * top_k,), dtype=torch.int32),
    )


# ---- fusedmoe::moe_unfinalized -------------------------------------------------------------------
@torch.library.custom_op(
    "fusedmoe::moe_unfinalized", mutates_args=("routing_replay_out", "workspace")
)
def moe_unfinalized(
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    routing_logits: Optional[torch.Tensor],
    routing_bias: Optional[torch.Tensor],
    topk_ids: Optional[torch.Tensor],
    topk_weights: Optional[torch.Tensor],
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    local_expert_offset: int,
    local_num_experts: int,
    routing_method: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    activation: int,
    gemm1_alpha: Optional[torch.Tensor],
    gemm1_beta: Optional[torch.Tensor],
    gemm1_clamp_limit: Optional[torch.Tensor],
    gemm1_bias: Optional[torch.Tensor],
    gemm2_bias: Optional[torch.Tensor],
    use_routing_scales_on_input: bool,
    expert_weights_fp32: bool,
    enable_pdl: bool,
    routing_replay_out: Optional[torch.Tensor],
    workspace: Optional[torch.Tensor],
    hidden_states_scale: Optional[torch.Tensor] = None,
    gemm1_weights_scale: Optional[torch.Tensor] = None,
    gemm2_weights_scale: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The do_finalize=False operator: (gemm2_output, expert_weights, expanded_idx_to_permuted_idx)."""
    outputs = _unfinalized_outputs(hidden_states, top_k, topk_weights, expert_weights_fp32)
    _launch(
        hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
        topk_weights, intermediate_size, num_experts, top_k, local_expert_offset,
        local_num_experts, routing_method, n_group, topk_group, routed_scaling_factor,
        activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
        use_routing_scales_on_input, expert_weights_fp32, False, enable_pdl, None, *outputs,
        routing_replay_out, workspace, hidden_states_scale, gemm1_weights_scale,
        gemm2_weights_scale,
    )
    return outputs


@moe_unfinalized.register_fake
def _moe_unfinalized_fake(hidden_states, gemm1_weights, gemm2_weights, routing_logits,
                          routing_bias, topk_ids, topk_weights, intermediate_size, num_experts,
                          top_k, local_expert_offset, local_num_experts, routing_method, n_group,
                          topk_group, routed_scaling_factor, activation, gemm1_alpha, gemm1_beta,
                          gemm1_clamp_limit, gemm1_bias, gemm2_bias, use_routing_scales_on_input,
                          expert_weights_fp32, *rest):
    return _unfinalized_outputs(hidden_states, top_k, topk_weights, expert_weights_fp32)


# ---- fusedmoe::moe_out --------------------------------------------------------------------------
@torch.library.custom_op(
    "fusedmoe::moe_out", mutates_args=("output", "routing_replay_out", "workspace")
)
def moe_out(
    hidden_states: torch.Tensor,
    gemm1_weights: torch.Tensor,
    gemm2_weights: torch.Tensor,
    routing_logits: Optional[torch.Tensor],
    routing_bias: Optional[torch.Tensor],
    topk_ids: Optional[torch.Tensor],
    topk_weights: Optional[torch.Tensor],
    intermediate_size: int,
    num_experts: int,
    top_k: int,
    local_expert_offset: int,
    local_num_experts: int,
    routing_method: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    activation: int,
    gemm1_alpha: Optional[torch.Tensor],
    gemm1_beta: Optional[torch.Tensor],
    gemm1_clamp_limit: Optional[torch.Tensor],
    gemm1_bias: Optional[torch.Tensor],
    gemm2_bias: Optional[torch.Tensor],
    use_routing_scales_on_input: bool,
    expert_weights_fp32: bool,
    enable_pdl: bool,
    output: torch.Tensor,
    routing_replay_out: Optional[torch.Tensor],
    workspace: Optional[torch.Tensor],
    hidden_states_scale: Optional[torch.Tensor] = None,
    gemm1_weights_scale: Optional[torch.Tensor] = None,
    gemm2_weights_scale: Optional[torch.Tensor] = None,
) -> None:
    """The finalized operator written into the caller's ``output`` [T, H] bf16."""
    _launch(
        hidden_states, gemm1_weights, gemm2_weights, routing_logits, routing_bias, topk_ids,
        topk_weights, intermediate_size, num_experts, top_k, local_expert_offset,
        local_num_experts, routing_method, n_group, topk_group, routed_scaling_factor,
        activation, gemm1_alpha, gemm1_beta, gemm1_clamp_limit, gemm1_bias, gemm2_bias,
        use_routing_scales_on_input, expert_weights_fp32, True, enable_pdl, output, None, None,
        None, routing_replay_out, workspace, hidden_states_scale, gemm1_weights_scale,
        gemm2_weights_scale,
    )


@moe_out.register_fake
def _moe_out_fake(*args):
    return None
