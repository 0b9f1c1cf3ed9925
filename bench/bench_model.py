#!/usr/bin/env python3
"""Whole-model benchmark: a transformers MoE model with experts_implementation = fusedmoe,
grouped_mm and batched_mm side by side.

The model is built from a real model's config (default Qwen3-30B-A3B: H 2048, moe_intermediate
768, 128 experts, top-8, real vocabulary 151936) with random weights and fewer decoder layers than
the real model (``--layers``, default 4 of 48), in bf16 on one GPU. Only the routed experts change
between columns: router, attention, shared experts, norms and the LM head are the model's own code.

Phases (one line per phase and implementation):
  * prefill T tokens (default 2048 and 8192, one sequence, ``logits_to_keep=1`` as generation
    does): eager forward, median of CUDA-event times; tokens/s = T / step time.
  * decode at batch B (default 1, 8, 64) after a context of ``--context`` tokens in a static KV
    cache: one token per sequence per step, captured in a CUDA graph and replayed ("graph"); when
    the capture fails the step is timed eagerly and the mode column says "eager" and why.
    tokens/s = B / step time.
Experts share: the experts modules' calls of one step (their inputs recorded by hooks during a real
step, so the routing is the model's own) are timed alone, the same way (graph or eager), and
divided by the step time. batched_mm gathers one [2I, H] weight matrix per (token, expert) pair; a
point where that exceeds a quarter of free GPU memory is skipped and said so.

Before timing, every implementation's last-token logits on a 64-token prompt are compared with
grouped_mm's (fusedmoe must also have run in every layer, not fallen back). Output: a table, and
``--json PATH``. Without a GPU it says so and stops; ``--cpu`` runs a tiny smoke version on the CPU
(fusedmoe's CPU reference; times meaningless). Expected to take 1-2 minutes on an H200 with the
defaults (an estimate until the first GPU run).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

IMPLS = ("fusedmoe", "grouped_mm", "batched_mm")

# Real configs (the models' config.json on the Hugging Face hub), all decoder layers MoE.
PRESETS = {
    "qwen3-30b-a3b": ("Qwen3MoeConfig", 48, dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
        decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False)),
    "qwen3-235b-a22b": ("Qwen3MoeConfig", 94, dict(
        hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, num_attention_heads=64, num_key_value_heads=4,
        head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
        decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False)),
    "mixtral-8x7b": ("MixtralConfig", 32, dict(
        hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "gpt-oss-120b": ("GptOssConfig", 36, dict(
        hidden_size=2880, intermediate_size=2880, num_local_experts=128, num_experts_per_tok=4,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
        sliding_window=128, tie_word_embeddings=False)),
}
DEFAULT_PRESET = "qwen3-30b-a3b"


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
def build_model(preset: str, layers: int, vocab: int | None, device: str, attn: str):
    """The preset's config with ``layers`` decoder layers, random bf16 weights, on ``device``."""
    import transformers

    class_name, _, kwargs = PRESETS[preset]
    kwargs = dict(kwargs, num_hidden_layers=layers)
    if vocab:
        kwargs["vocab_size"] = vocab
    if class_name == "GptOssConfig":
        kwargs["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                                 for i in range(layers)]
    config = getattr(transformers, class_name)(**kwargs)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation=attn, experts_implementation="grouped_mm")
    return model.eval()


def set_impl(model, impl: str) -> None:
    model.config._experts_implementation = impl


def experts_modules(model):
    from fusedmoe.integrations import transformers as fusedmoe_hf

    return [m for m in model.modules() if fusedmoe_hf._is_registry_experts(m)]


def cache_kwarg(model) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
    params = inspect.signature(model.model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@contextlib.contextmanager
def recorded_experts_calls(model, calls: list):
    """Appends (module, cloned args) of every experts call made inside the block."""
    def hook(module, args):
        calls.append((module, tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)))
    handles = [m.register_forward_pre_hook(hook) for m in experts_modules(model)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def median_ms(run, warmup: int, reps: int, on_gpu: bool) -> float:
    """Median time of run() in ms: CUDA events on the GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        if on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            run()
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)


def graphed(fn, on_gpu: bool):
    """(callable, mode): a CUDA graph of fn() after two eager warm-up calls on a side stream, or fn
    itself with the reason when capture fails (or on the CPU)."""
    if not on_gpu:
        return fn, "eager"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as error:  # noqa: BLE001 (any capture failure: time eagerly, say why)
        torch.cuda.synchronize()
        return fn, f"eager (capture failed: {type(error).__name__}: {str(error).splitlines()[0][:80]})"
    return graph.replay, "graph"


def batched_mm_bytes(model, num_tokens: int) -> int:
    """Bytes batched_mm gathers per layer: one gemm1 matrix per (token, expert) pair."""
    experts = experts_modules(model)[0]
    return num_tokens * model.config.num_experts_per_tok * experts.gate_up_proj[0].numel() * 2


def too_big_for_batched_mm(model, num_tokens: int, on_gpu: bool) -> str | None:
    if not on_gpu:
        return None
    need = batched_mm_bytes(model, num_tokens)
    free, _ = torch.cuda.mem_get_info()
    if need > free // 4:
        return f"skipped: gathers {need / 2**30:.0f} GiB of expert weights per layer"
    return None


# ------------------------------------------------------------------------------------------------
# Phases
# ------------------------------------------------------------------------------------------------
def bench_prefill(model, impl, num_tokens, args, on_gpu) -> dict:
    row = {"phase": f"prefill T={num_tokens}", "impl": impl, "tokens": num_tokens}
    if impl == "batched_mm" and (skip := too_big_for_batched_mm(model, num_tokens, on_gpu)):
        return dict(row, mode=skip)
    set_impl(model, impl)
    device = model.device
    ids = torch.randint(0, model.config.vocab_size, (1, num_tokens), device=device)

    def step():
        return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    calls = []
    with torch.no_grad():
        step()  # converts fusedmoe's weights, grows its workspace
        with recorded_experts_calls(model, calls):
            step()
        step_ms = median_ms(step, args.warmup, args.reps, on_gpu)
        experts_ms = median_ms(lambda: [m(*a) for m, a in calls], args.warmup, args.reps, on_gpu)
    return dict(row, mode="eager", step_ms=step_ms, tokens_per_s=1e3 * num_tokens / step_ms,
                experts_ms=experts_ms, experts_share=experts_ms / step_ms)


def bench_decode(model, impl, batch, args, on_gpu) -> dict:
    from transformers import StaticCache

    row = {"phase": f"decode B={batch}", "impl": impl, "tokens": batch}
    if impl == "batched_mm" and (skip := too_big_for_batched_mm(model, batch, on_gpu)):
        return dict(row, mode=skip)
    device = model.device
    steps = 2 + 2 + args.warmup + args.reps + 4  # warm-ups, graph warm-ups, timed steps, slack
    cache = StaticCache(config=model.config,
                        max_cache_len=args.context + steps + 2 * (args.warmup + args.reps))
    kw = {cache_kwarg(model): cache, "use_cache": True}
    context = torch.randint(0, model.config.vocab_size, (batch, args.context), device=device)
    step_ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)

    def step():
        return model(input_ids=step_ids, **kw).logits

    calls = []
    with torch.no_grad():
        set_impl(model, "grouped_mm")  # the context only fills the cache: any implementation does
        model(input_ids=context, logits_to_keep=1, **kw)
        set_impl(model, impl)
        step()
        with recorded_experts_calls(model, calls):
            step()
        run, mode = graphed(step, on_gpu)
        step_ms = median_ms(run, args.warmup, args.reps, on_gpu)
        experts_run, _ = graphed(lambda: [m(*a) for m, a in calls], on_gpu)
        experts_ms = median_ms(experts_run, args.warmup, args.reps, on_gpu)
    return dict(row, mode=mode, step_ms=step_ms, tokens_per_s=1e3 * batch / step_ms,
                experts_ms=experts_ms, experts_share=experts_ms / step_ms)


def check_parity(model, on_gpu) -> dict:
    """Last-token logits of every implementation vs grouped_mm on one prompt; fusedmoe must run."""
    ids = torch.randint(0, model.config.vocab_size, (1, 64), device=model.device)
    logits = {}
    with torch.no_grad():
        for impl in ("grouped_mm",) + tuple(i for i in IMPLS if i != "grouped_mm"):
            set_impl(model, impl)
            try:
                logits[impl] = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits.float()
            except Exception as error:  # noqa: BLE001 (an implementation this model cannot use)
                logits[impl] = f"{type(error).__name__}: {error}"
    converted = sum(getattr(m, "_fusedmoe_state", None) is not None for m in experts_modules(model))
    result = {"fusedmoe_layers": converted, "layers": len(experts_modules(model))}
    base = logits["grouped_mm"]
    for impl, value in logits.items():
        if isinstance(value, str):
            result[impl] = {"error": value}
        elif impl != "grouped_mm":
            rel = (value - base).abs().max().item() / max(base.abs().max().item(), 1e-30)
            result[impl] = {"max_rel_diff_vs_grouped_mm": rel}
    return result


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def print_table(rows) -> None:
    base = {r["phase"]: r for r in rows if r["impl"] == "grouped_mm" and "step_ms" in r}
    print(f"{'phase':<16} {'impl':<11} {'step ms':>9} {'tokens/s':>11} {'experts ms':>10} "
          f"{'experts %':>9} {'x grouped_mm':>12}  mode")
    for r in rows:
        if "step_ms" not in r:
            dashes = " ".join(f"{'-':>{w}}" for w in (9, 11, 10, 9, 12))
            print(f"{r['phase']:<16} {r['impl']:<11} {dashes}  {r['mode']}")
            continue
        ref = base.get(r["phase"])
        speedup = f"{ref['step_ms'] / r['step_ms']:.2f}" if ref else "-"
        print(f"{r['phase']:<16} {r['impl']:<11} {r['step_ms']:>9.3f} {r['tokens_per_s']:>11,.0f} "
              f"{r['experts_ms']:>10.3f} {100 * r['experts_share']:>8.1f}% {speedup:>12}  {r['mode']}")


def run(args, on_gpu: bool) -> int:
    import transformers

    import fusedmoe
    from fusedmoe.integrations import transformers as fusedmoe_hf

    fusedmoe_hf.register()
    device = "cuda" if on_gpu else "cpu"
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    model = build_model(args.model, args.layers, args.vocab, device, args.attn)
    if not on_gpu:  # the smoke version: same code, a toy model
        args.prefill, args.decode, args.context = [16], [1, 2], 8
    parity = check_parity(model, on_gpu)
    layers = parity["layers"]
    ok = parity["fusedmoe_layers"] == layers and "error" not in parity.get("fusedmoe", {})
    rel = parity.get("fusedmoe", {}).get("max_rel_diff_vs_grouped_mm", math.inf)
    ok = ok and rel <= args.max_rel_diff
    print(f"# {args.model}: {layers} of {PRESETS[args.model][1]} decoder layers, vocab "
          f"{model.config.vocab_size}, random bf16 weights, attention {args.attn}; "
          f"{torch.cuda.get_device_name() if on_gpu else 'CPU smoke run (times meaningless)'}")
    summary = [f"{k} {v['error'][:100]}" if "error" in v else f"{k} {v['max_rel_diff_vs_grouped_mm']:.3g}"
               for k, v in parity.items() if isinstance(v, dict)]
    print(f"# parity (last-token logits vs grouped_mm, relative): {', '.join(summary)}; fusedmoe ran in "
          f"{parity['fusedmoe_layers']}/{layers} layers" + ("" if ok else "  <-- FAIL"))
    rows = []
    for num_tokens in args.prefill:
        for impl in IMPLS:
            rows.append(_guarded(bench_prefill, model, impl, num_tokens, args, on_gpu))
    for batch in args.decode:
        for impl in IMPLS:
            rows.append(_guarded(bench_decode, model, impl, batch, args, on_gpu))
    print_table(rows)
    elapsed = time.perf_counter() - started
    from bench_moe import git_commit

    print(f"# commit {git_commit()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"fusedmoe {fusedmoe.__version__}; {elapsed:.0f} s")
    if args.json:
        report = {
            "model": args.model, "layers": layers, "real_layers": PRESETS[args.model][1],
            "vocab_size": model.config.vocab_size, "attention": args.attn, "context": args.context,
            "device": torch.cuda.get_device_name() if on_gpu else "cpu", "commit": git_commit(),
            "torch": torch.__version__, "transformers": transformers.__version__, "parity": parity,
            "rows": rows, "seconds": elapsed,
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"# wrote {args.json}")
    return 0 if ok else 1


def _guarded(bench, model, impl, size, args, on_gpu) -> dict:
    """One point; an implementation that fails (e.g. an operator feature the model needs is
    missing) gets a row saying why instead of stopping the run."""
    try:
        return bench(model, impl, size, args, on_gpu)
    except Exception as error:  # noqa: BLE001
        if on_gpu:
            torch.cuda.synchronize()
        kind = "prefill T" if bench is bench_prefill else "decode B"
        return {"phase": f"{kind}={size}", "impl": impl, "tokens": size,
                "mode": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--layers", type=int, default=4, help="decoder layers built (default 4)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the real one)")
    parser.add_argument("--prefill", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192])
    parser.add_argument("--decode", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--context", type=int, default=512, help="tokens in the KV cache before decoding")
    parser.add_argument("--attn", default=None,
                        help="attn_implementation (default sdpa; eager for gpt-oss, which has no sdpa path)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rel-diff", type=float, default=0.05,
                        help="largest fusedmoe vs grouped_mm logits difference, relative to max|logit|")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--cpu", action="store_true", help="no GPU: a tiny CPU smoke run (not a benchmark)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.attn is None:
        args.attn = "eager" if PRESETS[args.model][0] == "GptOssConfig" else "sdpa"
    if args.cpu:
        # A toy model of the preset's family: the code paths, not the numbers.
        class_name, real_layers, kwargs = PRESETS[args.model]
        small = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, head_dim=16,
                     num_attention_heads=4, num_key_value_heads=2)
        PRESETS[args.model] = (class_name, real_layers, {**kwargs, **{k: v for k, v in small.items()
                                                                      if k in kwargs}})
        args.layers, args.vocab, args.warmup, args.reps = 2, 512, 1, 2
        return run(args, on_gpu=False)
    if not torch.cuda.is_available():
        print("bench_model.py needs a CUDA GPU (a Hopper one for fusedmoe); none found. "
              "`--cpu` runs a tiny CPU smoke version instead (times meaningless).", file=sys.stderr)
        return 2
    return run(args, on_gpu=True)


if __name__ == "__main__":
    sys.exit(main())
