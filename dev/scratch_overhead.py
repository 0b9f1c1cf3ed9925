"""What per-call scratch from PyTorch's caching allocator costs an eager call (issue 13: the
concurrency design), against a caller-owned workspace and against the call's own GPU time.

Eager host time per call (median of rounds of back-to-back calls, host clock, GPU synchronised
at the end of each round) and the GPU time of a CUDA-graph replay, qwen3-30b-a3b's layer at
T = 1 and 4096, on the current GPU. Experiment (dev/): prints a table, asserts nothing.
    python3 dev/scratch_overhead.py
"""

import statistics
import time

import torch

import fusedmoe

H, I, E, K = 2048, 768, 128, 8


def eager_us(call, rounds=7, calls=200):
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def graph_us(call, replays=200):
    call()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(replays):
        graph.replay()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / replays * 1e3


def main():
    torch.manual_seed(0)
    w1 = (torch.randn(E, 2 * I, H, device="cuda") / H**0.5).bfloat16()
    w2 = (torch.randn(E, H, I, device="cuda") / I**0.5).bfloat16()
    print(f"{torch.cuda.get_device_name()}: qwen3-30b-a3b layer, eager host us per call")
    print(f"{'T':>6} | {'per-call scratch':>16} | {'caller workspace':>16} | {'difference':>10} | {'graph replay (GPU)':>18}")
    for T in (1, 4096):
        x = torch.randn(T, H, device="cuda").bfloat16()
        logits = torch.randn(T, E, device="cuda")
        workspace = torch.empty(fusedmoe.workspace_size(T, H, I, E, K), dtype=torch.uint8, device="cuda")

        def scratch():
            return fusedmoe.trtllm_bf16_moe(logits, None, x, w1, w2, E, K, None, None, I, 0, E,
                                            routing_method_type=1)

        def owned():
            return fusedmoe.trtllm_bf16_moe(logits, None, x, w1, w2, E, K, None, None, I, 0, E,
                                            routing_method_type=1, workspace_buffer=workspace)

        assert torch.equal(scratch(), owned())
        a, b = eager_us(scratch), eager_us(owned)
        print(f"{T:6d} | {a:16.1f} | {b:16.1f} | {a - b:+10.1f} | {graph_us(scratch):18.1f}")


if __name__ == "__main__":
    main()
