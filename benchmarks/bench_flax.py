"""Benchmark `paramctl ls` (and `stat`) of Flax msgpack files against `flax.serialization.msgpack_restore`.

Run: .venv/bin/python benchmarks/bench_flax.py   (always exits 0: this is a measurement, not a test)

The files hold the same 16 float32 tensors as the other benchmarks' checkpoints, nested as Flax nests them
(`params.layers_{i}.kernel`): `1g.msgpack` (16 × 4096×4096, 1 GiB, 64 MiB arrays: under flax's 1 GiB chunk size),
`1m.msgpack` (16 × 16×1024), and `1g_chunked.msgpack`, the 1 GiB tensors split as flax splits arrays over its
chunk size, here lowered to 16 MiB (4 chunks per tensor). They are written a tensor at a time, byte for byte as
`to_bytes` writes them (checked against flax itself on the 1 MiB tensors), and cached in the benchmark folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import DATA_DIR, N_TENSORS, PARAMCTL, SHAPES, check, harness_rss_mb, print_table, python_snippet, run

CHUNK_LIMIT = 16 << 20  # the lowered MAX_CHUNK_SIZE of the chunked file

# What a Flax user runs to see what a checkpoint holds.
REF_RESTORE = """
import sys
from flax import serialization
tree = serialization.msgpack_restore(open(sys.argv[1], "rb").read())
for name, layer in tree["params"].items():
    print(name, layer["kernel"].shape, layer["kernel"].dtype)
"""

REF = "ref R: msgpack_restore (1g.msgpack)"
REF_CHUNKED = "ref R: msgpack_restore (1g_chunked.msgpack)"


def paths() -> dict[str, Path]:
    return {name: DATA_DIR / f"{name}.msgpack" for name in ("1g", "1m", "1g_chunked")}


def build_missing() -> dict[str, Path]:
    """The three files, built in a separate process (the harness must stay small, see common.py)."""
    files = paths()
    if not all(path.is_file() for path in files.values()):
        print(f"building msgpack files in {DATA_DIR} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "build"], check=True)
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return files


# --------------------------------------------------------------------------------------------- writing


def _build() -> None:
    import numpy as np

    def tensor(kind: str, i: int) -> np.ndarray:  # the same data as common.py's checkpoints
        return np.random.default_rng([1234, i]).standard_normal(SHAPES[kind], dtype=np.float32)

    _check_writer_against_flax(lambda i: tensor("1m", i))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, path in paths().items():
        if path.is_file():
            continue
        kind = name.split("_")[0]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            write_tree(out, [tensor(kind, i) for i in range(N_TENSORS)], CHUNK_LIMIT if "chunked" in name else None)
        os.replace(tmp, path)
        print(f"  wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)


def write_tree(out: object, tensors: object, chunk_limit: int | None) -> None:
    """`{"params": {"layers_i": {"kernel": t}}}` as msgpack_serialize writes it; `tensors` may be lazy."""
    import msgpack

    pack = msgpack.Packer(use_bin_type=True)
    tensors = list(tensors) if not isinstance(tensors, list) else tensors
    out.write(pack.pack_map_header(1) + pack.pack("params") + pack.pack_map_header(len(tensors)))
    for i, values in enumerate(tensors):
        out.write(pack.pack(f"layers_{i}") + pack.pack_map_header(1) + pack.pack("kernel"))
        if chunk_limit is None or values.nbytes <= chunk_limit:
            _write_ndarray(out, pack, values)
            continue
        # flax's _chunk: {"__msgpack_chunked_array__": True, "shape": {"0": n, ...}, "chunks": {"0": 1-D, ...}}
        step = max(1, chunk_limit // values.itemsize)
        flat = values.reshape(-1)
        out.write(pack.pack_map_header(3) + pack.pack("__msgpack_chunked_array__") + pack.pack(True))
        out.write(pack.pack("shape") + pack.pack({str(d): n for d, n in enumerate(values.shape)}))
        starts = range(0, flat.size, step)
        out.write(pack.pack("chunks") + pack.pack_map_header(len(starts)))
        for index, start in enumerate(starts):
            out.write(pack.pack(str(index)))
            _write_ndarray(out, pack, flat[start : start + step])


def _write_ndarray(out: object, pack: object, values: object) -> None:
    """Ext type 1 holding packb((shape, dtype name, bytes)), with the header msgpack picks for its length."""
    raw = memoryview(values).cast("B")
    inner = pack.pack_array_header(3) + pack.pack(list(values.shape)) + pack.pack(values.dtype.name)
    inner += _bin_header(len(raw))
    length = len(inner) + len(raw)
    out.write(_ext_header(length, 1) + inner)
    out.write(raw)


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _ext_header(n: int, code: int) -> bytes:
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
    if n in fixed:
        return fixed[n] + bytes([code])
    if n < 2**8:
        return b"\xc7" + n.to_bytes(1, "big") + bytes([code])
    if n < 2**16:
        return b"\xc8" + n.to_bytes(2, "big") + bytes([code])
    return b"\xc9" + n.to_bytes(4, "big") + bytes([code])


def _check_writer_against_flax(tensor: object) -> None:
    """The hand writer must produce flax's exact bytes, plain and chunked (at a limit that chunks 64 KiB arrays)."""
    import io
    from unittest import mock

    from flax import serialization

    tensors = [tensor(i) for i in range(N_TENSORS)]
    for limit in (None, 20_000):
        written = io.BytesIO()
        write_tree(written, tensors, limit)
        # in_place=True, as to_bytes calls it: keys in insertion order (a copy would sort them, layers_10 first)
        tree = {"params": {f"layers_{i}": {"kernel": t} for i, t in enumerate(tensors)}}
        with mock.patch.object(serialization, "MAX_CHUNK_SIZE", limit or serialization.MAX_CHUNK_SIZE):
            expected = serialization.msgpack_serialize(tree, in_place=True)
        if written.getvalue() != expected:
            raise SystemExit(f"the benchmark's msgpack writer differs from flax's (chunk limit {limit})")


# --------------------------------------------------------------------------------------------- measuring


def main() -> None:
    files = build_missing()
    results = {}
    for name, path in files.items():
        results[f"paramctl ls {name}.msgpack"] = run(PARAMCTL + ["ls", str(path)])
    for name in ("1g", "1g_chunked"):
        results[f"paramctl stat {name}.msgpack"] = run(PARAMCTL + ["stat", str(files[name])], repeat=3)
    results[REF] = run(python_snippet(REF_RESTORE) + [str(files["1g"])], repeat=3)
    results[REF_CHUNKED] = run(python_snippet(REF_RESTORE) + [str(files["1g_chunked"])], repeat=3)

    for name, m in results.items():  # a silent success would make the timings meaningless
        if m.stdout.count("layers") < N_TENSORS:
            print(f"WARNING: {name!r} did not print all {N_TENSORS} tensors")

    print()
    print_table(results, baseline=REF)
    print(f"(peak RSS floor = harness RSS at spawn time: {harness_rss_mb():.1f} MB)")
    print()

    ls_1g, ls_1m = results["paramctl ls 1g.msgpack"], results["paramctl ls 1m.msgpack"]
    ls_chunked = results["paramctl ls 1g_chunked.msgpack"]
    ratio = results[REF].seconds / ls_1g.seconds
    check("ref R / paramctl ls 1g.msgpack (time)", ratio, ratio >= 10, ">= 10")
    ratio = results[REF_CHUNKED].seconds / ls_chunked.seconds
    check("ref R / paramctl ls 1g_chunked.msgpack (time)", ratio, ratio >= 10, ">= 10")
    for name in ("1g", "1m", "1g_chunked"):
        rss = results[f"paramctl ls {name}.msgpack"].peak_rss_mb
        check(f"paramctl ls {name}.msgpack peak RSS (MB)", rss, rss < 80, "< 80")
    ratio = ls_1g.seconds / ls_1m.seconds
    check("paramctl ls .msgpack: 1g time / 1m time", ratio, 0.8 <= ratio <= 1.2, "1.0 +/- 20%")
    ratio = results["paramctl stat 1g_chunked.msgpack"].seconds / results["paramctl stat 1g.msgpack"].seconds
    check("paramctl stat: chunked time / plain time", ratio, ratio <= 1.2, "<= 1.2")
    for name in ("1g", "1g_chunked"):
        rss = results[f"paramctl stat {name}.msgpack"].peak_rss_mb
        check(f"paramctl stat {name}.msgpack peak RSS (MB)", rss, rss < 150, "< 150")


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        _build()
    else:
        main()
