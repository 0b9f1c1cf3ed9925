#!/usr/bin/env python3
"""Where a decode call's microseconds go (experiment; issue 17): the kernel timeline of graph
replays, with and without programmatic dependent launch.

For each model and T, the operator's call (BF16 from logits as bench/bench_moe.py makes it; with
`--ep`, the routed call on shard 0 of 8; with `--fp8`, the FP8 call of bench/bench_fp8.py) is
captured in a CUDA graph once with enable_pdl=True and once with False. Each graph is replayed
`--reps` times under torch.profiler, each replay after an L2 flush (bench/timing.py), and the
replay whose span is the median is printed kernel by kernel:

  start   offset of the kernel's start from the first kernel's start (us)
  dur     the kernel's duration (us), as CUPTI records it (a PDL kernel that starts early and
          waits in griddepcontrol.wait counts its wait)
  gap     start minus the previous kernel's end (us): > 0 idle GPU between kernels (launch
          latency the graph did not hide), < 0 overlap bought by PDL

plus the span (first start to last end), the sum of gaps, and the graph replay's time by CUDA
events without the profiler (bench/timing.py's Timer.time_graph), whose difference from the span
is the graph launch's own cost. Run on the GPU machine with the package installed:

  python3 dev/decode_timeline.py --models qwen3-30b-a3b,llama4-scout --tokens 1,4,16 [--ep] [--fp8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def kernels_of(trace_path: str, flush_name: str) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every GPU kernel in a chrome trace, in start order."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    out = [(e["name"], float(e["ts"]), float(e["ts"]) + float(e["dur"]))
           for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    return sorted((k for k in out if flush_name not in k[0]), key=lambda k: k[1])


def short(name: str) -> str:
    return (name.split("(")[0].removeprefix("void ").replace("fusedmoe::kernels::", "")
            .replace("fusedmoe::detail::", ""))[:60]


def main() -> int:
    import torch  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    import bench_fp8  # noqa: PLC0415
    import bench_moe as bm  # noqa: PLC0415
    import fusedmoe  # noqa: PLC0415
    import routing  # noqa: PLC0415
    from fusedmoe import fp8  # noqa: PLC0415
    from timing import Timer  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="qwen3-30b-a3b")
    parser.add_argument("--tokens", default="1,4,16")
    parser.add_argument("--ep", action="store_true")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON of every printed timeline")
    args = parser.parse_args()

    timer = Timer(warmup=3, reps=args.reps)
    results = []
    print(f"device {torch.cuda.get_device_name()} | fusedmoe {fusedmoe.__file__}")
    for name in args.models.split(","):
        model = bm.MODELS[name]
        seed = list(bm.MODELS).index(name)
        if args.fp8:
            weights = bench_fp8.make_fp8_weights(fp8, model, "cuda", seed=seed)
        else:
            weights = bm.make_weights(model, model.experts // bm.EP_DEGREE if args.ep else model.experts,
                                      "cuda", seed)
        for num_tokens in (int(t) for t in args.tokens.split(",")):
            logits, bias, x = bm.make_inputs(model, num_tokens, "cuda", seed=1000 + num_tokens)
            packed = routing.pack_topk(*bm.route_for(model, logits, bias)) if args.ep else None

            def call(pdl):
                if args.fp8:
                    return fusedmoe.trtllm_fp8_block_scale_moe(
                        logits, bias, x, None, *weights, model.experts, model.top_k,
                        model.n_group or None, model.topk_group or None, model.inter, 0,
                        model.experts, model.scale, routing_method_type=model.method,
                        enable_pdl=pdl)
                w1, w2 = weights
                if args.ep:
                    return fusedmoe.trtllm_bf16_routed_moe(
                        topk_ids=packed, hidden_states=x, gemm1_weights=w1, gemm2_weights=w2,
                        num_experts=model.experts, top_k=model.top_k, n_group=0, topk_group=0,
                        intermediate_size=model.inter, local_expert_offset=0,
                        local_num_experts=w1.shape[0], routed_scaling_factor=1.0,
                        routing_method_type=model.method, enable_pdl=pdl)
                return fusedmoe.trtllm_bf16_moe(
                    routing_logits=logits, routing_bias=bias, hidden_states=x, gemm1_weights=w1,
                    gemm2_weights=w2, num_experts=model.experts, top_k=model.top_k,
                    n_group=model.n_group, topk_group=model.topk_group,
                    intermediate_size=model.inter, local_expert_offset=0,
                    local_num_experts=w1.shape[0], routed_scaling_factor=model.scale,
                    routing_method_type=model.method, enable_pdl=pdl)

            for pdl in (True, False):
                graph, _ = timer.capture(lambda: call(pdl))
                event_us = timer.time_graph(graph)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.reps):
                        timer.flush_l2()
                        graph.replay()
                    torch.cuda.synchronize()
                with tempfile.NamedTemporaryFile(suffix=".json") as trace:
                    prof.export_chrome_trace(trace.name)
                    kernels = kernels_of(trace.name, "at::native::")  # not Timer.flush_l2's sum
                del graph
                per = len(kernels) // args.reps
                if per == 0 or len(kernels) % args.reps:
                    print(f"{name} T={num_tokens} pdl={pdl}: {len(kernels)} kernels in "
                          f"{args.reps} replays, not a whole number per replay; skipped")
                    continue
                replays = [kernels[i * per:(i + 1) * per] for i in range(args.reps)]
                spans = [r[-1][2] - r[0][1] for r in replays]
                median = sorted(range(args.reps), key=lambda i: spans[i])[args.reps // 2]
                replay = replays[median]
                t0 = replay[0][1]
                rows, previous_end, gaps = [], None, 0.0
                for kname, start, end in replay:
                    gap = None if previous_end is None else start - previous_end
                    gaps += max(gap or 0.0, 0.0)
                    rows.append({"kernel": short(kname), "start": start - t0, "dur": end - start,
                                 "gap": gap})
                    previous_end = max(end, previous_end or end)
                span = statistics.median(spans)
                print(f"\n{name} T={num_tokens}{' EP 0/8' if args.ep else ''}"
                      f"{' fp8' if args.fp8 else ''} pdl={pdl}: {per} kernels, span {span:.1f} us "
                      f"(median of {args.reps}), idle gaps {gaps:.1f} us, graph replay by events "
                      f"{event_us:.1f} us")
                print(f"  {'kernel':60s} {'start':>8s} {'dur':>8s} {'gap':>8s}")
                for r in rows:
                    gap = "" if r["gap"] is None else f"{r['gap']:8.1f}"
                    print(f"  {r['kernel']:60s} {r['start']:8.1f} {r['dur']:8.1f} {gap:>8s}")
                results.append({"model": name, "T": num_tokens, "ep": args.ep, "fp8": args.fp8,
                                "pdl": pdl, "span_us": span, "idle_gaps_us": gaps,
                                "graph_event_us": event_us, "kernels": rows})
        del weights
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                              "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
