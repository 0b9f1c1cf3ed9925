"""The FP8 block-scale variant (docs/fp8.md): ``trtllm_fp8_block_scale_moe`` / ``_routed_moe`` on the
CPU reference against the independent float64 model of reference_moe.py (quantisation rule
included) for every routing input, several methods, activations with their options and biases,
and an expert window; bf16 and pre-quantised e4m3 hidden states agree bitwise; the helpers of
``fusedmoe.fp8`` follow the rule and convert checkpoints exactly; every unsupported option and bad
argument is an error naming it; the custom ops pass opcheck and torch.compile with FP8 tensors.
With a Hopper GPU, the kernels against the same model.
"""

import pytest
import torch

import fusedmoe
import reference_moe as ref
from conftest import poison, requires_hopper
from fusedmoe import fp8

FP8 = torch.float8_e4m3fn
# (T, H, I, E, K): H and I multiples of 128; small enough for the CPU reference.
T, H, I, E, K = 23, 256, 128, 8, 2


def make_fp8_problem(generator, num_local=E, gated=True, num_tokens=T):
    """Random bf16 hidden states and logits, e4m3 weights with block scales (from bf16 weights)."""
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    rows = (2 if gated else 1) * I
    w1, s1 = fp8.quantize_fp8_weights((randn(num_local, rows, H) / H**0.5).to(torch.bfloat16))
    w2, s2 = fp8.quantize_fp8_weights((randn(num_local, H, I) / I**0.5).to(torch.bfloat16))
    x = randn(num_tokens, H).to(torch.bfloat16)
    logits = randn(num_tokens, E)
    return x, logits, w1, s1, w2, s2


def assert_close_to_fp8_model(ours, x, w1, s1, w2, s2, ids, weights, offset=0, mlp=None, seed=None):
    """docs/STYLE.md's rule against the float64 FP8 model: max|ours - ref| <= 2 max|ref32 - ref| + atol."""
    codes, scales = ref.quantize_groups_fp8(x)
    model = dict(local_expert_offset=offset, mlp=mlp)
    exact = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids, weights, **model)
    rounded = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids, weights, bf16_stages=True, **model)
    assert exact.abs().max() > 0, f"degenerate reference (seed {seed})"
    ours64 = ours.double()
    assert torch.isfinite(ours64).all(), f"non-finite output (seed {seed})"
    error = (ours64 - exact).abs().max().item()
    bound = 2 * (rounded - exact).abs().max().item() + 1e-3 * exact.abs().max().item() + 1e-6
    assert error <= bound, f"max|ours - ref| = {error:.3e} > {bound:.3e} (seed {seed})"


# ---- the quantiser and the helpers --------------------------------------------------------------------
def test_quantize_fp8_activations_is_the_rule_bitwise(generator):
    x = (4 * torch.randn(9, 384, generator=generator)).to(torch.bfloat16)
    x[1, :128] = 0.0  # a zero group: zeros with scale 0 (no NaN)
    x[2, 5] = float("nan")  # a NaN stays NaN; its group's other values are quantised as usual
    x[3, 200] = -8192.0  # a large value (exact in bf16) sets its group's scale and lands on -448
    codes, scale = fp8.quantize_fp8_activations(x)
    expected_codes, expected_scale = ref.quantize_groups_fp8(x)
    assert codes.dtype == FP8 and scale.dtype == torch.float32
    assert scale.shape == (3, 9) and scale.is_contiguous()
    assert torch.equal(codes.view(torch.uint8), expected_codes.view(torch.uint8))
    assert torch.equal(scale.t(), expected_scale)
    assert torch.equal(codes[1, :128].float(), torch.zeros(128)) and scale[0, 1] == 0
    assert codes[2, 5].float().isnan() and not codes[2, 6:128].float().isnan().any()
    assert codes[3, 200].float() == -448.0 and scale[1, 3] == torch.tensor(8192.0) / 448.0


def test_quantize_fp8_activations_of_no_tokens():
    codes, scale = fp8.quantize_fp8_activations(torch.zeros(0, 256, dtype=torch.bfloat16))
    assert codes.shape == (0, 256) and codes.dtype == FP8
    assert scale.shape == (2, 0) and scale.dtype == torch.float32


def test_quantize_fp8_weights_per_block(generator):
    w = torch.randn(3, 256, 384, generator=generator)
    w[1, 130, 7] = 50.0  # block (1, 0) of expert 1 gets a large amax
    codes, scales = fp8.quantize_fp8_weights(w)
    assert codes.shape == w.shape and scales.shape == (3, 2, 3)
    blocks = w.view(3, 2, 128, 3, 128).abs().amax(dim=(2, 4))
    assert torch.equal(scales, blocks / 448.0)
    assert codes[1, 130, 7].float() == 448.0
    back = fp8.dequantize_fp8_weights(codes, scales)
    # Half an e4m3 step (2^-4 relative) of each value, plus the block's subnormal floor.
    floor = scales.repeat_interleave(128, 1).repeat_interleave(128, 2) * 2.0**-10
    assert ((back - w).abs() <= w.abs() / 16 + floor).all()


def routing_bias(generator):
    """A DeepSeek-style selection bias, small beside the sigmoid scores (as in the benchmark): a
    bias of N(0, 1) could send every token to the same two of the 8 experts, and with the window
    (2, 5) none of them was local (an all-zero reference, seed 3411517966)."""
    return 0.1 * torch.randn(E, generator=generator)


# ---- the operator against the FP8 model -------------------------------------------------------------
ROUTINGS = [
    ("renormalize", dict(method=1)),
    ("deepseek_groups", dict(method=2, n_group=4, topk_group=2, routed_scaling_factor=2.5, bias=True)),
    ("default_fp32_weights", dict(method=0, fp32=True)),
    ("packed", dict(routed="packed")),
    ("unpacked_fp32", dict(routed="fp32")),
]


@pytest.mark.parametrize("name,routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
@pytest.mark.parametrize("window", [(0, E), (2, 5)], ids=["all_local", "window_2_5"])
def test_fp8_moe_matches_the_fp8_model(name, routing, window, generator):
    offset, num_local = window
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator, num_local)
    seed = generator.initial_seed()
    if "routed" not in routing:
        bias = routing_bias(generator) if routing.get("bias") else None
        ids, weights = ref.route(logits, bias, routing["method"], K, routing.get("n_group", 0),
                                 routing.get("topk_group", 0),
                                 routing.get("routed_scaling_factor") or 1.0)
        fp32 = routing.get("fp32", False)
        out = fusedmoe.trtllm_fp8_block_scale_moe(
            logits, bias, x, None, w1, s1, w2, s2, E, K, routing.get("n_group"),
            routing.get("topk_group"), I, offset, num_local, routing.get("routed_scaling_factor"),
            routing_method_type=routing["method"],
            expert_weights_dtype=torch.float32 if fp32 else torch.bfloat16,
        )
        if not fp32:
            weights = weights.to(torch.bfloat16).float()
    else:
        ids = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(T)])
        raw = torch.rand(T, K, generator=generator) + 0.1
        if routing["routed"] == "packed":
            weights = raw.to(torch.bfloat16)
            topk = fusedmoe.pack_topk(ids.to(torch.int32), weights)
        else:
            weights = raw
            topk = (ids.to(torch.int32), raw)
        out = fusedmoe.trtllm_fp8_block_scale_routed_moe(
            topk, None, x, None, w1, s1, w2, s2, E, K, None, None, I, offset, num_local, None)
        weights = weights.float()
    assert out.dtype == torch.bfloat16 and out.shape == (T, H)
    assert_close_to_fp8_model(out, x, w1, s1, w2, s2, ids, weights, offset, seed=seed)


MLPS = [
    ("swiglu_params_bias_fp32", 3, "all_fp32"),
    ("relu2_nongated_bias_bf16", 6, "bias"),
    ("geglu", 4, "none"),
    ("swiglu_step_limit", 7, "params"),
]


@pytest.mark.parametrize("name,activation,extras", MLPS, ids=[m[0] for m in MLPS])
def test_fp8_expert_mlp_options_match_the_fp8_model(name, activation, extras, generator):
    gated = activation in ref.GATED
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator, gated=gated)
    uniform = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*shape, generator=generator)  # noqa: E731
    mlp = ref.Mlp(activation)
    if extras in ("params", "all_fp32"):
        if activation == 3:
            mlp.alpha, mlp.beta = uniform(1.0, 2.0, E), uniform(0.5, 1.5, E)
        mlp.limit = uniform(0.5, 1.5, E)
    if extras in ("bias", "all_fp32"):
        dtype = torch.float32 if extras == "all_fp32" else torch.bfloat16
        mlp.bias1 = (0.5 * torch.randn(E, (2 if gated else 1) * I, generator=generator)).to(dtype)
        mlp.bias2 = (0.5 * torch.randn(E, H, generator=generator)).to(dtype)
    out = fusedmoe.trtllm_fp8_block_scale_moe(
        logits, None, x, None, w1, s1, w2, s2, E, K, None, None, I, 0, E, None,
        routing_method_type=1, activation_type=activation, gemm1_alpha=mlp.alpha,
        gemm1_beta=mlp.beta, gemm1_clamp_limit=mlp.limit, gemm1_bias=mlp.bias1, gemm2_bias=mlp.bias2,
    )
    ids, weights = ref.route(logits, None, 1, K)
    assert_close_to_fp8_model(out, x, w1, s1, w2, s2, ids, weights.to(torch.bfloat16).float(),
                              mlp=mlp, seed=generator.initial_seed())


def test_fp8_hidden_states_give_the_bf16_inputs_result_bitwise(generator):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    args = (w1, s1, w2, s2, E, K, None, None, I, 0, E, None)
    from_bf16 = fusedmoe.trtllm_fp8_block_scale_moe(logits, None, x, None, *args, routing_method_type=1)
    x8, x_scale = fp8.quantize_fp8_activations(x)
    from_fp8 = fusedmoe.trtllm_fp8_block_scale_moe(logits, None, x8, x_scale, *args, routing_method_type=1)
    assert torch.equal(from_bf16.view(torch.int16), from_fp8.view(torch.int16))
    # The FP8 path really ran: close to, but not, the BF16 operator on the dequantised weights.
    bf16 = fusedmoe.trtllm_bf16_moe(
        logits, None, x, fp8.dequantize_fp8_weights(w1, s1).to(torch.bfloat16),
        fp8.dequantize_fp8_weights(w2, s2).to(torch.bfloat16), E, K, None, None, I, 0, E,
        routing_method_type=1,
    )
    relative = ((from_bf16.float() - bf16.float()).norm() / bf16.float().norm()).item()
    assert 1e-3 < relative < 0.1


def test_fp8_unfinalized_triple_reduces_to_the_output(generator):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    args = (logits, None, x, None, w1, s1, w2, s2, E, K, None, None, I, 0, E, None)
    out = fusedmoe.trtllm_fp8_block_scale_moe(*args, routing_method_type=1)
    gemm2_output, expert_weights, permuted = fusedmoe.trtllm_fp8_block_scale_moe(
        *args, routing_method_type=1, do_finalize=False)
    assert gemm2_output.dtype == torch.bfloat16 and gemm2_output.shape == (T * K, H)
    rows = gemm2_output[permuted.long()].view(T, K, H).float()
    acc = torch.zeros(T, H)
    for k in range(K):  # ascending k with fma-equivalent exact bf16 products
        acc = acc + expert_weights[:, k, None].float() * rows[:, k]
    assert torch.equal(acc.to(torch.bfloat16).view(torch.int16), out.view(torch.int16))


def test_zero_tokens(generator):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator, num_tokens=0)
    out = fusedmoe.trtllm_fp8_block_scale_moe(logits, None, x, None, w1, s1, w2, s2, E, K, None,
                                              None, I, 0, E, None, routing_method_type=1)
    assert out.shape == (0, H) and out.dtype == torch.bfloat16


# ---- checkpoints ------------------------------------------------------------------------------------
def test_prepare_fp8_weights_block_scaled_gate_up_checkpoint(generator):
    # A DeepSeek-style checkpoint: per expert, gate and up stacked [gate; up] with their block
    # scales in the same order. The prepared weights compute what the canonical ones do.
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    gate_up = torch.cat([w1.view(torch.uint8)[:, I:], w1.view(torch.uint8)[:, :I]], 1).view(FP8)
    gate_up_scale = torch.cat([s1[:, I // 128:], s1[:, : I // 128]], 1)
    p1, q1, p2, q2 = fp8.prepare_fp8_weights(gate_up, gate_up_scale, w2, s2, gate_up="gate_up")
    assert torch.equal(p1.view(torch.uint8), w1.view(torch.uint8)) and torch.equal(q1, s1)
    assert p2 is w2 or torch.equal(p2.view(torch.uint8), w2.view(torch.uint8))
    assert torch.equal(q2, s2)


def test_prepare_fp8_weights_per_tensor_scales_become_block_scales(generator):
    codes = lambda *shape: (torch.randn(*shape, generator=generator) * 50).clamp(-448, 448).to(FP8)  # noqa: E731
    w1, w2 = codes(E, 2 * I, H), codes(E, H, I)
    per_half = torch.rand(E, 2, generator=generator) + 0.1  # (gate, up) per expert
    per_expert = torch.rand(E, generator=generator) + 0.1
    p1, q1, p2, q2 = fp8.prepare_fp8_weights(w1, per_half, w2, per_expert, gate_up="gate_up")
    # Dequantised, the prepared [up; gate] weights equal the checkpoint's halves times their scale.
    got1 = fp8.dequantize_fp8_weights(p1, q1)
    assert torch.equal(got1[:, :I], w1[:, I:].float() * per_half[:, 1, None, None])
    assert torch.equal(got1[:, I:], w1[:, :I].float() * per_half[:, 0, None, None])
    assert torch.equal(fp8.dequantize_fp8_weights(p2, q2), w2.float() * per_expert[:, None, None])
    # One value for everything; interleaved rows with one scale per expert.
    one = torch.tensor(0.5)
    _, q1, _, _ = fp8.prepare_fp8_weights(w1, one, w2, one)
    assert torch.equal(q1, torch.full((E, 2, 2), 0.5))
    inter = torch.stack([w1.view(torch.uint8)[:, I:], w1.view(torch.uint8)[:, :I]], 2).flatten(1, 2).view(FP8)
    p1, q1, _, _ = fp8.prepare_fp8_weights(inter, per_expert[:, None], w2, per_expert, gate_up="interleaved")
    assert torch.equal(p1.view(torch.uint8), w1.view(torch.uint8))


def test_prepare_fp8_weights_errors(generator):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    with pytest.raises(ValueError, match="^gemm1_weights_scale: block scales cannot follow interleaved"):
        fp8.prepare_fp8_weights(w1, s1, w2, s2, gate_up="interleaved")
    with pytest.raises(ValueError, match=r"^gemm1_weights_scale: expected one scale per expert"):
        fp8.prepare_fp8_weights(w1, torch.rand(E, 2) + 0.1, w2, s2, gate_up="interleaved")
    with pytest.raises(ValueError, match=r"^gemm2_weights_scale: expected shape"):
        fp8.prepare_fp8_weights(w1, s1, w2, torch.ones(E, 3))
    with pytest.raises(TypeError, match="^gemm1_weights: expected dtype float8_e4m3fn"):
        fp8.prepare_fp8_weights(w1.float(), s1, w2, s2)
    with pytest.raises(TypeError, match="^gemm2_weights_scale: expected dtype float32"):
        fp8.prepare_fp8_weights(w1, s1, w2, s2.double())
    with pytest.raises(ValueError, match=r"^hidden_states: expected dim 1 \(H\) a positive multiple of 128"):
        fp8.quantize_fp8_activations(torch.zeros(2, 136, dtype=torch.bfloat16))


@pytest.mark.parametrize("n,k,message", [
    (136, 256, r"^weights: expected dim 1 a positive multiple of 128 \(FP8 blocks\), got 136"),
    (256, 200, r"^weights: expected dim 2 a positive multiple of 128 \(FP8 blocks\), got 200"),
    (0, 128, r"^weights: expected dim 1 a positive multiple of 128"),
])
def test_dequantize_fp8_weights_names_sizes_off_the_block(n, k, message, generator):
    codes = torch.randn(2, n, k, generator=generator).to(FP8)
    scales = torch.rand(2, max(n // 128, 1), max(k // 128, 1), generator=generator)
    with pytest.raises(ValueError, match=message):
        fp8.dequantize_fp8_weights(codes, scales)


def test_dequantize_fp8_weights_inverts_the_quantiser(generator):
    weights = torch.randn(2, 256, 384, generator=generator)
    codes, scales = fp8.quantize_fp8_weights(weights)
    back = fp8.dequantize_fp8_weights(codes, scales)
    blocks = codes.float().view(2, 2, 128, 3, 128) * scales[:, :, None, :, None]
    assert torch.equal(back, blocks.view(2, 256, 384))
    assert (back - weights).abs().max() <= scales.max() * 32  # e4m3: 3 mantissa bits


# ---- errors of the operator ---------------------------------------------------------------------------
def _fp8_call(generator, **overrides):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    args = dict(routing_logits=logits, routing_bias=None, hidden_states=x, hidden_states_scale=None,
                gemm1_weights=w1, gemm1_weights_scale=s1, gemm2_weights=w2, gemm2_weights_scale=s2,
                num_experts=E, top_k=K, n_group=None, topk_group=None, intermediate_size=I,
                local_expert_offset=0, local_num_experts=E, routed_scaling_factor=None,
                routing_method_type=1)
    args.update(overrides)
    return lambda: fusedmoe.trtllm_fp8_block_scale_moe(**args)


def _bad_size_problem(generator):
    """I = 136: a multiple of 8 but not of 128 (weights shaped for it)."""
    w1 = torch.zeros(E, 272, H, dtype=FP8)
    w2 = torch.zeros(E, H, 136, dtype=FP8)
    return dict(gemm1_weights=w1, gemm2_weights=w2, intermediate_size=136)


ERRORS = [
    ("bf16 weights", lambda g: dict(gemm1_weights=make_fp8_problem(g)[2].to(torch.bfloat16)),
     TypeError, "^gemm1_weights: expected dtype float8_e4m3fn"),
    ("fp16 hidden states", lambda g: dict(hidden_states=torch.zeros(T, H, dtype=torch.float16)),
     TypeError, "^hidden_states: expected dtype bfloat16 or float8_e4m3fn"),
    ("I not a multiple of 128", _bad_size_problem, ValueError,
     "^intermediate_size: expected a multiple of 128"),
    ("scale with bf16 input", lambda g: dict(hidden_states_scale=torch.ones(2, T)), ValueError,
     "^hidden_states_scale: expected None for bfloat16"),
    ("fp8 input without scale", lambda g: dict(hidden_states=torch.zeros(T, H, dtype=FP8)),
     TypeError, "^hidden_states_scale: expected a torch.Tensor"),
    ("fp8 input scale token-major", lambda g: dict(
        hidden_states=torch.zeros(T, H, dtype=FP8), hidden_states_scale=torch.ones(T, 2)),
     ValueError, r"^hidden_states_scale: expected shape \[2, 23\]"),
    ("weight scale shape", lambda g: dict(gemm1_weights_scale=torch.ones(E, 1, 2)), ValueError,
     r"^gemm1_weights_scale: expected shape \[8, 2, 2\]"),
    ("weight scale dtype", lambda g: dict(gemm2_weights_scale=torch.ones(E, 2, 1, dtype=torch.bfloat16)),
     TypeError, "^gemm2_weights_scale: expected dtype float32"),
    ("MxFp8", lambda g: dict(fp8_quantization_type=fusedmoe.Fp8QuantizationType.MxFp8), ValueError,
     "^fp8_quantization_type: expected Fp8QuantizationType.DeepSeekFp8"),
    ("fused shared experts", lambda g: dict(num_fused_shared_experts=1), ValueError,
     "^num_fused_shared_experts: expected None or 0"),
    ("padded hidden size", lambda g: dict(valid_hidden_size=200), ValueError,
     "^valid_hidden_size: expected None or 256"),
    ("shuffled", lambda g: dict(use_shuffled_weight=True), ValueError, "^use_shuffled_weight"),
]


@pytest.mark.parametrize("name,overrides,error,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_fp8_errors_name_the_argument(name, overrides, error, message, generator):
    output = poison(torch.empty(T, H, dtype=torch.bfloat16))
    call = _fp8_call(generator, output=output, **overrides(generator))
    with pytest.raises(error, match=message):
        call()
    assert output.isnan().all(), "a rejected call wrote its output"


@requires_hopper
@pytest.mark.parametrize("name,routing", ROUTINGS, ids=[r[0] for r in ROUTINGS])
def test_fp8_on_the_gpu_matches_the_fp8_model(name, routing, generator):
    # The Hopper kernels against the float64 model, and their e4m3-input path bitwise against
    # their bf16-input path (the GPU's quantiser follows the rule).
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator, num_tokens=300)
    seed = generator.initial_seed()
    cuda = lambda *ts: [t.cuda() for t in ts]  # noqa: E731
    xc, lc, w1c, s1c, w2c, s2c = cuda(x, logits, w1, s1, w2, s2)
    if "routed" in routing:
        ids = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(300)])
        weights = torch.rand(300, K, generator=generator) + 0.1
        out = fusedmoe.trtllm_fp8_block_scale_routed_moe(
            (ids.to(torch.int32).cuda(), weights.cuda()), None, xc, None, w1c, s1c, w2c, s2c, E, K,
            None, None, I, 0, E, None)
    else:
        bias = routing_bias(generator) if routing.get("bias") else None
        ids, weights = ref.route(logits, bias, routing["method"], K, routing.get("n_group", 0),
                                 routing.get("topk_group", 0),
                                 routing.get("routed_scaling_factor") or 1.0)
        weights = weights.to(torch.bfloat16).float()
        out = fusedmoe.trtllm_fp8_block_scale_moe(
            lc, None if bias is None else bias.cuda(), xc, None, w1c, s1c, w2c, s2c, E, K,
            routing.get("n_group"), routing.get("topk_group"), I, 0, E,
            routing.get("routed_scaling_factor"), routing_method_type=routing["method"])
        x8, x_scale = fp8.quantize_fp8_activations(xc)
        again = fusedmoe.trtllm_fp8_block_scale_moe(
            lc, None if bias is None else bias.cuda(), x8, x_scale, w1c, s1c, w2c, s2c, E, K,
            routing.get("n_group"), routing.get("topk_group"), I, 0, E,
            routing.get("routed_scaling_factor"), routing_method_type=routing["method"])
        assert torch.equal(out.view(torch.int16), again.view(torch.int16))
    codes, scales = ref.quantize_groups_fp8(x)
    exact = ref.moe_reference_fp8(codes, scales, w1, s1, w2, s2, ids, weights)
    ref.assert_fp8_gpu_close(out, exact, seed)  # the GPU's rule (reference_moe.py)


# ---- custom ops ----------------------------------------------------------------------------------------
def test_opcheck_and_compile_with_fp8_tensors(generator):
    x, logits, w1, s1, w2, s2 = make_fp8_problem(generator)
    x8, x_scale = fp8.quantize_fp8_activations(x)
    mlp = (3, None, None, None, None, None, False)
    args = (x8, w1, w2, logits, None, None, None, I, E, K, 0, E, 1, 0, 0, 1.0, *mlp, False, False,
            None, None, x_scale, s1, s2)
    # test_schema compares tensors with arithmetic PyTorch has no float8 kernels for: the other
    # three checks (fake tensors, autograd registration, AOT dispatch) run.
    torch.library.opcheck(torch.ops.fusedmoe.moe_unfinalized.default, args,
                          test_utils=("test_faketensor", "test_autograd_registration",
                                      "test_aot_dispatch_dynamic"))

    def layer(x8, x_scale, logits):
        return fusedmoe.trtllm_fp8_block_scale_moe(logits, None, x8, x_scale, w1, s1, w2, s2, E, K,
                                                   None, None, I, 0, E, None, routing_method_type=1)

    eager = layer(x8, x_scale, logits)
    compiled = torch.compile(layer, fullgraph=True)(x8, x_scale, logits)
    assert torch.equal(eager.view(torch.int16), compiled.view(torch.int16))
