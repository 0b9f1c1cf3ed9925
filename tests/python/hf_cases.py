"""Shared pieces of the transformers integration tests: tiny models, every registry experts class,
random weights, the bf16 tolerance rule, and the marker for operator features not merged yet."""

import copy
import importlib
import inspect
import os
from typing import Optional

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fusedmoe.integrations import transformers as fusedmoe_hf  # noqa: E402

fusedmoe_hf.register()

BF16_EPS = 2.0**-8
VOCAB = 256

# ---- tiny whole models (random weights, no download) ---------------------------------------------
_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, vocab_size=VOCAB, initializer_range=0.1, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_config(family: str):
    """A 2-layer, H=64 config of ``family`` whose every decoder layer has routed experts."""
    t = transformers
    if family == "qwen3_moe":
        return t.Qwen3MoeConfig(**_COMMON, intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                                num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[])
    if family == "mixtral":
        return t.MixtralConfig(**_COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2)
    if family == "qwen2_moe":  # plus a gated shared expert in the model's code
        return t.Qwen2MoeConfig(**_COMMON, intermediate_size=128, moe_intermediate_size=32,
                                shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
                                decoder_sparse_step=1, mlp_only_layers=[])
    if family == "olmoe":
        return t.OlmoeConfig(**_COMMON, intermediate_size=32, num_experts=8, num_experts_per_tok=2)
    if family == "deepseek_v3":  # MLA attention, grouped sigmoid router, a shared expert
        common = {k: v for k, v in _COMMON.items() if k != "head_dim"}
        common["num_key_value_heads"] = 4
        return t.DeepseekV3Config(**common, intermediate_size=128, moe_intermediate_size=32,
                                  n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=2,
                                  topk_group=1, first_k_dense_replace=0, q_lora_rank=32, kv_lora_rank=16,
                                  qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                                  routed_scaling_factor=2.5)
    if family == "gpt_oss":  # clamped SwiGLU, biases, interleaved gate/up, transposed weights
        return t.GptOssConfig(**_COMMON, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
                              sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    if family == "llama4":  # routing scale on the expert input, K = 1, a shared expert
        return t.Llama4TextConfig(**_COMMON, intermediate_size=32, intermediate_size_mlp=128,
                                  num_local_experts=8, num_experts_per_tok=1, interleave_moe_layer_step=1,
                                  attention_chunk_size=64)
    raise ValueError(family)


# Families whose experts need only what the operator computes today (plain SwiGLU, no biases).
MODEL_FAMILIES = ["qwen3_moe", "mixtral", "qwen2_moe", "olmoe", "deepseek_v3"]
# Families that need the operator's extensions (activations, clamped SwiGLU, biases, scales on input).
MODEL_FAMILIES_EXTENDED = ["gpt_oss", "llama4"]


def init_experts_(module, generator) -> None:
    """Fresh random expert weights with std 1/sqrt(fan_in) (activations stay O(1)), biases std 0.5."""
    with torch.no_grad():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("_bias"):
                std = 0.5
            elif name in ("gate_up_proj", "up_proj", "down_proj"):
                # [E, out, in] or, transposed, [E, in, out]: fan_in is dim 2 or dim 1
                transposed = getattr(module, "is_transposed", type(module).__name__ == "Llama4TextExperts")
                std = param.shape[1 if transposed else 2] ** -0.5
            else:
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def tiny_model(family: str, generator, implementation: str = "fusedmoe", dtype=torch.bfloat16, device="cpu"):
    """A tiny random causal LM of ``family`` (eager attention) with fresh expert weights."""
    torch.manual_seed(generator.initial_seed())
    model = transformers.AutoModelForCausalLM.from_config(
        tiny_config(family), dtype=dtype, attn_implementation="eager", experts_implementation=implementation,
    )
    for module in model.modules():
        if type(module).__name__ == "Llama4TextExperts" or fusedmoe_hf._is_registry_experts(module):
            init_experts_(module, generator)
    return model.to(device).eval()


def set_implementation(model, implementation: str) -> None:
    """Switches every experts module of ``model`` (registry ones and the patched Llama 4 block)."""
    model.config._experts_implementation = implementation


# ---- every experts class the registry dispatches ------------------------------------------------
_SHRINK = dict(hidden_size=64, moe_hidden_size=64, intermediate_size=32, moe_intermediate_size=32,
               expert_ffn_hidden_size=32, num_experts=8, num_local_experts=8, n_routed_experts=8,
               moe_num_experts=8, num_experts_per_tok=2)


def registry_experts_classes():
    """(family, class) of every experts class of the installed transformers that the registry
    dispatches (decorated with use_experts_implementation), found by reading the models folder."""
    root = os.path.dirname(importlib.import_module("transformers.models").__file__)
    found = []
    for family in sorted(os.listdir(root)):
        folder = os.path.join(root, family)
        if not os.path.isdir(folder):
            continue
        for file_name in sorted(os.listdir(folder)):
            if not (file_name.startswith("modeling_") and file_name.endswith(".py")):
                continue
            with open(os.path.join(folder, file_name)) as source:
                if "@use_experts_implementation" not in source.read():
                    continue
            module_name = f"transformers.models.{family}.{file_name[:-3]}"
            try:
                module = importlib.import_module(module_name)
            except Exception:  # an optional dependency missing: that family cannot run here anyway
                continue
            for cls in vars(module).values():
                if (inspect.isclass(cls) and cls.__module__ == module_name
                        and hasattr(getattr(cls, "forward", None), "__wrapped__")
                        and hasattr(cls, "_apply_gate")):
                    found.append((family, cls))
    return found


def build_experts(family: str, cls, generator):
    """An instance of experts class ``cls`` from a default config of ``family`` shrunk to E=8,
    H=64, I=32, with fresh random weights (bf16, CPU); None when no config of the family builds it."""
    try:
        configuration = importlib.import_module(f"transformers.models.{family}.configuration_{family}")
    except Exception:
        return None
    config_classes = [c for c in vars(configuration).values()
                      if inspect.isclass(c) and issubclass(c, transformers.PretrainedConfig)
                      and c.__module__ == configuration.__name__]
    for config_class in config_classes:
        try:
            config = config_class()
        except Exception:
            continue
        try:
            for key, value in _SHRINK.items():
                if hasattr(config, key) and not isinstance(getattr(config, key), (list, dict)):
                    setattr(config, key, value)
        except Exception:  # e.g. per-layer (heterogeneous) configs
            continue
        for args in ((), (0,)):  # some take a layer index
            try:
                module = cls(config, *args)
            except Exception:
                continue
            shapes = [p.shape for n, p in module.named_parameters(recurse=False)
                      if n in ("gate_up_proj", "up_proj", "down_proj")]
            if len(shapes) != 2 or any(s[0] != 8 or 0 in s for s in shapes):
                continue
            module = module.to(torch.bfloat16)
            init_experts_(module, generator)
            return module
    return None


def _spec_or_none(module):
    try:
        return fusedmoe_hf.experts_spec(module)
    except fusedmoe_hf.UnsupportedExperts:
        return None


def _classify():
    generator = torch.Generator().manual_seed(0)
    today, extended, unsupported = [], [], []
    for family, cls in registry_experts_classes():
        module = build_experts(family, cls, generator)
        if module is None:
            continue
        spec = _spec_or_none(module)
        case = pytest.param(family, cls, id=f"{family}.{cls.__name__}")
        group = unsupported if spec is None else extended if spec.needs_operator_extensions() else today
        group.append(case)
    return today, extended, unsupported


BLOCK_TODAY, BLOCK_EXTENDED, BLOCK_UNSUPPORTED = _classify()


# ---- numerics -----------------------------------------------------------------------------------
def max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_bf16_close(ours, bf16_ref, ref, what: str, seed: int) -> None:
    """The bf16 rule of the tests: max|ours - ref| <= 2 * max|bf16_ref - ref| + atol, where ``ref``
    is the fp32 computation on the same bf16 inputs and ``bf16_ref`` the model's own bf16
    implementation; atol = two bf16 spacings at the largest |ref|. Two, because the operator
    rounds each expert's row to bf16 before the weighted sum over the K experts and then rounds
    the sum: up to about two spacings at the largest output even where the model's own bf16 path
    rounds less (one spacing failed once in about 1200 fresh seeds, at 1.9 spacings, on an
    experts class whose own error was a third of one). A wrong expert, weight, bias or layout
    moves outputs by O(max|ref|), far past this."""
    assert torch.isfinite(ours).all(), f"{what}: non-finite output (seed {seed})"
    err, ref_err = max_abs(ours, ref), max_abs(bf16_ref, ref)
    atol = 2 * BF16_EPS * (ref.abs().max().item() if ref.numel() else 0.0)
    assert err <= 2 * ref_err + atol, (
        f"{what}: max|fusedmoe - fp32| = {err:.4g} > 2 * {ref_err:.4g} (bf16 model's own error) + {atol:.3g} "
        f"(seed {seed})"
    )


def devices():
    """cpu always; cuda when a Hopper GPU is present (conftest's marker)."""
    from conftest import requires_hopper

    return ["cpu", pytest.param("cuda", marks=requires_hopper)]


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> Optional[int]:
    """Index of the first differing token of two equal-length 1-D sequences, or None."""
    diff = (a != b).nonzero()
    return None if diff.numel() == 0 else int(diff[0])


def clone_module_fp32(module):
    """An fp32 copy (same values: bf16 widens exactly) sharing nothing with ``module``."""
    return copy.deepcopy(module).float()


class RoutingPin:
    """Pins a model's routing decisions to those of a recorded run.

    Top-k selection is discontinuous: a token whose k-th and (k+1)-th router scores differ by less
    than the bf16 noise of the layers below may pick another expert in one bf16 run than in another,
    and then its output legitimately differs by O(1). To compare implementations by a numeric rule,
    the runs being compared replay the (ids, weights) the reference run's routers produced, call by
    call, module by module (weights cast to each run's own dtype); the routers still run. Registry
    experts are pinned at their input; Llama 4 at its router's output."""

    def __init__(self):
        self.records = {}
        self.positions = {}
        self.mode = "record"

    def attach(self, model):
        """Registers the hooks on ``model``; returns the handles (remove them when done)."""
        handles = []
        for name, module in model.named_modules():
            if fusedmoe_hf._is_registry_experts(module):
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, n=name: self._experts_hook(n, args)))
            elif type(module).__name__ == "Llama4Router":
                handles.append(module.register_forward_hook(
                    lambda m, args, output, n=name: self._router_hook(n, output)))
        return handles

    def replay(self):
        self.mode, self.positions = "replay", {}

    def _next(self, name, values):
        if self.mode == "record":
            self.records.setdefault(name, []).append(tuple(v.detach().clone() for v in values))
            return values
        index = self.positions.get(name, 0)
        self.positions[name] = index + 1
        recorded = self.records[name][index]
        if any(r.shape != v.shape for r, v in zip(recorded, values)):
            return values  # another call sequence (a generation that already diverged): leave it
        return tuple(r.to(v.dtype) for r, v in zip(recorded, values))

    def _experts_hook(self, name, args):
        hidden_states, ids, weights = args[:3]
        ids, weights = self._next(name, (ids, weights))
        return (hidden_states, ids, weights) + tuple(args[3:])

    def _router_hook(self, name, output):
        return self._next(name, tuple(output))


# ---- a plain-torch stand-in of the extended routed operator ---------------------------------------
def _standin_activation(activation_type, gemm1_out, intermediate_size, alpha, beta, limit):
    """The activations of the extended operator's contract, on canonical [up; gate] columns."""
    if activation_type in (0, 1, 2, 6):  # non-gated: act(up)
        return {0: torch.nn.functional.gelu, 1: torch.relu, 2: torch.nn.functional.silu,
                6: lambda u: torch.relu(u).square()}[activation_type](gemm1_out)
    up, gate = gemm1_out[:, :intermediate_size], gemm1_out[:, intermediate_size:]
    if activation_type == 3:
        if limit is not None:
            gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
        a = 1.0 if alpha is None else alpha
        b = 0.0 if beta is None else beta
        return gate * torch.sigmoid(a * gate) * (up + b)
    if activation_type == 4:
        return torch.nn.functional.gelu(gate) * up
    if activation_type == 8:
        return torch.nn.functional.gelu(gate, approximate="tanh") * up
    raise ValueError(f"activation_type: the stand-in has no {activation_type}")


def routed_moe_standin(topk_ids, hidden_states, gemm1_weights, gemm2_weights, num_experts, top_k, n_group,
                       topk_group, intermediate_size, local_expert_offset, local_num_experts, *args,
                       activation_type=3, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None,
                       gemm1_bias=None, gemm2_bias=None, use_routing_scales_on_input=False, **kwargs):
    """``trtllm_bf16_routed_moe`` with the extended operator's arguments, in fp32 per expert, from its
    contract: gemm1 [E, 2I, H] rows [up; gate] (or [E, I, H] non-gated), biases added to each GEMM's
    output, the expert output weighted by the routing weight, or (scales on the input, K == 1)
    computed on bf16(w * x) and not weighted again. Tests the integration's use of the arguments,
    not the kernels."""
    ids, weights = topk_ids
    x = hidden_states.float()
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(top_k):
            e = int(ids[t, k]) - local_expert_offset
            if not 0 <= e < local_num_experts:
                continue
            w = weights[t, k].float()
            xe = (w * x[t]).to(torch.bfloat16).float() if use_routing_scales_on_input else x[t]
            h = gemm1_weights[e].float() @ xe
            if gemm1_bias is not None:
                h = h + gemm1_bias[e].float()
            per = lambda c: None if c is None else float(c[e])  # noqa: E731
            a = _standin_activation(activation_type, h[None], intermediate_size, per(gemm1_alpha),
                                    per(gemm1_beta), per(gemm1_clamp_limit))[0]
            y = gemm2_weights[e].float() @ a.to(torch.bfloat16).float()
            if gemm2_bias is not None:
                y = y + gemm2_bias[e].float()
            out[t] += y if use_routing_scales_on_input else w * y
    return out.to(torch.bfloat16)
