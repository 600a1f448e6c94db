"""Benchmark `paramctl show` against `ls` of the same file and a torch.load(mmap=True) script, as whole processes.

Run: .venv/bin/python benchmarks/bench_show.py   (always exits 0: this is a measurement, not a test)

For each 1 GiB file: `show FILE 'layers.7.weight[2048]' --full` (one 16 KiB row, all 4096 values printed) and
`show FILE '*'` (the NumPy summary of each of the 16 tensors, read from their edges), against `ls FILE` (headers
only: the floor of any command) and, on the .pt, `torch.load(weights_only=True, mmap=True)` printing the same row
with NumPy (the same text, checked). Targets: within 2.5 × `ls` (NumPy's import is most of the difference),
at least 3 × faster than torch, peak RSS < 100 MB: nothing grows with the file.
"""

from __future__ import annotations

from common import FORMATS, PARAMCTL, check, harness_rss_mb, make_checkpoints, print_table, python_snippet, run

NAME, ROW = "layers.7.weight", 2048

REF_TORCH_ROW = f"""
import sys
import numpy as np
import torch
sd = torch.load(sys.argv[1], weights_only=True, mmap=True)
print(np.array2string(sd[{NAME!r}][{ROW}].numpy(), threshold=sys.maxsize))
"""

REF_TORCH_SUMMARY = """
import sys
import torch
sd = torch.load(sys.argv[1], weights_only=True, mmap=True)
for name, tensor in sd.items():
    print(name)
    print(tensor.numpy())
"""

REF_ROW = "ref: torch.load mmap, print row (1g.pt)"
REF_SUMMARY = "ref: torch.load mmap, print 16 summaries (1g.pt)"


def main() -> None:
    big = make_checkpoints("1g")
    results = {}
    for fmt in FORMATS:
        path = str(big[fmt])
        results[f"show row 1g.{fmt}"] = run(PARAMCTL + ["show", path, f"{NAME}[{ROW}]", "--full"])
        results[f"show summaries 1g.{fmt}"] = run(PARAMCTL + ["show", path, "*"])
        results[f"ls 1g.{fmt}"] = run(PARAMCTL + ["ls", path])
    results[REF_ROW] = run(python_snippet(REF_TORCH_ROW) + [str(big["pt"])])
    results[REF_SUMMARY] = run(python_snippet(REF_TORCH_SUMMARY) + [str(big["pt"])])

    reference_row = results[REF_ROW].stdout
    for fmt in FORMATS:  # the same numbers, or the timings mean nothing
        printed = results[f"show row 1g.{fmt}"].stdout.split("\n", 1)[1]
        if printed != reference_row:
            print(f"WARNING: show row 1g.{fmt} printed other values than torch")
        if results[f"show summaries 1g.{fmt}"].stdout.count("...") < 16:
            print(f"WARNING: show summaries 1g.{fmt} printed no summaries")

    print()
    print_table(results, baseline=REF_ROW)
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()
    for fmt in FORMATS:
        ls = results[f"ls 1g.{fmt}"]
        for what in ("row", "summaries"):
            m = results[f"show {what} 1g.{fmt}"]
            ratio = m.seconds / ls.seconds  # most of the difference is NumPy's import (~60 ms), which ls skips
            check(f"show {what} 1g.{fmt} / ls 1g.{fmt} (time)", ratio, ratio <= 2.5, "<= 2.5")
            check(f"show {what} 1g.{fmt} peak RSS (MB)", m.peak_rss_mb, m.peak_rss_mb < 100, "< 100")
    for fmt in FORMATS:
        ratio = results[REF_ROW].seconds / results[f"show row 1g.{fmt}"].seconds
        check(f"ref row / show row 1g.{fmt} (time)", ratio, ratio >= 3, ">= 3")
    ratio = results[REF_SUMMARY].seconds / results["show summaries 1g.pt"].seconds
    check("ref summaries / show summaries 1g.pt (time)", ratio, ratio >= 3, ">= 3")


if __name__ == "__main__":
    main()
