"""Checkpoint layouts: fusedmoe.prepare_weights / prepare_gemm1_bias against hand-built tensors (CPU)."""

import pytest
import torch

import fusedmoe
from fusedmoe import _layouts

E, I, H = 3, 16, 24


def _experts(generator, dtype=torch.bfloat16):
    """Random per-expert up [E, I, H], gate [E, I, H] and down [E, H, I] projections (y = W @ x)."""
    randn = lambda *shape: torch.randn(*shape, generator=generator).to(dtype)  # noqa: E731
    return randn(E, I, H), randn(E, I, H), randn(E, H, I)


def _checkpoint_gemm1(up, gate, gate_up, transposed):
    """The stored gemm1, built independently of the code under test."""
    if gate_up == "up_gate":
        rows = torch.cat([up, gate], 1)
    elif gate_up == "gate_up":
        rows = torch.cat([gate, up], 1)
    else:
        rows = torch.empty(E, 2 * I, H, dtype=up.dtype)
        rows[:, 0::2], rows[:, 1::2] = gate, up
    return rows.transpose(1, 2).contiguous() if transposed else rows


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("gate_up", ["up_gate", "gate_up", "interleaved"])
def test_gated_layouts_convert_to_canonical(gate_up, transposed, generator):
    up, gate, down = _experts(generator)
    gemm1 = _checkpoint_gemm1(up, gate, gate_up, transposed)
    gemm2 = down.transpose(1, 2).contiguous() if transposed else down
    w1, w2 = fusedmoe.prepare_weights(gemm1, gemm2, gate_up=gate_up, transposed=transposed)
    assert torch.equal(w1, torch.cat([up, gate], 1)) and torch.equal(w2, down)
    assert w1.is_contiguous() and w2.is_contiguous() and w1.dtype == w2.dtype == torch.bfloat16
    # Inverse (used by restore_layout): bit for bit back to the checkpoint.
    assert torch.equal(_layouts.to_checkpoint_gemm1(w1, gate_up, transposed, True), gemm1)
    assert torch.equal(_layouts.to_checkpoint_gemm2(w2, transposed), gemm2)


def test_gpt_oss_convention_gate_is_even_columns_of_x_at_w(generator):
    # transformers' GPT-OSS: gate_up = x @ gate_up_proj[e] ([H, 2I]); gate, up = gate_up[..., ::2],
    # gate_up[..., 1::2]. The canonical rows must give the same gate and up projections.
    stored = torch.randn(E, H, 2 * I, generator=generator).to(torch.bfloat16)
    down = torch.randn(E, I, H, generator=generator).to(torch.bfloat16)
    x = torch.randn(5, H, generator=generator).to(torch.bfloat16).double()
    w1, w2 = fusedmoe.prepare_weights(stored, down, gate_up="interleaved", transposed=True)
    for e in range(E):
        theirs = x @ stored[e].double()
        ours = x @ w1[e].double().T  # canonical: [up; gate] rows
        assert torch.equal(ours[:, :I], theirs[:, 1::2]) and torch.equal(ours[:, I:], theirs[:, ::2])
        assert torch.equal(w2[e], down[e].T)


@pytest.mark.parametrize("transposed", [False, True])
def test_non_gated_layouts(transposed, generator):
    up, _, down = _experts(generator)
    gemm1 = up.transpose(1, 2).contiguous() if transposed else up
    gemm2 = down.transpose(1, 2).contiguous() if transposed else down
    w1, w2 = fusedmoe.prepare_weights(gemm1, gemm2, transposed=transposed, gated=False)
    assert torch.equal(w1, up) and torch.equal(w2, down) and w1.is_contiguous()
    assert torch.equal(_layouts.to_checkpoint_gemm1(w1, "up_gate", transposed, False), gemm1)


def test_canonical_input_is_returned_unchanged(generator):
    up, gate, down = _experts(generator)
    w1 = torch.cat([up, gate], 1)
    got1, got2 = fusedmoe.prepare_weights(w1, down)
    assert got1 is w1 and got2 is down


def test_non_contiguous_checkpoints_are_accepted(generator):
    up, gate, down = _experts(generator)
    gemm1 = torch.cat([gate, up], 1).transpose(1, 2)  # a transposed view, never made contiguous
    w1, w2 = fusedmoe.prepare_weights(gemm1, down.transpose(1, 2), gate_up="gate_up", transposed=True)
    assert torch.equal(w1, torch.cat([up, gate], 1)) and torch.equal(w2, down)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("gate_up", ["up_gate", "gate_up", "interleaved"])
def test_gemm1_bias_orders(gate_up, dtype, generator):
    up = torch.randn(E, I, generator=generator).to(dtype)
    gate = torch.randn(E, I, generator=generator).to(dtype)
    if gate_up == "up_gate":
        stored = torch.cat([up, gate], 1)
    elif gate_up == "gate_up":
        stored = torch.cat([gate, up], 1)
    else:
        stored = torch.stack([gate, up], 2).reshape(E, 2 * I)  # gate j at 2j, up j at 2j + 1
    bias = fusedmoe.prepare_gemm1_bias(stored, gate_up=gate_up)
    assert bias.dtype == dtype and bias.is_contiguous() and torch.equal(bias, torch.cat([up, gate], 1))
    assert torch.equal(_layouts.to_checkpoint_gemm1_bias(bias, gate_up, True), stored)
    assert torch.equal(fusedmoe.prepare_gemm1_bias(up, gated=False), up)


def test_prepared_weights_feed_the_operator(generator):
    # The converted GPT-OSS-style tensors are what the routed operator reads (CPU reference).
    up, gate, down = _experts(generator)
    x = torch.randn(7, H, generator=generator).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(E, generator=generator)[:2] for _ in range(7)]).to(torch.int32)
    weights = torch.rand(7, 2, generator=generator)
    w1, w2 = fusedmoe.prepare_weights(_checkpoint_gemm1(up, gate, "interleaved", True),
                                      down.transpose(1, 2), gate_up="interleaved", transposed=True)
    ours = fusedmoe.trtllm_bf16_routed_moe((ids, weights), x, w1, w2, E, 2, None, None, I, 0, E)
    canonical = fusedmoe.trtllm_bf16_routed_moe((ids, weights), x, torch.cat([up, gate], 1), down, E, 2,
                                                None, None, I, 0, E)
    assert torch.equal(ours, canonical)


@pytest.mark.parametrize("call, error, argument", [
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2, gate_up="up-gate"), ValueError, "gate_up"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2, transposed=1), TypeError, "transposed"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2, gated="no"), TypeError, "gated"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1[:, :I], w2, gated=False, gate_up="gate_up"), ValueError,
     "gate_up"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1.float(), w2, gate_up="gate_up"), TypeError, "gemm1_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2.float(), gate_up="gate_up"), TypeError, "gemm2_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1[:, :-1], w2, gate_up="gate_up"), ValueError, "gemm1_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1[0], w2, gate_up="gate_up"), ValueError, "gemm1_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2, gate_up="gate_up", transposed=True), ValueError,
     "gemm2_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2[:, :, :-8], gate_up="interleaved"), ValueError,
     "gemm2_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2.to("meta"), gate_up="gate_up"), ValueError,
     "gemm2_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, "w2", gate_up="gate_up"), TypeError, "gemm2_weights"),
    (lambda w1, w2: fusedmoe.prepare_weights(w1, w2, weight_layout=1, gate_up="gate_up"), ValueError,
     "weight_layout"),
    (lambda w1, w2: fusedmoe.prepare_gemm1_bias(w1[:, :, 0].to(torch.int32)), TypeError, "bias"),
    (lambda w1, w2: fusedmoe.prepare_gemm1_bias(w1[:, :, 0], gate_up="gateup"), ValueError, "gate_up"),
    (lambda w1, w2: fusedmoe.prepare_gemm1_bias(w1), ValueError, "bias"),
    (lambda w1, w2: fusedmoe.prepare_gemm1_bias(w1[:, :-1, 0]), ValueError, "bias"),
    (lambda w1, w2: fusedmoe.prepare_gemm1_bias([1.0]), TypeError, "bias"),
])
def test_errors_name_the_argument(call, error, argument, generator):
    up, gate, down = _experts(generator)
    with pytest.raises(error, match=rf"^{argument}:"):
        call(torch.cat([gate, up], 1), down)
