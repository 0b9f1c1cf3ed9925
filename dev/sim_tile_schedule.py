#!/usr/bin/env python3
"""How long the persistent grouped GEMMs' last CTA runs, in units of one full tile's time, under
several tile-to-CTA assignments (experiment; issue 5; CPU only, no GPU needed).

Tiles are enumerated as the kernels do (device/grouped_tile_scheduler.cuh): expert by expert, N
block outer, M block inner. A tile costs 1, except an expert's last tile with at most 64 rows when
`--half-cost` says what such a "half tile" costs (1 = today's kernels, 0.5 = half the tensor work
of a full tile, as on branch wip/prefill-half-tiles). Routing is uniform distinct top-K, the
benchmark's shapes (bench/README.md), 132 SMs (H100 SXM and H200).

Assignments:
  static   CTA c takes tiles c, c + G, c + 2G, ... (the kernels where weights do not stream)
  rotated  in round r CTA c takes tile r G + (c + r) % G (the same tiles run together; a CTA no
           longer meets the same place of a periodic full/half pattern every round)
  dynamic  a CTA claims the next tile when it finishes one (an atomic counter; the kernels
           where weights stream, heuristics::grouped_claim_tiles)
The makespan ignores memory: it says how evenly work is spread, not how fast a tile runs.
Measured against it (bench/NOTES.md, steps 8-9): wrong in sign for most shapes, because at
T = 4096 the GEMMs are bound by weight traffic, which depends on which tiles run together
(neighbours share a weight block through L2), not on how evenly tile time is spread.

Usage: python3 dev/sim_tile_schedule.py [--half-cost 0.6] [--tokens 4096 16384] [--seed 1]
"""
import argparse
import heapq

import numpy as np

MODELS = {  # name: (H, I, E, K)
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "qwen3-235b-a22b": (4096, 1536, 128, 8),
    "deepseek-v3": (7168, 2048, 256, 8),
    "gpt-oss-120b": (2880, 2880, 128, 4),
    "mixtral-8x7b": (4096, 14336, 8, 2),
    "llama4-scout": (5120, 8192, 16, 1),
}


def tile_costs(counts, num_n_blocks, half_cost):
    costs = []
    for rows in counts:
        m_blocks = (int(rows) + 127) // 128
        for _ in range(num_n_blocks):
            for m in range(m_blocks):
                last_rows = int(rows) - 128 * m
                costs.append(half_cost if last_rows <= 64 else 1.0)
    return costs


def makespan(costs, num_ctas, assignment):
    if assignment == "dynamic":
        free = [(0.0, c) for c in range(num_ctas)]
        for cost in costs:
            t, c = heapq.heappop(free)
            heapq.heappush(free, (t + cost, c))
        return max(t for t, _ in free)
    load = np.zeros(num_ctas)
    for idx, cost in enumerate(costs):
        r, j = divmod(idx, num_ctas)
        load[(j - r) % num_ctas if assignment == "rotated" else j] += cost
    return load.max()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-cost", type=float, default=0.6)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"makespan change against today's kernels (static, half tiles cost 1); half cost "
          f"{args.half_cost}")
    print(f"{'model':16s} {'T':>6s} {'GEMM':4s} {'tiles':>6s} {'static':>7s} {'rotated':>8s} "
          f"{'dynamic':>8s} {'even':>7s}")
    for name, (hidden, inter, experts, top_k) in MODELS.items():
        for tokens in args.tokens:
            ids = np.argsort(rng.random((tokens, experts)), axis=1)[:, :top_k]
            counts = np.bincount(ids.ravel(), minlength=experts)
            for gemm, n_blocks in (("1", (inter + 127) // 128), ("2", (hidden + 255) // 256)):
                grid = min(args.sms, len(tile_costs(counts, n_blocks, 1.0)))
                base = makespan(tile_costs(counts, n_blocks, 1.0), grid, "static")
                costs = tile_costs(counts, n_blocks, args.half_cost)
                cells = [100 * (makespan(costs, grid, a) / base - 1)
                         for a in ("static", "rotated", "dynamic")]
                even = 100 * (sum(costs) / grid / base - 1)
                print(f"{name:16s} {tokens:6d} {gemm:4s} {len(costs):6d} " +
                      " ".join(f"{c:+7.1f}%" for c in cells) + f" {even:+6.1f}%")


if __name__ == "__main__":
    main()
