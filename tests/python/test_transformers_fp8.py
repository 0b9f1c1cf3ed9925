"""experts_implementation="fusedmoe" for transformers' FP8 experts (``FP8Experts`` of
FineGrainedFP8 checkpoints, python/fusedmoe/integrations/transformers.py).

transformers' own FP8 experts run only on GPUs, so on the CPU the module's forward through the
"fusedmoe" entry is checked against the independent float64 model of the FP8 arithmetic
(reference_moe.moe_reference_fp8) on the module's own e4m3 weights and scales, for SwiGLU (gate
and up rows in the checkpoint's [gate; up] order) and GPT-OSS's clamped SwiGLU; the cache follows
weight changes; what fusedmoe does not take falls back to transformers' FP8 "grouped_mm" with a
warning.
"""

import warnings

import pytest
import torch

import reference_moe as ref
from conftest import requires_hopper
from fusedmoe import fp8
from fusedmoe.integrations import transformers as fusedmoe_hf

transformers = pytest.importorskip("transformers")
finegrained_fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
if not hasattr(finegrained_fp8, "FP8ExpertsInterface"):
    pytest.skip("this transformers has no FP8 experts registry", allow_module_level=True)

H, I, E, K, T = 256, 128, 8, 2, 19


def fp8_experts(generator, activation_scheme="dynamic", **config_overrides):
    """An FP8Experts module dispatched through the registry with "fusedmoe", random e4m3 weights
    (from bf16 ones, 128 x 128 block scales)."""
    from transformers.integrations.moe import use_experts_implementation

    fusedmoe_hf.register()
    config = transformers.Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E,
                                         num_experts_per_tok=K, hidden_act="silu", **config_overrides)
    config._experts_implementation = "fusedmoe"
    cls = use_experts_implementation(
        experts_class=type("TestFP8Experts", (finegrained_fp8.FP8Experts,), {}),
        experts_interface=finegrained_fp8.ALL_FP8_EXPERTS_FUNCTIONS, has_gate=True, has_bias=False)
    module = cls(config, block_size=(128, 128), activation_scheme=activation_scheme)
    w1, s1 = fp8.quantize_fp8_weights(torch.randn(E, 2 * I, H, generator=generator) / H**0.5)
    w2, s2 = fp8.quantize_fp8_weights(torch.randn(E, H, I, generator=generator) / I**0.5)
    with torch.no_grad():
        module.gate_up_proj.data = w1  # rows [gate; up], as checkpoints store them
        module.gate_up_proj_scale_inv.data = s1
        module.down_proj.data = w2
        module.down_proj_scale_inv.data = s2
    return module


def routing(generator):
    ids = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, K, generator=generator), dim=-1)
    return ids, weights


def check_against_the_fp8_model(module, x, ids, weights, mlp, seed):
    with torch.no_grad():
        out = module(x, ids, weights.to(torch.bfloat16))
    # The model on the canonical [up; gate] rows of the module's weights (the same values).
    w1, s1, w2, s2 = fp8.prepare_fp8_weights(module.gate_up_proj, module.gate_up_proj_scale_inv,
                                             module.down_proj, module.down_proj_scale_inv,
                                             gate_up="gate_up")
    codes, scales = ref.quantize_groups_fp8(x)
    w = weights.to(torch.bfloat16).float()
    exact = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids, w, mlp=mlp)
    rounded = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids, w, bf16_stages=True, mlp=mlp)
    error = (out.double() - exact).abs().max().item()
    bound = 2 * (rounded - exact).abs().max().item() + 1e-3 * exact.abs().max().item()
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert error <= bound, f"max|ours - ref| = {error:.3e} > {bound:.3e} (seed {seed})"
    return out


def test_registered_in_the_fp8_registry():
    fusedmoe_hf.register()
    assert finegrained_fp8.ALL_FP8_EXPERTS_FUNCTIONS["fusedmoe"] is fusedmoe_hf.fusedmoe_fp8_experts_forward


def test_swiglu_fp8_experts_match_the_fp8_model(generator):
    module = fp8_experts(generator)
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    check_against_the_fp8_model(module, x, *routing(generator), ref.Mlp(3), generator.initial_seed())
    spec = module._fusedmoe_fp8_state.spec
    assert spec.gated and spec.gate_up == "gate_up" and spec.activation_type == fusedmoe_hf.SWIGLU


def test_clamped_swiglu_fp8_experts_match_the_fp8_model(generator):
    # GPT-OSS's gating in an FP8 checkpoint: (up + 1) * gate * sigmoid(alpha gate), clamped.
    module = fp8_experts(generator, swiglu_alpha=1.702, swiglu_limit=7.0)
    x = (4 * torch.randn(T, H, generator=generator)).to(torch.bfloat16)  # past the clamp
    mlp = ref.Mlp(3, alpha=torch.full((E,), 1.702), beta=torch.ones(E), limit=torch.full((E,), 7.0))
    check_against_the_fp8_model(module, x, *routing(generator), mlp, generator.initial_seed())
    assert module._fusedmoe_fp8_state.spec.swiglu_limit == 7.0


def test_cache_follows_weight_changes(generator):
    module = fp8_experts(generator)
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    first = check_against_the_fp8_model(module, x, ids, weights, ref.Mlp(3), generator.initial_seed())
    state = module._fusedmoe_fp8_state
    with torch.no_grad():
        module.down_proj_scale_inv.mul_(2.0)  # an in-place write: a new version
    second = check_against_the_fp8_model(module, x, ids, weights, ref.Mlp(3), generator.initial_seed())
    assert module._fusedmoe_fp8_state is not state
    assert not torch.equal(first, second)


def _record_fallbacks(monkeypatch) -> list:
    """Replaces transformers' FP8 "grouped_mm" experts by a stand-in that records the class of
    each module that falls back to it; returns that list."""
    calls = []

    def grouped_mm(module, hidden_states, top_k_index, top_k_weights):
        calls.append(type(module).__name__)
        return torch.zeros_like(hidden_states)

    monkeypatch.setitem(finegrained_fp8.ALL_FP8_EXPERTS_FUNCTIONS._global_mapping, "grouped_mm", grouped_mm)
    return calls


def test_what_fusedmoe_does_not_take_falls_back_with_a_warning(generator, monkeypatch):
    calls = _record_fallbacks(monkeypatch)
    module = fp8_experts(generator, activation_scheme="static")
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    with pytest.warns(RuntimeWarning, match="static activation scales"):
        module(x, ids, weights)
    assert calls == ["TestFP8Experts"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per class and reason
        module(x, ids, weights)
    assert calls == ["TestFP8Experts"] * 2


def test_scales_not_in_fp32_fall_back_whichever_tensor(generator, monkeypatch):
    # Every weight and scale tensor is checked, not only gemm1's: a bf16 down_proj_scale_inv
    # (or gate_up_proj_scale_inv) falls back with a warning, as documented.
    calls = _record_fallbacks(monkeypatch)
    monkeypatch.setattr(fusedmoe_hf, "_WARNED", set())
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    for name, reason in (("down_proj_scale_inv", "scales float32 and bfloat16"),
                         ("gate_up_proj_scale_inv", "scales bfloat16 and float32")):
        module = fp8_experts(generator)
        setattr(module, name, torch.nn.Parameter(getattr(module, name).detach().to(torch.bfloat16),
                                                 requires_grad=False))
        with pytest.warns(RuntimeWarning, match=f"weights float8_e4m3fn and float8_e4m3fn with {reason}"):
            with torch.no_grad():
                module(x, ids, weights)
        assert fusedmoe_hf.prepare(module) == 0, "prepared a module whose forward falls back"
        assert getattr(module, "_fusedmoe_fp8_state", None) is None
    assert calls == ["TestFP8Experts"] * 2


def test_prepare_converts_fp8_experts_and_refresh_rebuilds_them(generator):
    module = fp8_experts(generator)
    assert fusedmoe_hf.prepare(module) == 1
    state = module._fusedmoe_fp8_state
    assert state is not None and fusedmoe_hf.prepare(module) == 1
    assert module._fusedmoe_fp8_state is state, "converted again without a weight change"
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    first = check_against_the_fp8_model(module, x, ids, weights, ref.Mlp(3), generator.initial_seed())
    assert module._fusedmoe_fp8_state is state
    with torch.no_grad():
        module.down_proj_scale_inv.data.mul_(2.0)  # through .data: invisible to the cache...
        assert torch.equal(module(x, ids, weights.to(torch.bfloat16)), first)
    assert fusedmoe_hf.prepare(module, refresh=True) == 1  # ...until refresh
    assert module._fusedmoe_fp8_state is not state
    second = check_against_the_fp8_model(module, x, ids, weights, ref.Mlp(3), generator.initial_seed())
    assert not torch.equal(first, second)


def test_refresh_drops_the_fp8_cache_of_modules_switched_away(generator):
    module = fp8_experts(generator)
    assert fusedmoe_hf.prepare(module) == 1
    module.config._experts_implementation = "grouped_mm"
    assert fusedmoe_hf.prepare(module, refresh=True) == 0
    assert module._fusedmoe_fp8_state is None


def test_torch_compile_needs_prepare_then_matches_eager(generator):
    torch._dynamo.reset()
    module = fp8_experts(generator)
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    weights = weights.to(torch.bfloat16)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"TestFP8Experts has no converted weights.*prepare\(model\)"):
        compiled(x, ids, weights)
    assert getattr(module, "_fusedmoe_fp8_state", None) is None, "converted inside the trace"
    assert fusedmoe_hf.prepare(module) == 1
    torch._dynamo.reset()
    with torch.no_grad():
        eager = module(x, ids, weights)
        assert torch.equal(compiled(x, ids, weights), eager)
    check_against_the_fp8_model(module, x, ids, weights.float(), ref.Mlp(3), generator.initial_seed())


@requires_hopper
def test_gpu_matches_the_fp8_model_and_transformers_own_fp8_experts(generator):
    # The same module on the GPU: "fusedmoe" against the float64 FP8 model by the GPU's rule
    # (reference_moe.assert_fp8_gpu_close), and, where transformers' FP8 "grouped_mm" experts can
    # run (they need the `kernels` package and its Hub kernels), against them too.
    module = fp8_experts(generator).cuda()
    x = torch.randn(T, H, generator=generator).to(torch.bfloat16)
    ids, weights = routing(generator)
    with torch.no_grad():
        ours = module(x.cuda(), ids.cuda(), weights.to(torch.bfloat16).cuda())
    w1, s1, w2, s2 = fp8.prepare_fp8_weights(module.gate_up_proj, module.gate_up_proj_scale_inv,
                                             module.down_proj, module.down_proj_scale_inv,
                                             gate_up="gate_up")
    codes, scales = ref.quantize_groups_fp8(x)
    exact = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids,
                                  weights.to(torch.bfloat16).float(), mlp=ref.Mlp(3))
    ref.assert_fp8_gpu_close(ours, exact, generator.initial_seed())
    try:
        with torch.no_grad():
            theirs = finegrained_fp8.ALL_FP8_EXPERTS_FUNCTIONS["grouped_mm"](
                module, x.cuda(), ids.cuda(), weights.to(torch.bfloat16).cuda())
    except ImportError as exc:  # no `kernels` package (or no Hub access) on this machine
        pytest.skip(f"transformers' own FP8 experts cannot run here: {exc}")
    relative = ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item()
    assert relative < 2e-2, f"relative difference {relative:.3g} (seed {generator.initial_seed()})"
