"""Concurrency on the GPU (docs/SPEC.md "Execution contract"): calls in flight at the same time on
different streams, from different Python threads, or replayed from CUDA graphs concurrently, give
bitwise the results they give one after the other. Skipped without a Hopper GPU.

Without ``workspace=`` every call takes its scratch from PyTorch's stream-ordered caching
allocator, so no two calls in flight share it. FUSEDMOE_TEST_SHARED_WORKSPACE=1 is the control:
every call then gets ONE shared workspace (what the package did before), and these tests must
fail, which shows that they can see a shared-scratch race at all (scripts/device_check.sh runs it).
"""

import os
import threading
import warnings

import pytest
import torch

import fusedmoe
import reference_moe as ref
from conftest import requires_hopper
from moe_cases import METHOD_PARAMS, routing_kwargs, run_logits, run_routed

pytestmark = requires_hopper

SHARED_WORKSPACE_CONTROL = os.environ.get("FUSEDMOE_TEST_SHARED_WORKSPACE") == "1"
SPIN_CYCLES = 2_000_000  # ~1 ms at 2 GHz: every stream's launches queue up, then run together
# Rounds of each concurrent pattern. A sanitizer serialises kernels, so under one
# (FUSEDMOE_TEST_SANITIZER_SIZES=1) nothing runs concurrently and further rounds only repeat the same
# kernels with the same shapes: one round checks them (racecheck over all five rounds ran past 470 s).
ROUNDS = 1 if ref.under_sanitizer_sizes() else 5
WARMUP_ROUNDS = 6  # at most, for the steady-state test


def _routed_input(problem, method, packed, fp32):
    """(ids, weights) from the reference routing of the problem's logits, on its device."""
    routing = routing_kwargs(method)
    ids, weights = ref.route(
        problem.routing_logits.cpu(), None if problem.routing_bias is None else problem.routing_bias.cpu(),
        method, problem.top_k, routing["n_group"] or 0, routing["topk_group"] or 0,
        routing["routed_scaling_factor"] or 1.0,
    )
    ids = ids.to(torch.int32).to(problem.hidden_states.device)
    weights = weights.to(torch.float32 if fp32 else torch.bfloat16).to(ids.device)
    return fusedmoe.pack_topk(ids, weights) if packed else (ids, weights)


# (name, T, H, I, E, method, routed input, do_finalize): decode and prefill GEMMs, the one-CTA and
# the three-kernel sort, logits, packed and unpacked fp32 routing, do_finalize both ways.
CASES = [
    (name, T, ref.sanitizer_hidden_size(H), ref.sanitizer_intermediate_size(I), E, method, routed,
     finalize)
    for name, T, H, I, E, method, routed, finalize in [
        ("decode_logits", 4, 1024, 512, 64, 1, None, True),
        ("prefill_logits_dsv3", 512, 2048, 768, 128, 2, None, True),
        ("prefill_packed_unfinalized", 1100, 1024, 256, 32, 1, "packed", False),  # T*K > 4096
        ("decode_unpacked_fp32_unfinalized", 16, 2880, 192, 16, 0, "fp32", False),
    ]
]


class Calls:
    """One closure per case (fresh inputs on the GPU), each returning its output tensors."""

    def __init__(self, generator, count):
        self.calls = []
        largest = 0
        for index in range(count):
            name, T, H, I, E, method, routed, finalize = CASES[index % len(CASES)]
            params = METHOD_PARAMS[method]
            bias = torch.bfloat16 if params.get("bias") else None
            cuda = ref.make_problem(T, H, I, E, params["top_k"], torch.float32, bias, generator).to("cuda")
            largest = max(largest, fusedmoe.workspace_size(T, H, I, E, params["top_k"]))
            if routed is None:
                self.calls.append(self._logits_call(cuda, method, finalize))
            else:
                topk = _routed_input(cuda, method, routed == "packed", routed == "fp32")
                self.calls.append(self._routed_call(cuda, topk, finalize))
        self.shared = (torch.empty(largest, dtype=torch.uint8, device="cuda")
                       if SHARED_WORKSPACE_CONTROL else None)
        torch.cuda.synchronize()

    def _extra(self):
        return {} if self.shared is None else {"workspace": self.shared}

    def _logits_call(self, problem, method, finalize):
        def call():
            out = run_logits(problem, method, do_finalize=finalize, **self._extra())
            return out if isinstance(out, list) else [out]
        return call

    def _routed_call(self, problem, topk, finalize):
        def call():
            out = run_routed(problem, topk, do_finalize=finalize, **self._extra())
            return out if isinstance(out, list) else [out]
        return call

    def serial(self):
        results = [call() for call in self.calls]
        torch.cuda.synchronize()
        return results


def _differing(results, serial):
    """Indices of the calls whose outputs are not bitwise their serial results."""
    return [i for i, (got, want) in enumerate(zip(results, serial))
            if not all(torch.equal(a, b) for a, b in zip(got, want))]


@pytest.mark.parametrize("num_streams", [2, 4])
def test_streams_in_flight_match_serial_bitwise(num_streams, generator):
    calls = Calls(generator, num_streams)
    serial = calls.serial()
    streams = [torch.cuda.Stream() for _ in range(num_streams)]
    for round_ in range(ROUNDS):
        results = [None] * num_streams
        for stream in streams:
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                torch.cuda._sleep(SPIN_CYCLES)
        for _ in range(3):  # three calls per stream, interleaved, nothing waited for
            for i, stream in enumerate(streams):
                with torch.cuda.stream(stream):
                    results[i] = calls.calls[i]()
        torch.cuda.synchronize()
        assert not _differing(results, serial), f"round {round_}: calls {_differing(results, serial)} differ"


def test_threads_match_serial_bitwise(generator):
    calls = Calls(generator, 4)
    serial = calls.serial()
    for round_ in range(ROUNDS):
        results, errors = [None] * 4, []

        def worker(first):
            try:
                stream = torch.cuda.Stream()
                with torch.cuda.stream(stream):
                    torch.cuda._sleep(SPIN_CYCLES)
                    for _ in range(3):
                        for i in range(first, 4, 2):
                            results[i] = calls.calls[i]()
                stream.synchronize()
            except Exception as error:  # reported below: pytest sees no thread's exception
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        torch.cuda.synchronize()
        assert not _differing(results, serial), f"round {round_}: calls {_differing(results, serial)} differ"


def test_graphs_replayed_concurrently_match_serial_bitwise(generator):
    calls = Calls(generator, 4)
    serial = calls.serial()
    graphs, outputs = [], []
    for call in calls.calls:
        side = torch.cuda.Stream()  # warm-up off the capture, as torch.cuda.graph advises
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs.append(call())
        graphs.append(graph)
    streams = [torch.cuda.Stream() for _ in graphs]
    for round_ in range(ROUNDS):
        for out in outputs:
            for tensor in out:
                tensor.fill_(-7 if not tensor.is_floating_point() else float("nan"))
        for stream in streams:
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                torch.cuda._sleep(SPIN_CYCLES)
        for _ in range(3):
            for graph, stream in zip(graphs, streams):
                with torch.cuda.stream(stream):
                    graph.replay()
        torch.cuda.synchronize()
        assert not _differing(outputs, serial), f"round {round_}: graphs {_differing(outputs, serial)} differ"


@pytest.mark.skipif(SHARED_WORKSPACE_CONTROL, reason="the control passes a workspace")
def test_steady_state_calls_neither_allocate_nor_synchronise(generator):
    calls = Calls(generator, 4)

    def one_round():  # the measured loop: three passes over the calls, nothing waited for
        for _ in range(3):
            for call in calls.calls:
                call()

    def stats():  # (cudaMallocs so far, bytes in live tensors)
        torch.cuda.synchronize()
        counters = torch.cuda.memory_stats()
        return counters["segment.all.allocated"], counters["allocated_bytes.all.current"]

    # The allocator starts from its own state, not from what earlier tests left cached (under the
    # sanitizers a different selection of tests runs before this one, at other sizes).
    torch.cuda.empty_cache()
    # Warm-up: rounds of the measured loop itself until one of them allocates no new segment, so
    # that the caching allocator holds every block this pattern of allocations and frees asks for.
    # A pattern that needs fresh device memory every time never settles.
    history = [stats()[0]]
    for _ in range(WARMUP_ROUNDS):
        one_round()
        history.append(stats()[0])
        if history[-1] == history[-2]:
            break
    settled = history[-1] == history[-2]
    before, live_before = stats()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising PyTorch op raises
    try:
        one_round()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    after, live_after = stats()
    # Every output was dropped: the bytes in live tensors are back where they were (no call keeps
    # device memory alive), under a sanitizer too.
    assert live_after == live_before, f"calls left {live_after - live_before} bytes alive"
    report = (f"warm-up segments {history}, measured round {before} -> {after}, "
              f"allocation retries {torch.cuda.memory_stats()['num_alloc_retries']}")
    if ref.under_sanitizer():
        # Under compute-sanitizer (20e11ca's build, H200, before the empty_cache above) the
        # segment count did not settle: memcheck +3, then +2 in each of five more rounds;
        # synccheck +1, +1, a quiet round, then +2 in the measured one; racecheck and initcheck a
        # quiet round, then +2; no allocation retry anywhere. dev/alloc_probe.py found the
        # segments follow live bytes that grow under memcheck only (docs/reliability.md); what
        # holds them is not established. The count is asserted in plain runs, reported here.
        if not settled or after != before:
            warnings.warn(f"under {ref.under_sanitizer()}: {report}")
        return
    assert settled, f"cudaMalloc count per warm-up round never settled: {report}"
    assert after == before, f"a steady-state call called cudaMalloc: {report}"
