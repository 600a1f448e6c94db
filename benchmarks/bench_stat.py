"""Benchmark `paramctl stat` against reference scripts, as whole processes, on the 1 GiB checkpoints.

Run: .venv/bin/python benchmarks/bench_stat.py   (always exits 0: this is a measurement, not a test)
"""

from __future__ import annotations

from common import (
    FORMATS,
    PARAMCTL,
    check,
    harness_rss_mb,
    make_checkpoints,
    print_table,
    python_snippet,
    run,
)

# What a user would write with torch: load lazily, then one full pass per statistic.
REF_TORCH = """
import sys
import torch
sd = torch.load(sys.argv[1], weights_only=True, mmap=True)
for name, t in sd.items():
    print(name, t.min().item(), t.max().item(), t.mean().item(), t.std().item(), t.isnan().sum().item())
"""

# The same with safetensors' NumPy API: each tensor read into memory, then NumPy's reductions.
REF_NUMPY = """
import sys
import numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], "numpy") as f:
    for name in f.keys():
        t = f.get_tensor(name)
        print(name, t.min(), t.max(), t.mean(), t.std(), np.isnan(t).sum())
"""

REF_T = "ref T: torch.load mmap + 5 reductions (1g.pt)"
REF_N = "ref N: safe_open numpy + 5 reductions (1g.safetensors)"
TIME_RATIO = {REF_T: 3.0, REF_N: 1.5}  # the reference's time / paramctl's, at least
MAX_RSS_MB = 150


def main() -> None:
    big = make_checkpoints("1g")
    results = {}
    # paramctl first: a run right after a reference that allocated and freed 1.2 GB is measurably slower
    for fmt in FORMATS:
        results[f"paramctl stat 1g.{fmt}"] = run(PARAMCTL + ["stat", str(big[fmt])])
    results[REF_T] = run(python_snippet(REF_TORCH) + [str(big["pt"])])
    results[REF_N] = run(python_snippet(REF_NUMPY) + [str(big["safetensors"])])

    for name, m in results.items():  # a silent success would make the timings meaningless
        if m.stdout.count("layers.") < 16:
            print(f"WARNING: {name!r} did not print all 16 tensors")

    print()
    print_table(results, baseline=f"paramctl stat 1g.{FORMATS[0]}")
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()
    for fmt in FORMATS:
        ours = results[f"paramctl stat 1g.{fmt}"]
        for ref, target in TIME_RATIO.items():
            ratio = results[ref].seconds / ours.seconds
            check(f"{ref[:5]} / paramctl stat 1g.{fmt} (time)", ratio, ratio >= target, f">= {target}")
    for fmt in FORMATS:
        rss = results[f"paramctl stat 1g.{fmt}"].peak_rss_mb
        check(f"paramctl stat 1g.{fmt} peak RSS (MB)", rss, rss < MAX_RSS_MB, f"< {MAX_RSS_MB}")
    for ref in TIME_RATIO:
        print(f"      {ref} peak RSS: {results[ref].peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
