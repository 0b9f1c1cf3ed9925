#!/usr/bin/env python3
"""Kernel-time breakdown of the grouped_mm baseline (and fusedmoe, if it imports) at one point.

Runs one eager call under torch.profiler after a warm-up and prints the CUDA kernels by total
time, to see where a baseline or fusedmoe spends its time. Example:
  python3 bench/profile_point.py --model qwen3-30b-a3b --tokens 16384 --ep --combine bmm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import bench_moe  # noqa: E402


def main() -> int:
    """Profiles the grouped_mm baseline at one (model, T, grid) point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=bench_moe.DEFAULT_MODEL, choices=bench_moe.MODELS)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--ep", action="store_true", help="expert-parallel shard 0 (E/8 local)")
    parser.add_argument("--combine", default="bmm", choices=baselines.GroupedMmMoe.COMBINES)
    parser.add_argument("--rows", type=int, default=12, help="kernels to print")
    args = parser.parse_args()
    model = bench_moe.MODELS[args.model]
    num_local = model.experts // bench_moe.EP_DEGREE if args.ep else model.experts
    w1, w2 = bench_moe.make_weights(model, num_local, "cuda", seed=0)
    logits, bias, x = bench_moe.make_inputs(model, args.tokens, "cuda", seed=1)
    ids, weights = bench_moe.route_for(model, logits, bias)
    gmm = baselines.GroupedMmMoe(w1, w2, combine=args.combine)
    call = lambda: gmm(x, ids, weights, all_local=not args.ep)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    print(f"grouped_mm {args.model} T={args.tokens} {'ep' if args.ep else 'full'} "
          f"combine={args.combine}")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
