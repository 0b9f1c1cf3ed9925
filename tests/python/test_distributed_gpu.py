"""fusedmoe.ExpertParallelMoE on CUDA tensors over NCCL, 2 and 4 GPUs: skipped with fewer.

Every rank runs the cases of dist_worker.cases except the two with cancelling weights, in both
modes (tolerance rule against the float64 reference, reruns bitwise), and a CUDA graph capture of
the all-gather mode. No FP8, error or collective_log check runs here (those are CPU-only, in
test_distributed.py). NVLink multicast stays off (dist_worker.no_multicast_env).
"""

import os

import pytest
import torch
import torch.multiprocessing as mp

import dist_worker


def _hopper_count() -> int:
    if not torch.cuda.is_available():
        return 0
    return sum(torch.cuda.get_device_capability(i) == (9, 0) for i in range(torch.cuda.device_count()))


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_on_gpus(world, tmp_path):
    if _hopper_count() < world:
        pytest.skip(f"needs {world} Hopper (sm_90) GPUs, found {_hopper_count()}")
    dist_worker.no_multicast_env()
    seed = int.from_bytes(os.urandom(4), "little") % (2**31 - 1000)
    mp.spawn(dist_worker.main_gpu, args=(world, str(tmp_path / "rendezvous"), seed), nprocs=world,
             join=True)
