"""Helpers shared by the CPU and GPU tests: method parameters and calls into fusedmoe."""

import torch

import fusedmoe

# Per routing method: top_k and the extra routing arguments it reads.
METHOD_PARAMS = {
    0: dict(top_k=4),
    1: dict(top_k=4),
    2: dict(top_k=4, n_group=4, topk_group=2, routed_scaling_factor=2.5, bias=True),
    3: dict(top_k=1),
    4: dict(top_k=4),
    5: dict(top_k=4),
    6: dict(top_k=4),
    7: dict(top_k=4, routed_scaling_factor=1.75, bias=True),
    8: dict(top_k=4),
    9: dict(top_k=4),
}


def routing_kwargs(method: int) -> dict:
    """n_group, topk_group and routed_scaling_factor for ``method`` (None where it reads none)."""
    params = METHOD_PARAMS[method]
    return dict(
        n_group=params.get("n_group"),
        topk_group=params.get("topk_group"),
        routed_scaling_factor=params.get("routed_scaling_factor"),
    )


def local_weights(problem, offset: int, num_local: int):
    """The (gemm1, gemm2) slices of the experts [offset, offset + num_local), contiguous."""
    return (
        problem.gemm1_weights[offset : offset + num_local].contiguous(),
        problem.gemm2_weights[offset : offset + num_local].contiguous(),
    )


def run_logits(problem, method: int, offset: int = 0, num_local=None, **kwargs):
    """fusedmoe.trtllm_bf16_moe on ``problem`` with the experts [offset, offset + num_local)."""
    num_local = problem.num_experts if num_local is None else num_local
    w1, w2 = local_weights(problem, offset, num_local)
    routing = routing_kwargs(method)
    return fusedmoe.trtllm_bf16_moe(
        problem.routing_logits,
        problem.routing_bias,
        problem.hidden_states,
        w1,
        w2,
        problem.num_experts,
        problem.top_k,
        routing["n_group"],
        routing["topk_group"],
        problem.intermediate_size,
        offset,
        num_local,
        routed_scaling_factor=routing["routed_scaling_factor"],
        routing_method_type=method,
        **kwargs,
    )


def run_routed(problem, topk_ids, offset: int = 0, num_local=None, **kwargs):
    """fusedmoe.trtllm_bf16_routed_moe on ``problem`` with packed or (ids, weights) routing."""
    num_local = problem.num_experts if num_local is None else num_local
    w1, w2 = local_weights(problem, offset, num_local)
    return fusedmoe.trtllm_bf16_routed_moe(
        topk_ids,
        problem.hidden_states,
        w1,
        w2,
        problem.num_experts,
        problem.top_k,
        None,
        None,
        problem.intermediate_size,
        offset,
        num_local,
        **kwargs,
    )


def replay_buffer(problem) -> torch.Tensor:
    """A poisoned int16 [T, K] routing_replay_out on the problem's device."""
    num_tokens = problem.hidden_states.shape[0]
    return torch.full(
        (num_tokens, problem.top_k), -7, dtype=torch.int16, device=problem.hidden_states.device
    )
