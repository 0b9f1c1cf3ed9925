"""Sums ncu's per-instruction warp stall samples (dev/ncu_source.sh's CSV) by code region.

For each kernel launch in the CSV: the share of all samples in each region and its top stall
reasons. Regions are found from the SASS itself: the mainloop runs from the first to the last
QGMMA; the epilogue from there to the first producer instruction (the first UTMALDG's loop, found
by the empty-barrier wait before it); the out-of-line retry stubs of the barrier waits sit after
the last EXIT-free branch target. With --top N, the N instructions with the most samples; with
--mix, the mainloop's samples by kind of instruction (promotion FFMAs, scale loads and products,
full-barrier waits, wgmma issue, wgmma waits, proxy fences, everything else).
Usage: python3 dev/ncu_regions.py src_base.csv [--top 20] [--mix]
"""
import argparse
import collections
import csv


def launches(path):
    rows = list(csv.reader(open(path)))
    starts = [i for i, r in enumerate(rows) if r and r[0] == "Kernel Name"]
    for n, s in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(rows)
        yield rows[s][1], rows[s + 1], rows[s + 2:end]


def regions(body):
    """(name, first, last) address offsets; boundaries from the instructions' text."""
    base = int(body[0][0], 16)
    offs = [int(r[0], 16) - base for r in body]
    text = [r[1] for r in body]
    gmma = [o for o, t in zip(offs, text) if "GMMA" in t]
    tma = [o for o, t in zip(offs, text) if "UTMALDG" in t]
    first_gmma, last_gmma = min(gmma), max(gmma)
    # the producer's loop starts at its empty-barrier wait, the last TRYWAIT before the first TMA
    waits = [o for o, t in zip(offs, text) if "TRYWAIT" in t and o < min(tma)]
    producer = max(waits) if waits else min(tma)
    # the producer's block is followed by its finish, then the retry stubs (TRYWAIT, BRA pairs)
    stubs = next((o for o, t in zip(offs, text) if o > max(tma) and "TRYWAIT" in t), offs[-1] + 1)
    # the epilogue ends where the producer's setup begins: the producer's role branch sits before
    # its setmaxnreg (USETMAXREG) with the lower count
    setmax = [o for o, t in zip(offs, text) if "USETMAXREG" in t and "DEALLOC" in t]
    epilogue_end = setmax[0] if setmax and setmax[0] > last_gmma else producer
    return [("prologue", 0, first_gmma - 0x200), ("mainloop", first_gmma - 0x200, last_gmma + 0x400),
            ("epilogue", last_gmma + 0x400, epilogue_end), ("producer", epilogue_end, stubs),
            ("stubs", stubs, offs[-1] + 1)]


def kind(text, stubs_base):
    """The mainloop's instruction kinds (--mix); a branch into the retry stubs is a barrier wait."""
    if "FFMA" in text:
        return "promotion ffma"
    if "FMUL" in text or "LDG" in text:
        return "scale load/product"
    if "TRYWAIT" in text or ("BRA" in text and int(text.split("0x")[-1].split()[0], 16) >= stubs_base):
        return "full-barrier wait"
    if "GMMA" in text:
        return "wgmma issue"
    if "DEPBAR" in text:
        return "wgmma wait"
    if "FENCE" in text or "MEMBAR" in text:
        return "proxy fence"
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--mix", action="store_true")
    args = parser.parse_args()
    seen = set()
    for name, hdr, body in launches(args.csv):
        key = (name, tuple(r[2] for r in body))  # the source page lists a launch twice
        if key in seen:
            continue
        seen.add(key)
        col = {h: i for i, h in enumerate(hdr)}
        samples = col["Warp Stall Sampling (All Samples)"]
        reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
        base = int(body[0][0], 16)
        total = sum(int(r[samples]) for r in body) or 1
        print(f"== {name[:110]}: {total} samples, {len(body)} instructions")
        for region, lo, hi in regions(body):
            rows = [r for r in body if lo <= int(r[0], 16) - base < hi]
            count = sum(int(r[samples]) for r in rows)
            by = collections.Counter()
            for r in rows:
                for h in reasons:
                    by[h[6:]] += float(r[col[h]] or 0)
            top = ", ".join(f"{k} {100 * v / total:.1f}" for k, v in by.most_common(4))
            print(f"  {region:9s} {lo:6x}-{hi:6x} {100 * count / total:5.1f} %  ({top})")
        if args.mix:
            _, lo, hi = regions(body)[1]
            stubs_base = base + regions(body)[4][1]
            mix = collections.Counter()
            for r in body:
                if lo <= int(r[0], 16) - base < hi:
                    mix[kind(r[1], stubs_base)] += int(r[samples])
            loop = sum(mix.values()) or 1
            print("  mainloop mix: " + ", ".join(f"{k} {100 * v / loop:.1f}" for k, v in mix.most_common()))
        for r in sorted(body, key=lambda r: -int(r[samples]))[:args.top]:
            print(f"    {int(r[0], 16) - base:6x} {100 * int(r[samples]) / total:5.1f} %  {r[1].strip()[:70]}")


if __name__ == "__main__":
    main()
