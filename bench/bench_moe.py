#!/usr/bin/env python3
"""The benchmark of bench/README.md: six model shapes x a token grid, against the floor and peers.

For every (model, T) it routes random normal logits, checks each implementation's output against
the fp32 per-expert reference (docs/STYLE.md rule), then times CUDA-graph replays with a cold L2
(median of many) plus eager calls, and prints one line:
`us | TFLOP/s | GB/s | % of floor | x torch_grouped_mm`, then the geometric mean of the speed-ups,
the device, the measured BW and PEAK ceilings and the commit. The ceilings are measured before and
after the grid: rows print as they come with the first sample's floors, then the final table
with floors from the larger sample of each (the stricter floor). --json writes the full table.

Implementations: fusedmoe (through fusedmoe_adapter; skipped, and said so, when it does not
import), the torch._grouped_mm MoE and the per-expert loop (baselines.py). In the full grid every
timed call routes from the logits itself (torch routing for the baselines); in the expert-parallel
grid (--ep) the routing is given, packed, with ids spanning all E and E/8 local experts (shard 0).

Without a GPU, --cpu runs fusedmoe's CPU reference path on small problems and compares it with the
torch loop reference; that is a check, not a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402 (the sibling modules of this script)
import fusedmoe_adapter  # noqa: E402
import routing  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """One MoE layer of a real model (bench/README.md table)."""

    name: str
    hidden: int  # H
    inter: int  # I
    experts: int  # E
    top_k: int  # K
    method: int  # routing method, SPEC numbering
    n_group: int = 0
    topk_group: int = 0
    scale: float = 1.0  # routed_scaling_factor
    has_bias: bool = False


MODELS = {m.name: m for m in [
    ModelShape("qwen3-30b-a3b", 2048, 768, 128, 8, routing.RENORMALIZE),
    ModelShape("qwen3-235b-a22b", 4096, 1536, 128, 8, routing.RENORMALIZE),
    ModelShape("deepseek-v3", 7168, 2048, 256, 8, routing.DEEPSEEK_V3, n_group=8, topk_group=4,
               scale=2.5, has_bias=True),
    ModelShape("gpt-oss-120b", 2880, 2880, 128, 4, routing.RENORMALIZE),
    ModelShape("mixtral-8x7b", 4096, 14336, 8, 2, routing.RENORMALIZE),
    ModelShape("llama4-scout", 5120, 8192, 16, 1, routing.LLAMA4),
]}
DEFAULT_MODEL = "qwen3-30b-a3b"
TOKEN_GRID = [1, 4, 16, 64, 256, 1024, 4096, 16384]
QUICK_TOKEN_GRID = [1, 16, 256, 4096]
EP_DEGREE = 8  # expert-parallel grid: local_num_experts = E / 8, shard 0 (offset 0)
IMPLS = ("fusedmoe", "grouped_mm", "loop")
MAX_REL_NORM = 1e-2  # bf16 operands land between 1e-3 and 1e-2


# ------------------------------------------------------------------------------------------------
# Inputs, reference check, floor
# ------------------------------------------------------------------------------------------------
def make_weights(model: ModelShape, num_local: int, device: str, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random canonical weights scaled so that g, a, y and the output are O(1), never zeros.

    w1 [E_loc, 2I, H] ~ N(0, 1/H) (rows [0, I) up, [I, 2I) gate), w2 [E_loc, H, I] ~ N(0, 1/I).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(num_local, 2 * model.inter, model.hidden, dtype=torch.bfloat16,
                     device=device, generator=gen).mul_(model.hidden ** -0.5)
    w2 = torch.randn(num_local, model.hidden, model.inter, dtype=torch.bfloat16,
                     device=device, generator=gen).mul_(model.inter ** -0.5)
    return w1, w2


def make_inputs(model: ModelShape, num_tokens: int, device: str, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logits fp32 [T, E] ~ N(0, 1), bias bf16 [E] or None, hidden_states bf16 [T, H] ~ N(0, 1)).

    fp32 logits: random bf16 logits tie often enough that a top-K boundary tie would make two
    correct implementations disagree on the selected expert.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(num_tokens, model.experts, device=device, generator=gen)
    bias = None
    if model.has_bias:
        bias = (0.1 * torch.randn(model.experts, device=device, generator=gen)).bfloat16()
    hidden_states = torch.randn(num_tokens, model.hidden, dtype=torch.bfloat16, device=device,
                                generator=gen)
    return logits, bias, hidden_states


def route_for(model: ModelShape, logits: torch.Tensor, bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's routing in torch: (ids int32 [T, K], weights bf16 [T, K])."""
    return routing.route(logits, model.method, model.top_k, bias, model.n_group,
                         model.topk_group, model.scale)


def call_into_poisoned(call, like: torch.Tensor) -> torch.Tensor:
    """``call(output=...)`` into a tensor shaped like ``like`` and filled with NaN, so that every
    row must be written; raises when the call returns another tensor. bench_fp8.py uses it too."""
    poisoned = torch.full_like(like, float("nan"))
    out = call(output=poisoned)
    if out.data_ptr() != poisoned.data_ptr():
        raise RuntimeError("fusedmoe did not write the output= tensor it was given")
    return out


def check_output(out: torch.Tensor, ref32: torch.Tensor, bf16_error: float) -> dict:
    """docs/STYLE.md rule: max|out - ref| <= 2 * max|bf16_ref - ref| + atol, and rel. norm <= 1e-2.

    atol is one bf16 ulp at the largest reference magnitude (the output's own rounding).
    """
    out32 = out.float()
    ref_max = ref32.abs().max().item() if ref32.numel() else 0.0
    atol = 2.0 ** -8 * max(ref_max, 1e-30)
    max_err = (out32 - ref32).abs().max().item() if ref32.numel() else 0.0
    rel = ((out32 - ref32).norm() / ref32.norm().clamp_min(1e-30)).item()
    tol = 2.0 * bf16_error + atol
    finite = bool(torch.isfinite(out32).all().item())
    ok = finite and max_err <= tol and rel <= MAX_REL_NORM
    return {"ok": ok, "max_err": max_err, "tol": tol, "rel_norm": rel, "finite": finite}


def floor_of(model: ModelShape, ids: torch.Tensor, num_local: int) -> dict:
    """bench/README.md floor's bytes and flops from the routed ids (shard 0: local ids are
    [0, num_local)); set_floor turns them into a time once the ceilings are known."""
    num_tokens = ids.shape[0]
    local = ids[(ids >= 0) & (ids < num_local)]
    experts_hit = int(torch.unique(local).numel())
    local_slots = int(local.numel())
    floor_bytes = (experts_hit * 3 * model.hidden * model.inter * 2
                   + 2 * num_tokens * model.hidden * 2)
    floor_flops = 6 * local_slots * model.hidden * model.inter
    return {"experts_hit": experts_hit, "local_slots": local_slots, "bytes": floor_bytes,
            "flops": floor_flops}


def set_floor(row: dict, bw: float, peak: float) -> None:
    """The row's floor time from the ceilings, then its metrics (add_metrics); called again, with
    the final ceilings, after the grid."""
    row["floor_us"] = 1e6 * max(row["bytes"] / bw, row["flops"] / peak)
    add_metrics(row)


# ------------------------------------------------------------------------------------------------
# One (model, grid, T) point
# ------------------------------------------------------------------------------------------------
def bench_point(model: ModelShape, ep: bool, num_tokens: int, w1: torch.Tensor, w2: torch.Tensor,
                gmm: baselines.GroupedMmMoe, fusedmoe, timer, args) -> dict:
    """Checks then times every implementation at one point; returns the row of the JSON table."""
    num_local = w1.shape[0]
    logits, bias, x = make_inputs(model, num_tokens, "cuda", seed=1000 + num_tokens)
    ids, weights = route_for(model, logits, bias)
    packed = routing.pack_topk(ids, weights)
    row = {"model": model.name, "grid": "ep" if ep else "full", "T": num_tokens,
           "H": model.hidden, "I": model.inter, "E": model.experts, "E_loc": num_local,
           "K": model.top_k, "method": routing.METHOD_NAMES[model.method],
           **floor_of(model, ids, num_local), "impls": {}}

    ref32 = baselines.moe_reference(x, w1, w2, ids, weights)
    loop_out = baselines.moe_loop(x, w1, w2, ids, weights)
    bf16_error = (loop_out.float() - ref32).abs().max().item()

    calls = {}
    if ep:
        calls["grouped_mm"] = lambda: gmm(x, ids, weights)
        calls["loop"] = lambda: baselines.moe_loop(x, w1, w2, ids, weights)
        if fusedmoe is not None:
            calls["fusedmoe"] = lambda output=None: fusedmoe_adapter.moe_routed(
                fusedmoe, topk_ids=packed, hidden_states=x, gemm1_weights=w1,
                gemm2_weights=w2, num_experts=model.experts, top_k=model.top_k,
                intermediate_size=model.inter, local_expert_offset=0,
                local_num_experts=num_local, routing_method_type=model.method, output=output)
    else:
        calls["grouped_mm"] = lambda: gmm(x, *route_for(model, logits, bias), all_local=True)
        calls["loop"] = lambda: baselines.moe_loop(x, w1, w2, *route_for(model, logits, bias))
        if fusedmoe is not None:
            calls["fusedmoe"] = lambda output=None: fusedmoe_adapter.moe_from_logits(
                fusedmoe, routing_logits=logits, routing_bias=bias, hidden_states=x,
                gemm1_weights=w1, gemm2_weights=w2, num_experts=model.experts,
                top_k=model.top_k, n_group=model.n_group, topk_group=model.topk_group,
                intermediate_size=model.inter, local_expert_offset=0,
                local_num_experts=num_local, routed_scaling_factor=model.scale,
                routing_method_type=model.method, output=output)

    for name in IMPLS:
        if name not in calls:
            continue
        result = {}
        row["impls"][name] = result
        try:
            if name == "fusedmoe":
                out = call_into_poisoned(calls[name], x)
            elif name == "loop":
                # The loop is the tolerance's reference (bf16_error is its own max error), so the
                # max-error rule cannot fail for it: only finiteness and the relative norm check it.
                out = loop_out
                result["tolerance_reference"] = True
            else:
                out = calls[name]()
            result.update(check_output(out, ref32, bf16_error))
            if not result["ok"]:
                continue  # a wrong output is marked, never timed
            if name != "loop":
                graph, graph_out = timer.capture(calls[name])
                graph_out.fill_(float("nan"))  # the replay must rewrite every row
                graph.replay()
                graph_check = check_output(graph_out, ref32, bf16_error)
                result["graph_ok"] = graph_check["ok"]
                if not graph_check["ok"]:
                    result["ok"] = False
                    result["error"] = f"graph replay output wrong: {graph_check}"
                    continue
                result["graph_us"] = timer.time_graph(graph)
                del graph, graph_out
            if name != "loop" or not args.no_loop:
                budget = args.loop_budget if name == "loop" else None
                result["eager_us"], result["eager_reps"] = timer.time_eager(calls[name], budget)
        except Exception as exc:  # record and go on: one broken point must not end the run
            result["ok"] = False
            result["error"] = f"{type(exc).__name__}: {exc}"
    torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------
def headline_us(result: dict | None) -> float | None:
    """The time a row reports for an implementation: graph replay, or eager for the loop."""
    if not result or not result.get("ok"):
        return None
    return result.get("graph_us", result.get("eager_us"))


def add_metrics(row: dict) -> None:
    """Adds TFLOP/s, GB/s, % of floor and speed-up over grouped_mm to each timed implementation."""
    gmm_us = headline_us(row["impls"].get("grouped_mm"))
    for name, result in row["impls"].items():
        us = headline_us(result)
        if us is None:
            continue
        result["tflops"] = row["flops"] / (us * 1e-6) / 1e12
        result["gbs"] = row["bytes"] / (us * 1e-6) / 1e9
        result["pct_floor"] = 100.0 * row["floor_us"] / us
        if gmm_us is not None:
            result["x_grouped_mm"] = gmm_us / us


def fmt(value: float | None, spec: str, width: int) -> str:
    """A right-aligned number, or '-' when missing."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def status_word(result: dict | None) -> str:
    """'' when timed, FAIL (wrong output or error) or '-' (not run)."""
    if result is None:
        return "-"
    return "" if result.get("ok") else "FAIL"


HEADER = (f"{'model':<16}{'grid':>5}{'T':>7}{'floor us':>10} | {'fusedmoe us':>11}{'TFLOP/s':>9}"
          f"{'GB/s':>8}{'%floor':>8}{'x gmm':>7}{'eager':>9} | {'gmm us':>9}{'%floor':>7}"
          f"{'eager':>9} | {'loop us':>9}")


def format_row(row: dict) -> str:
    """One printed line per (model, grid, T)."""
    ours = row["impls"].get("fusedmoe")
    gmm = row["impls"].get("grouped_mm")
    loop = row["impls"].get("loop")
    line = f"{row['model']:<16}{row['grid']:>5}{row['T']:>7}{row['floor_us']:>10.1f} | "
    if ours is not None and not ours.get("ok"):
        line += f"{'FAIL':>11}{'':>41}"
    else:
        line += (fmt(headline_us(ours), ".1f", 11) + fmt(ours and ours.get("tflops"), ".1f", 9)
                 + fmt(ours and ours.get("gbs"), ".0f", 8)
                 + fmt(ours and ours.get("pct_floor"), ".1f", 8)
                 + fmt(ours and ours.get("x_grouped_mm"), ".2f", 7)
                 + fmt(ours and ours.get("eager_us"), ".1f", 9))
    line += " | "
    if gmm is not None and not gmm.get("ok"):
        line += f"{'FAIL':>9}{'':>16}"
    else:
        line += (fmt(headline_us(gmm), ".1f", 9) + fmt(gmm and gmm.get("pct_floor"), ".1f", 7)
                 + fmt(gmm and gmm.get("eager_us"), ".1f", 9))
    line += " | "
    if loop is not None and not loop.get("ok"):
        line += f"{'FAIL':>9}"
    else:
        line += fmt(loop and loop.get("eager_us"), ".1f", 9)
    return line


def geomean(values: list[float]) -> float | None:
    """Geometric mean, or None for an empty list."""
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def final_table(rows, bw_samples, peak_samples, bw_after, peak_after, peak_name, set_floor_of,
                header, format_row_of):
    """Adds the ceilings sampled after the grid to those sampled before it, sets every row's floor
    from the larger sample of each (the stricter floor), prints the final table and returns
    (bw, peak, a line naming both samples). bench_fp8.py uses it too, with its own floor and
    row format."""
    bw_samples.append(bw_after)
    peak_samples.append(peak_after)
    bw, peak = max(bw_samples), max(peak_samples)
    ceilings = (f"BW {bw / 1e9:.0f} GB/s (samples {bw_samples[0] / 1e9:.0f}, "
                f"{bw_samples[1] / 1e9:.0f}) | {peak_name} {peak / 1e12:.0f} TFLOP/s (samples "
                f"{peak_samples[0] / 1e12:.0f}, {peak_samples[1] / 1e12:.0f})")
    print(f"\nfinal table, floors from the larger ceiling sampled before and after the grid: "
          f"{ceilings}")
    print(header)
    for row in rows:
        set_floor_of(row, bw, peak)
        print(format_row_of(row))
    return bw, peak, ceilings


def git_commit() -> str:
    """$FUSEDMOE_COMMIT when set (the device tool's copy of the tree may carry a stale .git),
    else HEAD's short hash (+ '-dirty')."""
    if os.environ.get("FUSEDMOE_COMMIT"):
        return os.environ["FUSEDMOE_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root).returncode
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------
# The GPU benchmark
# ------------------------------------------------------------------------------------------------
def run_gpu(args) -> int:
    """The benchmark proper; returns the exit status (1 when any output was wrong)."""
    from timing import Timer, measure_bandwidth, measure_peak  # noqa: PLC0415 (needs CUDA)

    fusedmoe, why_absent = fusedmoe_adapter.load()
    if fusedmoe is None:
        print(f"*** fusedmoe NOT importable ({why_absent}): running the baselines only ***")
    else:
        print(f"fusedmoe from {fusedmoe.__file__}"
              + (" (TORCH STAND-IN, not the library)" if hasattr(fusedmoe, "IS_STANDIN") else ""))
    device_name = torch.cuda.get_device_name()
    timer = Timer(args.warmup, args.reps)
    # The ceilings vary between runs (PEAK by up to ~15 %), so they are measured before and after
    # the grid and the larger of each sets the final floors: a low sample would overstate % of
    # floor.
    bw_samples, peak_samples = [measure_bandwidth(timer)], [measure_peak(timer)]
    commit = git_commit()
    print(f"device {device_name} | BW {bw_samples[0] / 1e9:.0f} GB/s (D2D copy, read+write) | "
          f"PEAK {peak_samples[0] / 1e12:.0f} TFLOP/s (cuBLAS bf16 8192^3) | "
          f"torch {torch.__version__} | commit {commit} | grouped_mm combine {args.gmm_combine}")
    print("rows as they come, floors from the ceilings above (provisional; the final table "
          "follows the grid):")
    print(HEADER)
    rows = []
    grids = ([] if args.ep_only else [False]) + ([True] if args.ep or args.ep_only else [])
    for model_name in args.models:
        model = MODELS[model_name]
        for ep in grids:
            num_local = model.experts // EP_DEGREE if ep else model.experts
            started = time.perf_counter()
            w1, w2 = make_weights(model, num_local, "cuda", seed=list(MODELS).index(model_name))
            gmm = baselines.GroupedMmMoe(w1, w2, combine=args.gmm_combine)
            for num_tokens in args.tokens:
                row = bench_point(model, ep, num_tokens, w1, w2, gmm, fusedmoe, timer, args)
                set_floor(row, bw_samples[0], peak_samples[0])
                rows.append(row)
                print(format_row(row), flush=True)
                for name, result in row["impls"].items():
                    if not result.get("ok"):
                        print(f"    {name} FAIL: {result}")
            loop_reps = sorted({r["impls"]["loop"].get("eager_reps", 0) for r in rows
                                if r["model"] == model_name and "loop" in r["impls"]})
            print(f"    ({model_name} {'ep' if ep else 'full'} grid: "
                  f"{time.perf_counter() - started:.0f} s; loop eager-timed with "
                  f"{loop_reps} reps, budget {args.loop_budget} s per point)", flush=True)
            del w1, w2, gmm
            torch.cuda.empty_cache()

    bw, peak, ceilings = final_table(rows, bw_samples, peak_samples,
                                     measure_bandwidth(timer), measure_peak(timer), "PEAK",
                                     set_floor, HEADER, format_row)

    speedups = [r["impls"]["fusedmoe"]["x_grouped_mm"] for r in rows
                if "x_grouped_mm" in r["impls"].get("fusedmoe", {})]
    mean = geomean(speedups)
    failures = [(r["model"], r["grid"], r["T"], n) for r in rows
                for n, res in r["impls"].items() if not res.get("ok")]
    print()
    if fusedmoe is None:
        print(f"geomean speed-up over torch._grouped_mm: n/a (fusedmoe not importable: "
              f"{why_absent}); baselines only")
    else:
        print(f"geomean speed-up of fusedmoe over torch._grouped_mm: "
              f"{'n/a' if mean is None else f'{mean:.2f}x'} over {len(speedups)} points")
    print(f"device {device_name} | {ceilings} | commit {commit}")
    print(f"correctness failures: {failures if failures else 'none'}")
    if args.json:
        report = {"device": device_name, "torch": torch.__version__, "commit": commit,
                  "bw_bytes_per_s": bw, "peak_flop_per_s": peak,
                  "bw_samples_bytes_per_s": bw_samples, "peak_samples_flop_per_s": peak_samples,
                  "fusedmoe_available": fusedmoe is not None, "fusedmoe_absent_reason": why_absent,
                  "warmup": args.warmup, "reps": args.reps, "loop_budget_s": args.loop_budget,
                  "gmm_combine": args.gmm_combine,
                  "geomean_x_grouped_mm": mean, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------
# Without a GPU: fusedmoe's CPU reference path against the torch loop reference
# ------------------------------------------------------------------------------------------------
CPU_MODELS = [
    ModelShape("tiny-renormalize", 256, 128, 16, 4, routing.RENORMALIZE),
    ModelShape("tiny-deepseek", 256, 136, 32, 4, routing.DEEPSEEK_V3, n_group=8, topk_group=4,
               scale=2.5, has_bias=True),
    ModelShape("tiny-llama4", 128, 64, 4, 1, routing.LLAMA4),
]


def run_cpu(args) -> int:
    """Small CPU problems: fusedmoe (CPU tensors) and the grouped_mm baseline vs the fp32 loop."""
    print("*** NO GPU FOUND: this is fusedmoe's CPU REFERENCE path on small problems, checked "
          "against the torch per-expert loop on the CPU. It is a correctness check, not a "
          "benchmark. ***")
    fusedmoe, why_absent = fusedmoe_adapter.load()
    if fusedmoe is None:
        print(f"*** fusedmoe NOT importable ({why_absent}): checking the torch baselines only ***")
    else:
        print(f"fusedmoe from {fusedmoe.__file__}"
              + (" (TORCH STAND-IN, not the library)" if hasattr(fusedmoe, "IS_STANDIN") else ""))
    failures = 0
    for model in CPU_MODELS:
        for ep in (False, True):
            num_local = max(1, model.experts // EP_DEGREE) if ep else model.experts
            w1, w2 = make_weights(model, num_local, "cpu", seed=7)
            gmm = baselines.GroupedMmMoe(w1, w2, combine=args.gmm_combine)
            for num_tokens in (1, 7, 33):
                logits, bias, x = make_inputs(model, num_tokens, "cpu", seed=num_tokens)
                ids, weights = route_for(model, logits, bias)
                ref32 = baselines.moe_reference(x, w1, w2, ids, weights)
                loop_out = baselines.moe_loop(x, w1, w2, ids, weights)
                bf16_error = (loop_out.float() - ref32).abs().max().item()
                outs = {"grouped_mm": lambda: gmm(x, ids, weights, all_local=not ep)}
                poisoned = torch.full_like(x, float("nan"))  # every row must be written
                if fusedmoe is not None and ep:
                    outs["fusedmoe"] = lambda: fusedmoe_adapter.moe_routed(
                        fusedmoe, topk_ids=routing.pack_topk(ids, weights), hidden_states=x,
                        gemm1_weights=w1, gemm2_weights=w2, num_experts=model.experts,
                        top_k=model.top_k, intermediate_size=model.inter,
                        local_expert_offset=0, local_num_experts=num_local,
                        routing_method_type=model.method, output=poisoned)
                elif fusedmoe is not None:
                    outs["fusedmoe"] = lambda: fusedmoe_adapter.moe_from_logits(
                        fusedmoe, routing_logits=logits, routing_bias=bias, hidden_states=x,
                        gemm1_weights=w1, gemm2_weights=w2, num_experts=model.experts,
                        top_k=model.top_k, n_group=model.n_group, topk_group=model.topk_group,
                        intermediate_size=model.inter, local_expert_offset=0,
                        local_num_experts=num_local, routed_scaling_factor=model.scale,
                        routing_method_type=model.method, output=poisoned)
                for name, call in outs.items():
                    try:
                        check = check_output(call(), ref32, bf16_error)
                        verdict = "ok" if check["ok"] else "FAIL"
                        detail = (f"max_err {check['max_err']:.3g} <= tol {check['tol']:.3g}, "
                                  f"rel {check['rel_norm']:.2g}")
                    except Exception as exc:  # report and go on
                        verdict, detail = "FAIL", f"{type(exc).__name__}: {exc}"
                    failures += verdict != "ok"
                    print(f"{model.name:<18}{'ep' if ep else 'full':>5}{num_tokens:>5}  "
                          f"{name:<11}{verdict:<5} {detail}")
    if fusedmoe is None:
        print("fusedmoe was not checked (not importable); exit status 1")
        return 1
    print(f"CPU reference check: {'all ok' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None):
    """The command line (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODEL,
                        help=f"comma-separated names or 'all' (default {DEFAULT_MODEL}); "
                             f"known: {', '.join(MODELS)}")
    parser.add_argument("--tokens", default=None,
                        help="comma-separated token counts (default: the benchmark's grid "
                             f"{TOKEN_GRID}; with --quick {QUICK_TOKEN_GRID})")
    parser.add_argument("--ep", action="store_true",
                        help="also run the expert-parallel grid (E/8 local experts, shard 0)")
    parser.add_argument("--ep-only", action="store_true", help="run only the expert-parallel grid")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and a smaller default token grid")
    parser.add_argument("--json", default=None, help="write the full table to this JSON file")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 5)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls (default 50)")
    parser.add_argument("--loop-budget", type=float, default=1.0,
                        help="seconds of eager timing allowed per point for the per-expert loop")
    parser.add_argument("--no-loop", action="store_true", help="do not time the per-expert loop")
    parser.add_argument("--gmm-combine", default="auto", choices=baselines.GroupedMmMoe.COMBINES,
                        help="how the grouped_mm baseline sums a token's K expert outputs")
    parser.add_argument("--cpu", action="store_true",
                        help="no-GPU mode: check fusedmoe's CPU reference path on small problems")
    args = parser.parse_args(argv)
    args.models = list(MODELS) if args.models == "all" else args.models.split(",")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    if args.tokens is None:
        args.tokens = QUICK_TOKEN_GRID if args.quick else TOKEN_GRID
    else:
        args.tokens = [int(t) for t in args.tokens.split(",")]
    if args.warmup is None:
        args.warmup = 2 if args.quick else 5
    if args.reps is None:
        args.reps = 15 if args.quick else 50
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: the GPU benchmark, or the CPU check with --cpu or without a GPU."""
    args = parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        return run_cpu(args)
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
