"""The custom ops under torch.library checks, fake tensors and torch.compile(fullgraph=True), on CPU."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedmoe
import reference_moe as ref
from conftest import poison
from moe_cases import replay_buffer, run_logits, run_routed

H, I, E, K = 64, 32, 16, 4


def op_args(problem, mlp_options=False):
    """Positional arguments shared by the fusedmoe ops for a logits call (DeepSeekV3 routing);
    mlp_options: Swiglu with per-expert alpha, beta, clamp limit and both biases (fp32)."""
    mlp = (3, None, None, None, None, None, False)
    if mlp_options:
        positive = lambda *shape: torch.rand(*shape) + 0.5  # noqa: E731
        mlp = (3, positive(E), positive(E), positive(E), torch.randn(E, 2 * I), torch.randn(E, H),
               False)
    return (
        problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights,
        problem.routing_logits, problem.routing_bias, None, None, I, E, K, 0, E, 2, 4, 2, 2.5,
        *mlp, False, False,
    )


@pytest.mark.parametrize("mlp_options", [False, True])
def test_opcheck_moe_unfinalized(mlp_options, generator):
    problem = ref.make_problem(7, H, I, E, K, bias_dtype=torch.float32, generator=generator)
    args = op_args(problem, mlp_options) + (replay_buffer(problem), None)
    torch.library.opcheck(torch.ops.fusedmoe.moe_unfinalized.default, args)


@pytest.mark.parametrize("mlp_options", [False, True])
def test_opcheck_moe_out(mlp_options, generator):
    problem = ref.make_problem(7, H, I, E, K, bias_dtype=torch.float32, generator=generator)
    output = poison(torch.empty(7, H, dtype=torch.bfloat16))
    args = op_args(problem, mlp_options) + (output, replay_buffer(problem), None)
    torch.library.opcheck(torch.ops.fusedmoe.moe_out.default, args)


@pytest.mark.parametrize("num_tokens", [0, 5])
def test_fake_tensor_shapes_match_real(num_tokens, generator):
    problem = ref.make_problem(num_tokens, H, I, E, K, bias_dtype=torch.bfloat16, generator=generator)
    real_final = run_logits(problem, 2)
    real_triple = run_logits(problem, 2, do_finalize=False)
    real_routed = run_routed(problem, (torch.zeros(num_tokens, K, dtype=torch.int32),
                                       torch.ones(num_tokens, K)), do_finalize=False)
    with FakeTensorMode() as mode:
        fake = ref.Problem(*(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t
                             for t in (problem.hidden_states, problem.gemm1_weights,
                                       problem.gemm2_weights, problem.routing_logits,
                                       problem.routing_bias)),
                           E, K, I, problem.seed)
        fake_final = run_logits(fake, 2)
        fake_triple = run_logits(fake, 2, do_finalize=False)
        fake_routed = run_routed(fake, (torch.zeros(num_tokens, K, dtype=torch.int32),
                                        torch.ones(num_tokens, K)), do_finalize=False)
    for real, fake_t in zip([real_final] + real_triple + real_routed,
                            [fake_final] + fake_triple + fake_routed):
        assert fake_t.shape == real.shape and fake_t.dtype == real.dtype and fake_t.device == real.device
    assert real_triple[0].shape[0] == fusedmoe.permuted_capacity(num_tokens, K, E)


def _moe_layer(x, logits, bias, w1, w2):
    return fusedmoe.trtllm_bf16_moe(logits, bias, x, w1, w2, E, K, 4, 2, I, 0, E,
                                    routed_scaling_factor=2.5, routing_method_type=2)


def _moe_layer_unfinalized(x, logits, w1, w2, replay):
    gemm2_output, weights, permuted = fusedmoe.trtllm_bf16_moe(
        logits, None, x, w1, w2, E, K, None, None, I, 0, E, routing_method_type=1,
        do_finalize=False, routing_replay_out=replay,
    )
    # The operator's own bits (every slot is local, so every row is defined). This returned a
    # row sum before: the test's own op, which inductor may sum in another order; it failed bit
    # equality once in CI, while 25 reruns found the operator's outputs equal bit for bit.
    return gemm2_output, weights, permuted


def _moe_layer_inplace(x, ids, weights, w1, w2, out):
    packed = fusedmoe.pack_topk(ids, weights)
    fusedmoe.trtllm_bf16_routed_moe(packed, x, w1, w2, E, K, None, None, I, 0, E, output=out)
    return out * 2


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, generator):
    torch._dynamo.reset()
    problem = ref.make_problem(9, H, I, E, K, bias_dtype=torch.float32, generator=generator)
    args = (problem.hidden_states, problem.routing_logits, problem.routing_bias,
            problem.gemm1_weights, problem.gemm2_weights)
    compiled = torch.compile(_moe_layer, fullgraph=True, backend=backend)
    assert torch.equal(compiled(*args), _moe_layer(*args)), f"seed {problem.seed}"

    unfinalized_args = (problem.hidden_states, problem.routing_logits, problem.gemm1_weights,
                        problem.gemm2_weights)
    replay_eager, replay_traced = replay_buffer(problem), replay_buffer(problem)
    eager = _moe_layer_unfinalized(*unfinalized_args, replay_eager)
    traced = torch.compile(_moe_layer_unfinalized, fullgraph=True, backend=backend)(
        *unfinalized_args, replay_traced
    )
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
    assert torch.equal(replay_traced, replay_eager), "routing_replay_out not written under compile"
    assert (replay_eager >= 0).all()

    ids = torch.stack([torch.randperm(E, generator=generator)[:K] for _ in range(9)]).to(torch.int32)
    weights = torch.rand(9, K, generator=generator).to(torch.bfloat16)
    out_eager = poison(torch.empty(9, H, dtype=torch.bfloat16))
    out_traced = poison(torch.empty(9, H, dtype=torch.bfloat16))
    expected = _moe_layer_inplace(problem.hidden_states, ids, weights, problem.gemm1_weights,
                                  problem.gemm2_weights, out_eager)
    got = torch.compile(_moe_layer_inplace, fullgraph=True, backend=backend)(
        problem.hidden_states, ids, weights, problem.gemm1_weights, problem.gemm2_weights, out_traced
    )
    assert torch.equal(got, expected)
    assert torch.equal(out_traced, out_eager), "the in-place output was not written under compile"
