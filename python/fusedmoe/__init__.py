"""fusedmoe: a fused BF16 Mixture-of-Experts layer for Hopper (sm_90a), for PyTorch.

FlashInfer-compatible entry points ``trtllm_bf16_moe`` (routing from logits) and
``trtllm_bf16_routed_moe`` (routing given), registered as torch.library custom ops
(``torch.ops.fusedmoe.moe_out`` / ``moe_unfinalized``) so ``torch.compile(fullgraph=True)`` and CUDA graphs
work. CUDA tensors run the Hopper kernels; CPU tensors run the CPU reference. See docs/python.md;
``ExpertParallelMoE`` splits the experts over the ranks of a torch.distributed group
(docs/distributed.md), and ``fusedmoe.integrations.transformers`` plugs it into Hugging Face
transformers as ``experts_implementation="fusedmoe"`` (docs/transformers.md). The FP8
block-scale variant: ``trtllm_fp8_block_scale_moe``, helpers in ``fusedmoe.fp8`` (docs/fp8.md).
"""

import torch  # noqa: F401  (loads the CUDA runtime the extension links against)

from . import _ext, _ops  # noqa: F401  (_ops registers the custom ops)
from . import fp8
from .api import (
    ActivationType,
    Fp8QuantizationType,
    RoutingMethod,
    WeightLayout,
    pack_topk,
    permuted_capacity,
    prepare_gemm1_bias,
    prepare_weights,
    reserve_workspace,
    trtllm_bf16_moe,
    trtllm_bf16_routed_moe,
    trtllm_fp8_block_scale_moe,
    trtllm_fp8_block_scale_routed_moe,
    unpack_topk,
    validate_routing,
    workspace_size,
)
from .distributed import ExpertParallelMoE

__version__ = "0.1.0"

__all__ = [
    "ActivationType",
    "ExpertParallelMoE",
    "Fp8QuantizationType",
    "RoutingMethod",
    "WeightLayout",
    "pack_topk",
    "permuted_capacity",
    "prepare_gemm1_bias",
    "prepare_weights",
    "reserve_workspace",
    "trtllm_bf16_moe",
    "trtllm_bf16_routed_moe",
    "trtllm_fp8_block_scale_moe",
    "trtllm_fp8_block_scale_routed_moe",
    "unpack_topk",
    "validate_routing",
    "workspace_size",
]
