#!/usr/bin/env python3
"""Where did the GPU sit idle, and what was the host doing then?

Reads the CSV of cupti_timeline.cpp (kind,start_ns,end_ns,correlation,name) and looks at the
window between cudaProfilerStart and cudaProfilerStop (the whole trace if there is none):

  wall time, GPU busy time (the union of kernels, memcpys and memsets), idle time;
  idle time by cause: each gap between GPU activities is charged to the host call that was
  running when the GPU went idle and which waits for the GPU (a synchronising memcpy, a
  stream or device synchronisation), or else to "launch-bound" (the host had not yet issued
  the next piece of work);
  the largest gaps, with the work on either side and the host calls inside them;
  host calls by name: how many and how long;
  with --kernels N, the N kernels (by name and template arguments) that took the most GPU time.

    python3 bench/support/timeline_gaps.py trace.csv [--gaps 25] [--min-gap-us 5] [--kernels 40]
"""
import argparse
import bisect
import collections
import csv
import sys

WAITS = ("cudaMemcpy_", "cudaMemcpy2D_", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cuMemcpyDtoH",
         "cuMemcpyHtoD", "cuStreamSynchronize", "cuCtxSynchronize", "cudaEventSynchronize", "cudaFree",
         "cuMemFree", "cudaMalloc", "cuMemAlloc", "cudaMemset_", "cudaStreamEndCapture", "cudaGraphLaunch")


def read(path):
    gpu, host = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            item = (int(row["start_ns"]), int(row["end_ns"]), int(row["correlation"]), row["name"], row["kind"])
            (gpu if row["kind"] in ("kernel", "memcpy", "memset") else host).append(item)
    gpu.sort()
    host.sort()
    return gpu, host


def window(host):
    starts = [e for s, e, _, n, _ in host if n.startswith("cudaProfilerStart")]
    stops = [s for s, e, _, n, _ in host if n.startswith("cudaProfilerStop")]
    if starts and stops:
        return starts[0], stops[-1]
    return None


def short(name, width=60):
    name = name.split("(")[0] if "(" in name and not name.startswith("memcpy") else name
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--gaps", type=int, default=25, help="how many of the largest gaps to list")
    p.add_argument("--min-gap-us", type=float, default=5.0, help="shorter idle intervals are not gaps")
    p.add_argument("--kernels", type=int, default=0, help="list this many kernels by total GPU time")
    a = p.parse_args()

    gpu, host = read(a.trace)
    if not gpu:
        sys.exit(f"{a.trace}: no GPU activity recorded")
    w = window(host) or (min(gpu[0][0], host[0][0] if host else gpu[0][0]), gpu[-1][1])
    w0, w1 = w
    gpu = [g for g in gpu if g[0] >= w0 and g[1] <= w1]
    host = [h for h in host if h[0] >= w0 and h[1] <= w1]
    wall = w1 - w0

    # Busy intervals: the union of the GPU's activities; gaps between them.
    busy, gaps = 0, []
    cur_s, cur_e, before = None, None, None
    for s, e, _, name, _ in gpu:
        if cur_e is None:
            cur_s, cur_e, before = s, e, name
            if s - w0 > a.min_gap_us * 1e3:
                gaps.append((s - w0, w0, s, "(window start)", name))
            continue
        if s > cur_e:
            busy += cur_e - cur_s
            if s - cur_e > a.min_gap_us * 1e3:
                gaps.append((s - cur_e, cur_e, s, before, name))
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
        before = name if e >= cur_e else before
    busy += cur_e - cur_s
    if w1 - cur_e > a.min_gap_us * 1e3:
        gaps.append((w1 - cur_e, cur_e, w1, before, "(window end)"))

    host_starts = [h[0] for h in host]

    def host_calls_in(g0, g1):
        i = bisect.bisect_left(host_starts, g0 - 50_000_000)
        out = []
        for s, e, _, name, _ in host[i:]:
            if s > g1:
                break
            if e >= g0:
                out.append((s, e, name))
        return out

    # Charge each gap to a waiting host call that overlaps its start, else to launching.
    cause = collections.Counter()
    for length, g0, g1, _, _ in gaps:
        waiting = [name for s, e, name in host_calls_in(g0, g1) if name.startswith(WAITS) and s <= g1 and e >= g0]
        cause[waiting[0] if waiting else "launch-bound (host had not issued the next work)"] += length

    idle = wall - busy
    print(f"window {wall / 1e6:.3f} ms; GPU busy {busy / 1e6:.3f} ms ({100 * busy / wall:.1f}%), "
          f"idle {idle / 1e6:.3f} ms; {len(gpu)} GPU activities, {len(host)} host calls")
    print(f"gaps over {a.min_gap_us:g} us: {len(gaps)}, {sum(g[0] for g in gaps) / 1e6:.3f} ms")
    print("\nidle time by cause (the host call running when the gap began):")
    for name, ns in cause.most_common(12):
        print(f"  {ns / 1e6:9.3f} ms  {name}")

    print(f"\nthe {a.gaps} largest gaps:")
    for length, g0, g1, before, after in sorted(gaps, reverse=True)[: a.gaps]:
        calls = collections.Counter(name for s, e, name in host_calls_in(g0, g1))
        calls_text = ", ".join(f"{n}×{c}" if c > 1 else n for n, c in calls.most_common(4))
        print(f"  {length / 1e3:8.1f} us at +{(g0 - w0) / 1e6:8.3f} ms  after {short(before, 40)}  before "
              f"{short(after, 40)}  host: {calls_text}")

    print("\nhost calls in the window:")
    per = collections.defaultdict(lambda: [0, 0])
    for s, e, _, name, _ in host:
        per[name][0] += 1
        per[name][1] += e - s
    for name, (n, ns) in sorted(per.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"  {n:7d}  {ns / 1e6:9.3f} ms  {name}")

    if a.kernels:
        print_kernel_table(gpu, busy, a.kernels)


def kernel_family(name):
    """A kernel's name without its parameter list (template arguments kept: each expression that
    an elementwise kernel evaluates is a row of its own)."""
    if name.startswith("memcpy") or name.startswith("memset"):
        return name
    depth = 0
    for i, ch in enumerate(name):  # the parameter list is the "(" outside every "<...>"
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0 and i > 0:
            name = name[:i]
            break
    return name.replace("void ", "", 1)


def print_kernel_table(gpu, busy, count):
    per = collections.defaultdict(lambda: [0, 0])
    for s, e, _, name, _ in gpu:
        row = per[kernel_family(name)]
        row[0] += 1
        row[1] += e - s
    total = sum(ns for _, ns in per.values())
    print(f"\nGPU time by kernel ({total / 1e6:.3f} ms summed; busy {busy / 1e6:.3f} ms):")
    for name, (n, ns) in sorted(per.items(), key=lambda kv: -kv[1][1])[:count]:
        print(f"  {n:6d}  {ns / 1e6:8.3f} ms  {100 * ns / total:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()
