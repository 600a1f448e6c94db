"""Shared helpers for the paramctl benchmarks.

Only the standard library is imported at module level, on purpose: Linux reports a child's
``ru_maxrss`` as at least the *parent's* peak RSS at the time of the fork (the parent's memory
map is accounted to the child until it execs).  The harness process must therefore stay small,
so the checkpoints are built in a separate process and numpy/torch are only imported there.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PARAMCTL_BENCH_DIR", "/tmp/paramctl-bench"))
PARAMCTL = [sys.executable, "-m", "paramctl"]


def compile_paramctl() -> None:
    """Write paramctl's bytecode once, as an installed package has it: an environment with
    PYTHONDONTWRITEBYTECODE (or an editable install never run) would otherwise recompile it in every timed run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "paramctl")], env=env, check=True)


compile_paramctl()

N_TENSORS = 16
SHAPES = {"1g": (4096, 4096), "1m": (16, 1024)}  # float32: 16 x 64 MiB, 16 x 64 KiB
FORMATS = ("pt", "safetensors", "npz")
MAX_OVERHEAD = 256 * 1024  # headers, zip directories, pickles: a few KiB in practice


# --------------------------------------------------------------------------- checkpoints


def make_checkpoints(kind: str) -> dict[str, Path]:
    """Paths of the `kind` ("1g" or "1m") checkpoint in each format, built on first use."""
    paths = {fmt: DATA_DIR / f"{kind}.{fmt}" for fmt in FORMATS}
    if not all(_looks_complete(path, kind) for path in paths.values()):
        print(f"building {kind} checkpoints in {DATA_DIR} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "build", kind, str(DATA_DIR)], check=True)
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return paths


def _raw_bytes(kind: str) -> int:
    rows, cols = SHAPES[kind]
    return N_TENSORS * rows * cols * 4


def _looks_complete(path: Path, kind: str) -> bool:
    # Files are written under a temporary name and renamed, so a size check is enough.
    raw = _raw_bytes(kind)
    return path.is_file() and raw <= path.stat().st_size <= raw + MAX_OVERHEAD


def _build(kind: str, data_dir: Path) -> None:
    """Write the missing checkpoint files (runs in its own process, see module docstring)."""
    import zipfile

    import numpy as np
    import torch
    from safetensors.torch import save_file

    def tensor(i: int) -> np.ndarray:  # deterministic, so every format holds the same data
        return np.random.default_rng([1234, i]).standard_normal(SHAPES[kind], dtype=np.float32)

    def all_tensors() -> dict[str, torch.Tensor]:  # the whole checkpoint, 1 GiB for "1g"
        return {f"layers.{i}.weight": torch.from_numpy(tensor(i)) for i in range(N_TENSORS)}

    def write_pt(tmp: Path) -> None:
        torch.save(all_tensors(), tmp)

    def write_safetensors(tmp: Path) -> None:
        save_file(all_tensors(), tmp)

    def write_npz(tmp: Path) -> None:
        # Exactly what np.savez does (stored, zip64 entries), but one tensor at a time.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for i in range(N_TENSORS):
                with zf.open(f"layers.{i}.weight.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, tensor(i), allow_pickle=False)

    data_dir.mkdir(parents=True, exist_ok=True)
    writers = {"pt": write_pt, "safetensors": write_safetensors, "npz": write_npz}
    for fmt, write in writers.items():
        path = data_dir / f"{kind}.{fmt}"
        if _looks_complete(path, kind):
            continue
        tmp = path.with_name(path.name + ".tmp")
        start = time.perf_counter()
        write(tmp)
        os.replace(tmp, path)
        size_mb = path.stat().st_size / 2**20
        print(f"  wrote {path} ({size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s", file=sys.stderr)


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    seconds: float  # median wall time
    peak_rss_mb: float  # max over the runs of the child's ru_maxrss
    stdout: str  # of the last run, for sanity checks


def python_snippet(code: str) -> list[str]:
    """Command running a reference Python snippet with the same interpreter."""
    return [sys.executable, "-c", code]


def run(cmd: list[str], repeat: int = 5) -> Measurement:
    """Run `cmd` once to warm the page cache, then `repeat` times; median time, max peak RSS."""
    _run_once(cmd)
    runs = [_run_once(cmd) for _ in range(repeat)]
    return Measurement(
        seconds=statistics.median(seconds for seconds, _, _ in runs),
        peak_rss_mb=max(rss for _, rss, _ in runs),
        stdout=runs[-1][2],
    )


def _run_once(cmd: list[str]) -> tuple[float, float, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        print(f"FAILED (exit {proc.returncode}): {' '.join(cmd)}\n{stderr}", file=sys.stderr)
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024, stdout  # ru_maxrss is in KiB on Linux


def harness_rss_mb() -> float:
    """Peak RSS of this process: the floor of every child's reported peak RSS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- reporting


def print_table(results: dict[str, Measurement], baseline: str | None = None) -> None:
    """One line per result; `ratio` is the time relative to the `baseline` result."""
    width = max(len(name) for name in results)
    base = results[baseline].seconds if baseline else None
    print(f"{'command':<{width}}  {'seconds':>9}  {'peak RSS MB':>11}  {'ratio':>7}")
    for name, m in results.items():
        ratio = f"{m.seconds / base:7.2f}" if base else f"{'-':>7}"
        print(f"{name:<{width}}  {m.seconds:9.4f}  {m.peak_rss_mb:11.1f}  {ratio}")
    if baseline:
        print(f"(ratio = seconds / seconds of {baseline!r})")


def check(label: str, value: float, ok: bool, target: str) -> None:
    """Print one target line with PASS/FAIL."""
    print(f"{'PASS' if ok else 'FAIL'}  {label:<52} {value:9.3f}   target {target}")


if __name__ == "__main__" and sys.argv[1:2] == ["build"]:
    _build(sys.argv[2], Path(sys.argv[3]))
