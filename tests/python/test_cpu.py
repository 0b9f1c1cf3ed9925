"""The Python API end to end on CPU tensors (the CPU reference behind it): runs in CI."""

import re

import pytest
import torch

import fusedmoe
import reference_moe as ref
from conftest import poison
from moe_cases import METHOD_PARAMS, replay_buffer, routing_kwargs, run_logits, run_routed

H, I, E = 64, 32, 16


def make(num_tokens, method=0, generator=None, logits_dtype=torch.float32, bias_dtype=torch.float32):
    params = METHOD_PARAMS[method]
    return ref.make_problem(
        num_tokens, H, I, E, params["top_k"], logits_dtype,
        bias_dtype if params.get("bias") else None, generator,
    )


def expected_routing(problem, method):
    routing = routing_kwargs(method)
    return ref.route(
        problem.routing_logits, problem.routing_bias, method, problem.top_k,
        routing["n_group"] or 0, routing["topk_group"] or 0, routing["routed_scaling_factor"] or 1.0,
    )


# ---- every routing method against the float64 reference -----------------------------------------
@pytest.mark.parametrize("method", list(fusedmoe.RoutingMethod))
@pytest.mark.parametrize("num_tokens", [1, 19])
def test_every_method_matches_reference(method, num_tokens, generator):
    # Alternate the logits / bias dtypes so both are exercised for every method across the grid.
    logits_dtype = torch.bfloat16 if (int(method) + num_tokens) % 2 else torch.float32
    problem = make(num_tokens, method, generator, logits_dtype, torch.bfloat16)
    ids, weights = expected_routing(problem, method)

    replay = replay_buffer(problem)
    gemm2_output, expert_weights, permuted = run_logits(
        problem, method, do_finalize=False, routing_replay_out=replay
    )
    assert torch.equal(replay.long(), ids), f"selected ids differ (seed {problem.seed})"
    ref.assert_weights_match(expert_weights, weights, problem.seed)

    output = run_logits(problem, method, routing_replay_out=replay_buffer(problem))
    assert output.shape == (num_tokens, H) and output.dtype == torch.bfloat16
    ref.assert_close_to_reference(
        output, problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights, ids,
        expert_weights, seed=problem.seed,
    )


@pytest.mark.parametrize("num_tokens", [0, 7])
def test_default_method_is_the_default(num_tokens, generator):
    problem = make(num_tokens, 0, generator)
    w1, w2 = problem.gemm1_weights, problem.gemm2_weights
    output = fusedmoe.trtllm_bf16_moe(
        problem.routing_logits, None, problem.hidden_states, w1, w2, E, problem.top_k, None, None,
        I, 0, E,
    )
    assert output.shape == (num_tokens, H)
    if num_tokens:
        assert torch.equal(output, run_logits(problem, 0)), f"seed {problem.seed}"
        ids, _ = expected_routing(problem, 0)
        _, expert_weights, _ = run_logits(problem, 0, do_finalize=False)
        ref.assert_close_to_reference(output, problem.hidden_states, w1, w2, ids, expert_weights,
                                      seed=problem.seed)


def test_all_tokens_on_one_expert(generator):
    problem = make(7, 5, generator)
    problem.routing_logits[:, 3] = 50.0  # TopK: expert 3 first for every token
    ids, _ = expected_routing(problem, 5)
    assert (ids[:, 0] == 3).all()
    _, expert_weights, _ = run_logits(problem, 5, do_finalize=False)
    ref.assert_close_to_reference(
        run_logits(problem, 5), problem.hidden_states, problem.gemm1_weights,
        problem.gemm2_weights, ids, expert_weights, seed=problem.seed,
    )


# ---- routed input --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [0, 2, 7])
def test_routed_matches_logits_bitwise(method, generator):
    problem = make(19, method, generator)
    replay = replay_buffer(problem)
    _, expert_weights, _ = run_logits(problem, method, do_finalize=False, routing_replay_out=replay)
    ids = replay.to(torch.int32)
    from_logits = run_logits(problem, method)

    packed = fusedmoe.pack_topk(ids, expert_weights)
    routed_replay = replay_buffer(problem)
    from_packed = run_routed(problem, packed, routing_replay_out=routed_replay)
    from_pair = run_routed(problem, (ids, expert_weights))
    assert torch.equal(from_packed, from_logits), f"packed routed != logits (seed {problem.seed})"
    assert torch.equal(from_pair, from_logits), f"(ids, weights) routed != logits (seed {problem.seed})"
    assert torch.equal(routed_replay, replay)


def test_routed_fp32_weights_stay_fp32(generator):
    problem = make(19, 0, generator)
    ids = torch.stack([torch.randperm(E, generator=generator)[:4] for _ in range(19)]).to(torch.int32)
    weights = torch.rand(19, 4, generator=generator) + 0.1  # fp32, not bf16-representable
    gemm2_output, expert_weights, _ = run_routed(problem, (ids, weights), do_finalize=False)
    assert expert_weights.dtype == torch.float32
    assert torch.equal(expert_weights, weights)
    ref.assert_close_to_reference(
        run_routed(problem, (ids, weights)), problem.hidden_states, problem.gemm1_weights,
        problem.gemm2_weights, ids, weights, seed=problem.seed,
    )


def test_routed_negative_weights_and_out_of_range_ids(generator):
    problem = make(7, 0, generator)
    ids = torch.stack([torch.randperm(E, generator=generator)[:4] for _ in range(7)]).to(torch.int32)
    weights = (torch.randn(7, 4, generator=generator) - 0.5).to(torch.bfloat16)
    ids[2, 1] = E + 5  # out of range: contributes nothing, never read out of bounds
    ids[4, 0] = -3
    packed = fusedmoe.pack_topk(ids, weights)
    assert fusedmoe.validate_routing(packed, E) == (2 * 4 + 1, E + 5)
    assert fusedmoe.validate_routing((ids, weights), E) == (2 * 4 + 1, E + 5)
    output = run_routed(problem, packed)
    ref.assert_close_to_reference(
        output, problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights, ids, weights,
        seed=problem.seed,
    )


def test_pack_unpack_round_trip(generator):
    ids = torch.randint(-1024, 1024, (9, 5), generator=generator, dtype=torch.int32)
    weights = torch.randn(9, 5, generator=generator).to(torch.bfloat16)
    weights[0, 0] = -1.0
    ids[0, 0] = 5
    packed = fusedmoe.pack_topk(ids, weights)
    assert packed.dtype == torch.int32 and packed.shape == (9, 5)
    assert packed[0, 0].item() == (5 << 16) | 0xBF80  # the mask keeps -1.0's sign out of the id
    back_ids, back_weights = fusedmoe.unpack_topk(packed)
    assert torch.equal(back_ids, ids)
    assert torch.equal(back_weights.view(torch.int16), weights.view(torch.int16))


# ---- expert parallelism --------------------------------------------------------------------------
@pytest.mark.parametrize("method", [1, 2])
def test_expert_parallel_shards_sum_to_whole(method, generator):
    problem = make(19, method, generator)
    ids, _ = expected_routing(problem, method)
    _, expert_weights, _ = run_logits(problem, method, do_finalize=False)
    total = torch.zeros(19, H, dtype=torch.float64)
    for offset in range(0, E, 4):
        shard = run_logits(problem, method, offset=offset, num_local=4)
        local = (ids >= offset) & (ids < offset + 4)
        w1 = problem.gemm1_weights[offset : offset + 4]
        w2 = problem.gemm2_weights[offset : offset + 4]
        ref.assert_close_to_reference(shard, problem.hidden_states, w1, w2, ids, expert_weights,
                                      offset, seed=problem.seed)
        no_local = ~local.any(dim=1)
        assert (shard[no_local] == 0).all(), f"a token without local slot is not zero (seed {problem.seed})"
        total += shard.double()
    ref.assert_close_to_reference(
        total, problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights, ids,
        expert_weights, seed=problem.seed, atol=4e-3,
    )


# ---- do_finalize=False -----------------------------------------------------------------------------
def test_unfinalized_shapes_order_and_reduction(generator):
    problem = make(19, 1, generator)
    num_tokens, top_k, offset, num_local = 19, problem.top_k, 4, 8
    result = run_logits(problem, 1, offset=offset, num_local=num_local, do_finalize=False)
    assert isinstance(result, list) and len(result) == 3
    gemm2_output, expert_weights, permuted = result
    capacity = fusedmoe.permuted_capacity(num_tokens, top_k, num_local)
    assert capacity == num_tokens * top_k
    assert gemm2_output.shape == (capacity, H) and gemm2_output.dtype == torch.bfloat16
    assert expert_weights.shape == (num_tokens, top_k) and expert_weights.dtype == torch.bfloat16
    assert permuted.shape == (num_tokens * top_k,) and permuted.dtype == torch.int32

    ids, _ = expected_routing(problem, 1)
    local = ((ids >= offset) & (ids < offset + num_local)).flatten()
    assert (permuted[~local] == -1).all()
    rows = permuted[local]
    assert torch.equal(rows.sort().values, torch.arange(int(local.sum()), dtype=torch.int32))
    # Rows are expert-sorted, slots ascending within an expert (DESIGN "Permutation").
    slots = torch.nonzero(local).flatten()
    order = sorted(slots.tolist(), key=lambda s: (int(ids.flatten()[s]), s))
    assert [int(permuted[s]) for s in order] == list(range(len(order)))

    # out[t] = bf16(sum over local k, ascending, of fp32(w) * fp32(y)): bitwise the finalized output.
    finalized = run_logits(problem, 1, offset=offset, num_local=num_local)
    acc = torch.zeros(num_tokens, H, dtype=torch.float32)
    for k in range(top_k):
        slot_rows = permuted.view(num_tokens, top_k)[:, k]
        has = slot_rows >= 0
        acc[has] += expert_weights[has, k, None].float() * gemm2_output[slot_rows[has].long()].float()
    assert torch.equal(acc.to(torch.bfloat16), finalized), f"seed {problem.seed}"


def test_output_in_place_and_replay(generator):
    problem = make(7, 2, generator)
    output = poison(torch.empty(7, H, dtype=torch.bfloat16))
    replay = replay_buffer(problem)
    returned = run_logits(problem, 2, output=output, routing_replay_out=replay)
    assert returned is output
    assert torch.equal(output, run_logits(problem, 2)), f"seed {problem.seed}"
    ids, _ = expected_routing(problem, 2)
    assert torch.equal(replay.long(), ids)


def test_fp32_expert_weights_on_request(generator):
    problem = make(7, 6, generator)
    _, weights = expected_routing(problem, 6)
    _, expert_weights, _ = run_logits(problem, 6, do_finalize=False, expert_weights_dtype=torch.float32)
    assert expert_weights.dtype == torch.float32
    assert torch.allclose(expert_weights, weights, rtol=1e-5, atol=1e-7), f"seed {problem.seed}"


def test_reruns_are_bitwise_identical(generator):
    problem = make(19, 0, generator)
    assert torch.equal(run_logits(problem, 0), run_logits(problem, 0))


def test_prepare_weights_returns_canonical(generator):
    problem = make(1, 0, generator)
    w1, w2 = fusedmoe.prepare_weights(problem.gemm1_weights, problem.gemm2_weights)
    assert w1 is problem.gemm1_weights and w2 is problem.gemm2_weights
    with pytest.raises(ValueError, match="gemm2_weights"):
        fusedmoe.prepare_weights(problem.gemm1_weights, problem.gemm2_weights[:, :, :8].contiguous())
    with pytest.raises(ValueError, match="weight_layout"):
        fusedmoe.prepare_weights(problem.gemm1_weights, problem.gemm2_weights, weight_layout=2)


def test_prepare_weights_returns_what_is_already_canonical_as_is(generator):
    # As documented: a tensor needing no reordering or transposing comes back itself (no copy),
    # whatever the options; the others as new contiguous canonical tensors.
    problem = make(1, 0, generator)
    w1, w2 = problem.gemm1_weights, problem.gemm2_weights
    half = w1.shape[1] // 2
    gate_up = torch.cat([w1[:, half:], w1[:, :half]], 1)  # the checkpoint's [gate; up] rows
    c1, c2 = fusedmoe.prepare_weights(gate_up, w2, gate_up="gate_up")
    assert c2 is w2 and c1.data_ptr() != gate_up.data_ptr() and torch.equal(c1, w1)
    up = w1[:, :half].contiguous()
    n1, n2 = fusedmoe.prepare_weights(up, w2, gated=False)
    assert n1 is up and n2 is w2
    t1, t2 = fusedmoe.prepare_weights(up.transpose(1, 2).contiguous(), w2.transpose(1, 2).contiguous(),
                                      gated=False, transposed=True)
    assert torch.equal(t1, up) and torch.equal(t2, w2) and t1.is_contiguous() and t2.is_contiguous()


def test_routing_method_enum_numbering():
    names = ["Default", "Renormalize", "DeepSeekV3", "Llama4", "RenormalizeNaive", "TopK",
             "SigmoidRenorm", "MiniMax2", "Sigmoid", "TopKSigmoid"]
    assert [(m.name, int(m)) for m in fusedmoe.RoutingMethod] == [(n, i) for i, n in enumerate(names)]


# ---- errors name the argument, before anything is written -------------------------------------------
def _bad_calls():
    """(id, mutation of the keyword arguments, exception type, the argument the message starts
    with). Rules the C++ layer checks come back with the extension's prefix "fusedmoe: " and the
    C++ argument's name (e.g. "fusedmoe: shape.top_k: expected 1 for the Llama4 ...")."""
    t = lambda *shape, dtype=torch.bfloat16: torch.randn(*shape).to(dtype)  # noqa: E731
    return [
        ("hidden_dtype", dict(hidden_states=t(7, H, dtype=torch.float32)), TypeError, "hidden_states"),
        ("hidden_noncontig", dict(hidden_states=t(H, 7).T), ValueError, "hidden_states"),
        ("hidden_size", dict(hidden_states=t(7, H + 4)), ValueError, "hidden_states"),
        ("gemm1_shape", dict(gemm1_weights=t(E, I, H)), ValueError, "gemm1_weights"),
        ("gemm2_dtype", dict(gemm2_weights=t(E, H, I, dtype=torch.float16)), TypeError, "gemm2_weights"),
        ("gemm2_strided", dict(gemm2_weights=t(E, I, H).transpose(1, 2)), ValueError, "gemm2_weights"),
        ("logits_shape", dict(routing_logits=t(7, E + 1)), ValueError, "routing_logits"),
        ("logits_dtype", dict(routing_logits=t(7, E, dtype=torch.float16)), TypeError, "routing_logits"),
        ("logits_device", dict(routing_logits=torch.empty(7, E, device="meta")), ValueError, "routing_logits"),
        ("bias_shape", dict(routing_bias=t(E - 1)), ValueError, "routing_bias"),
        ("not_tensor", dict(hidden_states=[[1.0]]), TypeError, "hidden_states"),
        ("top_k_zero", dict(top_k=0), ValueError, "top_k"),
        ("top_k_big", dict(top_k=33), ValueError, "top_k"),
        ("num_experts", dict(num_experts=2000), ValueError, "num_experts"),
        ("intermediate", dict(intermediate_size=I + 8), ValueError, "gemm1_weights"),
        ("intermediate_mult", dict(intermediate_size=I + 1), ValueError, "intermediate_size"),
        ("offset", dict(local_expert_offset=4), ValueError, "local_expert_offset"),
        ("method", dict(routing_method_type=42), ValueError, "routing_method_type"),
        ("shuffled", dict(use_shuffled_weight=True), ValueError, "use_shuffled_weight"),
        ("layout", dict(weight_layout=2), ValueError, "weight_layout"),
        ("activation", dict(activation_type=5), ValueError, "activation_type"),
        ("norm_topk", dict(norm_topk_prob=False), ValueError, "norm_topk_prob"),
        ("replay_dtype", dict(routing_replay_out=torch.zeros(7, 4, dtype=torch.int32)), TypeError,
         "routing_replay_out"),
        ("output_shape", dict(output=torch.zeros(7, H + 8, dtype=torch.bfloat16)), ValueError, "output"),
        ("output_unfinalized", dict(output=torch.zeros(7, H, dtype=torch.bfloat16), do_finalize=False),
         ValueError, "output"),
        ("workspace_cpu", dict(workspace=torch.zeros(64, dtype=torch.uint8)), ValueError,
         "workspace_buffer"),
        # C++ Status -> ValueError
        ("llama4_k", dict(routing_method_type=3), ValueError, "fusedmoe: shape.top_k"),
        ("n_group", dict(routing_method_type=2, n_group=3, topk_group=1), ValueError,
         "fusedmoe: logits.n_group"),
        ("topk_group", dict(routing_method_type=2, n_group=4, topk_group=5), ValueError,
         "fusedmoe: logits.topk_group"),
    ]


@pytest.mark.parametrize("mutation,error,argument", [c[1:] for c in _bad_calls()],
                         ids=[c[0] for c in _bad_calls()])
def test_errors_name_the_argument(mutation, error, argument, generator):
    problem = make(7, 0, generator)
    kwargs = dict(
        routing_logits=problem.routing_logits, routing_bias=None,
        hidden_states=problem.hidden_states, gemm1_weights=problem.gemm1_weights,
        gemm2_weights=problem.gemm2_weights, num_experts=E, top_k=4, n_group=None,
        topk_group=None, intermediate_size=I, local_expert_offset=0, local_num_experts=E,
    )
    # Every rejected call gets poisoned outputs (its own when the mutation brings one) and must
    # leave them, and every input tensor, exactly as they were (issue 7).
    kwargs.update(mutation)
    if "output" in mutation:
        poison(kwargs["output"])
    elif kwargs.get("do_finalize", True):
        kwargs["output"] = poison(torch.empty(7, H, dtype=torch.bfloat16))
    if "routing_replay_out" not in mutation:
        kwargs["routing_replay_out"] = torch.full((7, 4), -12345, dtype=torch.int16)
    outputs = {k: v.clone() for k, v in kwargs.items()
               if k in ("output", "routing_replay_out") and isinstance(v, torch.Tensor)}
    inputs = {k: v.clone() for k, v in kwargs.items()
              if isinstance(v, torch.Tensor) and k not in outputs and v.device.type == "cpu"}
    with pytest.raises(error, match=_starts_with(argument)):
        fusedmoe.trtllm_bf16_moe(**kwargs)
    for name, before in {**outputs, **inputs}.items():
        assert torch.equal(_bits(kwargs[name]), _bits(before)), f"a rejected call wrote {name}"


def _starts_with(argument: str) -> str:
    """The pattern of a message that starts with ``argument`` and its colon (pytest.raises'
    ``match`` searches anywhere: a name mentioned later in another argument's message must not
    pass)."""
    return "^" + re.escape(argument) + ":"


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor reinterpreted as integers of its width, so NaN payloads compare bit for bit."""
    if not tensor.is_floating_point():
        return tensor
    return tensor.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def test_cpp_status_error_leaves_output_untouched(generator):
    problem = make(7, 0, generator)
    output = poison(torch.empty(7, H, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=_starts_with("fusedmoe: shape.top_k")):  # C++ (Llama4, K=4)
        run_logits(problem, 3, output=output)
    assert output.isnan().all()


@pytest.mark.parametrize(
    "topk_ids,error,argument",
    [
        ("wrong_dtype", TypeError, "topk_ids"),
        ("wrong_shape", ValueError, "topk_ids"),
        ("triple", ValueError, "topk_ids"),
        ("weights_dtype", TypeError, "topk_weights"),
        ("lora", ValueError, "gemm1_lora_delta"),
    ],
)
def test_routed_errors_name_the_argument(topk_ids, error, argument, generator):
    problem = make(7, 0, generator)
    ids = torch.randint(0, E, (7, 4), generator=generator, dtype=torch.int32)
    weights = torch.rand(7, 4, generator=generator).to(torch.bfloat16)
    routing, extra = {
        "wrong_dtype": (ids.long(), {}),
        "wrong_shape": (ids[:, :3].contiguous(), {}),
        "triple": ((ids, weights, weights), {}),
        "weights_dtype": ((ids, weights.half()), {}),
        "lora": (fusedmoe.pack_topk(ids, weights), dict(gemm1_lora_delta=torch.zeros(1))),
    }[topk_ids]
    with pytest.raises(error, match=_starts_with(argument)):
        run_routed(problem, routing, **extra)


# ---- pack_topk: ids the 16-bit field cannot hold --------------------------------------------------
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_pack_topk_ids_outside_int16_contribute_nothing(ids_dtype, generator):
    problem = make(7, 0, generator)
    ids = torch.stack([torch.randperm(E, generator=generator)[:4] for _ in range(7)]).to(ids_dtype)
    weights = torch.rand(7, 4, generator=generator).to(torch.bfloat16) + 0.25
    huge = [65537, 40000, -(2**15) - 1, 2**16 + 3]  # wrapped, they would read as experts 1, ...
    if ids_dtype == torch.int64:
        huge += [2**31 + 2, 2**32 + 5, -(2**40)]
    far = ids.clone()
    slots = [(t, k) for t in range(7) for k in range(4)][: len(huge)]
    for (t, k), value in zip(slots, huge):
        far[t, k] = value
    packed = fusedmoe.pack_topk(far, weights)
    back_ids, back_weights = fusedmoe.unpack_topk(packed)
    expected = ids.to(torch.int32).clone()
    for t, k in slots:
        expected[t, k] = -1  # an id outside [0, E): routed nowhere
    assert torch.equal(back_ids, expected), back_ids
    assert torch.equal(back_weights.view(torch.int16), weights.view(torch.int16))
    # The ids at the int16 limits are kept as they are (they are outside [0, E) anyway).
    edges = torch.tensor([[2**15 - 1, -(2**15)]], dtype=ids_dtype)
    edge_ids, _ = fusedmoe.unpack_topk(fusedmoe.pack_topk(edges, torch.ones(1, 2)))
    assert edge_ids.tolist() == [[2**15 - 1, -(2**15)]]
    # Those slots contribute nothing: the output is the one with the slots' ids set to -1.
    output = run_routed(problem, packed)
    assert torch.equal(output, run_routed(problem, (expected, weights)))
    ref.assert_close_to_reference(
        output, problem.hidden_states, problem.gemm1_weights, problem.gemm2_weights, expected,
        weights, seed=problem.seed,
    )


# ---- workspace_size and reserve_workspace ---------------------------------------------------------
_SIZES = dict(num_tokens=16, hidden_size=H, intermediate_size=I, num_experts=E, top_k=4)


@pytest.mark.parametrize("change,error,message", [
    (dict(num_experts=2**32 + E), ValueError, r"^num_experts: expected in \[1, 1024\], got 4294967312"),
    (dict(num_experts=2000), ValueError, "^num_experts: expected in"),
    (dict(top_k=2**32 + 4), ValueError, "^top_k: expected in"),
    (dict(top_k=E + 1), ValueError, "^top_k: expected in"),
    (dict(local_num_experts=2**32 + 4), ValueError, "^local_num_experts: expected in"),
    (dict(local_expert_offset=2**32), ValueError, "^local_expert_offset: expected in"),
    (dict(local_expert_offset=4, local_num_experts=E - 3), ValueError, "^local_expert_offset: expected in"),
    (dict(num_tokens=-1), ValueError, "^num_tokens: expected in"),
    (dict(num_tokens=2**64), ValueError, "^num_tokens: expected in"),
    (dict(hidden_size=0), ValueError, "^hidden_size: expected in"),
    (dict(hidden_size=64.0), TypeError, "^hidden_size: expected an int, got float"),
    (dict(intermediate_size="32"), TypeError, "^intermediate_size: expected an int, got str"),
    (dict(num_experts=16.0), TypeError, "^num_experts: expected an int, got float"),
    (dict(top_k=True), TypeError, "^top_k: expected an int, got bool"),
    (dict(local_num_experts=8.0), TypeError, "^local_num_experts: expected an int, got float"),
])
def test_workspace_size_checks_every_integer(change, error, message):
    with pytest.raises(error, match=message):
        fusedmoe.workspace_size(**{**_SIZES, **change})


def test_workspace_size_of_valid_sizes():
    bf16 = fusedmoe.workspace_size(**_SIZES)
    fp8_sizes = dict(_SIZES, hidden_size=256, intermediate_size=128)
    assert bf16 > 0
    assert fusedmoe.workspace_size(**_SIZES, local_expert_offset=4, local_num_experts=4) > 0
    assert (fusedmoe.workspace_size(**fp8_sizes, weights_dtype=torch.float8_e4m3fn)
            > fusedmoe.workspace_size(**fp8_sizes))


def test_reserve_workspace_sizes_fp8_calls(monkeypatch):
    # No GPU here: the allocation is recorded instead of made (the device is only named).
    drawn = []
    monkeypatch.setattr(fusedmoe._ops, "call_scratch", lambda device, size: drawn.append((device, size)))
    sizes = (32, 256, 128, E, 2, 2, 4)
    fp8_bytes = fusedmoe.workspace_size(*sizes, weights_dtype=torch.float8_e4m3fn)
    bf16_bytes = fusedmoe.workspace_size(*sizes)
    assert fp8_bytes > bf16_bytes
    assert fusedmoe.reserve_workspace(*sizes, "cuda:0", weights_dtype=torch.float8_e4m3fn) == fp8_bytes
    assert fusedmoe.reserve_workspace(*sizes, "cuda:0") == bf16_bytes
    assert drawn == [(torch.device("cuda", 0), fp8_bytes), (torch.device("cuda", 0), bf16_bytes)]
    with pytest.raises(ValueError, match="^weights_dtype: expected"):
        fusedmoe.reserve_workspace(*sizes, "cuda:0", weights_dtype=torch.float16)
    assert len(drawn) == 2, "a rejected call drew scratch"


def test_expert_parallel_reserve_workspace_sizes_fp8_weights(monkeypatch):
    # ExpertParallelMoE.reserve_workspace passes its weights' dtype: an FP8 layer (attributes set
    # as the constructor sets them; its collectives are tested in test_distributed.py) reserves
    # what its FP8 calls need. No GPU: the allocation is recorded.
    from fusedmoe import distributed as fdist

    drawn = []
    monkeypatch.setattr(fusedmoe._ops, "call_scratch", lambda device, size: drawn.append(size))
    layer = object.__new__(fdist.ExpertParallelMoE)
    layer.device, layer.world_size, layer.mode = torch.device("cuda", 0), 2, "allgather"
    layer.hidden_size, layer.intermediate_size, layer.num_experts, layer.top_k = 256, 128, E, 2
    layer.local_expert_offset, layer.local_num_experts = 4, 4
    for dtype in (torch.float8_e4m3fn, torch.bfloat16):
        layer.gemm1_weights = torch.empty(4, 256, 256, dtype=dtype)
        expected = fusedmoe.workspace_size(2 * 16, 256, 128, E, 2, 4, 4, weights_dtype=dtype)
        assert layer.reserve_workspace(16) == expected and drawn[-1] == expected
    assert drawn[0] > drawn[1]


# ---- options of the entry points: enable_pdl, routed_scaling_factor, weight_layout ----------------
def _spy_launch(monkeypatch):
    """Records the enable_pdl value each call hands to the C++ layer."""
    seen = []
    original = fusedmoe._ops._launch

    def spy(*args):
        seen.append(args[25])  # _launch's enable_pdl
        return original(*args)

    monkeypatch.setattr(fusedmoe._ops, "_launch", spy)
    return seen


def test_enable_pdl_none_means_true_on_every_entry_point(monkeypatch, generator):
    problem = make(5, 0, generator)
    ids = torch.stack([torch.randperm(E, generator=generator)[:4] for _ in range(5)]).to(torch.int32)
    weights = torch.rand(5, 4, generator=generator).to(torch.bfloat16)
    # The FP8 variant: 8 experts, H 256, I 128, K 2.
    w1, s1 = fusedmoe.fp8.quantize_fp8_weights(torch.randn(8, 256, 256, generator=generator) / 16)
    w2, s2 = fusedmoe.fp8.quantize_fp8_weights(torch.randn(8, 256, 128, generator=generator) / 11)
    x = torch.randn(5, 256, generator=generator).to(torch.bfloat16)
    logits = torch.randn(5, 8, generator=generator)
    fp8_ids = torch.stack([torch.randperm(8, generator=generator)[:2] for _ in range(5)]).to(torch.int32)
    fp8_weights = weights[:, :2].contiguous()
    calls = {
        "bf16": lambda pdl: run_logits(problem, 0, enable_pdl=pdl),
        "bf16_routed": lambda pdl: run_routed(problem, (ids, weights), enable_pdl=pdl),
        "fp8": lambda pdl: fusedmoe.trtllm_fp8_block_scale_moe(
            logits, None, x, None, w1, s1, w2, s2, 8, 2, None, None, 128, 0, 8, None, enable_pdl=pdl),
        "fp8_routed": lambda pdl: fusedmoe.trtllm_fp8_block_scale_routed_moe(
            (fp8_ids, fp8_weights), None, x, None, w1, s1, w2, s2, 8, 2, None,
            None, 128, 0, 8, None, enable_pdl=pdl),
    }
    seen = _spy_launch(monkeypatch)
    for name, call in calls.items():
        outputs = [call(pdl) for pdl in (None, True, False)]
        assert seen[-3:] == [True, True, False], name
        assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2]), name
        for bad in ("yes", 1, 0.0):
            with pytest.raises(TypeError, match="^enable_pdl: expected a bool or None, got "):
                call(bad)
        assert len(seen) == 3 * (list(calls).index(name) + 1), f"{name}: a rejected call ran"


@pytest.mark.parametrize("value,error,message", [
    ("2.5", TypeError, "^routed_scaling_factor: expected a float or None, got str"),
    ("abc", TypeError, "^routed_scaling_factor: expected a float or None, got str"),
    (True, TypeError, "^routed_scaling_factor: expected a float or None, got bool"),
    (torch.tensor(2.5), TypeError, "^routed_scaling_factor: expected a float or None, got Tensor"),
])
def test_routed_scaling_factor_must_be_a_number(value, error, message, generator):
    problem = make(5, 2, generator)
    output = poison(torch.empty(5, H, dtype=torch.bfloat16))
    with pytest.raises(error, match=message):
        _deepseek_call(problem, value, output=output)
    assert output.isnan().all(), "a rejected call wrote its output"


def test_routed_scaling_factor_int_is_its_float(generator):
    problem = make(5, 2, generator)
    assert torch.equal(_deepseek_call(problem, 2), _deepseek_call(problem, 2.0))
    assert not torch.equal(_deepseek_call(problem, 2), _deepseek_call(problem, 1.0))


def _deepseek_call(problem, routed_scaling_factor, **kwargs):
    routing = routing_kwargs(2)
    return fusedmoe.trtllm_bf16_moe(
        problem.routing_logits, problem.routing_bias, problem.hidden_states, problem.gemm1_weights,
        problem.gemm2_weights, E, problem.top_k, routing["n_group"], routing["topk_group"], I, 0, E,
        routed_scaling_factor=routed_scaling_factor, routing_method_type=2, **kwargs)


@pytest.mark.parametrize("value,error,message", [
    (None, TypeError, "^weight_layout: expected an int or WeightLayout, got NoneType"),
    ("0", TypeError, "^weight_layout: expected an int or WeightLayout, got str"),
    (1.0, TypeError, "^weight_layout: expected an int or WeightLayout, got float"),
    (2, ValueError, r"^weight_layout: expected WeightLayout.Canonical \(0\), got 2"),
])
def test_weight_layout_errors_name_it(value, error, message, generator):
    problem = make(5, 0, generator)
    with pytest.raises(error, match=message):
        run_logits(problem, 0, weight_layout=value)
    with pytest.raises(error, match=message):
        fusedmoe.prepare_weights(problem.gemm1_weights, problem.gemm2_weights, value)
