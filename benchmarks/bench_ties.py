"""Benchmark `paramctl ties` as whole processes: by storage (headers only, as fast as `ls`) and by value (reads data).

Run: .venv/bin/python benchmarks/bench_ties.py   (always exits 0: this is a measurement, not a test)

Besides the shared 1 GiB checkpoints it builds, once, variants of the 1 GiB safetensors file in the same cache dir,
so `--by value` has something to find and must read it in full: `1g_twin` (layers.15.weight holds the same bytes as
layers.3.weight), `1g_transposed` (layers.15.weight is layers.3.weight transposed) and, the worst case, `1g_same`
(all 16 tensors hold layers.3.weight's bytes: the whole GiB must be compared).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from common import (
    DATA_DIR,
    PARAMCTL,
    check,
    harness_rss_mb,
    make_checkpoints,
    print_table,
    python_snippet,
    run,
)

SOURCE, TARGET = "layers.3.weight", "layers.15.weight"
COPY_BYTES = 4 << 20

# What a script without paramctl would do to find identical tensors: read each one whole and hash it.
REF_HASH = """
import hashlib, sys
from safetensors import safe_open
groups = {}
with safe_open(sys.argv[1], "numpy") as f:
    for key in f.keys():
        groups.setdefault(hashlib.blake2b(f.get_tensor(key).tobytes()).digest(), []).append(key)
print([g for g in groups.values() if len(g) > 1])
"""

# And to find shared storage in a .pt: torch.load (mmap) and group by data pointer.
REF_TORCH = """
import sys, torch
sd = torch.load(sys.argv[1], weights_only=True, mmap=True)
groups = {}
for k, t in sd.items():
    groups.setdefault(t.untyped_storage().data_ptr(), []).append(k)
print([g for g in groups.values() if len(g) > 1])
"""

BUILD_TRANSPOSED = """
import sys
import numpy as np
from safetensors.numpy import save_file
from safetensors import safe_open
source, out = sys.argv[1], sys.argv[2]
with safe_open(source, "numpy") as f:
    tensors = {key: f.get_tensor(key) for key in f.keys()}
tensors["layers.15.weight"] = np.ascontiguousarray(tensors["layers.3.weight"].T)
save_file(tensors, out)
"""


def _header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        return 8 + length, json.loads(f.read(length))


def make_copies(source: str, name: str, targets: list[str]) -> str:
    """1g.safetensors with each target's bytes replaced by SOURCE's (same shape and dtype), copied in small pieces."""
    path = DATA_DIR / f"{name}.safetensors"
    if path.is_file() and path.stat().st_size == os.path.getsize(source):
        return str(path)
    print(f"building {path} ...", file=sys.stderr, flush=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.copyfile(source, tmp)
    data_start, header = _header(source)
    src_begin, src_end = header[SOURCE]["data_offsets"]
    with open(source, "rb") as src, open(tmp, "r+b") as dst:
        for target in targets:
            src.seek(data_start + src_begin)
            dst.seek(data_start + header[target]["data_offsets"][0])
            for _ in range(0, src_end - src_begin, COPY_BYTES):
                dst.write(src.read(COPY_BYTES))
    os.replace(tmp, path)
    return str(path)


def make_transposed(source: str) -> str:
    """1g.safetensors with TARGET = SOURCE.T, built in a child process (the harness must stay small)."""
    path = DATA_DIR / "1g_transposed.safetensors"
    if path.is_file() and path.stat().st_size == os.path.getsize(source):
        return str(path)
    print(f"building {path} ...", file=sys.stderr, flush=True)
    tmp = path.with_name(path.name + ".tmp")
    subprocess.run(python_snippet(BUILD_TRANSPOSED) + [source, str(tmp)], check=True)
    os.replace(tmp, path)
    return str(path)


def main() -> None:
    big = make_checkpoints("1g")
    twin = make_copies(str(big["safetensors"]), "1g_twin", [TARGET])
    same = make_copies(str(big["safetensors"]), "1g_same", [f"layers.{i}.weight" for i in range(16) if i != 3])
    transposed = make_transposed(str(big["safetensors"]))

    files = {f"1g.{fmt}": str(path) for fmt, path in big.items()}
    files |= {"1g_twin.safetensors": twin, "1g_transposed.safetensors": transposed, "1g_same.safetensors": same}
    results = {
        "ref: torch.load mmap + data_ptr (1g.pt)": run(python_snippet(REF_TORCH) + [files["1g.pt"]]),
        "ref: safe_open + blake2b per tensor (twin)": run(python_snippet(REF_HASH) + [twin], repeat=3),
        "paramctl ls 1g.pt": run(PARAMCTL + ["ls", files["1g.pt"]]),
        "paramctl ties 1g.pt": run(PARAMCTL + ["ties", files["1g.pt"]]),
    }
    for label, path in files.items():
        results[f"paramctl ties --by value {label}"] = run(PARAMCTL + ["ties", "--by", "value", path])

    found_twin = results["paramctl ties --by value 1g_twin.safetensors"].stdout
    found_transposed = results["paramctl ties --by value 1g_transposed.safetensors"].stdout
    for label, stdout, relation in (("twin", found_twin, "(tied)"), ("transposed", found_transposed, "(transposed)")):
        if not (SOURCE in stdout and TARGET in stdout and relation in stdout):
            print(f"WARNING: --by value did not report {SOURCE} and {TARGET} {relation} in the {label} file")
    if SOURCE not in results["ref: safe_open + blake2b per tensor (twin)"].stdout:
        print("WARNING: the reference did not find the twin")

    print()
    print_table(results, baseline="paramctl ls 1g.pt")
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()

    ratio = results["paramctl ties 1g.pt"].seconds / results["paramctl ls 1g.pt"].seconds
    check("paramctl ties 1g.pt / paramctl ls 1g.pt (time)", ratio, 0.8 <= ratio <= 1.2, "1.0 +/- 20%")
    ratio = results["ref: torch.load mmap + data_ptr (1g.pt)"].seconds / results["paramctl ties 1g.pt"].seconds
    check("ref torch data_ptr / paramctl ties 1g.pt (time)", ratio, ratio >= 5, ">= 5")
    for label, path in files.items():
        m = results[f"paramctl ties --by value {label}"]
        rate = os.path.getsize(path) / m.seconds / 1e9
        check(f"ties --by value {label} (GB of file / s)", rate, rate >= 1.0, ">= 1.0")
    if "saves 251,658,240 parameters" not in results["paramctl ties --by value 1g_same.safetensors"].stdout:
        print("WARNING: --by value did not find the 16 identical tensors of 1g_same as one group")
    for label in files:
        rss = results[f"paramctl ties --by value {label}"].peak_rss_mb
        check(f"ties --by value {label} peak RSS (MB)", rss, rss < 150, "< 150")
    ref = results["ref: safe_open + blake2b per tensor (twin)"].seconds
    ratio = ref / results["paramctl ties --by value 1g_twin.safetensors"].seconds
    check("ref blake2b / ties --by value twin (time)", ratio, ratio >= 2, ">= 2")


if __name__ == "__main__":
    main()
