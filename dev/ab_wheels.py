#!/usr/bin/env python3
"""A/B(/C...) of operator builds in one device call (experiment; issues 16-18).

Each build is a cp312 wheel (scripts/prebuild_device.sh makes one in build-carry/wheel); each is
installed into its own directory and run in its own process, so two builds of the same package
never meet in one interpreter. Per build and round (rounds alternate A B A B, for drift), a worker
times the operator at every (model, T): `--dtype fp8`, `trtllm_fp8_block_scale_moe` as
bench/bench_fp8.py does; `--dtype bf16`, `trtllm_bf16_moe` from logits as bench/bench_moe.py
does, or with `--ep` the routed call on shard 0 of 8 (E / 8 local experts, ids over all E; FP8:
`--routed`, the routed call with every expert local, the same routing given as packed ids); the
same weights and inputs as those benchmarks, CUDA-graph replay, cold L2. It dumps each output
and lists the CUDA kernels of one eager call with their times (torch.profiler). The driver then prints, per point, each
build's median time over its rounds, its ratio to the first build's, and whether its output is
bitwise the first build's; and per point and build, the three longest kernels.

  python3 dev/ab_wheels.py --wheel base=.ab-base/fusedmoe.whl --wheel new=build-carry/wheel/*.whl \
      --models qwen3-30b-a3b,deepseek-v3 --tokens 256,4096,16384 [--dtype bf16 [--ep]] [--rounds 2]
`--models` defaults to all: every benchmark model the dtype has (a change measured on a few
models once hid a 20 % loss on another: bench/NOTES.md, "Benchmark of record for issue 18
(commit 87a9405, NVIDIA H200, one call)").
`--env LABEL=VAR=VALUE` runs that build's workers with an environment variable: one wheel under
two labels times a variant's run-time switch both ways in the same call.
The baseline's wheel: check out the baseline, run scripts/prebuild_device.sh and copy
build-carry/wheel/*.whl aside (e.g. build-carry/base/) before building the change.

Exit status 1 if a build's output differs from the first build's anywhere (pass --allow-diff
when a change is meant to change the bits).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# Worker: one build, one round
# ------------------------------------------------------------------------------------------------
def call_builder(args):
    """(weights(model), operator(model, w, num_tokens)) for args.dtype / args.ep / args.routed:
    the model's expert weights as the benchmarks make them (FP8: quantised), and a callable that
    runs the operator once at T = num_tokens with the benchmarks' inputs. Imports the fusedmoe on
    sys.path (the build under test); dev/ncu_table.py uses it too."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_moe as bm  # noqa: PLC0415
    import fusedmoe  # noqa: PLC0415
    import routing  # noqa: PLC0415

    # FP8 only where it is asked for, so that a build from before the FP8 operator times BF16.
    def weights(model):
        seed = list(bm.MODELS).index(model.name)
        if args.dtype == "fp8":
            import bench_fp8  # noqa: PLC0415
            from fusedmoe import fp8  # noqa: PLC0415

            return bench_fp8.make_fp8_weights(fp8, model, "cuda", seed=seed)
        num_local = model.experts // bm.EP_DEGREE if args.ep else model.experts
        return bm.make_weights(model, num_local, "cuda", seed)

    def operator(model, w, num_tokens):
        if args.dtype == "fp8":
            logits, bias, x = bm.make_inputs(model, num_tokens, "cuda", seed=2000 + num_tokens)
            if args.routed:  # the same routing, as packed ids
                packed = routing.pack_topk(*bm.route_for(model, logits, bias))
                return lambda: fusedmoe.trtllm_fp8_block_scale_routed_moe(
                    packed, None, x, None, *w, model.experts, model.top_k, None, None,
                    model.inter, 0, model.experts, 1.0, routing_method_type=model.method)
            return lambda: fusedmoe.trtllm_fp8_block_scale_moe(
                logits, bias, x, None, *w, model.experts, model.top_k, model.n_group or None,
                model.topk_group or None, model.inter, 0, model.experts, model.scale,
                routing_method_type=model.method)
        w1, w2 = w
        logits, bias, x = bm.make_inputs(model, num_tokens, "cuda", seed=1000 + num_tokens)
        if args.ep:
            packed = routing.pack_topk(*bm.route_for(model, logits, bias))
            return lambda: fusedmoe.trtllm_bf16_routed_moe(
                topk_ids=packed, hidden_states=x, gemm1_weights=w1, gemm2_weights=w2,
                num_experts=model.experts, top_k=model.top_k, n_group=0, topk_group=0,
                intermediate_size=model.inter, local_expert_offset=0,
                local_num_experts=w1.shape[0], routed_scaling_factor=1.0,
                routing_method_type=model.method)
        return lambda: fusedmoe.trtllm_bf16_moe(
            routing_logits=logits, routing_bias=bias, hidden_states=x, gemm1_weights=w1,
            gemm2_weights=w2, num_experts=model.experts, top_k=model.top_k,
            n_group=model.n_group, topk_group=model.topk_group, intermediate_size=model.inter,
            local_expert_offset=0, local_num_experts=w1.shape[0],
            routed_scaling_factor=model.scale, routing_method_type=model.method)

    return weights, operator


def model_names(args) -> list[str]:
    """args.models, or with "all" every benchmark model the dtype has (FP8: H and I multiples of
    128)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_fp8  # noqa: PLC0415
    import bench_moe as bm  # noqa: PLC0415

    if args.models != ["all"]:
        return args.models
    return [n for n, m in bm.MODELS.items()
            if args.dtype != "fp8" or (m.hidden % bench_fp8.BLOCK == 0
                                       and m.inter % bench_fp8.BLOCK == 0)]


def worker(args) -> int:
    import torch  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    weights, operator = call_builder(args)
    import bench_moe as bm  # noqa: PLC0415
    import fusedmoe  # noqa: PLC0415
    from timing import Timer  # noqa: PLC0415

    timer = Timer(args.warmup, args.reps)
    dump = Path(args.dump)
    dump.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in model_names(args):
        model = bm.MODELS[name]
        w = weights(model)
        for num_tokens in args.tokens:
            call = operator(model, w, num_tokens)
            out = call()
            out = out[0] if isinstance(out, (list, tuple)) else out
            torch.save(out.cpu(), dump / f"{name}_{num_tokens}.pt")
            graph, _ = timer.capture(call)
            us = timer.time_graph(graph)
            del graph
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            kernels = sorted(((e.key, e.device_time_total) for e in prof.key_averages()
                              if e.device_time_total > 0), key=lambda kv: -kv[1])
            rows.append({"model": name, "T": num_tokens, "us": us,
                         "kernels": [[k, t] for k, t in kernels[:6]]})
            print(f"{fusedmoe.__file__}: {name} T={num_tokens}: {us:.1f} us", flush=True)
        del w
        torch.cuda.empty_cache()
    Path(args.result).write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                             "rows": rows}))
    return 0


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def short_kernel(name: str) -> str:
    """void fusedmoe::kernels::sm90_gemm_fp8_kernel<true, false>(...) -> sm90_gemm_fp8_kernel<true, false>."""
    return name.split("(")[0].removeprefix("void ").replace("fusedmoe::kernels::", "")


def driver(args) -> int:
    import torch  # noqa: PLC0415

    extra_env: dict[str, dict[str, str]] = {}
    for spec in args.env:  # LABEL=VAR=VALUE: the build's worker runs with VAR=VALUE
        label, _, assignment = spec.partition("=")
        var, _, value = assignment.partition("=")
        extra_env.setdefault(label, {})[var] = value
    builds = []
    for spec in args.wheel:
        label, _, pattern = spec.partition("=")
        wheels = sorted(glob.glob(pattern))
        if not label or len(wheels) != 1:
            print(f"--wheel {spec}: want LABEL=PATH matching one wheel, found {wheels}")
            return 2
        site = Path(args.work) / f"site_{label}"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--upgrade", "--target", str(site), wheels[0]], check=True)
        builds.append((label, site))
    print(f"device {torch.cuda.get_device_name()} | builds: "
          + ", ".join(f"{label} ({spec.partition('=')[2]})" for (label, _), spec in zip(builds, args.wheel)))
    results = {label: [] for label, _ in builds}
    for round_ in range(args.rounds):
        for label, site in builds:
            result = Path(args.out) / f"ab_{label}_{round_}.json"
            env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                       **extra_env.get(label, {}))
            cmd = [sys.executable, __file__, "--worker", "--dtype", args.dtype,
                   *(["--ep"] if args.ep else []), *(["--routed"] if args.routed else []),
                   "--models", ",".join(args.models),
                   "--tokens", ",".join(map(str, args.tokens)), "--dump",
                   str(Path(args.work) / f"dump_{label}"), "--result", str(result),
                   "--warmup", str(args.warmup), "--reps", str(args.reps)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{label} round {round_}: FAILED\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
                return 1
            results[label].append(json.loads(result.read_text())["rows"])
            if round_ == 0:  # which package the worker imported
                print(f"{label}: {done.stdout.splitlines()[0].split(': ')[0]}")
    base = builds[0][0]
    differing = []
    print(f"{'model':<16}{'T':>7} | " + " | ".join(f"{label:>10}{'x ' + base:>9}{'bits':>6}"
                                                    for label, _ in builds))
    for index, row in enumerate(results[base][0]):
        key = f"{row['model']}_{row['T']}.pt"
        ref = torch.load(Path(args.work) / f"dump_{base}" / key)
        base_us = statistics.median(r[index]["us"] for r in results[base])
        cells = []
        for label, _ in builds:
            us = statistics.median(r[index]["us"] for r in results[label])
            same = torch.equal(torch.load(Path(args.work) / f"dump_{label}" / key), ref)
            if not same:
                differing.append((label, row["model"], row["T"]))
            cells.append(f"{us:>10.1f}{base_us / us:>9.3f}{'same' if same else 'DIFF':>6}")
        print(f"{row['model']:<16}{row['T']:>7} | " + " | ".join(cells))
    print("longest kernels of one eager call (us), round 0:")
    for index, row in enumerate(results[base][0]):
        for label, _ in builds:
            kernels = results[label][0][index]["kernels"][:3]
            print(f"  {row['model']:<16}{row['T']:>7} {label:>10}: "
                  + ", ".join(f"{short_kernel(k)} {t:.1f}" for k, t in kernels))
    if differing:
        print(f"outputs differing from {base}'s: {differing}")
    return 1 if differing and not args.allow_diff else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", action="append", default=[], help="LABEL=WHEEL (first: baseline)")
    parser.add_argument("--env", action="append", default=[],
                        help="LABEL=VAR=VALUE: an environment variable for that build's workers "
                             "(one wheel under two labels times it with and without)")
    parser.add_argument("--dtype", choices=("fp8", "bf16"), default="fp8")
    parser.add_argument("--ep", action="store_true", help="bf16: the routed call on shard 0 of 8")
    parser.add_argument("--routed", action="store_true",
                        help="fp8: the routed call (packed ids of the same routing), all experts local")
    parser.add_argument("--models", default="all",
                        help="comma-separated, or all: every benchmark model of the dtype")
    parser.add_argument("--tokens", default="256,4096,16384")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default=os.environ.get("OUT", "build-device/ab"),
                        help="the workers' JSON results (default $OUT)")
    parser.add_argument("--work", default="/tmp/ab_wheels", help="installed builds and output dumps")
    parser.add_argument("--allow-diff", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.tokens = [int(t) for t in args.tokens.split(",")]
    if args.ep and args.dtype != "bf16" or args.routed and args.dtype != "fp8":
        parser.error("--ep is for --dtype bf16, --routed for --dtype fp8")
    if args.worker:
        return worker(args)
    if len(args.wheel) < 1:
        parser.error("--wheel LABEL=WHEEL at least once")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
