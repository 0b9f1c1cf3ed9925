"""The Python API on CUDA tensors (Hopper kernels): skipped without a Hopper GPU.

A build whose GPU operator reports kNotImplemented makes these tests skip with that reason.
"""

import pytest
import torch
import torch.utils._triton

import fusedmoe
import reference_moe as ref
from conftest import poison, requires_hopper
from moe_cases import METHOD_PARAMS, replay_buffer, routing_kwargs, run_logits, run_routed

pytestmark = requires_hopper

SHAPES = [  # (T, H, I, E): ragged T, H off the tile multiple (2880), one expert-heavy case
    (T, ref.sanitizer_hidden_size(H), ref.sanitizer_intermediate_size(I), E)
    for T, H, I, E in [(1, 256, 128, 16), (19, 2880, 192, 16), (989, 1024, 256, 32)]
]


def gpu(call, *args, **kwargs):
    """Runs a fusedmoe call; skips the test when this build has no GPU operator."""
    try:
        return call(*args, **kwargs)
    except NotImplementedError as error:
        pytest.skip(f"GPU operator not available in this build: {error}")


def make_gpu(num_tokens, hidden_size, inter, num_experts, method, generator, logits_dtype=torch.float32):
    params = METHOD_PARAMS[method]
    problem = ref.make_problem(
        num_tokens, hidden_size, inter, num_experts, params["top_k"], logits_dtype,
        torch.bfloat16 if params.get("bias") else None, generator,
    )
    return problem, problem.to("cuda")


def expected_routing(problem, method):
    routing = routing_kwargs(method)
    return ref.route(
        problem.routing_logits, problem.routing_bias, method, problem.top_k,
        routing["n_group"] or 0, routing["topk_group"] or 0, routing["routed_scaling_factor"] or 1.0,
    )


@pytest.mark.parametrize("method", [0, 1, 2, 3, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_H{}_I{}_E{}".format(*s))
def test_gpu_matches_reference(method, shape, generator):
    cpu, cuda = make_gpu(*shape, method, generator, torch.bfloat16 if method % 2 else torch.float32)
    ids, weights = expected_routing(cpu, method)
    replay = replay_buffer(cuda)
    _, expert_weights, _ = gpu(run_logits, cuda, method, do_finalize=False, routing_replay_out=replay)
    assert torch.equal(replay.cpu().long(), ids), f"selected ids differ (seed {cpu.seed})"
    ref.assert_weights_match(expert_weights, weights, cpu.seed)

    output = poison(torch.empty(shape[0], shape[1], dtype=torch.bfloat16, device="cuda"))
    gpu(run_logits, cuda, method, output=output)
    ref.assert_close_to_reference(output, cpu.hidden_states, cpu.gemm1_weights, cpu.gemm2_weights,
                                  ids, expert_weights.cpu(), seed=cpu.seed)
    assert torch.equal(output, run_logits(cuda, method)), f"rerun not bitwise equal (seed {cpu.seed})"


def test_gpu_routed_matches_logits_bitwise(generator):
    _, cuda = make_gpu(*SHAPES[2], 2, generator)
    replay = replay_buffer(cuda)
    _, expert_weights, _ = gpu(run_logits, cuda, 2, do_finalize=False, routing_replay_out=replay)
    from_logits = run_logits(cuda, 2)
    ids = replay.to(torch.int32)
    assert torch.equal(run_routed(cuda, fusedmoe.pack_topk(ids, expert_weights)), from_logits)
    assert torch.equal(run_routed(cuda, (ids, expert_weights)), from_logits)


def test_gpu_expert_parallel_shards_sum_to_whole(generator):
    cpu, cuda = make_gpu(*SHAPES[1], 1, generator)
    ids, _ = expected_routing(cpu, 1)
    _, expert_weights, _ = gpu(run_logits, cuda, 1, do_finalize=False)
    num_experts = SHAPES[1][3]
    total = torch.zeros(SHAPES[1][0], SHAPES[1][1], dtype=torch.float64)
    for offset in range(0, num_experts, 4):
        shard = run_logits(cuda, 1, offset=offset, num_local=4)
        no_local = ~((ids >= offset) & (ids < offset + 4)).any(dim=1)
        assert (shard.cpu()[no_local] == 0).all()
        total += shard.cpu().double()
    ref.assert_close_to_reference(total, cpu.hidden_states, cpu.gemm1_weights, cpu.gemm2_weights,
                                  ids, expert_weights.cpu(), seed=cpu.seed, atol=4e-3)


def test_gpu_unfinalized_reduces_to_output(generator):
    _, cuda = make_gpu(*SHAPES[2], 0, generator)
    num_tokens, top_k = cuda.hidden_states.shape[0], cuda.top_k
    gemm2_output, expert_weights, permuted = gpu(run_logits, cuda, 0, offset=8, num_local=16,
                                                 do_finalize=False)
    assert gemm2_output.shape == (fusedmoe.permuted_capacity(num_tokens, top_k, 16), cuda.hidden_states.shape[1])
    finalized = run_logits(cuda, 0, offset=8, num_local=16)
    rows = permuted.view(num_tokens, top_k)
    acc = torch.zeros(finalized.shape, dtype=torch.float32, device="cuda")
    for k in range(top_k):
        has = rows[:, k] >= 0
        acc[has] += expert_weights[has, k, None].float() * gemm2_output[rows[has, k].long()].float()
    assert torch.equal(acc.to(torch.bfloat16), finalized)


def test_gpu_torch_compile_fullgraph(generator):
    torch._dynamo.reset()
    _, cuda = make_gpu(*SHAPES[1], 2, generator)
    routing = routing_kwargs(2)

    def layer(x, logits, bias, w1, w2):
        return fusedmoe.trtllm_bf16_moe(
            logits, bias, x, w1, w2, cuda.num_experts, cuda.top_k, routing["n_group"],
            routing["topk_group"], cuda.intermediate_size, 0, cuda.num_experts,
            routed_scaling_factor=routing["routed_scaling_factor"], routing_method_type=2,
        ) * 2

    args = (cuda.hidden_states, cuda.routing_logits, cuda.routing_bias, cuda.gemm1_weights,
            cuda.gemm2_weights)
    eager = gpu(layer, *args)
    backend = "inductor" if torch.utils._triton.has_triton() else "aot_eager"
    assert torch.equal(torch.compile(layer, fullgraph=True, backend=backend)(*args), eager)


@pytest.mark.parametrize("do_finalize", [True, False])
def test_gpu_cuda_graph_replays_new_inputs(do_finalize, generator):
    _, static = make_gpu(*SHAPES[1], 0, generator)
    num_tokens, hidden = static.hidden_states.shape
    fusedmoe.reserve_workspace(num_tokens, hidden, static.intermediate_size, static.num_experts,
                               static.top_k)
    gpu(run_logits, static, 0, do_finalize=do_finalize)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_logits(static, 0, do_finalize=do_finalize)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run_logits(static, 0, do_finalize=do_finalize)
    for _ in range(2):
        _, fresh = make_gpu(*SHAPES[1], 0, generator)
        static.hidden_states.copy_(fresh.hidden_states)
        static.routing_logits.copy_(fresh.routing_logits)
        graph.replay()
        expected = run_logits(static, 0, do_finalize=do_finalize)
        torch.cuda.synchronize()
        for a, b in zip(captured if isinstance(captured, list) else [captured],
                        expected if isinstance(expected, list) else [expected]):
            assert torch.equal(a, b), "graph replay differs from an eager call on the new inputs"


def test_gpu_caller_workspace_and_side_stream(generator):
    _, cuda = make_gpu(*SHAPES[1], 0, generator)
    num_tokens, hidden = cuda.hidden_states.shape
    expected = gpu(run_logits, cuda, 0)
    size = fusedmoe.workspace_size(num_tokens, hidden, cuda.intermediate_size, cuda.num_experts, cuda.top_k)
    workspace = torch.empty(size, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = run_logits(cuda, 0, workspace=workspace)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(got, expected)
    if size > 0:
        with pytest.raises(ValueError, match="workspace"):
            run_logits(cuda, 0, workspace=workspace[: size - 1])


def test_gpu_mixed_devices_are_rejected(generator):
    cpu, cuda = make_gpu(*SHAPES[0], 0, generator)
    mixed = ref.Problem(cuda.hidden_states, cpu.gemm1_weights, cuda.gemm2_weights,
                        cuda.routing_logits, None, cuda.num_experts, cuda.top_k,
                        cuda.intermediate_size, cuda.seed)
    with pytest.raises(ValueError, match="gemm1_weights"):
        run_logits(mixed, 0)
