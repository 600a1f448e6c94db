"""Benchmark `paramctl diff` against a torch reference script, as whole processes.

Two 1 GiB checkpoints (16 × 4096×4096 float32) that differ in one element per tensor, and two identical ones.
The variants are written once next to the cached checkpoints (by a separate process: the harness stays small, see
common.py). Run: .venv/bin/python benchmarks/bench_diff.py   (always exits 0: a measurement, not a test)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    DATA_DIR,
    PARAMCTL,
    Measurement,
    check,
    harness_rss_mb,
    make_checkpoints,
    print_table,
    python_snippet,
    run,
)

GIB = 1 << 30

REF_TORCH = """
import sys
import torch
a = torch.load(sys.argv[1], weights_only=True, mmap=True)
b = torch.load(sys.argv[2], weights_only=True, mmap=True)
different = 0
for name in a:
    x, y = a[name], b[name]
    if not torch.equal(x, y):
        different += 1
        print(name, (x - y).abs().max().item())
print(different, "different")
"""

# Change one element per tensor, at a seeded random position, and save with torch.save like the original.
BUILD_CHANGED = """
import sys
import torch
source, target = sys.argv[1], sys.argv[2]
state = torch.load(source, weights_only=True, mmap=True)
generator = torch.Generator().manual_seed(7)
changed = {}
for name, tensor in state.items():
    copy = tensor.clone()
    index = int(torch.randint(copy.numel(), (1,), generator=generator))
    copy.view(-1)[index] += 1.0
    changed[name] = copy
torch.save(changed, target)
"""


def variants(pt: Path) -> tuple[Path, Path]:
    """(a byte-identical copy, a copy with one element changed per tensor) of the 1 GiB .pt, built once."""
    copy, changed = DATA_DIR / "1g.copy.pt", DATA_DIR / "1g.changed.pt"
    for path, build in ((copy, lambda tmp: shutil.copyfile(pt, tmp)), (changed, _build_changed(pt))):
        if path.is_file() and abs(path.stat().st_size - pt.stat().st_size) < (1 << 20):
            continue
        print(f"building {path} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tmp = path.with_name(path.name + ".tmp")
        build(tmp)
        tmp.replace(path)
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return copy, changed


def _build_changed(pt: Path):
    def build(tmp: Path) -> None:
        subprocess.run([*python_snippet(BUILD_CHANGED), str(pt), str(tmp)], check=True)

    return build


def expect_exit(cmd: list[str], code: int) -> list[str]:
    """`run` wants exit 0; diff exits 1 on a difference. A shell checks the code (its rusage includes the child)."""
    quoted = " ".join("'" + part.replace("'", "'\\''") + "'" for part in cmd)
    return ["sh", "-c", f"{quoted}; test $? -eq {code}"]


def main() -> None:
    big = make_checkpoints("1g")
    copy, changed = variants(big["pt"])
    a = str(big["pt"])

    results: dict[str, Measurement] = {
        "ref: torch.load mmap + equal + abs max (1 changed/tensor)": run(python_snippet(REF_TORCH) + [a, str(changed)]),
        "paramctl diff --json (1 changed/tensor)": run(expect_exit(PARAMCTL + ["diff", a, str(changed), "--json"], 1)),
        "ref: torch.load mmap + equal (identical)": run(python_snippet(REF_TORCH) + [a, str(copy)]),
        "paramctl diff (identical)": run(PARAMCTL + ["diff", a, str(copy)]),
        "paramctl diff 1g.pt 1g.safetensors": run(PARAMCTL + ["diff", a, str(big["safetensors"])]),
        "paramctl diff 1g.pt 1g.npz": run(PARAMCTL + ["diff", a, str(big["npz"])]),
    }
    names = list(results)

    # Sanity: both sides found the 16 changes, and paramctl measured the same max |a−b| as torch.
    reference_lines = results[names[0]].stdout.splitlines()
    report = json.loads(results[names[1]].stdout)
    torch_max = {line.split()[0]: float(line.split()[1]) for line in reference_lines[:-1]}
    ours = {row["name"]: row for row in report["changed"]}
    agree = set(ours) == set(torch_max) and all(
        row["mismatched"] == 1 and abs(row["max_abs"] - torch_max[name]) <= 1e-6 * torch_max[name]
        for name, row in ours.items()
    )
    print(
        f"\nsanity: torch found {reference_lines[-1]!r}; paramctl found {len(ours)} changed"
        f" (1 element each, same max |a−b|: {agree})"
    )

    print()
    print_table(results, baseline=names[0])
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()

    changed_run, identical_run = results[names[1]], results[names[3]]
    speedup = results[names[0]].seconds / changed_run.seconds
    check("ref / paramctl diff, 1 changed per tensor (time)", speedup, speedup >= 3, ">= 3")
    check(
        "paramctl diff, 1 changed per tensor: peak RSS (MB)",
        changed_run.peak_rss_mb,
        changed_run.peak_rss_mb < 200,
        "< 200",
    )
    check(
        "paramctl diff, identical: peak RSS (MB)", identical_run.peak_rss_mb, identical_run.peak_rss_mb < 200, "< 200"
    )
    rate = GIB / identical_run.seconds / 1e9
    check("paramctl diff, identical: GB/s of one file's data", rate, rate >= 2, ">= 2")
    print(
        f"      (both files' data: {2 * rate:.2f} GB/s; reference on identical files: "
        f"{GIB / results[names[2]].seconds / 1e9:.2f} GB/s of one file's data)"
    )


if __name__ == "__main__":
    main()
