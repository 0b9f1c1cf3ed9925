"""Timing tools of the benchmark (bench/README.md "How to time"): cold L2, graphs, events, medians.

Every measurement flushes L2 before each repetition by reading a buffer twice the size of L2
(a read leaves clean lines behind, so no write-back of the flush lands inside the next timed
window), then times one call between two CUDA events, and reports the median.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class Timer:
    """Cold-L2 event timing of graph replays and eager calls on the current CUDA device."""

    def __init__(self, warmup: int, reps: int):
        """warmup and reps count calls (not milliseconds)."""
        self.warmup = warmup
        self.reps = reps
        l2_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        flush_bytes = max(2 * l2_bytes, 64 << 20)
        self.flush_buffer = torch.randn(flush_bytes // 4, device="cuda")  # fp32, never zeros

    def flush_l2(self) -> None:
        """Evicts L2 by reading 2x its size (the reduction's result is discarded)."""
        self.flush_buffer.sum()

    def median_us(self, run: Callable[[], object], reps: int, sync_before: bool) -> float:
        """Median over reps of the event-timed run(), each after an L2 flush, in microseconds."""
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            self.flush_l2()
            if sync_before:
                torch.cuda.synchronize()
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return 1e3 * statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    def capture(self, fn: Callable[[], torch.Tensor]
                ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Captures fn() in a CUDA graph after two eager warm-up calls on a side stream.

        Returns (graph, output tensor that every replay rewrites).
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def time_graph(self, graph: torch.cuda.CUDAGraph) -> float:
        """Median microseconds of one replay, cold L2, after warm-up replays.

        The replay is enqueued while the flush still runs, so launch latency stays out of the
        window, as in a serving engine that replays graphs back to back.
        """
        for _ in range(self.warmup):
            graph.replay()
        return self.median_us(graph.replay, self.reps, sync_before=False)

    def time_eager(self, fn: Callable[[], object], budget_s: float | None = None
                   ) -> tuple[float, int]:
        """Median microseconds of one eager call, cold L2; returns (us, repetitions used).

        The device is idle when each call starts (synchronised after the flush), so the time
        includes the host's launch overhead, as eager execution sees it. With budget_s, the
        repetitions are cut so that they take about budget_s seconds (at least 3).
        """
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        one_call_s = time.perf_counter() - started
        reps = self.reps
        if budget_s is not None:
            reps = max(3, min(reps, int(budget_s / max(one_call_s, 1e-6))))
        for _ in range(min(self.warmup, reps)):
            fn()
        return self.median_us(fn, reps, sync_before=True), reps


def measure_bandwidth(timer: Timer, num_bytes: int = 1 << 30) -> float:
    """BW ceiling: a device-to-device copy of num_bytes; returns (bytes read + written) / s."""
    src = torch.randint(0, 255, (num_bytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    us = timer.median_us(lambda: dst.copy_(src), max(timer.reps, 20), sync_before=False)
    return 2 * num_bytes / (us * 1e-6)


def measure_peak(timer: Timer, size: int = 8192) -> float:
    """PEAK ceiling: a size^3 bf16 matmul through cuBLAS on random data; returns flop/s."""
    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        torch.matmul(a, b)
    us = timer.median_us(lambda: torch.matmul(a, b), max(timer.reps, 20), sync_before=False)
    return 2 * size ** 3 / (us * 1e-6)
