"""What each process of the distributed tests runs (test_distributed.py spawns them).

Every rank builds the same random problem from the parent's seed, keeps its own tokens and its
E / W experts, runs ``fusedmoe.ExpertParallelMoE`` and compares its output with the single-process
operator on the whole problem (all tokens, all experts), which every rank also computes.
"""

import datetime
import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist

import fusedmoe
import reference_moe as ref
from fusedmoe import distributed as fdist
from fusedmoe import fp8
from moe_cases import METHOD_PARAMS, routing_kwargs

H, I, E = 64, 32, 16


def no_multicast_env() -> None:
    """NCCL without NVLink multicast (NVLS) and torch symmetric memory without multicast: the GPU
    machines this project runs on must never use it."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


def init(rank: int, world: int, init_file: str, backend: str) -> None:
    no_multicast_env()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # the layer uses no op that this mode rejects
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )


@dataclass
class Case:
    """One distributed call: routing input kind, method, token counts per rank."""

    name: str
    counts: List[int]
    method: int = 1
    routing: str = "logits"  # logits | packed | pair_bf16 | pair_fp32 | cancel_bf16 | cancel_fp32
    logits_dtype: torch.dtype = torch.float32
    expert_weights_dtype: torch.dtype = torch.bfloat16
    static_counts: bool = False  # allgather: pass num_tokens_per_rank (the no-sync path)
    mlp: str = "swiglu"  # the expert MLP: swiglu | gptoss_bf16 | gptoss_fp32 | relu2 | llama4


def cases(world: int) -> List[Case]:
    uneven = {2: [5, 0], 4: [3, 0, 7, 1]}[world]
    other = {2: [3, 8], 4: [2, 5, 0, 4]}[world]
    even = [3] * world
    return [
        Case("renormalize_uneven", uneven, method=1),
        Case("deepseek_bf16_logits", other, method=2, logits_dtype=torch.bfloat16),
        Case("default_fp32_weights", uneven, method=0, expert_weights_dtype=torch.float32),
        Case("minimax2", even, method=7),
        Case("llama4", other, method=3),
        Case("sigmoid_renorm_static", uneven, method=6, static_counts=True),
        Case("packed", other, routing="packed"),
        Case("pair_bf16", uneven, routing="pair_bf16", static_counts=True),
        Case("pair_fp32", other, routing="pair_fp32"),
        Case("no_tokens_anywhere", [0] * world, method=1),
        Case("cancelling_bf16", other, routing="cancel_bf16"),
        Case("cancelling_fp32", uneven, routing="cancel_fp32"),
        # The expert MLP's options (docs/distributed.md "Expert MLP options").
        Case("gptoss_bf16_bias", uneven, method=1, mlp="gptoss_bf16", static_counts=True),
        Case("gptoss_fp32_bias", other, routing="pair_fp32", mlp="gptoss_fp32"),
        Case("relu2", other, method=2, mlp="relu2"),
        Case("llama4_on_input", other, method=3, mlp="llama4"),
        Case("llama4_on_input_fp32_weights", uneven, method=3, mlp="llama4",
             expert_weights_dtype=torch.float32),
        Case("llama4_on_input_packed", even, method=3, routing="packed", mlp="llama4"),
        Case("llama4_on_input_pair_fp32", other, method=3, routing="pair_fp32", mlp="llama4",
             static_counts=True),
    ]


def make_mlp(case: Case, generator) -> ref.Mlp:
    """The expert MLP of ``case`` for all E experts (the layer gets each rank's slice), with
    random per-expert values (never zeros; limits near 1 make the clamps bite)."""
    uniform = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*shape, generator=generator)  # noqa: E731
    if case.mlp == "swiglu":
        return ref.Mlp()
    if case.mlp.startswith("gptoss"):  # Swiglu with alpha, beta, clamp limit and both biases
        dtype = torch.float32 if case.mlp == "gptoss_fp32" else torch.bfloat16
        return ref.Mlp(
            3, alpha=uniform(1.0, 2.0, E), beta=uniform(0.5, 1.5, E), limit=uniform(0.5, 1.5, E),
            bias1=(0.5 * torch.randn(E, 2 * I, generator=generator)).to(dtype),
            bias2=(0.5 * torch.randn(E, H, generator=generator)).to(dtype),
        )
    if case.mlp == "relu2":  # non-gated: gemm1 [E, I, H], and its [E, I] bias
        return ref.Mlp(6, bias1=(0.5 * torch.randn(E, I, generator=generator)).to(torch.bfloat16))
    if case.mlp == "llama4":  # K == 1, the routing weight on the input
        return ref.Mlp(on_input=True)
    raise ValueError(f"unknown mlp {case.mlp}")


def local_mlp(mlp: ref.Mlp, experts: slice) -> dict:
    """The layer's keyword arguments for the experts ``experts`` of ``mlp``."""
    kwargs = mlp.kwargs()
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            kwargs[name] = value[experts].contiguous()
    return kwargs


def make_problem(case: Case, world: int, seed: int):
    """The whole problem (all ranks' tokens, all experts), its routing inputs and expert MLP."""
    generator = torch.Generator().manual_seed(seed)
    params = METHOD_PARAMS[case.method]
    total = sum(case.counts)
    problem = ref.make_problem(
        total, H, I, E, params["top_k"], case.logits_dtype,
        torch.bfloat16 if params.get("bias") else None, generator,
    )
    mlp = make_mlp(case, generator)
    if mlp.activation not in ref.GATED:
        problem.gemm1_weights = problem.gemm1_weights[:, :I].contiguous()
    routed = None
    if case.routing != "logits":
        ids = torch.stack([torch.randperm(E, generator=generator)[: problem.top_k]
                           for _ in range(total)]).to(torch.int32).reshape(total, problem.top_k)
        weights = torch.randn(total, problem.top_k, generator=generator) + 0.3  # some negative
        if total > 2:
            ids[1, 0] = E + 3  # routed nowhere: contributes zero on every rank
            ids[2, min(1, problem.top_k - 1)] = -2
        if case.routing.startswith("cancel"):
            # Slots 0 and 2 on one expert with weights +-2^20 (fp32: 24 significant bits): their
            # sum cancels, so the fp32 roundings of the running sum, hence the order and the fma
            # rounding of the combine, show in the bf16 output.
            ids[:, 2] = ids[:, 0]
            big = 2.0**20 * (1 + torch.rand(total, generator=generator))
            if case.routing == "cancel_bf16":
                big = big.to(torch.bfloat16).float()
            weights[:, 0], weights[:, 2] = big, -big
            routed = (ids, weights if case.routing == "cancel_fp32" else weights.to(torch.bfloat16))
        elif case.routing == "pair_fp32":
            routed = (ids, weights)
        elif case.routing == "pair_bf16":
            routed = (ids, weights.to(torch.bfloat16))
        else:
            routed = fusedmoe.pack_topk(ids, weights)
    return problem, routed, mlp


def single_process(problem, routed, case: Case, mlp: ref.Mlp):
    """The operator on the whole problem: (output, ids, expert_weights, gemm2_output, permuted)."""
    routing = routing_kwargs(case.method)
    common = (problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights, E,
              problem.top_k, routing["n_group"], routing["topk_group"], I, 0, E)
    options = mlp.kwargs()
    if routed is None:
        replay = torch.empty(problem.hidden_states.shape[0], problem.top_k, dtype=torch.int16)

        def call(**kwargs):
            return fusedmoe.trtllm_bf16_moe(
                problem.routing_logits, problem.routing_bias, *common,
                routed_scaling_factor=routing["routed_scaling_factor"],
                routing_method_type=case.method, expert_weights_dtype=case.expert_weights_dtype,
                **options, **kwargs,
            )
        gemm2_output, expert_weights, permuted = call(do_finalize=False, routing_replay_out=replay)
        ids = replay.to(torch.int32)
    else:
        def call(**kwargs):
            return fusedmoe.trtllm_bf16_routed_moe(routed, *common, **options, **kwargs)
        gemm2_output, expert_weights, permuted = call(do_finalize=False)
        ids = routed[0] if isinstance(routed, tuple) else fusedmoe.unpack_topk(routed)[0]
    return call(), ids, expert_weights, gemm2_output, permuted


def rank_slice(counts: List[int], rank: int) -> slice:
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def make_layer(problem, case: Case, mode: str, mlp: ref.Mlp, group=None, **overrides):
    rank, world = dist.get_rank(), dist.get_world_size()
    num_local = E // world
    experts = slice(rank * num_local, (rank + 1) * num_local)
    routing = routing_kwargs(case.method)
    kwargs = dict(
        mode=mode, routing_method_type=case.method, n_group=routing["n_group"],
        topk_group=routing["topk_group"], routed_scaling_factor=routing["routed_scaling_factor"],
        routing_bias=problem.routing_bias, expert_weights_dtype=case.expert_weights_dtype,
        **local_mlp(mlp, experts),
    )
    kwargs.update(overrides)
    return fusedmoe.ExpertParallelMoE(
        group, problem.gemm1_weights[experts].contiguous(), problem.gemm2_weights[experts].contiguous(),
        E, problem.top_k, I, **kwargs,
    )


def call_layer(layer, problem, routed, case: Case, device):
    rank = dist.get_rank()
    mine = rank_slice(case.counts, rank)
    x = problem.hidden_states[mine].contiguous().to(device)
    kwargs = {}
    if case.static_counts and layer.mode == "allgather":
        kwargs["num_tokens_per_rank"] = list(case.counts)
    if routed is None:
        return layer(x, problem.routing_logits[mine].contiguous().to(device), **kwargs)
    if isinstance(routed, tuple):
        topk = tuple(t[mine].contiguous().to(device) for t in routed)
    else:
        topk = routed[mine].contiguous().to(device)
    return layer(x, topk_ids=topk, **kwargs)


def check_case(case: Case, mode: str, seed: int, device="cpu"):
    """Runs one case on every rank and checks this rank's output; returns nothing, raises.

    CPU: against the single-process operator (the CPU reference) on the whole problem. CUDA: the
    GPU's expert outputs depend on the batch (its GEMM kernels are chosen by size), so against
    the float64 reference by the tolerance rule, and reruns bitwise.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    problem, routed, mlp = make_problem(case, world, seed)
    where = f"case {case.name}, mode {mode}, rank {rank}/{world}, seed {seed}"
    single, ids, expert_weights, gemm2_output, permuted = single_process(problem, routed, case, mlp)

    layer = make_layer(problem.to(device), case, mode, mlp.to(device))
    ours = call_layer(layer, problem, routed, case, device)
    again = call_layer(layer, problem, routed, case, device)
    mine = rank_slice(case.counts, rank)
    assert ours.shape == (case.counts[rank], H) and ours.dtype == torch.bfloat16, where
    assert torch.equal(ours, again), f"reruns differ ({where})"
    ours, expected = ours.cpu(), single[mine]
    if not case.counts[rank]:
        return

    if not case.routing.startswith("cancel"):  # (cancelling weights: fp32 rounding dominates)
        # The tolerance rule against the float64 reference of this rank's tokens.
        ref.assert_close_to_reference(
            ours, problem.hidden_states[mine], problem.gemm1_weights, problem.gemm2_weights,
            ids[mine], expert_weights[mine], seed=f"{seed}; {where}", mlp=mlp,
        )
    if device != "cpu":
        return
    if mode == "alltoall" or problem.top_k == 1:
        # All-to-all: each token's slots summed in ascending k with fmaf, on the same expert
        # outputs (the CPU reference's rows do not depend on the batch): the operator's bits.
        # All-gather with K == 1: one rank's partial is the operator's sum, the others add +0.
        different = (ours.view(torch.int16) != expected.view(torch.int16)).sum().item()
        assert different == 0, f"{different} elements differ from the single-process operator ({where})"
    else:
        # All-gather: per-rank fp32 partials summed in rank order instead of one fp32 chain; the
        # sums differ by a few fp32 roundings of sum_k |w y| before the one bf16 rounding.
        slots = permuted.view(-1, problem.top_k)[mine].long()
        y = gemm2_output.double()[slots.clamp(min=0)]  # [T, K, H]
        w = expert_weights[mine].double()
        if mlp.on_input:  # the rows carry the weights already: summed with weights of 1
            w = torch.ones_like(w)
        w = w.unsqueeze(2) * (slots >= 0).unsqueeze(2)
        magnitude = (w * y).abs().sum(1)
        bound = 2.0**-7 * expected.double().abs() + 2.0**-20 * magnitude + 1e-30
        excess = ((ours.double() - expected.double()).abs() - bound).max().item()
        assert excess <= 0, f"all-gather output off the single-process operator by more than its bound ({where})"


def expect_error(error_type, argument, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except error_type as raised:
        # Python checks start with the argument's name; the C++ layer's say "fusedmoe: logits.<name>:".
        message = str(raised)
        named = message.startswith(argument + ":") or f".{argument}:" in message
        assert named, f"expected a message naming {argument}: {message}"
        return
    raise AssertionError(f"expected {error_type.__name__} naming {argument}, nothing raised")


def check_errors(seed: int) -> None:
    """Clear errors on every rank, and the group still usable afterwards (no rank left waiting)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    case = Case("errors", [4, 2] + [1] * (world - 2), method=1)
    problem, _, _ = make_problem(case, world, seed)
    num_local = E // world
    w1 = problem.gemm1_weights[rank * num_local:(rank + 1) * num_local].contiguous()
    w2 = problem.gemm2_weights[rank * num_local:(rank + 1) * num_local].contiguous()

    # Constructor: E not a multiple of W (every rank), one rank's bad dtype, ranks disagreeing.
    expect_error(ValueError, "num_experts", fusedmoe.ExpertParallelMoE, None, w1, w2, E + 1, 4, I)
    bad_w1 = w1.float() if rank == 1 else w1
    expect_error(TypeError if rank == 1 else ValueError, "gemm1_weights",
                 fusedmoe.ExpertParallelMoE, None, bad_w1, w2, E, 4, I)
    expect_error(ValueError, "top_k", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4 + (rank == 1), I)
    expect_error(ValueError, "routing_method_type", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4, I,
                 routing_method_type=1 if rank else 0)
    expect_error(ValueError, "mode", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4, I, mode="ring")
    # Routing rules of the C++ layer, raised at construction (E = 16 is not 3 groups).
    expect_error(ValueError, "n_group", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4, I,
                 routing_method_type=2, n_group=3, topk_group=1)
    expect_error(ValueError, "top_k", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4, I,
                 routing_method_type=3)  # Llama4 needs top_k == 1
    # A group whose backend does not move the tensors' device (local: every rank raises).
    expect_error(ValueError, "group", fusedmoe.ExpertParallelMoE, None, w1.to("meta"), w2.to("meta"),
                 E, 4, I)
    real_get_backend = fdist.dist.get_backend
    fdist.dist.get_backend = lambda group=None: "nccl"
    try:
        expect_error(ValueError, "group", fusedmoe.ExpertParallelMoE, None, w1, w2, E, 4, I)
    finally:
        fdist.dist.get_backend = real_get_backend
    expect_error(TypeError, "group", fusedmoe.ExpertParallelMoE, "world", w1, w2, E, 4, I)
    check_mlp_errors(w1, w2)

    mine = rank_slice(case.counts, rank)
    x, logits = problem.hidden_states[mine].contiguous(), problem.routing_logits[mine].contiguous()
    ids = torch.randint(0, E, (x.shape[0], 4), dtype=torch.int32)
    for mode in fdist.MODES:
        layer = fusedmoe.ExpertParallelMoE(None, w1, w2, E, 4, I, mode=mode, routing_method_type=1)
        # One rank's bad argument: it raises its own error, the others one naming the argument.
        bad_x = x.float() if rank == 1 else x
        expect_error(TypeError if rank == 1 else ValueError, "hidden_states", layer, bad_x, logits)
        bad_logits = logits[:, :-1].contiguous() if rank == 0 else logits
        expect_error(ValueError, "routing_logits", layer, x, bad_logits)
        expect_error(ValueError, "routing_logits", layer, x, logits, topk_ids=ids)  # both given
        if mode == "allgather":
            # Ranks passing different kinds of routing input.
            routing = dict(topk_ids=ids) if rank == 1 else dict(routing_logits=logits)
            expect_error(ValueError, "routing_logits" if rank != 1 else "topk_ids", layer, x, **routing)
            expect_error(ValueError, "num_tokens_per_rank", layer, x, logits,
                         num_tokens_per_rank=case.counts[:-1])
            wrong = list(case.counts)
            wrong[rank] += 1
            expect_error(ValueError, "num_tokens_per_rank", layer, x, logits, num_tokens_per_rank=wrong)
        else:
            expect_error(ValueError, "num_tokens_per_rank", layer, x, logits,
                         num_tokens_per_rank=case.counts)
        # The group is still in step: a correct call works.
        assert layer(x, logits).shape == x.shape


def check_mlp_errors(w1, w2) -> None:
    """The expert MLP's options: shapes, dtypes, devices and ranks that disagree, named."""
    rank, world = dist.get_rank(), dist.get_world_size()
    num_local = E // world
    layer = fusedmoe.ExpertParallelMoE
    ones = lambda *shape, dtype=torch.float32: torch.ones(*shape, dtype=dtype)  # noqa: E731
    relu2 = dict(activation_type=fusedmoe.ActivationType.Relu2)
    w1_plain = w1[:, :I].contiguous()  # non-gated: [E_loc, I, H]

    # Per-expert tensors for all E experts instead of this rank's E / W: the message says whose.
    try:
        layer(None, w1, w2, E, 4, I, gemm1_alpha=ones(E))
        raise AssertionError("gemm1_alpha for all experts: nothing raised")
    except ValueError as raised:
        assert str(raised).startswith(f"gemm1_alpha: expected this rank's {num_local} experts"), raised
    expect_error(ValueError, "gemm2_bias", layer, None, w1, w2, E, 4, I, gemm2_bias=ones(E, H))
    expect_error(ValueError, "gemm1_clamp_limit", layer, None, w1, w2, E, 4, I,
                 gemm1_clamp_limit=ones(num_local, 1))
    # Wrong columns: a gated gemm1 bias is [E_loc, 2I], a non-gated one [E_loc, I].
    expect_error(ValueError, "gemm1_bias", layer, None, w1, w2, E, 4, I, gemm1_bias=ones(num_local, I))
    expect_error(ValueError, "gemm1_bias", layer, None, w1_plain, w2, E, 4, I,
                 gemm1_bias=ones(num_local, 2 * I), **relu2)
    expect_error(ValueError, "gemm2_bias", layer, None, w1, w2, E, 4, I, gemm2_bias=ones(num_local, I))
    # One rank's bad dtype: it raises its TypeError, the others a ValueError naming it.
    bad_bias = ones(num_local, H, dtype=torch.float16 if rank == 1 else torch.bfloat16)
    expect_error(TypeError if rank == 1 else ValueError, "gemm2_bias", layer, None, w1, w2, E, 4, I,
                 gemm2_bias=bad_bias)
    expect_error(TypeError, "gemm1_beta", layer, None, w1, w2, E, 4, I,
                 gemm1_beta=ones(num_local, dtype=torch.bfloat16))
    expect_error(ValueError, "gemm1_alpha", layer, None, w1, w2, E, 4, I, gemm1_alpha=ones(num_local).to("meta"))
    # Options the activation does not read, weights of the other kind, unknown activations.
    expect_error(ValueError, "gemm1_alpha", layer, None, w1_plain, w2, E, 4, I,
                 gemm1_alpha=ones(num_local), **relu2)
    expect_error(ValueError, "gemm1_weights", layer, None, w1, w2, E, 4, I, **relu2)
    expect_error(ValueError, "activation_type", layer, None, w1, w2, E, 4, I, activation_type=5)
    # Input-side routing weights need K == 1; the flag must be a bool.
    expect_error(ValueError, "use_routing_scales_on_input", layer, None, w1, w2, E, 4, I,
                 use_routing_scales_on_input=True)
    expect_error(TypeError, "use_routing_scales_on_input", layer, None, w1, w2, E, 1, I,
                 use_routing_scales_on_input=1)
    # Ranks that disagree: the activation, the flag, which per-expert tensors are given.
    expect_error(ValueError, "activation_type", layer, None, w1, w2, E, 4, I,
                 activation_type=4 if rank == 1 else 3)
    expect_error(ValueError, "use_routing_scales_on_input", layer, None, w1, w2, E, 1, I,
                 routing_method_type=3, use_routing_scales_on_input=rank == 1)
    expect_error(ValueError, "gemm1_bias", layer, None, w1, w2, E, 4, I,
                 gemm1_bias=ones(num_local, 2 * I) if rank == 0 else None)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two bf16 tensors bitwise equal (NaNs and signed zeros included)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))


def expect_rejected_elsewhere(error_type, failing_rank: int, function, *args, **kwargs):
    """``function`` raises ``error_type`` on ``failing_rank`` and, on every other rank, a
    ValueError saying that rank ``failing_rank`` rejected its arguments."""
    rank = dist.get_rank()
    expected = error_type if rank == failing_rank else ValueError
    try:
        function(*args, **kwargs)
    except expected as raised:
        assert rank == failing_rank or f"rejected on rank {failing_rank}" in str(raised), raised
        return
    raise AssertionError(f"expected {expected.__name__} on rank {rank}, nothing raised")


def check_ranks_that_disagree(seed: int) -> None:
    """What every rank must pass alike, passed differently by one rank, and a constructor that
    fails on one rank in any way: every rank raises (none aborts or waits in a collective), and
    then a correct call on the same group gives the single-process operator's output, bitwise
    (all-to-all, or K == 1)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    counts = [4, 2] + [1] * (world - 2)
    mine = rank_slice(counts, rank)
    layer_type = fusedmoe.ExpertParallelMoE

    # Defect: all-to-all with the weights on the input chose its dispatch collectives from its
    # own weights' dtype (bf16: one all-to-all, fp32: two), so ranks passing different kinds ran
    # different collective sequences (gloo aborted). Now the kind travels with the counts.
    case = Case("disagree_on_input", counts, method=3, routing="pair_fp32", mlp="llama4")
    problem, routed, mlp = make_problem(case, world, seed)
    single = single_process(problem, routed, case, mlp)[0][mine]
    layer = make_layer(problem, case, "alltoall", mlp)
    x = problem.hidden_states[mine].contiguous()
    ids, weights = (t[mine].contiguous() for t in routed)
    mixed = (ids, weights.to(torch.bfloat16) if rank == 0 else weights)
    expect_error(ValueError, "topk_ids", layer, x, topk_ids=mixed)
    packed = fusedmoe.pack_topk(ids, weights.to(torch.bfloat16))
    expect_error(ValueError, "topk_ids", layer, x, topk_ids=packed if rank == 1 else (ids, weights))
    logits = problem.routing_logits[mine].contiguous()
    by_rank = dict(routing_logits=logits) if rank == 0 else dict(topk_ids=(ids, weights))
    expect_error(ValueError, "routing_logits" if rank == 0 else "topk_ids", layer, x, **by_rank)
    ours = layer(x, topk_ids=(ids, weights))
    assert same_bits(ours, single), f"rank {rank}, seed {seed}"

    # Defect: the all-gather mode's num_tokens_per_rank was never compared across ranks (a
    # stale list on one rank gave mismatched collectives: gloo aborted). Now the first call
    # with a list checks it, once. K == 1: the all-gather mode is bitwise too.
    case = Case("disagree_counts", counts, method=3, static_counts=True)
    problem, _, mlp = make_problem(case, world, seed + 1)
    single = single_process(problem, None, case, mlp)[0][mine]
    layer = make_layer(problem, case, "allgather", mlp)
    layer.collective_log = []
    x, logits = problem.hidden_states[mine].contiguous(), problem.routing_logits[mine].contiguous()
    ids = torch.randint(0, E, (x.shape[0], 1), dtype=torch.int32)
    # The layer's first call with a list: a rank whose own arguments are rejected tells the others.
    expect_rejected_elsewhere(TypeError, 1, layer, x.float() if rank == 1 else x, logits,
                              num_tokens_per_rank=counts)
    stale = list(counts)
    if rank == 0:
        stale[1] += 1  # another rank's entry: this rank's own one still matches its rows
    expect_error(ValueError, "num_tokens_per_rank", layer, x, logits, num_tokens_per_rank=stale)
    by_rank = dict(topk_ids=ids) if rank == 1 else dict(routing_logits=logits)
    expect_error(ValueError, "topk_ids" if rank == 1 else "routing_logits", layer, x,
                 num_tokens_per_rank=counts, **by_rank)
    assert [r.name for r in layer.collective_log] == ["check_counts"] * 3, layer.collective_log
    # A checked list is checked once: the second call runs no extra collective.
    del layer.collective_log[:]
    first = layer(x, logits, num_tokens_per_rank=counts)
    second = layer(x, logits, num_tokens_per_rank=counts)
    names = [r.name for r in layer.collective_log]
    assert names[0] == "check_counts" and names.count("check_counts") == 1, names
    for out in (first, second, layer(x, logits)):
        assert same_bits(out, single), f"rank {rank}, seed {seed}"
    # Inside graph capture or torch.compile (simulated): a checked list runs, one not checked
    # (here: the same counts with another kind of routing input) raises on every rank.
    real_capturing = fdist._capturing
    fdist._capturing = lambda device: True
    try:
        captured = layer(x, logits, num_tokens_per_rank=counts)
        expect_error(ValueError, "num_tokens_per_rank", layer, x, topk_ids=ids,
                     num_tokens_per_rank=counts)
    finally:
        fdist._capturing = real_capturing
    assert torch.equal(captured, first), f"rank {rank}, seed {seed}"

    # Defect: routing_bias's values were never compared (each rank routed with its own bias).
    # One bf16 ulp on one expert of the last rank is caught.
    case = Case("disagree_bias", counts, method=2)
    problem, _, mlp = make_problem(case, world, seed + 2)
    bias = problem.routing_bias.clone()
    if rank == world - 1:
        expert = int(torch.randint(0, E, (1,)))
        bias.view(torch.int16)[expert] += 1
    expect_error(ValueError, "routing_bias", make_layer, problem, case, "allgather", mlp,
                 routing_bias=bias)
    # Defect: the constructor reported only TypeError/ValueError to the other ranks (any other
    # exception, or gemm1_weights not a tensor, left them waiting in the agreement collective).
    real_route = layer_type._route

    def failing_route(self, *args):
        raise RuntimeError("simulated failure of the routing call")
    if rank == 1:
        layer_type._route = failing_route
    try:
        expect_rejected_elsewhere(RuntimeError, 1, make_layer, problem, case, "alltoall", mlp)
    finally:
        layer_type._route = real_route
    experts = slice(rank * (E // world), (rank + 1) * (E // world))
    w1, w2 = (w[experts].contiguous() for w in (problem.gemm1_weights, problem.gemm2_weights))
    expect_error(TypeError if rank == 1 else ValueError, "gemm1_weights", layer_type, None,
                 [[0.0]] if rank == 1 else w1, w2, E, 4, I)
    # The group is in step: the same bias everywhere, and the layer's output is the operator's.
    single = single_process(problem, None, case, mlp)[0][mine]
    layer = make_layer(problem, case, "alltoall", mlp)
    x, logits = problem.hidden_states[mine].contiguous(), problem.routing_logits[mine].contiguous()
    ours = layer(x, logits)
    assert same_bits(ours, single), f"rank {rank}, seed {seed}"


def main_disagree(rank: int, world: int, init_file: str, seed: int) -> None:
    """Entry point of one spawned CPU (gloo) process for check_ranks_that_disagree."""
    init(rank, world, init_file, "gloo")
    try:
        check_ranks_that_disagree(seed)
    finally:
        dist.destroy_process_group()


def check_collective_log(seed: int) -> None:
    """The benchmark's hook: each collective logged once, bytes sent == bytes received overall."""
    rank, world = dist.get_rank(), dist.get_world_size()
    case = cases(world)[0]  # uneven counts, a rank without tokens
    problem, routed, mlp = make_problem(case, world, seed)
    expected_steps = {
        "allgather": ["gather_counts", "dispatch_hidden", "dispatch_logits", "combine_partials"],
        "alltoall": ["exchange_counts", "dispatch_hidden", "dispatch_ids", "combine_outputs"],
    }
    for mode in fdist.MODES:
        layer = make_layer(problem, case, mode, mlp)
        layer.collective_log = []
        call_layer(layer, problem, routed, case, "cpu")
        log = layer.collective_log
        assert [r.name for r in log] == expected_steps[mode], [r.name for r in log]
        assert all(isinstance(r, fdist.CollectiveRecord) and r.end >= r.start for r in log)
        if mode == "allgather":
            assert log[1].collective == "all_gather" and log[3].collective == "all_to_all"
            assert log[1].bytes_received == (world - 1) * max(case.counts) * H * 2
        totals = torch.tensor([sum(r.bytes_received for r in log), sum(r.bytes_sent for r in log)])
        dist.all_reduce(totals)
        assert totals[0] == totals[1] > 0, f"bytes received {totals[0]} != sent {totals[1]} ({mode})"


def check_graph_capture(seed: int) -> None:
    """All-gather mode with static counts, captured in a CUDA graph: replays compute new inputs."""
    rank, world = dist.get_rank(), dist.get_world_size()
    case = Case("graph", [5, 0, 3, 2][:world], method=2, static_counts=True)
    problem, _, mlp = make_problem(case, world, seed)
    fresh, _, _ = make_problem(case, world, seed + 1)
    cuda = problem.to("cuda")
    layer = make_layer(cuda, case, "allgather", mlp.to("cuda"))
    layer.reserve_workspace(max(case.counts))
    mine = rank_slice(case.counts, rank)
    x = cuda.hidden_states[mine].contiguous()
    logits = cuda.routing_logits[mine].contiguous()
    counts = list(case.counts)
    layer(x, logits, num_tokens_per_rank=counts)  # eager warm-up (NCCL communicators, workspace)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        layer(x, logits, num_tokens_per_rank=counts)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer(x, logits, num_tokens_per_rank=counts)
    x.copy_(fresh.hidden_states[mine])
    logits.copy_(fresh.routing_logits[mine])
    graph.replay()
    expected = layer(x.clone(), logits.clone(), num_tokens_per_rank=counts)
    torch.cuda.synchronize()
    assert torch.equal(captured, expected), f"graph replay differs from eager (rank {rank}, seed {seed})"


def main_gpu(rank: int, world: int, init_file: str, seed: int) -> None:
    """Entry point of one spawned CUDA (nccl) process: rank r on GPU r."""
    init(rank, world, init_file, "nccl")
    try:
        for index, case in enumerate(cases(world)):
            if case.routing.startswith("cancel"):
                continue  # about the CPU's bitwise order; the GPU check is the tolerance rule
            for mode in fdist.MODES:
                check_case(case, mode, seed + index, device=f"cuda:{rank}")
        check_graph_capture(seed)
    finally:
        dist.destroy_process_group()


def check_fp8(seed: int) -> None:
    """The FP8 block-scale variant in both modes (docs/distributed.md "FP8 experts"): against
    the single-process FP8 operator on the whole problem, bitwise where the BF16 layer is bitwise
    (all-to-all; all-gather with K == 1), within the rounding bound of the ordered fp32 partials
    for the all-gather with K = 2. Also its errors."""
    rank, world = dist.get_rank(), dist.get_world_size()
    hidden, inter, experts = 256, 128, 8  # FP8 blocks: H and I multiples of 128
    generator = torch.Generator().manual_seed(seed)
    counts = {2: [5, 0], 4: [3, 0, 4, 2]}[world]
    total = sum(counts)
    x = torch.randn(total, hidden, generator=generator).to(torch.bfloat16)
    logits = torch.randn(total, experts, generator=generator)
    w1, s1 = fp8.quantize_fp8_weights(torch.randn(experts, 2 * inter, hidden, generator=generator) / 16)
    w2, s2 = fp8.quantize_fp8_weights(torch.randn(experts, hidden, inter, generator=generator) / 12)
    num_local = experts // world
    mine_experts = slice(rank * num_local, (rank + 1) * num_local)
    mine = rank_slice(counts, rank)
    where = f"fp8, rank {rank}/{world}, seed {seed}"

    def layer(mode, top_k, method, **kwargs):
        return fusedmoe.ExpertParallelMoE(
            None, w1[mine_experts].contiguous(), w2[mine_experts].contiguous(), experts, top_k,
            inter, mode=mode, routing_method_type=method,
            gemm1_weights_scale=s1[mine_experts].contiguous(),
            gemm2_weights_scale=s2[mine_experts].contiguous(), **kwargs,
        )

    for top_k, method in ((2, 1), (1, 3)):
        single = fusedmoe.trtllm_fp8_block_scale_moe(
            logits, None, x, None, w1, s1, w2, s2, experts, top_k, None, None, inter, 0, experts,
            None, routing_method_type=method)[mine]
        for mode in fdist.MODES:
            ours = layer(mode, top_k, method)(x[mine].contiguous(), logits[mine].contiguous())
            assert ours.shape == single.shape and ours.dtype == torch.bfloat16, where
            if mode == "alltoall" or top_k == 1:
                different = (ours.view(torch.int16) != single.view(torch.int16)).sum().item()
                assert different == 0, f"{different} elements differ ({where}, {mode}, K {top_k})"
            elif single.numel():
                bound = 2.0**-7 * single.double().abs() + 1e-6 * single.double().abs().max()
                assert ((ours.double() - single.double()).abs() <= bound).all(), f"{where}, {mode}"
    # Both modes move e4m3 rows with their scales: 1 byte per value, and 4 bytes of scale per
    # 128 values (so the two dispatches' bytes are in the ratio 32 : 1).
    for mode in fdist.MODES:
        logged = layer(mode, 2, 1)
        logged.collective_log = []
        logged(x[mine].contiguous(), logits[mine].contiguous())
        by_name = {record.name: record for record in logged.collective_log}
        rows_record, scales_record = by_name["dispatch_hidden"], by_name["dispatch_hidden_scale"]
        assert rows_record.bytes_sent == 32 * scales_record.bytes_sent, f"{where}, {mode}"
        assert rows_record.bytes_received == 32 * scales_record.bytes_received, f"{where}, {mode}"
        assert mode == "alltoall" or rows_record.bytes_received > 0, f"{where}, {mode}"
    # Routed input (ids, fp32 weights), all-to-all: bitwise.
    ids = torch.stack([torch.randperm(experts, generator=generator)[:2] for _ in range(total)])
    pair = (ids.to(torch.int32), torch.rand(total, 2, generator=generator) + 0.1)
    single = fusedmoe.trtllm_fp8_block_scale_routed_moe(
        pair, None, x, None, w1, s1, w2, s2, experts, 2, None, None, inter, 0, experts, None)[mine]
    ours = layer("alltoall", 2, 1)(x[mine].contiguous(),
                                  topk_ids=tuple(t[mine].contiguous() for t in pair))
    assert torch.equal(ours.view(torch.int16), single.view(torch.int16)), f"{where}, routed"

    # Errors, raised on every rank: a scale missing, a scale with bf16 weights, FP8 with the
    # weights on the input.
    w1_local, w2_local = w1[mine_experts].contiguous(), w2[mine_experts].contiguous()
    expect_error(TypeError, "gemm2_weights_scale", fusedmoe.ExpertParallelMoE, None, w1_local,
                 w2_local, experts, 2, inter, gemm1_weights_scale=s1[mine_experts].contiguous())
    bf16_w1 = torch.zeros(num_local, 2 * inter, hidden, dtype=torch.bfloat16)
    bf16_w2 = torch.zeros(num_local, hidden, inter, dtype=torch.bfloat16)
    expect_error(ValueError, "gemm1_weights_scale", fusedmoe.ExpertParallelMoE, None, bf16_w1,
                 bf16_w2, experts, 2, inter, gemm1_weights_scale=s1[mine_experts].contiguous())
    expect_error(ValueError, "use_routing_scales_on_input", fusedmoe.ExpertParallelMoE, None,
                 w1_local, w2_local, experts, 1, inter, routing_method_type=3,
                 use_routing_scales_on_input=True,
                 gemm1_weights_scale=s1[mine_experts].contiguous(),
                 gemm2_weights_scale=s2[mine_experts].contiguous())


def main(rank: int, world: int, init_file: str, seed: int, with_errors: bool) -> None:
    """Entry point of one spawned CPU (gloo) process."""
    init(rank, world, init_file, "gloo")
    try:
        for index, case in enumerate(cases(world)):
            for mode in fdist.MODES:
                check_case(case, mode, seed + index)
        check_collective_log(seed)
        check_fp8(seed)
        if with_errors:
            check_errors(seed)
    finally:
        dist.destroy_process_group()
