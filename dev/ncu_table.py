#!/usr/bin/env python3
"""Hardware counters of a call's GEMMs and finalize at prefill sizes, one table row per kernel
(experiment; the diagnosis that issues 16 and 18 ask for where a point misses its target).

For each (dtype, model), one process runs the operator of one build (a cp312 wheel) at every T
under ncu: an eager warm-up call, then one call between cudaProfilerStart and cudaProfilerStop
(ncu --profile-from-start off), so that exactly that call's kernels are profiled, the grouped
GEMMs and the finalize (a call's kernels are told apart by its GEMM1, which starts each call).
The benchmarks' weights and inputs (dev/ab_wheels.py's call_builder), --clock-control none.
Per kernel it prints: the time; useful TFLOP/s (T K 2 H 2I for GEMM1, T K 2 I H for GEMM2, the
rows a model computes, padding not counted) and that as % of --peak; ncu's SM and DRAM
throughput (% of peak, elapsed; the tensor pipe's own counters read n/a on this card); DRAM
bytes read over the GEMM's weight bytes (1.00: each weight byte read once) and written; the L2
hit rate; and the three largest warp stall reasons (cycles per issued instruction, ncu's
WarpStateStats). Units are ncu's base units (--print-units base). The raw CSV of each process
is kept in $OUT.

  python3 dev/ncu_table.py --wheel build-carry/wheel/*.whl --dtype bf16,fp8 \\
      --tokens 1024,4096,16384 [--models qwen3-30b-a3b,...] [--peak-bf16 776 --peak-fp8 1513]

Run on the GPU machine (ncu reads the counters on Firecracker machines; bench/NOTES.md); a point
takes ~10-15 s, mostly the interpreter and the weights.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))

KERNELS = r"regex:sm90_(gemm1|gemm2|gemm_fp8)|finalize_kernel"
METRICS = ",".join([
    "gpu__time_duration.sum",
    "sm__cycles_elapsed.avg.per_second",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram__bytes_read.sum",
    "dram__bytes_write.sum",
    "lts__t_sector_hit_rate.pct",
])
STALL = re.compile(r"smsp__(?:average_)?warps?_issue_stalled_(\w+?)_per_issue_active\.ratio")


def worker(args) -> int:
    """Runs under ncu: every T of one model, each an eager warm-up, then one profiled call."""
    import torch  # noqa: PLC0415

    import ab_wheels  # noqa: PLC0415

    weights, operator = ab_wheels.call_builder(args)
    import bench_moe as bm  # noqa: PLC0415

    model = bm.MODELS[args.models[0]]
    w = weights(model)
    cudart = torch.cuda.cudart()
    for num_tokens in args.tokens:
        call = operator(model, w, num_tokens)
        call()
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        call()
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
    return 0


def kernel_role(name: str) -> str:
    """gemm1, gemm2 or finalize from a kernel's name (BF16: sm90_gemm1_* / sm90_gemm2_*; FP8:
    sm90_gemm_fp8_kernel<claim, gated, tma_a>, gated = GEMM1 of the gated activations, which every
    benchmark model has; ncu prints the bools as true / false or 1 / 0)."""
    if "finalize" in name:
        return "finalize"
    if "gemm1" in name:
        return "gemm1"
    if "gemm2" in name:
        return "gemm2"
    match = re.search(r"sm90_gemm_fp8_kernel<\s*\w+,\s*(\w+)", name)
    if match:
        return "gemm1" if match.group(1) in ("true", "1") else "gemm2"
    return "?"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return float("nan")


def table(args, rows: list[dict], dtype: str, name: str, out) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_moe as bm  # noqa: PLC0415

    model = bm.MODELS[name]
    H, I, K, E = model.hidden, model.inter, model.top_k, model.experts
    elem = 1 if dtype == "fp8" else 2
    weight_bytes = {"gemm1": E * 2 * I * H * elem, "gemm2": E * H * I * elem, "finalize": 0}
    peak = args.peak_fp8 if dtype == "fp8" else args.peak_bf16
    # One call per T, in order: a call's kernels start at its GEMM1 (the one GEMM1 of each call).
    calls: list[list[dict]] = []
    for row in rows:
        if kernel_role(row["Kernel Name"]) == "gemm1" or not calls:
            calls.append([])
        calls[-1].append(row)
    if len(calls) != len(args.tokens):
        print(f"{dtype} {name}: {len(calls)} calls profiled, expected {len(args.tokens)}: "
              + ", ".join(r["Kernel Name"][:60] for r in rows), file=out)
        return
    for num_tokens, row in ((t, r) for t, call in zip(args.tokens, calls) for r in call):
        role = kernel_role(row["Kernel Name"])
        us = number(row["gpu__time_duration.sum"]) / 1e3
        flops = {"gemm1": 4.0 * num_tokens * K * H * I, "gemm2": 2.0 * num_tokens * K * H * I,
                 "finalize": 0.0}.get(role, 0.0)
        tflops = flops / us / 1e6 if us > 0 else 0.0
        read = number(row["dram__bytes_read.sum"])
        written = number(row["dram__bytes_write.sum"])
        stalls = sorted(((number(v), STALL.match(k).group(1)) for k, v in row.items()
                         if STALL.match(k) and STALL.match(k).group(1) != "selected"),
                        reverse=True)[:3]
        reread = f"{read / weight_bytes[role]:5.2f}x" if weight_bytes.get(role) else "    -"
        print(f"{dtype:<5}{name:<17}{num_tokens:>6} {role:<9}{us:9.1f} us"
              f"{tflops:7.0f} TF/s {100 * tflops / peak:5.1f} %pk"
              f" SM {number(row[METRICS.split(',')[2]]):5.1f} %"
              f" DRAM {number(row[METRICS.split(',')[3]]):5.1f} %"
              f" | DRAM rd {read / 1e9:6.2f} GB ({reread} w) wr {written / 1e9:5.2f} GB"
              f" | L2 hit {number(row['lts__t_sector_hit_rate.pct']):5.1f} %"
              f" | {number(row['sm__cycles_elapsed.avg.per_second']) / 1e9:4.2f} GHz"
              f" | stalls " + ", ".join(f"{r} {v:.1f}" for v, r in stalls), file=out, flush=True)


def rows_of(text: str) -> list[dict]:
    """The kernels of ncu's raw CSV page (its quoted lines; the units row has no ID)."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    return [r for r in reader if r.get("Kernel Name") and r.get("ID", "").strip().isdigit()]


def driver(args) -> int:
    if args.from_dir:
        import ab_wheels  # noqa: PLC0415

        for dtype in args.dtype.split(","):
            for name in ab_wheels.model_names(argparse.Namespace(models=args.models, dtype=dtype)):
                csv_path = Path(args.from_dir) / f"ncu_{dtype}_{name}.csv"
                if csv_path.exists():
                    table(args, rows_of(csv_path.read_text()), dtype, name, sys.stdout)
        return 0
    wheels = sorted(glob.glob(args.wheel))
    if len(wheels) != 1:
        print(f"--wheel {args.wheel}: want one wheel, found {wheels}")
        return 2
    site = Path(args.work) / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--upgrade", "--target", str(site), wheels[0]], check=True)
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    print(f"ncu_table: {wheels[0]}; PEAK bf16 {args.peak_bf16}, fp8 {args.peak_fp8} TFLOP/s "
          "(useful flops only; the floor's PEAK comes from the benchmark's run)")
    import ab_wheels  # noqa: PLC0415

    for dtype in args.dtype.split(","):
        names = ab_wheels.model_names(argparse.Namespace(models=args.models, dtype=dtype))
        for name in names:
            cmd = [ncu, "--clock-control", "none", "--profile-from-start", "off",
                   "--kernel-name", KERNELS, "--print-kernel-base", "demangled",
                   "--print-units", "base",
                   "--metrics", METRICS, "--section", "WarpStateStats",
                   "--csv", "--page", "raw",
                   sys.executable, __file__, "--worker", "--dtype", dtype, "--models", name,
                   "--tokens", ",".join(map(str, args.tokens))]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
            (out_dir / f"ncu_{dtype}_{name}.csv").write_text(done.stdout)
            lines = [line for line in done.stdout.splitlines() if line.startswith('"')]
            if done.returncode != 0 or len(lines) < 2:
                print(f"{dtype} {name}: ncu rc {done.returncode}; {done.stderr[-1500:]}")
                continue
            table(args, rows_of(done.stdout), dtype, name, sys.stdout)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", default="build-carry/wheel/*.whl")
    parser.add_argument("--dtype", default="bf16,fp8", help="bf16, fp8 or both (comma-separated)")
    parser.add_argument("--models", default="all",
                        help="comma-separated, or all: every benchmark model of the dtype")
    parser.add_argument("--tokens", default="1024,4096,16384")
    parser.add_argument("--peak-bf16", type=float, default=776.0,
                        help="TFLOP/s for the %%pk column (default: cuBLAS 8192^3 on an H200)")
    parser.add_argument("--peak-fp8", type=float, default=1513.0,
                        help="TFLOP/s for the %%pk column (default: torch._scaled_mm on an H200)")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per (dtype, model)")
    parser.add_argument("--work", default="/tmp/ncu_table")
    parser.add_argument("--from", dest="from_dir", default=None,
                        help="table the ncu_DTYPE_MODEL.csv files kept in this folder by an earlier "
                        "run instead of running ncu (--tokens as that run's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    args.tokens = [int(t) for t in args.tokens.split(",")]
    if args.worker:
        args.ep = args.routed = False
        return worker(args)
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
