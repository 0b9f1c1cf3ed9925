"""experts_implementation="fusedmoe" in Hugging Face transformers (python/fusedmoe/integrations).

Tiny random models built from configs (no download) and every experts class the installed
transformers dispatches through its registry. Parity is the tests' bf16 rule against an fp32 run of
the same model (hf_cases.assert_bf16_close). Tests that need the operator's extensions (other
activations, GPT-OSS's clamped SwiGLU and biases, Llama 4's scales on the input) are separate,
and each also runs against a plain-torch stand-in of the operator's contract.
"""

import copy
import sys
import warnings

import pytest
import torch

import fusedmoe
from conftest import requires_hopper
from hf_cases import (BLOCK_EXTENDED, BLOCK_TODAY, BLOCK_UNSUPPORTED, MODEL_FAMILIES,
                      MODEL_FAMILIES_EXTENDED, VOCAB, RoutingPin, assert_bf16_close, build_experts,
                      clone_module_fp32, devices, first_divergence, fusedmoe_hf, init_experts_, max_abs,
                      routed_moe_standin, set_implementation, tiny_config, tiny_model, transformers)


_QWEN3_EXPERTS = transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeExperts


# ---- registration -------------------------------------------------------------------------------
def test_register_is_idempotent_and_selects_fusedmoe():
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.models.llama4 import modeling_llama4

    fusedmoe_hf.register()
    llama4_forward = modeling_llama4.Llama4TextMoe.forward
    fusedmoe_hf.register()
    assert ALL_EXPERTS_FUNCTIONS["fusedmoe"] is fusedmoe_hf.fusedmoe_experts_forward
    assert modeling_llama4.Llama4TextMoe.forward is llama4_forward, "register() wrapped Llama 4 twice"


def test_register_without_transformers_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"needs the `transformers` package \(>= 5\.7"):
        fusedmoe_hf.register()


def test_register_with_old_transformers_names_the_version(monkeypatch):
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.6.0")
    with pytest.raises(ImportError, match=r"transformers >= 5\.7\.0.*found 5\.6\.0"):
        fusedmoe_hf.register()


def test_register_without_the_registry_names_it(monkeypatch):
    from transformers.integrations import moe

    monkeypatch.delattr(moe, "ALL_EXPERTS_FUNCTIONS")
    with pytest.raises(ImportError, match="ALL_EXPERTS_FUNCTIONS"):
        fusedmoe_hf.register()


def test_every_registry_class_is_classified():
    # Nothing disappears between discovery and the three test lists below.
    assert len(BLOCK_TODAY) >= 20, "the registry classes were not discovered"
    names = [p.id for p in BLOCK_TODAY + BLOCK_EXTENDED + BLOCK_UNSUPPORTED]
    assert "qwen3_moe.Qwen3MoeExperts" in names and "gpt_oss.GptOssExperts" in names


# ---- block level: the experts module's own forward vs fusedmoe ----------------------------------
def _block_inputs(num_tokens, hidden_size, weights_dtype, generator, device, num_experts=8, top_k=2):
    x = (3.0 * torch.randn(num_tokens, hidden_size, generator=generator)).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(num_tokens)])
    ids = ids.reshape(num_tokens, top_k)
    weights = torch.softmax(torch.randn(num_tokens, top_k, generator=generator), -1).to(weights_dtype)
    return x.to(device), ids.to(device), weights.to(device)


def _hidden_size(module):
    spec = fusedmoe_hf.experts_spec(module)
    gemm1 = module.gate_up_proj if spec.gated else module.up_proj
    return fusedmoe_hf._layouts.gemm1_dims(gemm1, spec.transposed, spec.gated)[2]


def _run_block(module, implementation, x, ids, weights):
    module.config._experts_implementation = implementation
    with torch.no_grad():
        return module(x, ids, weights)


# Experts classes whose own forward takes one route per row with unit weight (Ergo's projections:
# its caller repeats the rows and weights them after a per-expert norm): tested in that form.
_ONE_ROUTE_PER_ROW = ("ErgoExpertProjections",)


def _check_block(family, cls, device, num_tokens, weights_dtype, generator, monkeypatch):
    module = build_experts(family, cls, generator).to(device)
    reference = clone_module_fp32(module)
    x, ids, weights = _block_inputs(num_tokens, _hidden_size(module), weights_dtype, generator, device)
    if cls.__name__ in _ONE_ROUTE_PER_ROW:
        ids, weights = ids[:, :1].contiguous(), torch.ones_like(weights[:, :1])
    ref = _run_block(reference, "eager", x.float(), ids, weights.float())
    calls = _count_operator_calls(monkeypatch)
    bf16_ref = _run_block(module, "eager", x, ids, weights)
    assert calls[0] == 0, "the eager run called fusedmoe"
    ours = _run_block(module, "fusedmoe", x, ids, weights)
    assert calls[0] == 1, f"{cls.__name__}: fusedmoe ran {calls[0]} times (a fallback compares eager with itself)"
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape
    assert_bf16_close(ours, bf16_ref, ref, f"{cls.__name__} T={num_tokens}", generator.initial_seed())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("num_tokens, weights_dtype", [(1, torch.bfloat16), (19, torch.float32)])
@pytest.mark.parametrize("family, cls", BLOCK_TODAY)
def test_block_parity(family, cls, num_tokens, weights_dtype, device, generator, monkeypatch):
    _check_block(family, cls, device, num_tokens, weights_dtype, generator, monkeypatch)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("num_tokens, weights_dtype", [(1, torch.bfloat16), (19, torch.float32)])
@pytest.mark.parametrize("family, cls", BLOCK_EXTENDED)
def test_block_parity_operator_extensions(family, cls, num_tokens, weights_dtype, device, generator,
                                         monkeypatch):
    _check_block(family, cls, device, num_tokens, weights_dtype, generator, monkeypatch)


@pytest.mark.parametrize("family, cls", BLOCK_EXTENDED)
def test_block_parity_extensions_with_operator_standin(family, cls, generator, monkeypatch):
    # The integration's use of the extended arguments (activation numbers, clamp constants, bias
    # row order, layouts), checked now against a plain-torch stand-in of the operator's contract.
    monkeypatch.setattr(fusedmoe, "trtllm_bf16_routed_moe", routed_moe_standin)
    _check_block(family, cls, "cpu", 13, torch.float32, generator, monkeypatch)


@pytest.mark.parametrize("family, cls", BLOCK_UNSUPPORTED)
def test_unsupported_experts_raise_naming_the_class(family, cls, generator):
    module = build_experts(family, cls, generator)
    x, ids, weights = _block_inputs(3, 64, torch.bfloat16, generator, "cpu")
    with pytest.raises(NotImplementedError, match=cls.__name__):
        _run_block(module, "fusedmoe", x, ids, weights)


def test_clamp_after_the_activation_is_rejected(generator):
    # Step-3.7 clamps silu(gate) (after the activation) in its limited layers: not a clamped
    # SwiGLU (which clamps before), so no fusedmoe activation matches.
    modeling = pytest.importorskip("transformers.models.step3p7.modeling_step3p7")
    module = build_experts("step3p7", modeling.Step3p7Experts, generator)
    module.limit = 7.0
    with pytest.raises(NotImplementedError, match="Step3p7Experts: its gating"):
        fusedmoe_hf.experts_spec(module)


def test_gpt_oss_layout_is_interleaved_clamped_swiglu(generator):
    # The spec the probe finds is GPT-OSS's: gate = [..., ::2], up = [..., 1::2], x @ W, biases,
    # alpha 1.702, beta 1 (the "+ 1" on up), limit 7.
    module = build_experts("gpt_oss", transformers.models.gpt_oss.modeling_gpt_oss.GptOssExperts, generator)
    spec = fusedmoe_hf.experts_spec(module)
    assert (spec.gated, spec.gate_up, spec.transposed, spec.has_bias) == (True, "interleaved", True, True)
    assert (spec.activation_type, spec.swiglu_alpha, spec.swiglu_beta, spec.swiglu_limit) == (
        fusedmoe_hf.SWIGLU, pytest.approx(1.702), 1.0, 7.0)


def test_expert_parallel_sentinel_ids_contribute_nothing(generator):
    # transformers marks slots routed to another rank with id == num_experts; fusedmoe drops any
    # id outside [0, E): the same as a zero weight, bit for bit.
    module = build_experts("qwen3_moe", _QWEN3_EXPERTS, generator)
    x, ids, weights = _block_inputs(9, 64, torch.float32, generator, "cpu")
    sentinel_ids, zero_weights = ids.clone(), weights.clone()
    sentinel_ids[::2, 1] = 8
    zero_weights[::2, 1] = 0.0
    assert torch.equal(_run_block(module, "fusedmoe", x, sentinel_ids, weights),
                       _run_block(module, "fusedmoe", x, ids, zero_weights))


def test_routing_reaches_the_operator_as_given(generator, monkeypatch):
    calls = []
    original = fusedmoe.trtllm_bf16_routed_moe

    def spy(topk_ids, *args, **kwargs):
        calls.append(topk_ids)
        return original(topk_ids, *args, **kwargs)

    monkeypatch.setattr(fusedmoe, "trtllm_bf16_routed_moe", spy)
    module = build_experts("mixtral", transformers.models.mixtral.modeling_mixtral.MixtralExperts, generator)
    for weights_dtype in (torch.float32, torch.bfloat16):
        x, ids, weights = _block_inputs(5, 64, weights_dtype, generator, "cpu")
        _run_block(module, "fusedmoe", x, ids.to(torch.int64), weights)
        passed_ids, passed_weights = calls[-1]
        assert passed_ids.dtype == torch.int32 and torch.equal(passed_ids, ids.to(torch.int32))
        assert passed_weights.dtype == weights_dtype and torch.equal(passed_weights, weights)
    empty = _run_block(module, "fusedmoe", x[:0], ids[:0], weights[:0])
    assert empty.shape == (0, 64) and empty.dtype == torch.bfloat16


# ---- whole models -------------------------------------------------------------------------------
def _count_operator_calls(monkeypatch):
    count = [0]
    original = fusedmoe.trtllm_bf16_routed_moe

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(fusedmoe, "trtllm_bf16_routed_moe", counting)
    return count


def _greedy(model, prompt, new_tokens=8, **kwargs):
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    return out.sequences[0, prompt.shape[1]:], out.logits


def _tie_tolerance(logits_a, logits_b):
    """Twice the two runs' disagreement on their first (prefill) step, plus one bf16 spacing."""
    return 2 * max_abs(logits_a, logits_b) + 2.0**-8 * logits_b.abs().max().item()


def _assert_same_greedy_tokens(ours, theirs, theirs_logits, tie_tolerance, what, seed):
    """Same tokens, except from a step where the two bf16 implementations face a near-tie: then
    the token the reference preferred must lead ours by no more than ``tie_tolerance``."""
    step = first_divergence(ours, theirs)
    if step is None:
        return
    logits = theirs_logits[step][0].float()
    gap = (logits[theirs[step]] - logits[ours[step]]).item()
    assert gap <= tie_tolerance, (
        f"{what}: greedy token {step} differs ({int(ours[step])} vs {int(theirs[step])}) with a logit gap of "
        f"{gap:.4g} > {tie_tolerance:.4g}, not a near-tie (seed {seed})")


def _check_model(family, device, generator, monkeypatch):
    seed = generator.initial_seed()
    model = tiny_model(family, generator, "fusedmoe", device=device)
    reference = copy.deepcopy(model).float()
    set_implementation(reference, "eager")
    tokens = torch.randint(3, VOCAB, (2, 11), generator=generator).to(device)
    pin = RoutingPin()  # every run routes as the fp32 reference did (see RoutingPin)
    pin.attach(reference)
    handles = pin.attach(model)
    calls = _count_operator_calls(monkeypatch)
    with torch.no_grad():
        ref = reference(tokens).logits
        pin.replay()
        ours = model(tokens).logits
        layers = calls[0]
        set_implementation(model, "eager")
        pin.replay()
        bf16_ref = model(tokens).logits
    for handle in handles:
        handle.remove()
    assert layers == model.config.num_hidden_layers, f"fusedmoe ran in {layers} layers"
    assert calls[0] == layers, "the eager run called fusedmoe"
    assert_bf16_close(ours, bf16_ref, ref, f"{family} logits", seed)

    # Greedy generation: the bf16 eager model's tokens, its routing replayed in the fusedmoe run.
    prompt = tokens[:1, :6]
    pin = RoutingPin()
    handles = pin.attach(model)
    theirs, theirs_logits = _greedy(model, prompt)
    set_implementation(model, "fusedmoe")
    pin.replay()
    mine, mine_logits = _greedy(model, prompt)
    for handle in handles:
        handle.remove()
    _assert_same_greedy_tokens(mine, theirs, theirs_logits, _tie_tolerance(mine_logits[0], theirs_logits[0]),
                               family, seed)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_model_logits_and_greedy_tokens(family, device, generator, monkeypatch):
    _check_model(family, device, generator, monkeypatch)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("family", MODEL_FAMILIES_EXTENDED)
def test_model_logits_and_greedy_tokens_operator_extensions(family, device, generator, monkeypatch):
    _check_model(family, device, generator, monkeypatch)


@pytest.mark.parametrize("family", MODEL_FAMILIES_EXTENDED)
def test_model_extensions_with_operator_standin(family, generator, monkeypatch):
    standin_calls = [0]

    def standin(*args, **kwargs):
        standin_calls[0] += 1
        return routed_moe_standin(*args, **kwargs)

    monkeypatch.setattr(fusedmoe, "trtllm_bf16_routed_moe", standin)
    _check_model(family, "cpu", generator, monkeypatch)
    assert standin_calls[0] > 0


def test_llama4_block_parity(generator):
    # Llama 4's experts bypass the registry: the patched Llama4TextMoe (router and shared expert
    # in the model's code) against its own forward.
    from transformers.models.llama4 import modeling_llama4

    config = tiny_config("llama4")
    config._experts_implementation = "eager"
    block = modeling_llama4.Llama4TextMoe(config).to(torch.bfloat16)
    with torch.no_grad():
        for param in block.parameters():  # router and shared expert: nn.Linear [out, in]
            param.copy_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
    init_experts_(block.experts, generator)
    reference = copy.deepcopy(block).float()
    x = torch.randn(1, 13, 64, generator=generator).to(torch.bfloat16)
    with torch.no_grad():
        ref, _ = reference(x.float())
        bf16_ref, _ = block(x)
        config._experts_implementation = "fusedmoe"
        ours, logits = block(x)
    assert_bf16_close(ours, bf16_ref, ref, "Llama4TextMoe", generator.initial_seed())


def test_from_pretrained_one_line_switch(generator, tmp_path, monkeypatch):
    # The documented switch on the loading path (parity itself: test_model_logits_and_greedy_tokens).
    tiny_model("qwen3_moe", generator, "eager").save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16,
                                                              experts_implementation="fusedmoe")
    assert model.config._experts_implementation == "fusedmoe"
    calls = _count_operator_calls(monkeypatch)
    with torch.no_grad():
        logits = model(torch.randint(3, VOCAB, (1, 5), generator=generator)).logits
    assert calls[0] == model.config.num_hidden_layers and torch.isfinite(logits).all()
    assert fusedmoe_hf.prepare(model) == model.config.num_hidden_layers


# ---- fallbacks, errors, the weight cache ---------------------------------------------------------
def test_float32_model_falls_back_to_grouped_mm_with_a_warning(generator, monkeypatch):
    monkeypatch.setattr(fusedmoe_hf, "_WARNED", set())
    model = tiny_model("qwen3_moe", generator, "fusedmoe", dtype=torch.float32)
    tokens = torch.randint(3, VOCAB, (2, 7), generator=generator)
    calls = _count_operator_calls(monkeypatch)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="falls back to 'grouped_mm' for dtype float32"):
        ours = model(tokens).logits
    set_implementation(model, "grouped_mm")
    with torch.no_grad():
        theirs = model(tokens).logits
    assert calls[0] == 0 and torch.equal(ours, theirs)


def test_autograd_falls_back_and_backpropagates(generator, monkeypatch):
    monkeypatch.setattr(fusedmoe_hf, "_WARNED", set())
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    tokens = torch.randint(3, VOCAB, (2, 7), generator=generator)
    calls = _count_operator_calls(monkeypatch)
    with pytest.warns(RuntimeWarning, match="autograd"):
        ours = model(tokens).logits
    ours.float().square().mean().backward()
    experts = fusedmoe_hf.fusedmoe_experts_modules(model)[0]
    assert calls[0] == 0
    assert experts.gate_up_proj.grad is not None and experts.gate_up_proj.grad.abs().sum() > 0
    set_implementation(model, "grouped_mm")
    assert torch.equal(ours, model(tokens).logits)


def test_conversion_is_cached_and_follows_weight_changes(generator):
    module = build_experts("mixtral", transformers.models.mixtral.modeling_mixtral.MixtralExperts, generator)
    x, ids, weights = _block_inputs(19, 64, torch.float32, generator, "cpu")

    def check(what):  # fusedmoe on the module's current weights, by the bf16 rule
        ref = _run_block(clone_module_fp32(module), "eager", x.float(), ids, weights)
        bf16_ref = _run_block(module, "eager", x, ids, weights)
        assert_bf16_close(_run_block(module, "fusedmoe", x, ids, weights), bf16_ref, ref, what,
                          generator.initial_seed())
        return module._fusedmoe_state

    state = check("first call")
    assert check("second call") is state, "converted again without a weight change"
    with torch.no_grad():
        module.gate_up_proj.mul_(-1.5)  # in place: bumps _version
    assert check("in-place write") is not state
    module.down_proj = torch.nn.Parameter(torch.randn(module.down_proj.shape, generator=generator)
                                          .to(torch.bfloat16) * 0.2)
    check("replaced parameter")
    module.gate_up_proj.data.mul_(-1)  # through .data: invisible to the cache until refresh
    module.config._experts_implementation = "fusedmoe"
    assert fusedmoe_hf.prepare(module, refresh=True) == 1
    check("refresh after a .data write")


def test_convert_in_place_keeps_one_copy_and_restores(generator, monkeypatch):
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    tokens = torch.randint(3, VOCAB, (2, 7), generator=generator)
    experts = fusedmoe_hf.fusedmoe_experts_modules(model)
    original = {id(e): (e.gate_up_proj.detach().clone(), e.down_proj.detach().clone(),
                        e.gate_up_proj.data_ptr()) for e in experts}
    with torch.no_grad():
        cached = model(tokens).logits
    assert fusedmoe_hf.convert_in_place(model) == len(experts)
    for e in experts:
        gate_up, _, address = original[id(e)]
        assert e.gate_up_proj.data_ptr() == address and e._fusedmoe_state.gemm1 is None
        half = gate_up.shape[1] // 2
        assert torch.equal(e.gate_up_proj, torch.cat([gate_up[:, half:], gate_up[:, :half]], 1))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, cached), "in place must compute what the cached copy did"
    with pytest.raises(RuntimeError, match="converted in place"):
        model(tokens)  # grad mode on: would fall back, which in-place weights cannot
    assert fusedmoe_hf.restore_layout(model) == len(experts)
    for e in experts:
        gate_up, down, _ = original[id(e)]
        assert torch.equal(e.gate_up_proj, gate_up) and torch.equal(e.down_proj, down)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, cached)


def test_convert_in_place_transposed_interleaved_with_biases_round_trips(generator, monkeypatch):
    # GPT-OSS's layout (x @ W, interleaved gate/up, biases) in place; the operator is the plain-torch
    # stand-in of its extended contract until the extended operator is merged.
    monkeypatch.setattr(fusedmoe, "trtllm_bf16_routed_moe", routed_moe_standin)
    module = build_experts("gpt_oss", transformers.models.gpt_oss.modeling_gpt_oss.GptOssExperts, generator)
    holder = torch.nn.Sequential(module)
    original = {n: p.detach().clone() for n, p in module.named_parameters()}
    x, ids, weights = _block_inputs(7, 64, torch.bfloat16, generator, "cpu")
    cached = _run_block(module, "fusedmoe", x, ids, weights)
    assert fusedmoe_hf.convert_in_place(holder) == 1
    num_experts, hidden, two_i = original["gate_up_proj"].shape
    assert tuple(module.gate_up_proj.shape) == (num_experts, two_i, hidden)
    assert torch.equal(module.gate_up_proj_bias[:, two_i // 2:], original["gate_up_proj_bias"][:, ::2])
    assert torch.equal(_run_block(module, "fusedmoe", x, ids, weights), cached)
    assert fusedmoe_hf.restore_layout(holder) == 1
    for name, param in module.named_parameters():
        assert torch.equal(param, original[name]), name


@pytest.mark.parametrize("defect,error,message", [
    ("strided", ValueError, r"^convert_in_place: Qwen3MoeExperts\.down_proj is not contiguous"),
    ("float16", TypeError, r"^convert_in_place: Qwen3MoeExperts\.down_proj is torch\.float16, expected bfloat16"),
])
def test_convert_in_place_checks_every_module_before_rewriting_any(defect, error, message, generator):
    # The last experts module's down_proj cannot be rewritten: that is found before anything is
    # written, so every parameter and cached conversion of the model stays as it was.
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    tokens = torch.randint(3, VOCAB, (2, 7), generator=generator)
    with torch.no_grad():
        cached = model(tokens).logits  # converts (and caches) every module
    experts = fusedmoe_hf.fusedmoe_experts_modules(model)
    assert len(experts) == 2
    down = experts[-1].down_proj.detach().clone()
    if defect == "strided":  # the same values, column-major per expert
        experts[-1].down_proj.data = down.transpose(1, 2).contiguous().transpose(1, 2)
    else:
        experts[-1].down_proj.data = down.to(torch.float16)
    original = [{n: p.detach().clone() for n, p in e.named_parameters()} for e in experts]
    states = [e._fusedmoe_state for e in experts]
    with pytest.raises(error, match=message):
        fusedmoe_hf.convert_in_place(model)
    for e, params, state in zip(experts, original, states):
        for name, param in e.named_parameters():
            assert param.dtype == params[name].dtype and torch.equal(param, params[name]), name
        assert e._fusedmoe_state is state and not state.in_place
    experts[-1].down_proj.data = down
    assert fusedmoe_hf.convert_in_place(model) == 2
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, cached)
    assert fusedmoe_hf.restore_layout(model) == 2


# ---- torch.compile and CUDA graphs ---------------------------------------------------------------
def test_torch_compile_fullgraph_after_prepare(generator):
    torch._dynamo.reset()
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    tokens = torch.randint(3, VOCAB, (2, 9), generator=generator)
    assert fusedmoe_hf.prepare(model) == 2
    with torch.no_grad():
        eager = model(tokens).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(tokens).logits
    assert torch.equal(compiled, eager)


def test_torch_compile_fullgraph_without_prepare_says_so(generator):
    torch._dynamo.reset()
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    tokens = torch.randint(3, VOCAB, (2, 9), generator=generator)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"prepare\(model\)"):
        torch.compile(model, backend="aot_eager", fullgraph=True)(tokens)


def test_static_cache_generate(generator):
    model = tiny_model("qwen3_moe", generator, "fusedmoe")
    prompt = torch.randint(3, VOCAB, (1, 6), generator=generator)
    dynamic, dynamic_logits = _greedy(model, prompt)
    static, static_logits = _greedy(model, prompt, cache_implementation="static")
    tolerance = _tie_tolerance(static_logits[0], dynamic_logits[0])
    _assert_same_greedy_tokens(static, dynamic, dynamic_logits, tolerance, "static cache",
                               generator.initial_seed())


@requires_hopper
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_gpu_torch_compile_inductor(family, generator, monkeypatch):
    torch._dynamo.reset()
    model = tiny_model(family, generator, "fusedmoe", device="cuda")
    reference = copy.deepcopy(model).float()
    set_implementation(reference, "eager")
    tokens = torch.randint(3, VOCAB, (2, 9), generator=generator).cuda()
    layers = fusedmoe_hf.prepare(model)
    calls = _count_operator_calls(monkeypatch)  # counted whether dynamo traces or replays it
    # Inductor rounds the model's own fused intermediates (norms, attention, the router) to bf16
    # where eager does: else a near-tie of the router may flip a token's experts, which the
    # allowance does not cover (docs/reliability.md, "A seed of the compiled transformers test").
    with torch.no_grad(), torch._inductor.config.patch(emulate_precision_casts=True):
        compiled = torch.compile(model, fullgraph=True)(tokens).logits
        set_implementation(model, "eager")
        bf16_ref = model(tokens).logits
        ref = reference(tokens).logits
    # A fallback inside the compiled graph would compare the model's own experts with themselves.
    assert layers > 0 and calls[0] >= layers, f"the compiled model ran fusedmoe {calls[0]} times"
    assert_bf16_close(compiled, bf16_ref, ref, f"{family} compiled", generator.initial_seed())


@requires_hopper
def test_gpu_static_cache_generate_with_cuda_graphs(generator, monkeypatch):
    # On CUDA, generate() with a static cache compiles the decode step (mode "reduce-overhead":
    # CUDA graphs); the prefill runs eagerly and converts the weights first.
    torch._dynamo.reset()
    model = tiny_model("qwen3_moe", generator, "fusedmoe", device="cuda")
    prompt = torch.randint(3, VOCAB, (1, 6), generator=generator).cuda()
    layers = model.config.num_hidden_layers  # each a MoE layer
    calls = _count_operator_calls(monkeypatch)
    eager, eager_logits = _greedy(model, prompt, new_tokens=12)
    eager_calls, calls[0] = calls[0], 0
    # Inductor rounds the model's own fused intermediates to bf16 where eager does (as in the
    # compiled test above), so that a near-tie the eager prefill's tolerance cannot see does not
    # flip a decode token.
    with torch._inductor.config.patch(emulate_precision_casts=True):
        graphed, graphed_logits = _greedy(model, prompt, new_tokens=12, cache_implementation="static")
    assert hasattr(model, "_compiled_call"), "generate() did not compile the decode step"
    # The eager prefill accounts for `layers` calls; more means the compiled decode step (traced
    # once, or replayed) went through fusedmoe rather than a fallback.
    assert eager_calls >= 2 * layers and calls[0] > layers, (eager_calls, calls[0])
    tolerance = _tie_tolerance(graphed_logits[0], eager_logits[0])
    _assert_same_greedy_tokens(graphed, eager, eager_logits, tolerance, "CUDA-graph decode",
                               generator.initial_seed())
    with torch._inductor.config.patch(emulate_precision_casts=True):
        graphed_again, _ = _greedy(model, prompt, new_tokens=12, cache_implementation="static")
    assert torch.equal(graphed_again, graphed), "graph replays are not deterministic"


@requires_hopper
def test_gpu_float32_model_never_reaches_the_kernels(generator, monkeypatch):
    monkeypatch.setattr(fusedmoe_hf, "_WARNED", set())
    model = tiny_model("mixtral", generator, "fusedmoe", dtype=torch.float32, device="cuda")
    calls = _count_operator_calls(monkeypatch)
    tokens = torch.randint(3, VOCAB, (1, 5), generator=generator).cuda()
    with torch.no_grad(), warnings.catch_warnings(record=True):
        ours = model(tokens).logits
        set_implementation(model, "grouped_mm")
        theirs = model(tokens).logits
    assert calls[0] == 0 and torch.equal(ours, theirs)


def test_other_devices_fall_back(generator):
    module = build_experts("qwen3_moe", _QWEN3_EXPERTS, generator)
    x = torch.empty(3, 64, dtype=torch.bfloat16, device="meta")
    reason = fusedmoe_hf._fallback_reason(module, x, None, fusedmoe_hf._sources_for_checks(module, None))
    assert reason is not None and reason.startswith("device meta")
