"""The two baselines of bench/README.md, in torch, plus the fp32 reference they are checked against.

All functions take the canonical weight layout of docs/SPEC.md: gemm1_weights [E_loc, 2I, H] (rows
[0, I) up, rows [I, 2I) gate) and gemm2_weights [E_loc, H, I], and routing as (ids, weights) with
global expert ids [T, K]; a slot is local when offset <= id < offset + E_loc, and a non-local slot
contributes nothing (expert parallelism). The routing weight is applied after GEMM2.

1. moe_loop: a plain per-expert loop (torch ops, host-synchronising nonzero per expert). In bf16
   it is baseline (1); in fp32 it is the correctness reference of every timed configuration.
2. grouped_mm_moe: sort slots by expert, torch._grouped_mm for GEMM1, SwiGLU, torch._grouped_mm
   for GEMM2, weighted sum back per token. No host synchronisation: it is captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_loop(hidden_states: torch.Tensor, gemm1_weights: torch.Tensor,
             gemm2_weights: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
             local_expert_offset: int = 0, precision: torch.dtype = torch.bfloat16
             ) -> torch.Tensor:
    """Per-expert loop MoE: out[t] = sum over local slots (t, k) of w[t, k] * y_k.

    precision=bf16: every op in bf16 as torch does it (baseline (1), the "bf16 reference" of the
    docs/STYLE.md tolerance rule); the per-token sum is accumulated in fp32 and rounded once.
    precision=fp32: the same bf16 inputs upcast, fp32 GEMMs without TF32 and an unrounded fp32
    activation; returns fp32 (the reference).
    """
    num_tokens, hidden = hidden_states.shape
    num_local, two_inter, _ = gemm1_weights.shape
    inter = two_inter // 2
    out = torch.zeros(num_tokens, hidden, dtype=torch.float32, device=hidden_states.device)
    if num_tokens == 0:
        return out if precision == torch.float32 else out.to(torch.bfloat16)
    local_ids = ids.long() - local_expert_offset  # [T, K]
    for expert in range(num_local):
        token_idx, slot_idx = torch.nonzero(local_ids == expert, as_tuple=True)
        if token_idx.numel() == 0:
            continue
        x = hidden_states.index_select(0, token_idx).to(precision)  # (n, H)
        w1 = gemm1_weights[expert].to(precision)  # (2I, H)
        w2 = gemm2_weights[expert].to(precision)  # (H, I)
        g = x @ w1.t()  # (n, 2I)
        up, gate = g[:, :inter], g[:, inter:]
        act = F.silu(gate) * up  # (n, I)
        y = act @ w2.t()  # (n, H)
        slot_weight = weights[token_idx, slot_idx].float().unsqueeze(1)  # (n, 1)
        out.index_add_(0, token_idx, y.float() * slot_weight)
    return out if precision == torch.float32 else out.to(torch.bfloat16)


def moe_reference(hidden_states: torch.Tensor, gemm1_weights: torch.Tensor,
                  gemm2_weights: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                  local_expert_offset: int = 0) -> torch.Tensor:
    """fp32 reference (TF32 off for the duration): moe_loop in fp32, returns [T, H] fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return moe_loop(hidden_states, gemm1_weights, gemm2_weights, ids, weights,
                        local_expert_offset, precision=torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


class GroupedMmMoe:
    """torch._grouped_mm MoE, the strongest library-built peer on Hopper (bench/README.md).

    torch._grouped_mm(mat_a [M, K] bf16, mat_b [G, K, N] bf16, offs int32 [G]) computes, for group
    g, rows [offs[g-1], offs[g]) of mat_a times mat_b[g]; offs holds cumulative row ends (not
    starts), mat_a and mat_b must start 16-byte aligned and their leading strides be multiples of
    16 bytes (so H and I multiples of 8, as docs/SPEC.md demands). Rows past offs[-1] are not
    computed and their output is left unwritten. The weights are used through transposed views
    (stride 1 along the contraction dimension), which _grouped_mm accepts without a copy. On
    sm90/sm100 with bf16 it runs CUTLASS kernels without host synchronisation; on other devices
    it falls back to a loop that reads offs on the host.
    """

    COMBINES = ("auto", "bmm", "mul_sum")

    def __init__(self, gemm1_weights: torch.Tensor, gemm2_weights: torch.Tensor,
                 local_expert_offset: int = 0, combine: str = "auto"):
        """Keeps transposed views of the canonical weights: w1 (E_loc, H, 2I), w2 (E_loc, I, H).

        combine picks the weighted sum over a token's K slots: "bmm" (one batched GEMM
        (T, 1, K) x (T, K, H), fp32 accumulation), "mul_sum" (bf16 products, then a sum over K
        with fp32 accumulation, as vLLM's torch path does) or "auto" (bmm for K > 1, mul_sum for
        K = 1). Measured on an H200 (commit a504e12, all six models): bmm is 0-10% faster for
        K > 1; for K = 1 (llama4-scout) mul_sum is up to 1.7x faster (4.5 vs 2.7 ms at T=16384).
        """
        if combine not in self.COMBINES:
            raise ValueError(f"combine: expected one of {self.COMBINES}, got {combine!r}")
        self.combine = combine
        self.num_local = gemm1_weights.shape[0]
        self.inter = gemm1_weights.shape[1] // 2
        self.offset = local_expert_offset
        self.w1_t = gemm1_weights.transpose(1, 2)  # (E_loc, H, 2I), stride 1 along H
        self.w2_t = gemm2_weights.transpose(1, 2)  # (E_loc, I, H), stride 1 along I
        self.expert_range = torch.arange(self.num_local, dtype=torch.int32,
                                         device=gemm1_weights.device)

    def __call__(self, hidden_states: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                 all_local: bool = False) -> torch.Tensor:
        """out [T, H] bf16 from (ids [T, K] global, weights [T, K] bf16).

        all_local=True promises every id is local (no expert parallelism) and skips the mask.
        """
        num_tokens, top_k = ids.shape
        hidden = hidden_states.shape[1]
        local_ids = ids.reshape(-1).to(torch.int32) - self.offset  # (T*K,)
        is_local = (local_ids >= 0) & (local_ids < self.num_local)
        # Non-local slots sort to the end, past offs[-1], where _grouped_mm computes nothing.
        sort_key = torch.where(is_local, local_ids, self.num_local)
        sorted_key, order = torch.sort(sort_key, stable=True)  # order: slot index of each row
        offs = torch.searchsorted(sorted_key, self.expert_range, right=True,
                                  out_int32=True)  # (E_loc,) cumulative row ends
        token_of_row = torch.div(order, top_k, rounding_mode="floor")
        x_sorted = hidden_states.index_select(0, token_of_row)  # (T*K, H)
        g = torch._grouped_mm(x_sorted, self.w1_t, offs=offs)  # (T*K, 2I)
        act = F.silu(g[:, self.inter:]) * g[:, :self.inter]  # (T*K, I)
        y = torch._grouped_mm(act, self.w2_t, offs=offs)  # (T*K, H), rows past offs[-1] unset
        # Back to slot order t*K+k through the inverse permutation: a row gather ran 3-4x faster
        # than index_copy_ of the same [T*K, H] rows (H200: 218-260 vs 798 us, qwen3-30b T=16384).
        row_of_slot = torch.empty_like(order).scatter_(
            0, order, torch.arange(order.numel(), dtype=order.dtype, device=order.device))
        y_slot = y.index_select(0, row_of_slot)  # (T*K, H)
        if not all_local:
            y_slot = torch.where(is_local.unsqueeze(1), y_slot, 0)  # unset rows may hold NaN
        y_slot = y_slot.view(num_tokens, top_k, hidden)
        slot_weights = weights.to(torch.bfloat16).reshape(num_tokens, top_k, 1)
        combine = self.combine if self.combine != "auto" else ("bmm" if top_k > 1 else "mul_sum")
        if combine == "bmm":  # (T, 1, K) x (T, K, H), fp32 accumulation
            out = torch.bmm(slot_weights.view(num_tokens, 1, top_k), y_slot)
        else:  # bf16 products, summed over K in fp32
            out = (y_slot * slot_weights).sum(dim=1)
        return out.view(num_tokens, hidden)
