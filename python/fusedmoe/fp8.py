"""FP8 block-scale helpers: the quantiser the operator applies inside, and checkpoint conversion.

The FP8 variant (``trtllm_fp8_block_scale_moe``) reads float8_e4m3fn weights with one fp32 scale
per 128x128 block (weight = e4m3 value * scale; FlashInfer's DeepSeekFp8 layout):
gemm1 [E_loc, 2I or I, H] with scales [E_loc, (2I or I) / 128, H / 128], gemm2 [E_loc, H, I] with
scales [E_loc, H / 128, I / 128]. Activations are quantised per token and 128-column group:

    amax = max |v| over the group (NaNs skipped), scale = amax / 448 (fp32),
    e4m3 = RNE(v / scale) saturated to +-448 (v itself when scale == 0; NaN stays NaN).

``quantize_fp8_activations`` is exactly that rule (bitwise what the operator does with bf16
hidden states); ``quantize_fp8_weights`` applies it per 128x128 block to bf16/fp32 weights.
``prepare_fp8_weights`` turns FP8 checkpoints into the operator's layout: block-scaled ones
(DeepSeek-V3/R1, Qwen3-FP8: ``weight_scale_inv`` [N / 128, K / 128] per expert) and per-tensor
scaled ones (one scale per expert tensor, or per gate and up half), whose scale every block of the
tensor then carries (exact: no value is re-quantised).
"""

from typing import Tuple

import torch

from . import _checks, _layouts

BLOCK = 128
E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn


def _quantize(values: torch.Tensor, amax: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """values [..., n] fp32 with amax broadcastable to them -> (e4m3 codes, scale = amax / 448)."""
    # Elementwise over a tensor: divided by a Python scalar, CUDA tensors multiply by its
    # reciprocal, which is not always the correctly rounded amax / 448 the rule pins.
    scale = amax / torch.full_like(amax, E4M3_MAX)
    scaled = torch.where(scale > 0, values / scale, values)
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(FP8), scale


def _amax(values: torch.Tensor, dims) -> torch.Tensor:
    """max |v| over ``dims`` (kept), NaNs skipped (an all-NaN group gives 0)."""
    magnitude = values.abs()
    return torch.where(torch.isnan(magnitude), 0.0, magnitude).amax(dim=dims, keepdim=True)


def quantize_fp8_activations(hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantises bf16 hidden states [T, H] (H a multiple of 128) per token and 128-column group.

    Returns ``(hidden_states_fp8 [T, H] float8_e4m3fn, hidden_states_scale [H / 128, T] float32)``,
    the arguments ``trtllm_fp8_block_scale_moe`` takes for pre-quantised input; the operator gives
    bitwise the same result for them as for the bf16 tensor.
    """
    _checks.check_tensor("hidden_states", hidden_states, (torch.bfloat16,), (None, None))
    num_tokens, hidden_size = hidden_states.shape
    _check_multiple("hidden_states", "dim 1 (H)", hidden_size)
    groups = hidden_states.float().view(num_tokens, hidden_size // BLOCK, BLOCK)
    codes, scale = _quantize(groups, _amax(groups, -1))
    return codes.view(num_tokens, hidden_size), scale.view(num_tokens, hidden_size // BLOCK).t().contiguous()


def quantize_fp8_weights(weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantises expert weights [E, N, K] (bf16 or fp32; N, K multiples of 128) per 128x128 block.

    Returns ``(weights_fp8 [E, N, K] float8_e4m3fn, scales [E, N / 128, K / 128] float32)`` with
    scale = amax / 448 per block: how an FP8 checkpoint is made from a BF16 one.
    """
    _checks.check_tensor("weights", weights, (torch.bfloat16, torch.float32), (None, None, None))
    experts, n, k = weights.shape
    _check_multiple("weights", "dim 1", n)
    _check_multiple("weights", "dim 2", k)
    blocks = weights.float().view(experts, n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    codes, scale = _quantize(blocks, _amax(blocks, (2, 4)))
    return codes.view(experts, n, k), scale.view(experts, n // BLOCK, k // BLOCK).contiguous()


def dequantize_fp8_weights(weights: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn [E, N, K] (N, K multiples of 128) with block scales [E, N / 128, K / 128]
    -> fp32 [E, N, K]. Raises TypeError or ValueError naming the argument."""
    _checks.check_tensor("weights", weights, (FP8,), (None, None, None))
    experts, n, k = weights.shape
    _check_multiple("weights", "dim 1", n)
    _check_multiple("weights", "dim 2", k)
    _checks.check_tensor("scales", scales, (torch.float32,), (experts, n // BLOCK, k // BLOCK),
                         weights.device)
    blocks = weights.float().view(experts, n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    return (blocks * scales[:, :, None, :, None]).view(experts, n, k)


def prepare_fp8_weights(
    gemm1_weights: torch.Tensor,
    gemm1_weights_scale: torch.Tensor,
    gemm2_weights: torch.Tensor,
    gemm2_weights_scale: torch.Tensor,
    *,
    gate_up: str = "up_gate",
    gated: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Converts an FP8 checkpoint's expert weights once, at load time, into the operator's layout.

    Args:
        gemm1_weights: float8_e4m3fn [E, 2I, H] in ``gate_up`` row order (as ``prepare_weights``:
            "up_gate", "gate_up" for a checkpoint's stacked [gate; up], or "interleaved"), or
            [E, I, H] with ``gated=False``. Stored for ``y = W @ x`` (nn.Linear's [out, in]).
        gemm1_weights_scale: fp32 block scales [E, 2I / 128, H / 128] (rows in the same order as
            the weights; "interleaved" cannot have them), or per-tensor scales: [E] or [E, 1] (one
            per expert), [E, 2] (gated: one per half, in ``gate_up`` order: (gate, up) for
            "gate_up") or a single value for all.
        gemm2_weights: float8_e4m3fn [E, H, I].
        gemm2_weights_scale: fp32 block scales [E, H / 128, I / 128], or per-tensor: [E], [E, 1],
            a single value.

    Returns:
        ``(gemm1 [E, 2I or I, H], gemm1 scales [E, 2I or I / 128, H / 128], gemm2 [E, H, I],
        gemm2 scales [E, H / 128, I / 128])``, contiguous, rows [up; gate]: the arguments of
        ``trtllm_fp8_block_scale_moe``. No value is re-quantised.

    Raises:
        TypeError or ValueError naming the argument (dtype, shape, H or I not a multiple of 128,
        block scales with "interleaved" rows).
    """
    _layouts.check_options(gate_up, False, gated)
    _checks.check_tensor("gemm1_weights", gemm1_weights, (FP8,), (None, None, None))
    device = gemm1_weights.device
    experts, rows, hidden_size = gemm1_weights.shape
    if gated and (rows == 0 or rows % 2):
        raise ValueError(f"gemm1_weights: expected dim 1 = 2 * intermediate_size > 0, got {rows}")
    intermediate_size = rows // 2 if gated else rows
    _check_multiple("gemm1_weights", "dim 2 (H)", hidden_size)
    _check_multiple("gemm1_weights", "intermediate_size", intermediate_size)
    _checks.check_tensor("gemm2_weights", gemm2_weights, (FP8,),
                         (experts, hidden_size, intermediate_size), device)

    scale1 = _block_scales("gemm1_weights_scale", gemm1_weights_scale, experts, rows, hidden_size,
                           device, halves=2 if gated else 0, gate_up=gate_up)
    scale2 = _block_scales("gemm2_weights_scale", gemm2_weights_scale, experts, hidden_size,
                           intermediate_size, device)
    weights1 = gemm1_weights.view(torch.uint8)  # reordered as bytes (cat of fp8 needs no kernel)
    if gated:
        weights1 = _layouts._rows_to_canonical(weights1, gate_up, 1)
        scale1 = _layouts._rows_to_canonical(scale1, "up_gate" if gate_up == "interleaved" else gate_up, 1)
    return (weights1.contiguous().view(FP8), scale1.contiguous(), gemm2_weights.contiguous(),
            scale2.contiguous())


def _block_scales(name, scale, experts, n, k, device, halves=0, gate_up="up_gate"):
    """A checkpoint's scales as block scales [E, n / 128, k / 128] (rows in checkpoint order)."""
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(scale).__name__}")
    if scale.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype float32, got {str(scale.dtype).replace('torch.', '')}")
    if scale.device != device:
        raise ValueError(f"{name}: expected device {device} (that of the weights), got {scale.device}")
    block_shape = (experts, n // BLOCK, k // BLOCK)
    shape = tuple(scale.shape)
    if shape == block_shape:
        if gate_up == "interleaved":
            raise ValueError(
                f"{name}: block scales cannot follow interleaved gate/up rows (a 128-row block would "
                "mix gate and up rows); got block scales with gate_up='interleaved'"
            )
        return scale
    full = torch.empty(block_shape, dtype=torch.float32, device=device)
    if scale.numel() == 1:
        return full.copy_(scale.reshape(1, 1, 1).expand(block_shape))
    if shape in ((experts,), (experts, 1), (experts, 1, 1)):
        return full.copy_(scale.reshape(experts, 1, 1).expand(block_shape))
    if halves and shape == (experts, 2):
        half_rows = block_shape[1] // 2
        first, second = scale[:, 0], scale[:, 1]  # the halves in checkpoint order
        if gate_up == "interleaved":
            if not torch.equal(first, second):
                raise ValueError(
                    f"{name}: expected one scale per expert for interleaved gate/up rows (each "
                    "128-row block mixes both), got [E, 2] scales that differ"
                )
            return full.copy_(first.reshape(experts, 1, 1).expand(block_shape))
        full[:, :half_rows] = first.reshape(experts, 1, 1)
        full[:, half_rows:] = second.reshape(experts, 1, 1)
        return full
    expected = [f"[{', '.join(map(str, block_shape))}] (block)", f"[{experts}] (per expert)"]
    if halves:
        expected.append(f"[{experts}, 2] (per gate/up half)")
    raise ValueError(f"{name}: expected shape {' or '.join(expected)} or one value, got {shape}")


def _check_multiple(name: str, what: str, size: int) -> None:
    if size == 0 or size % BLOCK:
        raise ValueError(f"{name}: expected {what} a positive multiple of {BLOCK} (FP8 blocks), got {size}")
