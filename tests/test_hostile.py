"""The hostile-file guarantees, case by case, on the corpus written by tests/hostile.py.

1. Nothing from a file is executed: every malicious pickle leaves its marker uncreated (and the same payloads,
   given to pickle / torch.load(weights_only=False) / numpy.load(allow_pickle=True), do create theirs).
2. Bad input is one line on stderr naming the file, exit 2; no traceback, no hang.
3. Memory never follows a lying header: hostile files run in subprocesses under a 1 GiB address-space limit,
   and a 1.25 GiB zip bomb is listed and streamed under it.
4. Input files are never written: every file's hash is the same after paramctl read it.
5. Valid but unusual files still read, compared with torch.load and numpy.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hostile
import numpy as np
import pytest
import torch
from hostile import BAD, DANGEROUS, OK, Case
from reference import ROOT, raw_bytes, torch_bytes
from typer.testing import CliRunner

import paramctl
from paramctl import reader
from paramctl.cli import app
from paramctl.ops.scan import scan
from paramctl.tree import Opaque, Tensor, Value

ADDRESS_SPACE = 1 << 30  # what a subprocess may map: a hostile file must not make paramctl need more
TIMEOUT = 30

# The corpus is written once, at collection, so each case is its own test.
_WORK = Path(tempfile.mkdtemp(prefix="paramctl-hostile-"))
atexit.register(shutil.rmtree, _WORK, True)
(_WORK / "files").mkdir()
(_WORK / "markers").mkdir()
CASES = {case.name: case for case in hostile.build(_WORK / "files", _WORK / "markers")}
runner = CliRunner()


def sha256(path: Path) -> str | None:
    """A regular file's hash (None for what is not one: a FIFO, a device link, a loop)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def limited() -> None:
    """preexec_fn: cap the address space, so memory that follows a lying size fails loudly instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_cli(*args: str, preexec=limited) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "paramctl", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=preexec,
        cwd=ROOT,
    )


def assert_one_line_error(stderr: str, case: Case) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"paramctl: {case.path}: "), stderr
    assert "Traceback" not in stderr


def expected_dangerous(case: Case, result) -> None:  # type: ignore[no-untyped-def]
    names = {f.qualname for f in result.dangerous} | {f.imports for f in result.dangerous}
    assert set(case.dangerous) <= names, (case.name, names)


# -- every case, in process ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_library_refuses_or_lists_without_running_anything(name: str):
    """paramctl.open and scan: only paramctl's errors, naming the file and the problem; no marker; no write."""
    case = CASES[name]
    before = sha256(case.path)
    if case.ls_exit == OK:
        tree = paramctl.open(case.path)
        assert len(tree) > 0
    else:
        with pytest.raises(paramctl.ParamctlError) as raised:
            paramctl.open(case.path)
        assert str(raised.value).startswith(f"{case.path}: "), raised.value
        assert case.error is not None and case.error in str(raised.value), raised.value
    try:
        result = scan(str(case.path))
    except paramctl.ParamctlError as error:  # not a file, or a zip whose directory cannot be trusted
        assert case.scan_exit == BAD and not case.dangerous, error
        assert str(error).startswith(f"{case.path}: ")
    else:
        assert case.kind != "path"
        assert bool(result.dangerous) == (case.scan_exit == DANGEROUS), result.as_json()
        valid = case.scan_valid if case.scan_valid is not None else case.ls_exit == OK
        assert result.valid == valid, result.problems
        expected_dangerous(case, result)
    if case.marker is not None:
        assert not case.marker.exists(), f"{name}: the payload ran"
    assert sha256(case.path) == before


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_exit_codes_and_one_line_errors(name: str):
    """`ls` and `scan` through the CLI (in process): exit 0/1/2 as the case says, one stderr line when 2."""
    case = CASES[name]
    listed = runner.invoke(app, ["ls", str(case.path)])
    assert listed.exit_code == case.ls_exit, (listed.output, listed.stderr)
    if case.ls_exit == BAD:
        assert_one_line_error(listed.stderr, case)
        assert case.error is not None and case.error in listed.stderr
    else:
        assert listed.stderr == ""
    scanned = runner.invoke(app, ["scan", "--json", str(case.path)])
    assert scanned.exit_code == case.scan_exit, (scanned.stdout, scanned.stderr)
    if case.scan_exit == BAD:
        assert_one_line_error(scanned.stderr, case)
    if case.marker is not None:
        assert not case.marker.exists()


# -- a representative subset in subprocesses, under an address-space limit and a timeout ---------------------------

SUBPROCESS_CASES = [
    "zip_p2.pt", "legacy_p4.pt", "ext1.pt", "npz_object.npz", "billion_laughs.pt", "too_deep.pt",
    "compress_size_lie.pt", "st_header_over_limit.safetensors", "npz_header_too_long.npz", "fifo", "dev_zero",
    "dev_urandom", "symlink_loop", "placeholder_calls.pt", "frame_straddle.pt", "no_proto",
]  # fmt: skip


def test_subprocess_subset_is_in_the_corpus():
    assert set(SUBPROCESS_CASES) <= set(CASES)


def _run_case(name: str) -> list[str]:
    case, failures = CASES[name], []
    before = sha256(case.path)
    for command, expected in (("ls", case.ls_exit), ("scan", case.scan_exit)):
        done = run_cli(command, str(case.path))
        if done.returncode != expected:
            failures.append(f"{name} {command}: exit {done.returncode}, expected {expected}: {done.stderr[-500:]}")
        elif expected == BAD:
            lines = done.stderr.splitlines()
            if len(lines) != 1 or not lines[0].startswith(f"paramctl: {case.path}: "):
                failures.append(f"{name} {command}: stderr is not one line naming the file: {done.stderr!r}")
        elif done.stderr:
            failures.append(f"{name} {command}: unexpected stderr {done.stderr!r}")
    if case.marker is not None and case.marker.exists():
        failures.append(f"{name}: the payload ran")
    if sha256(case.path) != before:
        failures.append(f"{name}: the input changed")
    return failures


def test_subprocesses_exit_cleanly_under_memory_and_time_limits():
    """Each run gets 1 GiB of address space and 30 s: a FIFO, /dev/zero or a lying header can exhaust neither."""
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        failures = [f for found in pool.map(_run_case, SUBPROCESS_CASES) for f in found]
    assert not failures, "\n".join(failures)


def test_unreadable_file(tmp_path: Path):
    """Permission denied is one line, exit 2 (as root, the subprocess loses its right to read anything)."""
    path = hostile.unreadable(tmp_path / "locked")
    case = Case("unreadable", path, BAD, BAD, hostile.UNREADABLE_ERROR, kind="path")

    def preexec() -> None:
        limited()
        hostile.drop_root_reading()

    for command in ("ls", "scan"):
        done = run_cli(command, str(path), preexec=preexec)
        assert done.returncode == BAD, done.stderr
        assert_one_line_error(done.stderr, case)
        assert hostile.UNREADABLE_ERROR in done.stderr


def test_payloads_are_live(tmp_path: Path):
    """The corpus is real: the same files, loaded by pickle, torch.load(weights_only=False) or
    numpy.load(allow_pickle=True), create their markers. (A separate copy, with its own markers.)"""
    (tmp_path / "files").mkdir()
    (tmp_path / "markers").mkdir()
    cases = hostile.build(tmp_path / "files", tmp_path / "markers")
    fired = hostile.live_check(cases, sys.executable)
    live = [case for case in cases if case.live]
    assert len(live) >= 35
    assert {case.marker for case in live} == set(fired)
    kinds = {case.live for case in live}
    assert kinds == {"torch", "pickle", "numpy", "npy", "pickle-file", "pickle-stream", "zip-all"}


def test_every_object_building_opcode_and_protocol_is_covered():
    """The corpus names globals through every opcode that can, in every protocol, in both containers."""
    opcodes = set()
    for case in CASES.values():
        if case.marker is None:
            continue
        try:
            result = scan(str(case.path))
        except paramctl.ParamctlError:
            continue
        opcodes |= {where.opcode for finding in result.dangerous for where in finding.where}
        assert not case.marker.exists()
    assert {"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"} <= opcodes
    protocols = {
        info.protocol
        for name in CASES
        if name.startswith(("zip_p", "legacy_p"))
        for info in scan(str(CASES[name].path)).pickles
    }
    assert protocols >= {None, 2, 3, 4, 5}  # protocols 0 and 1 have no PROTO opcode: their pickles report None
    assert {f"{kind}_p{p}.pt" for kind in ("zip", "legacy") for p in range(6)} <= set(CASES)


# -- memory: a zip bomb --------------------------------------------------------------------------------------------


def test_zip_bomb_is_listed_and_streamed_in_bounded_memory(tmp_path: Path):
    """A ~1 MB npz whose member inflates to 1 GiB: listing reads the header only, and reading it streams
    (reader.chunks) under a 1 GiB address-space limit (which the interpreter and NumPy share): memory does not
    follow the claimed size."""
    path = hostile.bomb_npz(tmp_path / "bomb.npz", gib=1.0)
    assert path.stat().st_size < 2 << 20
    before = sha256(path)
    listed = run_cli("ls", "--json", str(path))
    assert listed.returncode == 0, listed.stderr
    assert '"numel": 134217728' in listed.stdout
    code = (
        "import sys, paramctl\n"
        "from paramctl import reader\n"
        f"tree = paramctl.open({str(path)!r})\n"
        "(name, tensor), = tree.tensors()\n"
        "total = count = 0\n"
        "for chunk in reader.chunks(tensor):\n"
        "    total += float(abs(chunk).sum()); count += chunk.size\n"
        "print(count, total)\n"
    )
    streamed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=limited, cwd=ROOT
    )
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert streamed.stdout.split() == [str(134217728), "0.0"]
    assert sha256(path) == before


def test_corrupt_deflate_stream_is_a_paramctl_error_when_read(tmp_path: Path):
    """Damage inside a deflated member shows up only when the data is read: still a CorruptFileError."""
    path = hostile.bomb_npz(tmp_path / "bomb.npz", gib=0.0625)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    ((_, tensor),) = paramctl.open(path).tensors()
    with pytest.raises(paramctl.CorruptFileError, match=r"zeros\.npy"):
        for _ in reader.chunks(tensor):
            pass


# -- guarantee 5: valid but unusual files still read ---------------------------------------------------------------


@pytest.fixture(scope="module")
def unusual(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile.valid_unusual(tmp_path_factory.mktemp("unusual"))


@pytest.mark.parametrize("name", ["views", "views_legacy", "names", "nested"])
def test_unusual_tensors_match_torch_load(unusual: dict[str, Path], name: str):
    """Non-contiguous views, 0-d and empty tensors, unicode, control-character and 5000-character names,
    100 levels of nesting: names, layouts and bytes equal torch.load's."""
    path = unusual[name]
    reference = _flatten_torch(torch.load(path, weights_only=True))
    tree = paramctl.open(path)
    ours = dict(tree.tensors())
    assert list(ours) == [k for k, v in reference.items() if isinstance(v, torch.Tensor)]
    for key, tensor in ours.items():
        expected = reference[key]
        assert tensor.shape == tuple(expected.shape) and tensor.strides == expected.stride(), key
        assert tensor.offset == expected.storage_offset(), key
        assert raw_bytes(reader.array(tensor)) == torch_bytes(expected), key
    values = {k: v.value for k, v in tree if isinstance(v, Value)}
    assert values == {k: v for k, v in reference.items() if not isinstance(v, torch.Tensor)}


def test_ten_thousand_tiny_tensors(unusual: dict[str, Path]):
    tree = paramctl.open(unusual["many"])
    tensors = dict(tree.tensors())
    assert len(tensors) == 10_000
    assert float(reader.array(tensors["t9999"])[0]) == 9999.0
    listed = runner.invoke(app, ["ls", "--json", str(unusual["many"])])
    assert listed.exit_code == 0 and '"tensors": 10000' in listed.stdout


def test_foreign_objects_list_with_numpy_scalars_decoded(unusual: dict[str, Path]):
    """argparse.Namespace, numpy scalars and arrays, pathlib paths: torch.load(weights_only=False) is the
    reference (the file is ours); numpy scalars become plain values, decoded without numpy."""
    path = unusual["foreign"]
    reference = torch.load(path, weights_only=False)
    tree = paramctl.open(path)
    for key in ("np_f8", "np_i4", "np_f4", "np_bool", "np_c16", "np_u8", "np_f2"):
        leaf = tree[key]
        assert isinstance(leaf, Value), (key, leaf)
        assert leaf.value == reference[key].item() and type(leaf.value) is type(reference[key].item()), key
    assert tree["args"] == Opaque("argparse.Namespace")
    assert tree["args.lr"] == Value(0.1) and tree["args.layers"] == Value([1, 2]) and tree["args.name"] == Value("run")
    array = tree["np_array"]
    assert isinstance(array, Opaque) and array.global_name == "numpy.ndarray"
    assert array.note == f"shape [2, 3], dtype <i{reference['np_array'].dtype.itemsize}"
    assert tree["path"] == Opaque("pathlib.PurePosixPath", str(reference["path"]))
    assert [name for name, _ in tree].count("path") == 1
    assert isinstance(tree["w"], Tensor) and raw_bytes(reader.array(tree["w"])) == torch_bytes(reference["w"])
    scanned = scan(str(path))
    assert not scanned.dangerous
    classes = {f.qualname: f.cls for f in scanned.globals}
    assert classes["argparse.Namespace"] == "inert" and classes["pathlib.PurePosixPath"] == "inert"
    assert classes["numpy.dtype"] == "rebuilt"


def test_big_endian_fortran_0d_and_empty_npz_members_match_numpy(unusual: dict[str, Path]):
    path = unusual["big_endian"]
    tree = paramctl.open(path)
    with np.load(path) as archive:
        for key in archive.files:
            tensor = tree[key]
            assert isinstance(tensor, Tensor)
            expected = archive[key]
            assert tensor.shape == expected.shape, key
            assert np.array_equal(np.asarray(reader.array(tensor)), expected), key
            assert math.prod(tensor.shape) == expected.size


def _flatten_torch(obj: object, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    from reference import reference_flatten

    return reference_flatten(obj, prefix)
