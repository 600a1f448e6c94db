"""Benchmark `paramctl ls` and `paramctl stat` on a 1 GiB distributed checkpoint (DCP) written by 4 ranks, against
what a torch user does today: `dcp_to_torch_save` (consolidate) followed by `torch.load`, as whole processes.

The checkpoint is `benchmarks/common.py`'s 1 GiB model (16 x 4096x4096 float32, the same values as 1g.pt), saved with
`torch.distributed.checkpoint.save` by 4 gloo processes, every matrix a DTensor split by rows (`Shard(0)`): 4 rank
files of 256 MiB, 64 chunks. It is built once in the bench cache folder (PARAMCTL_BENCH_DIR).

Run: .venv/bin/python benchmarks/bench_dcp.py   (always exits 0: this is a measurement, not a test)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    DATA_DIR,
    N_TENSORS,
    PARAMCTL,
    SHAPES,
    check,
    harness_rss_mb,
    make_checkpoints,
    print_table,
    python_snippet,
    run,
)

WORLD = 4
FOLDER = DATA_DIR / f"1g.dcp{WORLD}"

# What a user runs today to look inside: consolidate to one torch.save file, load it, then list or reduce.
REF_CONSOLIDATE = """
import os, sys, tempfile, torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
fd, target = tempfile.mkstemp(suffix=".pt", dir=os.path.dirname(sys.argv[1]))
os.close(fd)
try:
    dcp_to_torch_save(sys.argv[1], target)
    sd = torch.load(target, weights_only=True, mmap=True)
finally:
    os.unlink(target)
for name, t in sd.items():
    if isinstance(t, torch.Tensor):
        print(name, tuple(t.shape), t.dtype{reduce})
    else:
        print(name, t)
"""
REDUCE = ", t.min().item(), t.max().item(), t.mean().item(), t.std().item(), t.isnan().sum().item()"

# The cheapest torch listing: read the metadata pickle with torch's own reader (shapes and dtypes, no values).
REF_METADATA = """
import sys
from torch.distributed.checkpoint import FileSystemReader
meta = FileSystemReader(sys.argv[1]).read_metadata()
for name, item in meta.state_dict_metadata.items():
    print(name, tuple(getattr(item, "size", ())), getattr(getattr(item, "properties", None), "dtype", "bytes"))
"""

LS, STAT = f"paramctl ls 1g.dcp{WORLD}", f"paramctl stat 1g.dcp{WORLD}"
REF_LS = "ref C: dcp_to_torch_save + torch.load + list"
REF_STAT = "ref C: dcp_to_torch_save + torch.load + 5 reductions"
REF_META = "ref M: FileSystemReader.read_metadata + list"
STAT_PT = "paramctl stat 1g.pt (same values, one file)"
LS_RATIO, STAT_RATIO, MAX_RSS_MB = 10.0, 3.0, 150  # targets: reference time / paramctl time, paramctl's peak RSS


# --------------------------------------------------------------------------- the checkpoint


def make_dcp() -> Path:
    """The 1 GiB, 4-rank DCP folder, built on first use (in a child process: the harness must stay small)."""
    if not _complete(FOLDER):
        print(f"building {FOLDER} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "build", str(FOLDER)], check=True)
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return FOLDER


def _complete(folder: Path) -> bool:
    rows, cols = SHAPES["1g"]
    files = list(folder.glob("__*_*.distcp"))
    return (folder / ".metadata").is_file() and sum(f.stat().st_size for f in files) >= N_TENSORS * rows * cols * 4


def _build(folder: Path) -> None:
    """Save with 4 processes into a temporary folder, then rename it into place."""
    import torch.multiprocessing as mp

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    mp.spawn(_save_rank, args=(tmp,), nprocs=WORLD, join=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _save_rank(rank: int, folder: Path) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        rows, cols = SHAPES["1g"]
        per_rank = rows // WORLD
        state: dict[str, object] = {"step": 7}
        for i in range(N_TENSORS):  # common.py's values, so this holds what 1g.pt holds
            whole = np.random.default_rng([1234, i]).standard_normal((rows, cols), dtype=np.float32)
            shard = torch.from_numpy(whole[rank * per_rank : (rank + 1) * per_rank].copy())
            del whole
            state[f"layers.{i}.weight"] = DTensor.from_local(
                shard, mesh, [Shard(0)], shape=torch.Size((rows, cols)), stride=(cols, 1)
            )
        dcp.save(state, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- measuring


def main() -> None:
    folder = make_dcp()
    plain = make_checkpoints("1g")["pt"]
    results = {
        LS: run(PARAMCTL + ["ls", str(folder)]),
        STAT: run(PARAMCTL + ["stat", str(folder)]),
        STAT_PT: run(PARAMCTL + ["stat", str(plain)]),
        REF_META: run(python_snippet(REF_METADATA) + [str(folder)]),
        REF_LS: run(python_snippet(REF_CONSOLIDATE.format(reduce="")) + [str(folder)], repeat=3),
        REF_STAT: run(python_snippet(REF_CONSOLIDATE.format(reduce=REDUCE)) + [str(folder)], repeat=3),
    }
    for name, m in results.items():  # a silent success would make the timings meaningless
        if m.stdout.count("layers.") < N_TENSORS:
            print(f"WARNING: {name!r} did not print all {N_TENSORS} tensors")
    rows = {
        name: [line for line in results[name].stdout.splitlines() if line.startswith("layers.")]
        for name in (STAT, STAT_PT)
    }
    if rows[STAT] != rows[STAT_PT]:  # the same values: every figure must agree with the single-file reading
        print("WARNING: paramctl stat of the DCP folder and of 1g.pt differ")

    print()
    print_table(results, baseline=STAT)
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()
    for ours, ref, target in ((LS, REF_LS, LS_RATIO), (STAT, REF_STAT, STAT_RATIO)):
        ratio = results[ref].seconds / results[ours].seconds
        check(f"{ref[:5]} / {ours} (time)", ratio, ratio >= target, f">= {target}")
    ratio = results[REF_META].seconds / results[LS].seconds
    check(f"{REF_META[:5]} / {LS} (time)", ratio, ratio >= 1.0, ">= 1.0")
    ratio = results[STAT].seconds / results[STAT_PT].seconds
    check(f"{STAT} / paramctl stat 1g.pt (time)", ratio, ratio <= 1.5, "<= 1.5")
    for name in (LS, STAT):
        rss = results[name].peak_rss_mb
        check(f"{name} peak RSS (MB)", rss, rss < MAX_RSS_MB, f"< {MAX_RSS_MB}")
    for ref in (REF_LS, REF_STAT):
        print(f"      {ref} peak RSS: {results[ref].peak_rss_mb:.0f} MB")


if __name__ == "__main__" and sys.argv[1:2] == ["build"]:
    _build(Path(sys.argv[2]))
elif __name__ == "__main__":
    main()
