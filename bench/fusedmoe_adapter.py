"""The one place where the benchmark calls fusedmoe (FlashInfer's trtllm_bf16_moe API shape).

If the package's names or arguments change, fix them here only. load() never raises: when
`import fusedmoe` fails the benchmark runs the baselines alone and prints the reason.
"""

from __future__ import annotations

import traceback
from types import ModuleType

import torch


def load() -> tuple[ModuleType | None, str]:
    """Imports fusedmoe: returns (module, "") or (None, one-line reason)."""
    try:
        import fusedmoe  # noqa: PLC0415 (optional dependency, imported on demand)
    except Exception as exc:  # any import-time failure (missing build, bad .so) means "absent"
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return None, last
    missing = [name for name in ("trtllm_bf16_moe", "trtllm_bf16_routed_moe")
               if not hasattr(fusedmoe, name)]
    if missing:
        return None, f"fusedmoe has no {', '.join(missing)}"
    return fusedmoe, ""


def moe_from_logits(fusedmoe: ModuleType, *, routing_logits: torch.Tensor,
                    routing_bias: torch.Tensor | None, hidden_states: torch.Tensor,
                    gemm1_weights: torch.Tensor, gemm2_weights: torch.Tensor, num_experts: int,
                    top_k: int, n_group: int, topk_group: int, intermediate_size: int,
                    local_expert_offset: int, local_num_experts: int,
                    routed_scaling_factor: float, routing_method_type: int,
                    output: torch.Tensor | None = None) -> torch.Tensor:
    """fusedmoe routing from logits (SPEC input 1): returns out [T, H] bf16.

    output, when given, is the [T, H] bf16 tensor to write (the benchmark poisons it first).
    """
    out = fusedmoe.trtllm_bf16_moe(
        routing_logits=routing_logits, routing_bias=routing_bias, hidden_states=hidden_states,
        gemm1_weights=gemm1_weights, gemm2_weights=gemm2_weights, num_experts=num_experts,
        top_k=top_k, n_group=n_group, topk_group=topk_group,
        intermediate_size=intermediate_size, local_expert_offset=local_expert_offset,
        local_num_experts=local_num_experts, routed_scaling_factor=routed_scaling_factor,
        routing_method_type=routing_method_type, **_extras(output))
    return _output_tensor(out)


def moe_routed(fusedmoe: ModuleType, *, topk_ids: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
               hidden_states: torch.Tensor, gemm1_weights: torch.Tensor,
               gemm2_weights: torch.Tensor, num_experts: int, top_k: int,
               intermediate_size: int, local_expert_offset: int, local_num_experts: int,
               routing_method_type: int, output: torch.Tensor | None = None) -> torch.Tensor:
    """fusedmoe with pre-computed routing (SPEC inputs 2 and 3): returns out [T, H] bf16.

    topk_ids is the packed int32 [T, K] tensor or an (ids, weights) tuple. The weights are used as
    given, so n_group, topk_group and the scaling factor are neutral values. output as above.
    """
    out = fusedmoe.trtllm_bf16_routed_moe(
        topk_ids=topk_ids, hidden_states=hidden_states, gemm1_weights=gemm1_weights,
        gemm2_weights=gemm2_weights, num_experts=num_experts, top_k=top_k, n_group=0,
        topk_group=0, intermediate_size=intermediate_size,
        local_expert_offset=local_expert_offset, local_num_experts=local_num_experts,
        routed_scaling_factor=1.0, routing_method_type=routing_method_type,
        **_extras(output))
    return _output_tensor(out)


def _extras(output: torch.Tensor | None) -> dict:
    """fusedmoe's keyword extras: the caller's output tensor when there is one. (Each call takes
    its scratch from PyTorch's caching allocator: a cached block in steady state, the graph's pool
    under capture, so no size needs announcing.)"""
    return {} if output is None else {"output": output}


def _output_tensor(result) -> torch.Tensor:
    """FlashInfer returns the output tensor, or a list whose first item is it."""
    if isinstance(result, (list, tuple)):
        return result[0]
    return result
