"""A torch stand-in for the fusedmoe package, to test the benchmark harness without the library.

Never benchmark with it: it only exists so that the fusedmoe code paths of bench_moe.py (adapter,
checks, graph capture, printing) can run before the real package is built. Use it with
`PYTHONPATH=bench/standin`; bench_moe.py prints the file fusedmoe was imported from.
It computes the operator with the torch._grouped_mm baseline and the torch routing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import baselines  # noqa: E402
import routing  # noqa: E402

IS_STANDIN = True


def trtllm_bf16_moe(*, routing_logits, routing_bias, hidden_states, gemm1_weights, gemm2_weights,
                    num_experts, top_k, n_group, topk_group, intermediate_size,
                    local_expert_offset, local_num_experts, routed_scaling_factor,
                    routing_method_type, output=None, **_unused) -> torch.Tensor:
    """Routes the logits in torch, then runs the grouped_mm MoE; returns out [T, H] bf16."""
    ids, weights = routing.route(routing_logits, routing_method_type, top_k, routing_bias,
                                 n_group, topk_group, routed_scaling_factor)
    moe = baselines.GroupedMmMoe(gemm1_weights, gemm2_weights, local_expert_offset)
    return _into(moe(hidden_states, ids, weights), output)


def trtllm_bf16_routed_moe(*, topk_ids, hidden_states, gemm1_weights, gemm2_weights,
                           local_expert_offset, output=None, **_unused) -> torch.Tensor:
    """Packed int32 ids or an (ids, weights) tuple; returns out [T, H] bf16."""
    if isinstance(topk_ids, tuple):
        ids, weights = topk_ids
    else:
        ids, weights = routing.unpack_topk(topk_ids)
    moe = baselines.GroupedMmMoe(gemm1_weights, gemm2_weights, local_expert_offset)
    return _into(moe(hidden_states, ids, weights), output)


def _into(result: torch.Tensor, output: torch.Tensor | None) -> torch.Tensor:
    """Writes result into the caller's output tensor when there is one (the package's output=)."""
    if output is None:
        return result
    return output.copy_(result)
