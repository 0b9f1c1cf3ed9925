"""The expert MLP's options (docs/SPEC.md "Activations, expert biases and input-side routing
weights"): every activation with its per-expert parameters, expert biases in bf16 and fp32, routing
weights on the input, against the independent float64 reference of reference_moe.py, on the CPU
(the CPU reference path) and, with a Hopper GPU, on the GPU's decode and prefill GEMMs.
"""

import pytest
import torch

import fusedmoe
import reference_moe as ref
from conftest import has_hopper, poison
from moe_cases import run_logits, run_routed

DEVICES = ["cpu"] + (["cuda"] if has_hopper() else [])
ACTIVATIONS = [0, 1, 2, 3, 4, 6, 7, 8]
# (T, H, I, E, K) per device: CPU keeps the reference path fast; the GPU takes its decode GEMMs
# at T = 4 and its prefill GEMMs (128-row tiles, about 150 rows per expert) at T = 300. I = 264
# leaves a partial 128-column tile.
SHAPES = {
    "cpu": [(19, 256, 128, 8, 2)],
    "cuda": [(T, ref.sanitizer_hidden_size(H), ref.sanitizer_intermediate_size(I), E, K)
             for T, H, I, E, K in [(4, 512, 256, 16, 2), (300, 512, 264, 4, 2)]],
}


def _shapes():
    return [(d, s) for d in DEVICES for s in SHAPES[d]]


def make_mlp(activation, extras, num_local, inter, hidden, generator):
    """An Mlp with random per-expert parameters and biases as ``extras`` asks (never zeros).

    extras: "none"; "params" (alpha, beta, clamp limit where the activation reads them); "bias_bf16"
    / "bias_fp32" (both GEMMs' biases); "all" (params and bf16 biases). Limits around 1 make the
    clamps bite on GEMM1 outputs of unit scale.
    """
    uniform = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*shape, generator=generator)  # noqa: E731
    mlp = ref.Mlp(activation)
    if extras in ("params", "all"):
        if activation == 3:
            mlp.alpha = uniform(1.0, 2.0, num_local)
            mlp.beta = uniform(0.5, 1.5, num_local)
        if activation in (3, 7):
            mlp.limit = uniform(0.5, 1.5, num_local)
    if extras in ("bias_bf16", "bias_fp32", "all"):
        dtype = torch.float32 if extras == "bias_fp32" else torch.bfloat16
        columns = (2 if activation in ref.GATED else 1) * inter
        mlp.bias1 = (0.5 * torch.randn(num_local, columns, generator=generator)).to(dtype)
        mlp.bias2 = (0.5 * torch.randn(num_local, hidden, generator=generator)).to(dtype)
    return mlp


def make_case(device, shape, activation, generator, method=1):
    """A problem whose gemm1 fits the activation ([E, I, H] when non-gated), on ``device``."""
    T, H, I, E, K = shape
    problem = ref.make_problem(T, H, I, E, K, torch.float32, None, generator)
    if activation not in ref.GATED:
        problem.gemm1_weights = problem.gemm1_weights[:, :I].contiguous()
    return problem, problem.to(device)


def expected_routing(problem, method):
    return ref.route(problem.routing_logits, problem.routing_bias, method, problem.top_k)


@pytest.mark.parametrize("extras", ["none", "params", "bias_bf16", "bias_fp32", "all"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("device,shape", _shapes(), ids=lambda v: str(v))
def test_activation_matches_reference(device, shape, activation, extras, generator):
    cpu, problem = make_case(device, shape, activation, generator)
    mlp = make_mlp(activation, extras, shape[3], shape[2], shape[1], generator)
    ids, weights = expected_routing(cpu, 1)
    _, expert_weights, _ = run_logits(problem, 1, do_finalize=False, **mlp.to(device).kwargs())
    output = poison(torch.empty(shape[0], shape[1], dtype=torch.bfloat16, device=device))
    run_logits(problem, 1, output=output, **mlp.to(device).kwargs())
    ref.assert_close_to_reference(output, cpu.hidden_states, cpu.gemm1_weights, cpu.gemm2_weights,
                                  ids, expert_weights.cpu(), seed=cpu.seed, mlp=mlp)
    if device == "cuda":
        assert torch.equal(output, run_logits(problem, 1, **mlp.to(device).kwargs())), \
            f"rerun not bitwise equal (seed {cpu.seed})"


@pytest.mark.parametrize("device,shape", _shapes(), ids=lambda v: str(v))
def test_options_change_the_result(device, shape, generator):
    """Each option must reach the computation: leaving it out gives a clearly different output."""
    _, problem = make_case(device, shape, 3, generator)
    full = make_mlp(3, "all", shape[3], shape[2], shape[1], generator).to(device)
    with_all = run_logits(problem, 1, **full.kwargs()).double()
    for dropped in ("alpha", "beta", "limit", "bias1", "bias2"):
        partial = ref.Mlp(**{**full.__dict__, dropped: None})
        without = run_logits(problem, 1, **partial.kwargs()).double()
        change = (with_all - without).norm() / with_all.norm()
        assert change > 1e-2, f"{dropped} has no visible effect ({change:.2e})"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("routed", [False, True])
def test_routing_weights_on_input(device, routed, generator):
    """Llama 4: the expert computes on bf16(w * x); the output is not weighted again."""
    T, H, I, E = SHAPES[device][-1][:4]
    cpu, problem = make_case(device, (T, H, I, E, 1), 3, generator)
    ids, weights = ref.route(cpu.routing_logits, None, 3, 1)  # Llama4: top-1, sigmoid weight
    mlp = ref.Mlp(on_input=True)
    if routed:
        topk = (ids.to(torch.int32).to(device), weights.to(torch.bfloat16).to(device))
        run = lambda **kw: run_routed(problem, topk, **kw)  # noqa: E731
    else:
        run = lambda **kw: run_logits(problem, 3, **kw)  # noqa: E731
    output = run(**mlp.kwargs())
    used = weights.to(torch.bfloat16)
    ref.assert_close_to_reference(output, cpu.hidden_states, cpu.gemm1_weights, cpu.gemm2_weights,
                                  ids, used, seed=cpu.seed, mlp=mlp)
    # The flag matters: weighting the output instead (SwiGLU is not linear) is far off.
    after = run().double()
    change = (output.double() - after).norm() / after.norm()
    assert change > 1e-2, f"use_routing_scales_on_input had no effect ({change:.2e})"
    # do_finalize=False: expert_weights still hold w, and the rows are summed unweighted (K = 1).
    rows, expert_weights, mapping = run(do_finalize=False, **mlp.kwargs())
    assert torch.equal(expert_weights.cpu(), used), "expert_weights are not the routing weights"
    local = mapping >= 0
    assert torch.equal(rows[mapping[local].long()], output[local]), "unweighted rows != output"


@pytest.mark.parametrize("device", DEVICES)
def test_unfinalized_rows_hold_the_biases(device, generator):
    """gemm2_output rows include gemm2_bias; reducing the triple gives the finalized output."""
    shape = SHAPES[device][-1]
    cpu, problem = make_case(device, shape, 3, generator)
    mlp = make_mlp(3, "all", shape[3], shape[2], shape[1], generator).to(device)
    finalized = run_logits(problem, 1, **mlp.kwargs())
    rows, expert_weights, mapping = run_logits(problem, 1, do_finalize=False, **mlp.kwargs())
    T, K = shape[0], shape[4]
    acc = torch.zeros(T, shape[1], dtype=torch.float32, device=device)
    slots = mapping.view(T, K)
    for k in range(K):
        has = slots[:, k] >= 0
        acc[has] += expert_weights[has, k, None].float() * rows[slots[has, k].long()].float()
    assert torch.equal(acc.to(torch.bfloat16), finalized)


@pytest.mark.parametrize("device", DEVICES)
def test_swiglu_without_options_is_the_plain_path(device, generator):
    """Default arguments and explicit Swiglu with no options give the same bits."""
    shape = SHAPES[device][-1]
    _, problem = make_case(device, shape, 3, generator)
    assert torch.equal(run_logits(problem, 1), run_logits(problem, 1, activation_type=3))
    assert fusedmoe.ActivationType.Swiglu.is_gated and not fusedmoe.ActivationType.Relu2.is_gated


def test_activation_type_numbering():
    """FlashInfer's ActivationType numbers; 5 (SwigluBias) and 9 (Identity) are not offered."""
    expected = dict(Gelu=0, Relu=1, Silu=2, Swiglu=3, Geglu=4, Relu2=6, SwigluStep=7, GegluTanh=8)
    assert {a.name: int(a) for a in fusedmoe.ActivationType} == expected


def _mlp_bad_calls():
    E, I, H = 8, 128, 256
    f32 = lambda *s: torch.rand(*s) + 0.5  # noqa: E731
    return [
        ("activation_5", dict(activation_type=5), ValueError, "activation_type"),
        ("activation_9", dict(activation_type=9), ValueError, "activation_type"),
        ("activation_type", dict(activation_type="swiglu"), TypeError, "activation_type"),
        ("alpha_with_geglu", dict(activation_type=4, gemm1_alpha=f32(E)), ValueError, "gemm1_alpha"),
        ("beta_with_step", dict(activation_type=7, gemm1_beta=f32(E)), ValueError, "gemm1_beta"),
        ("limit_with_geglu", dict(activation_type=4, gemm1_clamp_limit=f32(E)), ValueError,
         "gemm1_clamp_limit"),
        ("alpha_shape", dict(gemm1_alpha=f32(E + 1)), ValueError, "gemm1_alpha"),
        ("alpha_dtype", dict(gemm1_alpha=f32(E).to(torch.bfloat16)), TypeError, "gemm1_alpha"),
        ("bias1_shape", dict(gemm1_bias=f32(E, I)), ValueError, "gemm1_bias"),
        ("bias1_dtype", dict(gemm1_bias=f32(E, 2 * I).half()), TypeError, "gemm1_bias"),
        ("bias2_shape", dict(gemm2_bias=f32(E, H + 8)), ValueError, "gemm2_bias"),
        ("non_gated_weights", dict(activation_type=6), ValueError, "gemm1_weights"),
        ("scales_on_input_k4", dict(use_routing_scales_on_input=True), ValueError,
         "use_routing_scales_on_input"),
        ("workspace_twice", dict(workspace=torch.zeros(8, dtype=torch.uint8),
                                 workspace_buffer=torch.zeros(8, dtype=torch.uint8)), ValueError,
         "workspace"),
    ]


@pytest.mark.parametrize("mutation,error,argument", [c[1:] for c in _mlp_bad_calls()],
                         ids=[c[0] for c in _mlp_bad_calls()])
def test_mlp_errors_name_the_argument(mutation, error, argument, generator):
    problem = ref.make_problem(7, 256, 128, 8, 4, torch.float32, None, generator)
    output = poison(torch.empty(7, 256, dtype=torch.bfloat16))
    before = output.clone()
    with pytest.raises(error, match=f"^{argument}:"):  # the message starts with the name
        run_logits(problem, 1, output=output, **mutation)
    assert torch.equal(output.isnan(), before.isnan()), "a rejected call wrote its output"
