#!/usr/bin/env python3
"""The FP8 benchmark (bench/README.md "FP8"): five of the six models of bench_moe.py (not
gpt-oss-120b, whose H = I = 2880 is not a multiple of 128, so it has no 128x128 block-scaled form)
with 128x128 block-scaled e4m3 experts (docs/fp8.md), against the FP8 floor and, in the same run,
the BF16 operator on the same (dequantised) weights, a dequantise-then-torch._grouped_mm MoE and a
per-expert loop that dequantises each expert it uses.

Floor: max(bytes / BW, flops / PEAK_FP8), with bytes = the fp8 weights and block scales of the
experts hit + the bf16 hidden states in and out, and PEAK_FP8 a large torch._scaled_mm of e4m3
(BW: a device copy, as in bench_moe.py), both measured before and after the grid, the larger
sample setting the final floors. Every implementation is checked before it is timed, and its
graph replay again: fusedmoe FP8 against a float64 model of the FP8 arithmetic (the same
quantisation of x and of the activation; check_fp8), the bf16 ones against the float32 MoE on the
dequantised weights (bench_moe.check_output). fusedmoe writes into a NaN-poisoned output= and the
graph's output is poisoned before the checked replay, so an unwritten row fails. Times are
CUDA-graph replays with a cold L2 (the loop: eager).

Without a GPU, --cpu checks fusedmoe's FP8 CPU reference against the float64 model on small
problems (a check, not a benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines  # noqa: E402
import bench_moe as bm  # noqa: E402
import fusedmoe_adapter  # noqa: E402

TOKEN_GRID = [1, 16, 256, 4096, 16384]
BLOCK = 128
# The FP8 operator's check is the GPU rule of tests/python/reference_moe.py (FP8_GPU_MAX_REL,
# FP8_GPU_MAX_ROW_REL), not docs/STYLE.md's max-error rule of bench_moe.check_output: Hopper's FP8
# tensor cores add a 128-deep block with reduced precision (~1e-4 relative), and the activation's
# e4m3 re-quantisation turns that into different codes, moving single rows by up to ~4 % (measured
# on an H200, docs/fp8.md "Accuracy on the GPU"), beyond any bound made of bf16 roundings. A wrong
# scale, block, row or expert moves its rows by tens of per cent; an unwritten row (zeros: error 1;
# NaN: not finite) fails on its own, where the whole output's norm would let one row pass.
FP8_MAX_REL = 1e-2  # relative Frobenius error of the whole output
FP8_MAX_ROW_REL = 0.1  # the largest relative error of a single row


# ------------------------------------------------------------------------------------------------
# Weights, the float64 FP8 model, the baselines
# ------------------------------------------------------------------------------------------------
def make_fp8_weights(fp8, model: bm.ModelShape, device: str, seed: int):
    """(w1 e4m3, s1, w2 e4m3, s2) from bench_moe's bf16 weights, quantised 16 experts at a time
    (the fp32 temporaries of a whole deepseek-v3 layer would not fit)."""
    w1, w2 = bm.make_weights(model, model.experts, device, seed)
    parts = [[], [], [], []]
    for first in range(0, model.experts, 16):
        q1, s1 = fp8.quantize_fp8_weights(w1[first:first + 16])
        q2, s2 = fp8.quantize_fp8_weights(w2[first:first + 16])
        for part, value in zip(parts, (q1, s1, q2, s2)):
            part.append(value)
    del w1, w2
    return tuple(torch.cat(part) for part in parts)


def dequantized(fp8, weights, scales, first: int = 0, count: int | None = None) -> torch.Tensor:
    """bf16 copies of experts [first, first + count) (16 at a time, like make_fp8_weights)."""
    count = weights.shape[0] - first if count is None else count
    out = torch.empty(count, *weights.shape[1:], dtype=torch.bfloat16, device=weights.device)
    for start in range(0, count, 16):
        stop = min(start + 16, count)
        out[start:stop] = fp8.dequantize_fp8_weights(weights[first + start:first + stop],
                                                     scales[first + start:first + stop])
    return out


def quantized_rows(fp8, rows: torch.Tensor) -> torch.Tensor:
    """bf16 rows through the operator's per-128-group quantiser, dequantised to float32."""
    codes, scale = fp8.quantize_fp8_activations(rows)
    return (codes.float().view(rows.shape[0], -1, BLOCK) * scale.t().unsqueeze(2)).view(rows.shape)


def fp8_model(fp8, x, w1, s1, w2, s2, ids, weights) -> torch.Tensor:
    """The FP8 operator's arithmetic in float64, expert by expert: [T, H] float64. (Float64, not
    float32: cuBLAS may run float32 GEMMs in TF32, whose ~1e-3 error the activation's e4m3
    re-quantisation amplifies into a per-cent difference, docs/fp8.md "Accuracy on the GPU".)"""
    inter = w2.shape[2]
    xq = quantized_rows(fp8, x).double()
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for e in torch.unique(ids).tolist():
        tokens, slots = torch.nonzero(ids == e, as_tuple=True)
        g = xq[tokens] @ fp8.dequantize_fp8_weights(w1[e:e + 1], s1[e:e + 1])[0].double().t()
        act = (F.silu(g[:, inter:]) * g[:, :inter]).to(torch.bfloat16)
        w2e = fp8.dequantize_fp8_weights(w2[e:e + 1], s2[e:e + 1])[0].double()
        y = quantized_rows(fp8, act).double() @ w2e.t()
        out.index_add_(0, tokens, y.to(torch.bfloat16).double() * weights[tokens, slots, None].double())
    return out


def dequant_grouped_mm(fp8, w1, s1, w2, s2, x, ids, weights) -> torch.Tensor:
    """The fallback of engines without FP8 MoE kernels: dequantise every local expert to bf16 on
    each call, then the torch._grouped_mm MoE of bench_moe.py."""
    gmm = baselines.GroupedMmMoe(dequantized(fp8, w1, s1), dequantized(fp8, w2, s2))
    return gmm(x, ids, weights, all_local=True)


def dequant_loop(fp8, w1, s1, w2, s2, x, ids, weights) -> torch.Tensor:
    """A per-expert loop that dequantises each expert it uses (bf16 math, fp32 token sums)."""
    inter = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        tokens, slots = torch.nonzero(ids == e, as_tuple=True)
        g = x[tokens] @ dequantized(fp8, w1, s1, e, 1)[0].t()
        y = (F.silu(g[:, inter:]) * g[:, :inter]) @ dequantized(fp8, w2, s2, e, 1)[0].t()
        out.index_add_(0, tokens, y.float() * weights[tokens, slots, None].float())
    return out.to(torch.bfloat16)


def fp8_floor(model: bm.ModelShape, ids: torch.Tensor) -> dict:
    """The FP8 floor's bytes and flops from the routed ids (every expert local); set_floor turns
    them into a time once the ceilings are known."""
    num_tokens = ids.shape[0]
    experts_hit = int(torch.unique(ids).numel())
    h, i = model.hidden, model.inter
    weight_bytes = 3 * h * i + 4 * ((2 * i // BLOCK) * (h // BLOCK) + (h // BLOCK) * (i // BLOCK))
    floor_bytes = experts_hit * weight_bytes + 2 * num_tokens * h * 2
    floor_flops = 6 * ids.numel() * h * i
    return {"experts_hit": experts_hit, "bytes": floor_bytes, "flops": floor_flops}


def set_floor(row: dict, bw: float, peak_fp8: float) -> None:
    """The row's floor time from the ceilings, then fusedmoe FP8's % of floor and its speed-ups
    over the others (timed implementations only); called again, with the final ceilings, after
    the grid."""
    row["floor_us"] = 1e6 * max(row["bytes"] / bw, row["flops"] / peak_fp8)
    ours = row["impls"]["fusedmoe_fp8"].get("us")
    if ours:
        row["pct_floor"] = 100.0 * row["floor_us"] / ours
        for other in ("fusedmoe_bf16", "dequant_grouped_mm", "loop"):
            theirs = row["impls"].get(other, {}).get("us")
            if theirs:
                row[f"x_{other}"] = theirs / ours


def check_fp8(out: torch.Tensor, ref64: torch.Tensor) -> dict:
    """The FP8 rule above against the float64 model: finite, relative error <= FP8_MAX_REL overall
    and <= FP8_MAX_ROW_REL in every row, and exact zeros where the model's row is zero."""
    out64 = out.double()
    diff = out64 - ref64
    finite = bool(torch.isfinite(out64).all().item())
    rel = (diff.norm() / ref64.norm().clamp_min(1e-30)).item()
    ref_rows = ref64.norm(dim=-1)
    nonzero = ref_rows > 0
    row_rel = diff.norm(dim=-1)[nonzero] / ref_rows[nonzero]
    max_row_rel = row_rel.max().item() if row_rel.numel() else 0.0
    zero_rows_exact = bool((out64[~nonzero] == 0).all().item())
    ok = (finite and zero_rows_exact and rel <= FP8_MAX_REL and max_row_rel <= FP8_MAX_ROW_REL)
    return {"ok": ok, "rel_norm": rel, "max_row_rel": max_row_rel, "row_tol": FP8_MAX_ROW_REL,
            "max_err": diff.abs().max().item() if diff.numel() else 0.0, "finite": finite,
            "zero_rows_exact": zero_rows_exact}


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------
def measure_peak_fp8(timer, size: int = 8192) -> float:
    """PEAK_FP8: a size^3 e4m3 GEMM through torch._scaled_mm (per-tensor scales, bf16 out)."""
    a = torch.randn(size, size, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device="cuda").to(torch.float8_e4m3fn).t()  # column-major
    one = torch.ones((), device="cuda")
    call = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    for _ in range(3):
        call()
    us = timer.median_us(call, max(timer.reps, 20), sync_before=False)
    return 2 * size ** 3 / (us * 1e-6)


def bench_point(fusedmoe, fp8, model, num_tokens, w, w_bf16, timer, args) -> dict:
    """Checks then times every implementation at one point (as bench_moe.bench_point: a wrong
    output, eager or replayed, is marked and not timed); returns the row of the JSON table."""
    w1, s1, w2, s2 = w
    logits, bias, x = bm.make_inputs(model, num_tokens, "cuda", seed=2000 + num_tokens)
    ids, weights = bm.route_for(model, logits, bias)
    row = {"model": model.name, "T": num_tokens, **fp8_floor(model, ids), "impls": {}}
    ref_fp8 = fp8_model(fp8, x, w1, s1, w2, s2, ids, weights)
    ref_bf16 = baselines.moe_reference(x, *w_bf16, ids, weights)
    # The bf16 implementations' tolerance, as in bench_moe.py: the bf16 loop's own max error (the
    # loop is the tolerance's reference, so only finiteness and the relative norm check it).
    loop_out = dequant_loop(fp8, w1, s1, w2, s2, x, ids, weights)
    bf16_error = (loop_out.float() - ref_bf16).abs().max().item()
    check_bf16 = lambda out: bm.check_output(out, ref_bf16, bf16_error)  # noqa: E731
    check_fp8_model = lambda out: check_fp8(out, ref_fp8)  # noqa: E731
    calls = {
        "fusedmoe_fp8": (check_fp8_model, lambda output=None: fusedmoe.trtllm_fp8_block_scale_moe(
            logits, bias, x, None, w1, s1, w2, s2, model.experts, model.top_k,
            model.n_group or None, model.topk_group or None, model.inter, 0, model.experts,
            model.scale, routing_method_type=model.method, output=output)),
        "fusedmoe_bf16": (check_bf16, lambda output=None: fusedmoe.trtllm_bf16_moe(
            logits, bias, x, *w_bf16, model.experts, model.top_k, model.n_group or None,
            model.topk_group or None, model.inter, 0, model.experts,
            routed_scaling_factor=model.scale, routing_method_type=model.method, output=output)),
        "dequant_grouped_mm": (check_bf16, lambda: dequant_grouped_mm(
            fp8, w1, s1, w2, s2, x, *bm.route_for(model, logits, bias))),
        "loop": (check_bf16, lambda: dequant_loop(
            fp8, w1, s1, w2, s2, x, *bm.route_for(model, logits, bias))),
    }
    for name, (check, call) in calls.items():
        result = row["impls"].setdefault(name, {})
        try:
            if name.startswith("fusedmoe"):  # every row must be written
                out = bm.call_into_poisoned(call, x)
            elif name == "loop":
                out = loop_out
                result["tolerance_reference"] = True
            else:
                out = call()
            result.update(check(out))
            if not result["ok"]:
                continue  # a wrong output is marked, never timed
            if name == "loop":
                if not args.no_loop:
                    result["us"], _ = timer.time_eager(call, args.loop_budget)
                continue
            graph, graph_out = timer.capture(call)
            graph_out.fill_(float("nan"))  # the replay must rewrite every row
            graph.replay()
            graph_check = check(graph_out)
            result["graph_ok"] = graph_check["ok"]
            if not graph_check["ok"]:
                result["ok"] = False
                result["error"] = f"graph replay output wrong: {graph_check}"
                continue
            result["us"] = timer.time_graph(graph)
            del graph, graph_out
        except Exception as exc:  # record and go on
            result["ok"] = False
            result["error"] = f"{type(exc).__name__}: {exc}"
    torch.cuda.empty_cache()
    return row


def format_row(row: dict) -> str:
    us = lambda name: row["impls"].get(name, {}).get("us")  # noqa: E731
    cell = lambda v, spec: f"{v:{spec}}" if v is not None else "-"  # noqa: E731
    return (f"{row['model']:<16}{row['T']:>7}{row['floor_us']:>10.1f} | "
            f"{cell(us('fusedmoe_fp8'), '.1f'):>10}{cell(row.get('pct_floor'), '.1f'):>8}"
            f"{cell(row.get('x_fusedmoe_bf16'), '.2f'):>8}{cell(row.get('x_dequant_grouped_mm'), '.2f'):>8} | "
            f"{cell(us('fusedmoe_bf16'), '.1f'):>10}{cell(us('dequant_grouped_mm'), '.1f'):>10}"
            f"{cell(us('loop'), '.1f'):>10}")


HEADER = (f"{'model':<16}{'T':>7}{'floor us':>10} | {'fp8 us':>10}{'%floor':>8}{'x bf16':>8}"
          f"{'x dqgmm':>8} | {'bf16 us':>10}{'dqgmm us':>10}{'loop us':>10}")


def run_gpu(args) -> int:
    from timing import Timer, measure_bandwidth  # noqa: PLC0415 (needs CUDA)

    fusedmoe, why_absent = fusedmoe_adapter.load()
    if fusedmoe is None or not hasattr(fusedmoe, "trtllm_fp8_block_scale_moe"):
        print(f"*** fusedmoe with the FP8 variant NOT importable ({why_absent}) ***")
        return 1
    from fusedmoe import fp8  # noqa: PLC0415
    timer = Timer(args.warmup, args.reps)
    # Ceilings before and after the grid, the larger of each for the final floors (bench_moe.py).
    bw_samples, peak_samples = [measure_bandwidth(timer)], [measure_peak_fp8(timer)]
    device, commit = torch.cuda.get_device_name(), bm.git_commit()
    print(f"device {device} | BW {bw_samples[0] / 1e9:.0f} GB/s | PEAK_FP8 "
          f"{peak_samples[0] / 1e12:.0f} TFLOP/s (torch._scaled_mm e4m3 8192^3) | commit {commit}")
    print("rows as they come, floors from the ceilings above (provisional; the final table "
          "follows the grid):")
    print(HEADER)
    rows, failures = [], []
    for name in args.models:
        model = bm.MODELS[name]
        if model.hidden % BLOCK or model.inter % BLOCK:
            print(f"    ({name}: H {model.hidden} / I {model.inter} are not multiples of {BLOCK}: "
                  f"no 128x128 block-scaled form; skipped)", flush=True)
            continue
        started = time.perf_counter()
        w = make_fp8_weights(fp8, model, "cuda", seed=list(bm.MODELS).index(name))
        w_bf16 = (dequantized(fp8, w[0], w[1]), dequantized(fp8, w[2], w[3]))
        for num_tokens in args.tokens:
            row = bench_point(fusedmoe, fp8, model, num_tokens, w, w_bf16, timer, args)
            set_floor(row, bw_samples[0], peak_samples[0])
            rows.append(row)
            print(format_row(row), flush=True)
            for impl, result in row["impls"].items():
                if not result.get("ok"):
                    failures.append((name, num_tokens, impl))
                    print(f"    {impl} FAIL: {result}")
        print(f"    ({name}: {time.perf_counter() - started:.0f} s)", flush=True)
        del w, w_bf16
        torch.cuda.empty_cache()
    bw, peak_fp8, ceilings = bm.final_table(rows, bw_samples, peak_samples,
                                            measure_bandwidth(timer), measure_peak_fp8(timer),
                                            "PEAK_FP8", set_floor, HEADER, format_row)
    print(f"device {device} | {ceilings} | commit {commit}")
    print(f"correctness failures: {failures if failures else 'none'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"device": device, "commit": commit, "bw_bytes_per_s": bw,
             "peak_fp8_flop_per_s": peak_fp8, "bw_samples_bytes_per_s": bw_samples,
             "peak_fp8_samples_flop_per_s": peak_samples, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------
# CPU: the FP8 reference against the float64 model
# ------------------------------------------------------------------------------------------------
def run_cpu(args) -> int:
    print("*** NO GPU FOUND: this is fusedmoe's FP8 CPU REFERENCE checked against the float64 "
          "model of the FP8 arithmetic on small problems; a check, not a benchmark. ***")
    fusedmoe, why_absent = fusedmoe_adapter.load()
    if fusedmoe is None or not hasattr(fusedmoe, "trtllm_fp8_block_scale_moe"):
        print(f"fusedmoe with the FP8 variant not importable ({why_absent}); exit status 1")
        return 1
    from fusedmoe import fp8  # noqa: PLC0415
    failures = 0
    models = [bm.ModelShape("tiny-renormalize", 256, 128, 16, 4, bm.routing.RENORMALIZE),
              bm.ModelShape("tiny-deepseek", 384, 256, 32, 4, bm.routing.DEEPSEEK_V3, n_group=8,
                            topk_group=4, scale=2.5, has_bias=True)]
    for model in models:
        w = make_fp8_weights(fp8, model, "cpu", seed=7)
        for num_tokens in (1, 7, 33):
            logits, bias, x = bm.make_inputs(model, num_tokens, "cpu", seed=num_tokens)
            ids, weights = bm.route_for(model, logits, bias)
            ref = fp8_model(fp8, x, *w, ids, weights)
            poisoned = torch.full_like(x, float("nan"))  # every row must be written
            out = fusedmoe.trtllm_fp8_block_scale_moe(
                logits, bias, x, None, *w[:2], *w[2:], model.experts, model.top_k,
                model.n_group or None, model.topk_group or None, model.inter, 0, model.experts,
                model.scale, routing_method_type=model.method, output=poisoned)
            check = check_fp8(out, ref)
            ok = check["ok"] and out.data_ptr() == poisoned.data_ptr()
            failures += not ok
            print(f"{model.name:<18}{num_tokens:>5}  fusedmoe_fp8  {'ok' if ok else 'FAIL'}  "
                  f"rel {check['rel_norm']:.2g}, worst row {check['max_row_rel']:.2g} "
                  f"<= {FP8_MAX_ROW_REL}, finite {check['finite']}")
    print(f"FP8 CPU reference check: {'all ok' if failures == 0 else f'{failures} FAILED'}")
    return 1 if failures else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=bm.DEFAULT_MODEL,
                        help=f"comma-separated names or 'all'; known: {', '.join(bm.MODELS)}")
    parser.add_argument("--tokens", default=None, help=f"token counts (default {TOKEN_GRID})")
    parser.add_argument("--json", default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--loop-budget", type=float, default=1.0)
    parser.add_argument("--no-loop", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    args.models = list(bm.MODELS) if args.models == "all" else args.models.split(",")
    unknown = [m for m in args.models if m not in bm.MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}")
    args.tokens = TOKEN_GRID if args.tokens is None else [int(t) for t in args.tokens.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        return run_cpu(args)
    return run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
