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

With --split-tails it models the split tails of GEMM2 (or GEMM1, --gemm 1) instead (heuristics.h,
grouped_split_ways): the
tiles of a last wave of at most half the grid cut into `ways` ranges of K, each costing 1 / ways
of a tile plus the partials' traffic (--fixup-us, against a tile's time of --tile-us-per-kblock
per K block), on the full grid and on shard 0 of 8 (--ep), with the static stride or claims as
heuristics::grouped_claim_tiles picks. The same caveat holds: where weights stream, which tiles
run together decides more than how evenly the time is spread; the split units read disjoint K
ranges of one weight block, so they add no weight bytes.

Usage: python3 dev/sim_tile_schedule.py [--half-cost 0.6] [--tokens 4096 16384] [--seed 1]
       python3 dev/sim_tile_schedule.py --split-tails [--gemm 1] [--ep] [--tokens 256 1024 4096]
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


SPLIT_MAX_WAYS, SPLIT_MIN_K_BLOCKS, SPLIT_SLOTS = 4, 16, 132  # heuristics.h


def split_ways(tiles, grid, k_blocks, slots=SPLIT_SLOTS):
    """heuristics::grouped_split_ways."""
    if tiles <= 0 or grid <= 0 or tiles % grid == 0:
        return 1
    tail = tiles % grid
    ways = min(SPLIT_MAX_WAYS, grid // tail, k_blocks // SPLIT_MIN_K_BLOCKS, slots // tail)
    return ways if ways >= 2 else 1


def split_units(tiles, grid, k_blocks, fixup):
    """The units' costs in tile times, in unit order, and the ways."""
    ways = split_ways(tiles, grid, k_blocks)
    if ways == 1:
        return [1.0] * tiles, 1
    tail = tiles % grid
    return [1.0] * (tiles - tail) + [1.0 / ways + fixup] * (tail * ways), ways


def max_tiles(slots, experts, n_blocks):
    """heuristics::max_grouped_m_blocks(slots, E_loc) * N blocks."""
    return (-(-slots // 128) + min(experts, slots)) * n_blocks


def split_tails_main(args, rng):
    print(f"GEMM{args.gemm} makespan with split tails against without (same assignment); fixup "
          f"{args.fixup_us} us, a K block {args.tile_us_per_kblock} us")
    print(f"{'model':16s} {'grid':4s} {'T':>6s} {'tiles':>6s} {'CTAs':>5s} {'waves':>6s} "
          f"{'ways':>4s} {'assign':7s} {'change':>7s}")
    for name, (hidden, inter, experts, top_k) in MODELS.items():
        num_local = experts // 8 if args.ep else experts
        for tokens in args.tokens:
            ids = np.argsort(rng.random((tokens, experts)), axis=1)[:, :top_k]
            counts = np.bincount(ids.ravel(), minlength=experts)[:num_local]
            if args.gemm == 1:  # N: I act columns in tiles of 128; K: H
                n_blocks, k = (inter + 127) // 128, hidden
            else:  # N: H in tiles of 256; K: I
                n_blocks, k = (hidden + 255) // 256, inter
            k_blocks = (k + 63) // 64
            if k_blocks < 2 * SPLIT_MIN_K_BLOCKS:
                continue
            tiles = len(tile_costs(counts, n_blocks, 1.0))
            slots = tokens * top_k
            grid_base = max(1, min(args.sms, max_tiles(slots, num_local, n_blocks)))
            grid_split = max(1, min(args.sms, max_tiles(slots, num_local, n_blocks) * SPLIT_MAX_WAYS))
            fixup = args.fixup_us / (k_blocks * args.tile_us_per_kblock)
            units, ways = split_units(tiles, grid_split, k_blocks, fixup)
            claim = slots <= 192 * experts and k >= 1024  # heuristics::grouped_claim_tiles
            assignment = "dynamic" if claim else "static"
            base = makespan([1.0] * tiles, grid_base, assignment)
            new = makespan(units, grid_split, assignment)
            print(f"{name:16s} {'ep' if args.ep else 'full':4s} {tokens:6d} {tiles:6d} "
                  f"{grid_split:5d} {tiles / grid_base:6.2f} {ways:4d} {assignment:7s} "
                  f"{100 * (new / base - 1):+6.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-cost", type=float, default=0.6)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split-tails", action="store_true", help="a GEMM's split tails")
    parser.add_argument("--gemm", type=int, choices=(1, 2), default=2, help="with --split-tails")
    parser.add_argument("--ep", action="store_true", help="with --split-tails: shard 0 of 8")
    parser.add_argument("--fixup-us", type=float, default=2.0)
    parser.add_argument("--tile-us-per-kblock", type=float, default=0.55)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.split_tails:
        split_tails_main(args, rng)
        return
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
