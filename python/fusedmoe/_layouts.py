"""Checkpoint layouts of expert weights, and their conversion to fusedmoe's canonical layout.

fusedmoe reads one layout (docs/python.md): gemm1 [E, 2I, H] with rows [0, I) the up projection
and rows [I, 2I) the gate projection (non-gated experts: gemm1 [E, I, H]), gemm2 [E, H, I], both
``y = W @ x`` (nn.Linear's [out, in] per expert). Checkpoints store other layouts:

* ``gate_up``: the 2I rows are [gate; up] (Hugging Face transformers' ``gate_up_proj`` of Qwen3-MoE,
  Mixtral, DeepSeek-V3, ...: ``gate, up = out.chunk(2)``);
* ``interleaved``: gate and up alternate, row 2j is gate j and row 2j+1 is up j (GPT-OSS:
  ``gate, up = out[..., ::2], out[..., 1::2]``);
* ``transposed``: stored for ``y = x @ W``, gemm1 [E, H, 2I] and gemm2 [E, I, H] (GPT-OSS, Llama 4,
  Aria); the gate/up order then runs along the last dimension.

The functions here convert once, at load time; ``to_checkpoint_*`` invert them (used to undo an
in-place conversion and by the tests).
"""

from typing import Tuple

import torch

from . import _checks

GATE_UP_ORDERS = ("up_gate", "gate_up", "interleaved")


def check_options(gate_up, transposed, gated) -> None:
    """Validates the layout options of ``prepare_weights`` / ``prepare_gemm1_bias``."""
    if not isinstance(gate_up, str) or gate_up not in GATE_UP_ORDERS:
        raise ValueError(f"gate_up: expected one of {GATE_UP_ORDERS}, got {gate_up!r}")
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed: expected a bool, got {type(transposed).__name__}")
    if not isinstance(gated, bool):
        raise TypeError(f"gated: expected a bool, got {type(gated).__name__}")
    if not gated and gate_up != "up_gate":
        raise ValueError(
            f"gate_up: expected the default 'up_gate' for non-gated experts (gated=False has no gate "
            f"rows to order), got {gate_up!r}"
        )


def _check_3d(name: str, tensor, device=None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.bfloat16:
        raise TypeError(f"{name}: expected dtype bfloat16, got {str(tensor.dtype).replace('torch.', '')}")
    if tensor.dim() != 3:
        raise ValueError(f"{name}: expected 3 dimensions, got shape {tuple(tensor.shape)}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{name}: expected device {device} (that of gemm1_weights), got {tensor.device}")
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {tensor.device}")
    return tensor


def gemm1_dims(gemm1_weights: torch.Tensor, transposed: bool, gated: bool) -> Tuple[int, int, int]:
    """(E, I, H) of a gemm1 tensor of any dtype stored as the options say (checks rank and sizes)."""
    if gemm1_weights.dim() != 3:
        raise ValueError(f"gemm1_weights: expected 3 dimensions, got shape {tuple(gemm1_weights.shape)}")
    num_experts = gemm1_weights.shape[0]
    rows, hidden_size = (
        (gemm1_weights.shape[2], gemm1_weights.shape[1]) if transposed
        else (gemm1_weights.shape[1], gemm1_weights.shape[2])
    )
    if gated and rows % 2:
        raise ValueError(
            f"gemm1_weights: expected dim {2 if transposed else 1} = 2 * intermediate_size (gated "
            f"experts{', transposed' if transposed else ''}), got shape {tuple(gemm1_weights.shape)}"
        )
    if rows == 0 or hidden_size == 0 or num_experts == 0:
        raise ValueError(
            f"gemm1_weights: expected non-empty dimensions, got shape {tuple(gemm1_weights.shape)}")
    return num_experts, rows // 2 if gated else rows, hidden_size


def gemm1_sizes(gemm1_weights: torch.Tensor, transposed: bool, gated: bool) -> Tuple[int, int, int]:
    """``gemm1_dims`` of a bf16 cpu/cuda tensor (checks the type, dtype and device too)."""
    _check_3d("gemm1_weights", gemm1_weights)
    return gemm1_dims(gemm1_weights, transposed, gated)


def _rows_to_canonical(rows: torch.Tensor, gate_up: str, dim: int) -> torch.Tensor:
    """Reorders the 2I gate/up rows along ``dim`` into [up; gate]."""
    if gate_up == "up_gate":
        return rows
    half = rows.shape[dim] // 2
    if gate_up == "gate_up":
        gate, up = rows.narrow(dim, 0, half), rows.narrow(dim, half, half)
    else:  # interleaved: gate j at 2j, up j at 2j + 1
        pairs = rows.unflatten(dim, (half, 2))
        gate, up = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return torch.cat([up, gate], dim)


def _rows_from_canonical(rows: torch.Tensor, gate_up: str, dim: int) -> torch.Tensor:
    """Inverse of ``_rows_to_canonical``: [up; gate] rows along ``dim`` into ``gate_up`` order."""
    if gate_up == "up_gate":
        return rows
    half = rows.shape[dim] // 2
    up, gate = rows.narrow(dim, 0, half), rows.narrow(dim, half, half)
    if gate_up == "gate_up":
        return torch.cat([gate, up], dim)
    return torch.stack([gate, up], dim + 1).flatten(dim, dim + 1)


def gemm1_to_canonical(gemm1_weights: torch.Tensor, gate_up: str, transposed: bool,
                       gated: bool) -> torch.Tensor:
    """gemm1 as stored -> canonical [E, 2I, H] (gated) or [E, I, H], contiguous."""
    weights = gemm1_weights.transpose(1, 2) if transposed else gemm1_weights
    if gated:
        weights = _rows_to_canonical(weights, gate_up, 1)
    return weights.contiguous()


def gemm2_to_canonical(gemm2_weights: torch.Tensor, transposed: bool) -> torch.Tensor:
    """gemm2 as stored -> canonical [E, H, I], contiguous."""
    return (gemm2_weights.transpose(1, 2) if transposed else gemm2_weights).contiguous()


def gemm1_bias_to_canonical(bias: torch.Tensor, gate_up: str, gated: bool) -> torch.Tensor:
    """gemm1 bias [E, 2I] in ``gate_up`` order (or [E, I] non-gated) -> canonical, contiguous."""
    return (_rows_to_canonical(bias, gate_up, 1) if gated else bias).contiguous()


def to_checkpoint_gemm1(canonical: torch.Tensor, gate_up: str, transposed: bool, gated: bool) -> torch.Tensor:
    """Inverse of ``gemm1_to_canonical`` (contiguous in the stored layout)."""
    weights = _rows_from_canonical(canonical, gate_up, 1) if gated else canonical
    return (weights.transpose(1, 2) if transposed else weights).contiguous()


def to_checkpoint_gemm2(canonical: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Inverse of ``gemm2_to_canonical``."""
    return (canonical.transpose(1, 2) if transposed else canonical).contiguous()


def to_checkpoint_gemm1_bias(canonical: torch.Tensor, gate_up: str, gated: bool) -> torch.Tensor:
    """Inverse of ``gemm1_bias_to_canonical``."""
    return (_rows_from_canonical(canonical, gate_up, 1) if gated else canonical).contiguous()


def prepare_weights(gemm1_weights, gemm2_weights, weight_layout, gate_up, transposed, gated):
    """The body of ``fusedmoe.prepare_weights`` (see its docstring)."""
    _checks.check_layout(False, weight_layout)
    check_options(gate_up, transposed, gated)
    if gate_up == "up_gate" and not transposed and gated:
        # The canonical layout: validated and returned as is (no copy), as before layouts existed.
        _checks.check_tensor("gemm1_weights", gemm1_weights, (torch.bfloat16,), (None, None, None))
        num_local, two_i, hidden_size = gemm1_weights.shape
        if two_i == 0 or two_i % 2:
            raise ValueError(f"gemm1_weights: expected dim 1 = 2 * intermediate_size > 0, got {two_i}")
        _checks.check_tensor(
            "gemm2_weights", gemm2_weights, (torch.bfloat16,), (num_local, hidden_size, two_i // 2),
            gemm1_weights.device,
        )
        return gemm1_weights, gemm2_weights
    num_local, intermediate_size, hidden_size = gemm1_sizes(gemm1_weights, transposed, gated)
    _check_3d("gemm2_weights", gemm2_weights, gemm1_weights.device)
    expected = ((num_local, intermediate_size, hidden_size) if transposed
                else (num_local, hidden_size, intermediate_size))
    if tuple(gemm2_weights.shape) != expected:
        raise ValueError(
            f"gemm2_weights: expected shape [{', '.join(map(str, expected))}] "
            f"({'[E, I, H], transposed' if transposed else '[E, H, I]'}, sizes from gemm1_weights), "
            f"got {tuple(gemm2_weights.shape)}"
        )
    return (
        gemm1_to_canonical(gemm1_weights, gate_up, transposed, gated),
        gemm2_to_canonical(gemm2_weights, transposed),
    )


def prepare_gemm1_bias(bias, gate_up, gated):
    """The body of ``fusedmoe.prepare_gemm1_bias`` (see its docstring)."""
    check_options(gate_up, False, gated)
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor, got {type(bias).__name__}")
    if bias.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(
            f"bias: expected dtype bfloat16 or float32, got {str(bias.dtype).replace('torch.', '')}")
    if bias.dim() != 2:
        raise ValueError(
            f"bias: expected 2 dimensions [E, {'2I' if gated else 'I'}], got shape {tuple(bias.shape)}")
    if bias.device.type not in ("cpu", "cuda"):
        raise ValueError(f"bias: expected a cpu or cuda tensor, got device {bias.device}")
    if gated and (bias.shape[1] == 0 or bias.shape[1] % 2):
        raise ValueError(
            f"bias: expected dim 1 = 2 * intermediate_size > 0 (gated experts), got shape {tuple(bias.shape)}"
        )
    return gemm1_bias_to_canonical(bias, gate_up, gated)
