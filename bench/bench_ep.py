#!/usr/bin/env python3
"""Expert-parallel benchmark: fusedmoe.ExpertParallelMoE on 2, 4 or 8 GPUs of one host over NCCL.

For DeepSeek-V3 (H 7168, I 2048, E 256, K 8, DeepSeekV3 routing: 8 groups, top-4 groups, scale
2.5, bias) and Qwen3-235B-A22B (H 4096, I 1536, E 128, K 8, Renormalize), both modes
(all-gather / ordered reduce-scatter, and all-to-all) and T tokens per rank (1 .. 8192), each rank
holding E / W experts, it prints one line per point:

  layer us      the whole layer, eager, median over iterations, slowest rank
  coll us       the part of it inside collectives (CUDA events around each collective)
  op us         the single-GPU operator on 1/W of the experts with all W*T tokens (the compute of
                one rank in the all-gather mode), eager, median
  MB in         bytes a rank receives from the other ranks per call
  GB/s          MB in / coll us
  % probe       the collectives' time at the bandwidth the probe measured in this run, over
                coll us (the probe: all_gather_into_tensor and all_to_all_single of
                --probe-mib MiB, bytes received from other ranks / time, nccl-tests' busbw)
  graph us      (--graph, all-gather mode) one CUDA-graph replay of the layer
  check         at T <= --check-max-tokens: the layer's outputs against the single-GPU operator
                on the whole problem (all experts on rank 0): ||ep - single|| / ||single|| <= 1e-2

Launch with the GPUs visible: `python bench/bench_ep.py --gpus 8` (spawns one process per GPU,
TCP rendezvous on localhost) or `torchrun --nproc-per-node 8 bench/bench_ep.py`. NVLink
multicast stays off: NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 are set here.
Without 2 GPUs it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_moe import MODELS, ModelShape, git_commit  # noqa: E402

EP_MODELS = ("deepseek-v3", "qwen3-235b-a22b")
TOKEN_GRID = [1, 4, 16, 64, 256, 1024, 4096, 8192]
MAX_REL_NORM = 1e-2


def no_multicast_env() -> None:
    """NVLink multicast (NCCL NVLS, torch symmetric-memory multicast) must stay off on the GPU
    machines this runs on; set before any NCCL communicator exists."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def expert_weights(model: ModelShape, experts: range, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical weights of the given global experts, each from its own seed (so a shard equals
    the same slice of the whole): w1 ~ N(0, 1/H) [n, 2I, H], w2 ~ N(0, 1/I) [n, H, I], bf16."""
    w1 = torch.empty(len(experts), 2 * model.inter, model.hidden, dtype=torch.bfloat16, device="cuda")
    w2 = torch.empty(len(experts), model.hidden, model.inter, dtype=torch.bfloat16, device="cuda")
    for local, expert in enumerate(experts):
        gen = torch.Generator(device="cuda").manual_seed(seed * 100003 + expert)
        w1[local].normal_(0.0, model.hidden ** -0.5, generator=gen)
        w2[local].normal_(0.0, model.inter ** -0.5, generator=gen)
    return w1, w2


def rank_inputs(model: ModelShape, num_tokens: int, rank: int, seed: int):
    """(hidden_states bf16 [T, H] ~ N(0, 1), logits fp32 [T, E] ~ N(0, 1)), different per rank."""
    gen = torch.Generator(device="cuda").manual_seed(seed * 7919 + rank)
    logits = torch.randn(num_tokens, model.experts, device="cuda", generator=gen)
    x = torch.randn(num_tokens, model.hidden, dtype=torch.bfloat16, device="cuda", generator=gen)
    return x, logits


def routing_bias(model: ModelShape, seed: int):
    if not model.has_bias:
        return None
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return (0.1 * torch.randn(model.experts, device="cuda", generator=gen)).bfloat16()


def routing_args(model: ModelShape) -> dict:
    return dict(routing_method_type=model.method, n_group=model.n_group or None,
                topk_group=model.topk_group or None, routed_scaling_factor=model.scale)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def ranks_aligned(local_rank: int) -> None:
    """All ranks idle and starting together."""
    dist.barrier(device_ids=[local_rank])
    torch.cuda.synchronize()


def median_across_iterations(run, iterations: int, warmup: int, local_rank: int, log=None):
    """(median ms of run(), median ms in collectives, bytes received per call) on this rank."""
    totals, in_collectives, received = [], [], 0
    for i in range(warmup + iterations):
        ranks_aligned(local_rank)
        if log is not None:
            log.clear()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        if i < warmup:
            continue
        totals.append(start.elapsed_time(end))
        if log is not None:
            in_collectives.append(sum(r.start.elapsed_time(r.end) for r in log))
            received = sum(r.bytes_received for r in log)
    coll = statistics.median(in_collectives) if in_collectives else 0.0
    return statistics.median(totals), coll, received


def slowest_rank(*values: float) -> list[float]:
    """The maximum over ranks of each value."""
    tensor = torch.tensor(values, dtype=torch.float64, device="cuda")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def probe_bandwidth(mebibytes: int, local_rank: int, iterations: int = 10) -> dict:
    """GB/s of all_gather_into_tensor and all_to_all_single moving ``mebibytes`` MiB in all:
    bytes a rank receives from the other ranks / time (slowest rank, median)."""
    world = dist.get_world_size()
    total = (mebibytes << 20) // world * world
    result = {}
    chunk = torch.ones(total // world, dtype=torch.uint8, device="cuda")
    gathered = torch.empty(total, dtype=torch.uint8, device="cuda")
    send = torch.ones(total, dtype=torch.uint8, device="cuda")
    recv = torch.empty(total, dtype=torch.uint8, device="cuda")
    runs = {
        "all_gather": lambda: dist.all_gather_into_tensor(gathered, chunk),
        "all_to_all": lambda: dist.all_to_all_single(recv, send),
    }
    for name, run in runs.items():
        ms, _, _ = median_across_iterations(run, iterations, 2, local_rank)
        (ms,) = slowest_rank(ms)
        result[name] = total * (world - 1) / world / (ms * 1e-3) / 1e9
    return result


# ------------------------------------------------------------------------------------------------
# One point
# ------------------------------------------------------------------------------------------------
def bench_point(args, model, mode, layer, num_tokens, x, logits, probe, op_ms, local_rank) -> dict:
    world = dist.get_world_size()
    static = dict(num_tokens_per_rank=[num_tokens] * world) if mode == "allgather" else {}
    layer.collective_log = []
    ms, coll_ms, received = median_across_iterations(
        lambda: layer(x, logits, **static), args.iterations, args.warmup, local_rank,
        layer.collective_log,
    )
    # Time the collectives would take at the probed bandwidths (by their kind).
    ideal_s = sum(r.bytes_received / (probe[r.collective] * 1e9) for r in layer.collective_log)
    layer.collective_log = None
    ms, coll_ms, ideal_s = slowest_rank(ms, coll_ms, ideal_s)
    row = dict(model=model.name, mode=mode, world=world, tokens_per_rank=num_tokens,
               layer_us=1e3 * ms, collectives_us=1e3 * coll_ms, op_us=1e3 * op_ms,
               mb_received=received / 1e6,
               gb_per_s=received / (coll_ms * 1e-3) / 1e9 if coll_ms else None,
               pct_probe=100 * ideal_s / (coll_ms * 1e-3) if coll_ms else None)
    if args.graph and mode == "allgather":
        row["graph_us"] = graph_us(args, layer, x, logits, static, local_rank)
    return row


def graph_us(args, layer, x, logits, static, local_rank) -> float:
    """Median replay time of the layer captured in a CUDA graph (all-gather mode, static counts)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            layer(x, logits, **static)
    torch.cuda.current_stream().wait_stream(side)
    ranks_aligned(local_rank)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer(x, logits, **static)
    ms, _, _ = median_across_iterations(graph.replay, args.iterations, args.warmup, local_rank)
    (ms,) = slowest_rank(ms)
    del graph
    return 1e3 * ms


def operator_ms(args, model, layer, num_tokens, bias, local_rank) -> float:
    """The single-GPU operator on this rank's experts with every rank's tokens (W * T)."""
    import fusedmoe  # noqa: PLC0415

    world = dist.get_world_size()
    x, logits = rank_inputs(model, num_tokens * world, 1000 + dist.get_rank(), args.seed)
    run = lambda: fusedmoe.trtllm_bf16_moe(  # noqa: E731
        logits, bias, x, layer.gemm1_weights, layer.gemm2_weights, model.experts, model.top_k,
        model.n_group or None, model.topk_group or None, model.inter, layer.local_expert_offset,
        layer.local_num_experts, routed_scaling_factor=model.scale, routing_method_type=model.method,
    )
    ms, _, _ = median_across_iterations(run, args.iterations, args.warmup, local_rank)
    return ms


def check_point(model, mode, layer, x, logits, bias, full_weights) -> str:
    """The layer against the single-GPU operator on the whole problem (on rank 0): OK or FAIL."""
    import fusedmoe  # noqa: PLC0415

    world, rank = dist.get_world_size(), dist.get_rank()
    out = layer(x, logits, **({"num_tokens_per_rank": [x.shape[0]] * world} if mode == "allgather" else {}))
    gathered = [torch.empty_like(t).repeat(world, *([1] * (t.dim() - 1))) for t in (x, logits, out)]
    for full, mine in zip(gathered, (x, logits, out)):
        dist.all_gather_into_tensor(full, mine.contiguous())
    status = torch.zeros(1, device="cuda")
    if rank == 0:
        all_x, all_logits, ep = gathered
        single = fusedmoe.trtllm_bf16_moe(
            all_logits, bias, all_x, full_weights[0], full_weights[1], model.experts, model.top_k,
            model.n_group or None, model.topk_group or None, model.inter, 0, model.experts,
            routed_scaling_factor=model.scale, routing_method_type=model.method,
        )
        error = (ep.float() - single.float()).norm() / single.float().norm().clamp_min(1e-30)
        status[0] = 0.0 if torch.isfinite(ep).all() and error.item() <= MAX_REL_NORM else 1.0
    dist.broadcast(status, 0)
    return "OK" if status.item() == 0 else "FAIL"


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
HEADER = (f"{'model':<16} {'mode':<9} {'T/rank':>6} | {'layer us':>9} {'coll us':>9} {'coll%':>5} | "
          f"{'op us':>9} | {'MB in':>8} {'GB/s':>7} {'%probe':>6} | {'graph us':>9} | check")


def fmt(value, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "-".rjust(width)


def format_row(row: dict) -> str:
    coll_pct = 100 * row["collectives_us"] / row["layer_us"] if row["layer_us"] else None
    return (f"{row['model']:<16} {row['mode']:<9} {row['tokens_per_rank']:>6} | "
            f"{fmt(row['layer_us'], '.1f', 9)} {fmt(row['collectives_us'], '.1f', 9)} "
            f"{fmt(coll_pct, '.0f', 5)} | {fmt(row['op_us'], '.1f', 9)} | "
            f"{fmt(row['mb_received'], '.2f', 8)} {fmt(row['gb_per_s'], '.1f', 7)} "
            f"{fmt(row['pct_probe'], '.0f', 6)} | {fmt(row.get('graph_us'), '.1f', 9)} | "
            f"{row.get('check', '-')}")


# ------------------------------------------------------------------------------------------------
# One process per GPU
# ------------------------------------------------------------------------------------------------
def worker(local_rank: int, rank: int, world: int, init_method: str, args) -> int:
    """The benchmark on one rank; returns the exit status (1 when any check failed)."""
    no_multicast_env()
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300),
                            device_id=torch.device("cuda", local_rank))
    import fusedmoe  # noqa: PLC0415

    say = print if rank == 0 else (lambda *a, **k: None)
    probe = probe_bandwidth(args.probe_mib, local_rank)
    say(f"bench_ep: {world} x {torch.cuda.get_device_name()}, commit {git_commit()}, "
        f"NCCL_NVLS_ENABLE={os.environ['NCCL_NVLS_ENABLE']}")
    say(f"probe ({args.probe_mib} MiB): all_gather {probe['all_gather']:.1f} GB/s, "
        f"all_to_all {probe['all_to_all']:.1f} GB/s (bytes received from other ranks / time)")
    say(HEADER)
    rows, failed = [], False
    for name in args.models:
        model = MODELS[name]
        if model.experts % world:
            say(f"{name}: E = {model.experts} is not a multiple of {world} GPUs, skipped")
            continue
        num_local = model.experts // world
        w1, w2 = expert_weights(model, range(rank * num_local, (rank + 1) * num_local), args.seed)
        bias = routing_bias(model, args.seed)
        full_weights = None
        if rank == 0 and any(t <= args.check_max_tokens for t in args.tokens):
            full_weights = expert_weights(model, range(model.experts), args.seed)
        op_ms = {}
        for mode in args.modes:
            layer = fusedmoe.ExpertParallelMoE(None, w1, w2, model.experts, model.top_k,
                                               model.inter, mode=mode, routing_bias=bias,
                                               **routing_args(model))
            layer.reserve_workspace(max(args.tokens))
            for num_tokens in args.tokens:
                if num_tokens not in op_ms:
                    op_ms[num_tokens] = operator_ms(args, model, layer, num_tokens, bias, local_rank)
                x, logits = rank_inputs(model, num_tokens, rank, args.seed)
                row = bench_point(args, model, mode, layer, num_tokens, x, logits, probe,
                                  op_ms[num_tokens], local_rank)
                if num_tokens <= args.check_max_tokens:
                    row["check"] = check_point(model, mode, layer, x, logits, bias, full_weights)
                    failed |= row["check"] == "FAIL"
                rows.append(row)
                say(format_row(row), flush=True)
            del layer
        del w1, w2, full_weights
        torch.cuda.empty_cache()
    say(f"bench_ep: {'FAILED checks' if failed else 'all checks passed'}; device {torch.cuda.get_device_name()}, "
        f"{world} GPUs, commit {git_commit()}")
    if rank == 0 and args.json:
        Path(args.json).write_text(json.dumps(dict(world=world, probe_gb_per_s=probe, rows=rows,
                                                   commit=git_commit()), indent=1))
    dist.destroy_process_group()
    return 1 if failed else 0


def _spawned(local_rank: int, world: int, init_method: str, args) -> None:
    status = worker(local_rank, local_rank, world, init_method, args)
    if status:
        sys.exit(status)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=0, help="processes/GPUs (default: all visible)")
    parser.add_argument("--models", default=",".join(EP_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: {','.join(EP_MODELS)})")
    parser.add_argument("--modes", default="allgather,alltoall")
    parser.add_argument("--tokens", default=",".join(map(str, TOKEN_GRID)), help="tokens per rank")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--probe-mib", type=int, default=256)
    parser.add_argument("--check-max-tokens", type=int, default=64,
                        help="check against the single-GPU operator up to this T per rank")
    parser.add_argument("--graph", action="store_true", help="also time CUDA-graph replays (allgather)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    args.modes = args.modes.split(",")
    if any(m not in ("allgather", "alltoall") for m in args.modes):
        parser.error(f"--modes: expected allgather and/or alltoall, got {args.modes}")
    args.tokens = [int(t) for t in args.tokens.split(",")]
    if any(t < 1 for t in args.tokens):
        parser.error("--tokens: expected positive counts")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    no_multicast_env()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        return worker(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["RANK"]),
                      int(os.environ["WORLD_SIZE"]), "env://", args)
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    world = args.gpus or found
    if found < 2 or world < 2:
        print(f"bench_ep: needs at least 2 CUDA GPUs on this host (found {found}; --gpus {args.gpus}); "
              "expert parallelism across ranks is measured on a multi-GPU machine only", file=sys.stderr)
        return 2
    if world > found:
        print(f"bench_ep: --gpus {world} but only {found} GPUs are visible", file=sys.stderr)
        return 2
    try:
        mp.spawn(_spawned, args=(world, f"tcp://127.0.0.1:{free_port()}", args), nprocs=world,
                 join=True)
    except mp.ProcessExitedException as exited:
        print(f"bench_ep: a rank exited with status {exited.exit_code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
