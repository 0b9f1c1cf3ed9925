"""Which allocations open new caching-allocator segments in the steady-state test's loop.

tests/python/test_concurrency.py's steady-state test counts cudaMallocs (the allocator's
"segment.all.allocated") over rounds of its calls. Under compute-sanitizer the count did not settle
(docs/reliability.md); this prints, per round, the counters (segments allocated, segments held,
bytes live, retries, Python's GC counts) and every new segment with the Python stack that opened
it. Run from the repository root on the GPU machine, the package installed:
    python3 dev/alloc_probe.py
    compute-sanitizer --tool memcheck --leak-check no --kernel-name kns=fusedmoe python3 dev/alloc_probe.py
Environment: SEED (inputs, default 0), ROUNDS (default 6; round 4 runs in sync-debug "error" mode,
as the test's measured round does), HISTORY=0 (no allocator history recording).
"""
import gc
import os
import sys

sys.path.insert(0, "tests/python")
import torch
import test_concurrency as tc

gen = torch.Generator().manual_seed(int(os.environ.get("SEED", "0")))
calls = tc.Calls(gen, 4)
# HISTORY=0: no allocator history (its Python stacks may hold frames: docs/reliability.md); the
# per-round traces below are then empty.
if os.environ.get("HISTORY", "1") == "1":
    torch.cuda.memory._record_memory_history(max_entries=100000, stacks="python")

def seg():
    if os.environ.get("GC_COLLECT") == "1":
        gc.collect()
    torch.cuda.synchronize()
    s = torch.cuda.memory_stats()
    return s["segment.all.allocated"], s["segment.all.current"], s["allocated_bytes.all.current"], s["num_alloc_retries"], gc.get_count()

def one_round():
    for _ in range(3):
        for call in calls.calls:
            call()

print("start", seg(), flush=True)
def device_trace(snapshot):
    """The snapshot's trace of device 0 (empty without history recording)."""
    return (snapshot.get("device_traces") or [[]])[0]


seen = [len(device_trace(torch.cuda.memory._snapshot()))]
for r in range(int(os.environ.get("ROUNDS", "6"))):
    before = torch.cuda.memory._snapshot()
    nseg = len(before["segments"])
    if r == 4:
        torch.cuda.set_sync_debug_mode("error")
    one_round()
    torch.cuda.set_sync_debug_mode("default")
    print("round", r, seg(), flush=True)
    after = torch.cuda.memory._snapshot()
    old = {s["address"] for s in before["segments"]}
    for s in after["segments"]:
        if s["address"] not in old:
            print("  new segment", s["total_size"], s["segment_type"], "stream", s["stream"],
                  [(b["size"], b["state"]) for b in s["blocks"]][:6], flush=True)
            for frame in (s.get("frames") or [])[:8]:
                print("     ", frame.get("filename", "?")[-60:], frame.get("line"), frame.get("name"), flush=True)
    traces = device_trace(after)
    evs = [e for e in traces[seen[0]:] if e["action"] in ("segment_alloc", "segment_free", "oom", "snapshot")]
    seen[0] = len(traces)
    for e in evs[:6]:
        print("  trace", e["action"], e["size"], "stream", e["stream"], [(f["name"], f["line"]) for f in e.get("frames", [])[:6]], flush=True)

# Who holds the live CUDA tensors at the end (under memcheck the live bytes grew ~32 MB a round,
# in blocks of gemm2_output's size for the T = 989 unfinalized case): Python objects gc can see.
gc.collect()
live = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.is_cuda]
by_size = {}
for t in live:
    by_size.setdefault(t.untyped_storage().nbytes(), []).append(t)
print("live CUDA tensors seen by gc:", len(live), "bytes by storage size:",
      sorted(((size, len(ts)) for size, ts in by_size.items()), reverse=True)[:10], flush=True)
for size, ts in sorted(by_size.items(), reverse=True)[:3]:
    holders = [type(r).__name__ for r in gc.get_referrers(ts[0]) if r is not live and r is not ts]
    print("  size", size, "x", len(ts), "held by", holders[:8], flush=True)

def describe(obj):
    """A short name for a referrer: its type, and what identifies it where that is cheap."""
    kind = type(obj).__name__
    if kind == "frame":
        return f"frame {obj.f_code.co_name} ({obj.f_code.co_filename[-40:]}:{obj.f_lineno})"
    if kind == "function":
        return f"function {obj.__qualname__}"
    if kind == "cell":
        return "cell"
    if isinstance(obj, dict):
        return f"dict keys {list(obj)[:6]}"
    if isinstance(obj, (list, tuple)):
        return f"{kind} of {len(obj)}"
    return kind


# The chain of referrers (three levels) of the tensors of the size that grows under memcheck (the
# T = 989 unfinalized case's gemm2_output), beside the probe's own lists.
ours = {id(live), id(by_size)} | {id(ts) for ts in by_size.values()}
GROWING = int(os.environ.get("PROBE_SIZE", 989 * 4 * 1024 * 2))
for size, ts in by_size.items():
    if size != GROWING:
        continue
    print("  chain of a tensor of", size, "bytes (", len(ts), "alive ):", flush=True)
    level, seen_ids = [ts[-1]], set(ours)
    for depth in range(3):
        nxt = []
        for obj in level:
            for r in gc.get_referrers(obj):
                if id(r) in seen_ids or r is level:
                    continue
                seen_ids.add(id(r))
                print("   " + "  " * depth, describe(r), flush=True)
                nxt.append(r)
        level = nxt[:6]
        seen_ids.add(id(level))
    break
print("allocated bytes", torch.cuda.memory_stats()["allocated_bytes.all.current"], flush=True)
# The allocation stacks of the live blocks (memory history records one per block): which call
# made the blocks that stay allocated, and where in it.
snapshot = torch.cuda.memory._snapshot()
live_blocks = [b for s in snapshot["segments"] for b in s["blocks"] if b["state"] == "active_allocated"]
print("live blocks:", len(live_blocks), "bytes", sum(b["size"] for b in live_blocks), flush=True)
for b in sorted(live_blocks, key=lambda b: -b["size"])[:4]:
    frames = [(f.get("name"), f.get("line")) for f in (b.get("frames") or [])[:8]]
    print("  block", b["size"], frames, flush=True)
