"""Routing in plain torch, for the baselines of the benchmark (bench/README.md).

The baselines route exactly as docs/SPEC.md's methods say, in fp32, and round the weights once to
bf16 (docs/DESIGN.md "Numerics"). Only the three methods of the bench's model table are needed:
Renormalize (1), DeepSeekV3 (2) and Llama4 (3). Every function here is graph-capturable (no host
synchronisation), so a baseline that routes from logits can be timed as one CUDA graph.
"""

from __future__ import annotations

import torch

# docs/SPEC.md "Routing methods" pinned numbering (identical to FlashInfer's RoutingMethodType).
RENORMALIZE = 1
DEEPSEEK_V3 = 2
LLAMA4 = 3

METHOD_NAMES = {RENORMALIZE: "Renormalize", DEEPSEEK_V3: "DeepSeekV3", LLAMA4: "Llama4"}


def route_renormalize(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Method 1: top-K of the logits, weights = softmax over the K selected logits."""
    values, ids = torch.topk(logits.float(), top_k, dim=-1)
    return ids, torch.softmax(values, dim=-1)


def route_deepseek_v3(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_group: int,
                      topk_group: int, routed_scaling_factor: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Method 2: sigmoid scores, bias for selection only, group-limited top-K.

    s = sigmoid(logit), b = s + bias. With n_group > 1 each group of E/n_group consecutive experts
    is scored by the sum of its top-2 b (its single b if a group has one expert), the topk_group
    best groups are kept and the others excluded as -inf. Weights use the unbiased s:
    s_k * routed_scaling_factor / (sum of the K selected s + 1e-20).
    """
    num_tokens, num_experts = logits.shape
    scores = torch.sigmoid(logits.float())
    biased = scores + bias.float() if bias is not None else scores
    if n_group > 1:
        group_size = num_experts // n_group
        grouped = biased.view(num_tokens, n_group, group_size)
        group_score = torch.topk(grouped, min(2, group_size), dim=-1).values.sum(dim=-1)
        kept = torch.topk(group_score, topk_group, dim=-1).indices
        keep_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
        keep_mask = keep_mask.repeat_interleave(group_size, dim=1)
        biased = biased.masked_fill(~keep_mask, float("-inf"))
    ids = torch.topk(biased, top_k, dim=-1).indices
    selected = scores.gather(1, ids)
    weights = selected * routed_scaling_factor / (selected.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights


def route_llama4(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Method 3: K must be 1; argmax of the logits, weight = sigmoid(logit)."""
    if top_k != 1:
        raise ValueError(f"top_k: expected 1 for Llama4 routing, got {top_k}")
    values, ids = torch.topk(logits.float(), 1, dim=-1)
    return ids, torch.sigmoid(values)


def route(logits: torch.Tensor, method: int, top_k: int, bias: torch.Tensor | None = None,
          n_group: int = 0, topk_group: int = 0, routed_scaling_factor: float = 1.0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Routes [T, E] logits: returns (ids int32 [T, K] global expert ids, weights bf16 [T, K]).

    Ids are sorted by descending score, as docs/SPEC.md asks. The weights are computed in fp32 and
    rounded once to bf16.
    """
    if method == RENORMALIZE:
        ids, weights = route_renormalize(logits, top_k)
    elif method == DEEPSEEK_V3:
        ids, weights = route_deepseek_v3(logits, bias, top_k, n_group, topk_group,
                                         routed_scaling_factor)
    elif method == LLAMA4:
        ids, weights = route_llama4(logits, top_k)
    else:
        raise ValueError(f"method: expected one of {sorted(METHOD_NAMES)}, got {method}")
    return ids.to(torch.int32), weights.to(torch.bfloat16)


def pack_topk(ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Packs (ids, bf16 weights) into docs/SPEC.md's int32 words: (id << 16) | (bf16 bits & 0xFFFF).

    The mask keeps a negative weight's sign bits out of the id (FlashInfer's idiom does not).
    """
    weight_bits = weights.to(torch.bfloat16).contiguous().view(torch.int16).to(torch.int32)
    return (ids.to(torch.int32) << 16) | (weight_bits & 0xFFFF)


def unpack_topk(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of pack_topk: (ids int32 sign-extended from bits 31..16, weights bf16)."""
    ids = packed >> 16  # arithmetic shift: the int16 id comes back sign-extended
    weight_bits = (packed & 0xFFFF).to(torch.int16)  # wraps to the same 16 bits
    return ids, weight_bits.view(torch.bfloat16)
