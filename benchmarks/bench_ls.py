"""Benchmark `paramctl ls` against reference libraries, as whole processes.

Run: .venv/bin/python benchmarks/bench_ls.py   (always exits 0: this is a measurement, not a test)
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

REF_SAFETENSORS = """
import sys
from safetensors import safe_open
f = safe_open(sys.argv[1], "numpy")
keys = list(f.keys())
print(len(keys))
"""

REF_TORCH = """
import sys
import torch
sd = torch.load(sys.argv[1], weights_only=True, mmap=True)
shapes = [sd[k].shape for k in sd]
print(len(shapes))
"""


REF_A = "ref A: safetensors safe_open keys (1g)"
REF_B = "ref B: torch.load mmap + shapes (1g .pt)"


def main() -> None:
    big, small = make_checkpoints("1g"), make_checkpoints("1m")

    results = {
        REF_A: run(python_snippet(REF_SAFETENSORS) + [str(big["safetensors"])]),
        REF_B: run(python_snippet(REF_TORCH) + [str(big["pt"])]),
    }
    for fmt in FORMATS:
        for kind, paths in (("1g", big), ("1m", small)):
            results[f"paramctl ls {kind}.{fmt}"] = run(PARAMCTL + ["ls", str(paths[fmt])])

    for name, m in results.items():  # a silent success would make the timings meaningless
        if not m.stdout.strip():
            print(f"WARNING: {name!r} printed nothing")

    print()
    print_table(results, baseline=REF_A)
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()

    def ls(kind: str, fmt: str):
        return results[f"paramctl ls {kind}.{fmt}"]

    ref_a, ref_b = results[REF_A], results[REF_B]
    ratio = ls("1g", "safetensors").seconds / ref_a.seconds
    check("paramctl ls 1g.safetensors / ref A (time)", ratio, ratio <= 1.5, "<= 1.5")
    ratio = ref_b.seconds / ls("1g", "pt").seconds
    check("ref B / paramctl ls 1g.pt (time)", ratio, ratio >= 10, ">= 10")
    for fmt in FORMATS:
        for kind in ("1g", "1m"):
            rss = ls(kind, fmt).peak_rss_mb
            check(f"paramctl ls {kind}.{fmt} peak RSS (MB)", rss, rss < 80, "< 80")
    for fmt in FORMATS:
        ratio = ls("1g", fmt).seconds / ls("1m", fmt).seconds
        check(f"paramctl ls .{fmt}: 1g time / 1m time", ratio, 0.8 <= ratio <= 1.2, "1.0 +/- 20%")


if __name__ == "__main__":
    main()
