#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name.

    ncu --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \\
        build/bench/bench_cuda_train --precision bf16 --steps 1 --kernels > ncu.csv
    python3 bench/support/ncu_summary.py ncu.csv [top]

Prints one line per kernel name (template arguments cut short): total ms, share, launches, mean µs.
"""
import csv
import sys
from collections import defaultdict


def short(name, width=110):
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # drop the program's own output
    total_ns, calls = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(row.get("Metric Unit", "nsecond"), 1)
        name = row["Kernel Name"]
        total_ns[name] += value * scale
        calls[name] += 1
    everything = sum(total_ns.values())
    print(f"{len(total_ns)} kernels, {sum(calls.values())} launches, {everything / 1e6:.2f} ms of GPU time")
    for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{ns / 1e6:9.3f} ms {100 * ns / everything:5.1f}% {calls[name]:6d} x {ns / calls[name] / 1e3:9.1f} us  {short(name)}")


if __name__ == "__main__":
    main()
