"""fusedmoe.ExpertParallelMoE on CPU tensors over gloo (2 and 4 processes): runs in CI.

Each test spawns the processes (file rendezvous in a temporary directory); every rank runs every
case of dist_worker.cases (routing methods and inputs, and the expert MLP options: GPT-OSS-like
Swiglu with biases, Relu2, Llama 4's weights on the input) in both modes and compares with the
single-process operator on the whole problem: bitwise for the all-to-all mode and for K == 1,
within the tolerance rule and a rounding bound for the all-gather mode. Ranks that pass what must
be alike differently, or whose constructor fails: every rank raises (none aborts or waits). NCCL
on GPUs: test_distributed_gpu.py.
"""

import fractions
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedmoe
import dist_worker
from fusedmoe import distributed as fdist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch built without gloo"
)


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") % (2**31 - 1000)


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_matches_single_process(world, tmp_path):
    seed = fresh_seed()
    # The error cases once, with 2 processes (they need a rank 1 and are size-independent).
    # forkserver: the processes fork from one server that imported torch and fusedmoe once
    # (spawning imports them in every process: ~2 s of CPU each).
    mp.set_forkserver_preload(["torch", "fusedmoe", "dist_worker"])
    mp.start_processes(dist_worker.main, args=(world, str(tmp_path / "rendezvous"), seed, world == 2),
                       nprocs=world, join=True, start_method="forkserver")


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_that_disagree_raise_on_every_rank(world, tmp_path):
    # Mixed routing input kinds (all-to-all, weights on the input), a stale num_tokens_per_rank
    # (all-gather without host sync), differing routing_bias values, and a constructor failing
    # on one rank with a RuntimeError or a non-tensor: every rank raises, none aborts or waits.
    mp.set_forkserver_preload(["torch", "fusedmoe", "dist_worker"])
    args = (world, str(tmp_path / "rendezvous"), fresh_seed())
    mp.start_processes(dist_worker.main_disagree, args=args, nprocs=world, join=True,
                       start_method="forkserver")


def test_needs_an_initialized_group():
    assert not dist.is_initialized()
    w1 = torch.zeros(2, 16, 8, dtype=torch.bfloat16)
    w2 = torch.zeros(2, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="^group"):
        fusedmoe.ExpertParallelMoE(None, w1, w2, 4, 2, 8)


# ---- the exact fmaf of the combine (fp32 routing weights) -----------------------------------------
def _fp32_neighbours(value: float):
    as_float = torch.tensor([value], dtype=torch.float32)
    up = torch.nextafter(as_float, torch.tensor([float("inf")]))
    down = torch.nextafter(as_float, torch.tensor([float("-inf")]))
    return [as_float.item(), up.item(), down.item()]


def _fmaf_exact(a: float, b: float, c: float) -> float:
    """fp32 fmaf by exact rational arithmetic: the nearest fp32 value, ties to even."""
    exact = fractions.Fraction(a) * fractions.Fraction(b) + fractions.Fraction(c)
    candidates = _fp32_neighbours(float(exact))

    def key(v):
        mantissa_odd = torch.tensor([v], dtype=torch.float32).view(torch.int32).item() & 1
        return (abs(fractions.Fraction(v) - exact), mantissa_odd)
    return min(candidates, key=key)


def test_fma_fp32_is_one_rounding(generator):
    # Random operands of every scale, plus sums that land exactly halfway between two fp32 values
    # in fp64 while the exact sum is not: 1 + 2^-24 (halfway) + 2^-54, where rounding the fp64 sum
    # to fp32 (ties to even: 1.0) is wrong and fmaf gives 1 + 2^-23. w * y = 2^-24 (1 + 2^-30):
    # 16519105 * 130 = 2^31 + 2.
    w = torch.randn(4000, generator=generator) * torch.exp2(torch.randint(-20, 20, (4000,), generator=generator))
    y = torch.randn(4000, generator=generator).to(torch.bfloat16).float()
    c = torch.randn(4000, generator=generator) * torch.exp2(torch.randint(-20, 20, (4000,), generator=generator))
    tie_w = 16519105 * 2.0**-23  # fp32-exact (24 bits)
    tie_y = 130 * 2.0**-7 * 2.0**-25  # bf16-exact (8 bits); w * y = 2^-24 (1 + 2^-30)
    ties = [(tie_w, tie_y, 1.0), (-tie_w, tie_y, -1.0), (tie_w, -tie_y, 1.0 + 2.0**-23),
            (tie_w, tie_y, 1.0 + 2.0**-23), (tie_w * 2.0**10, tie_y, 2.0**10)]
    w = torch.cat([w, torch.tensor([t[0] for t in ties])])
    y = torch.cat([y, torch.tensor([t[1] for t in ties])])
    c = torch.cat([c, torch.tensor([t[2] for t in ties])])
    assert torch.equal(y.to(torch.bfloat16).float(), y)

    ours = fdist._fma_fp32(w, y, c)
    expected = torch.tensor([_fmaf_exact(a, b, s) for a, b, s in zip(w.tolist(), y.tolist(), c.tolist())])
    assert torch.equal(ours, expected)
    # The tie cases are real: rounding the fp64 sum once more would be wrong for them.
    naive = (w.double() * y.double() + c.double()).float()
    assert (naive[-len(ties):] != expected[-len(ties):]).sum() >= 3


def test_group_bound_to_another_gpu_is_rejected():
    class Bound:  # what init_process_group(device_id=cuda:0) leaves on the group
        bound_device_id = torch.device("cuda", 0)

    fdist._check_bound_device(Bound(), torch.device("cuda", 0))
    fdist._check_bound_device(Bound(), torch.device("cpu"))
    with pytest.raises(ValueError, match="^group: bound to cuda:0, but the weights are on cuda:1"):
        fdist._check_bound_device(Bound(), torch.device("cuda", 1))
