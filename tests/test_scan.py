"""`paramctl scan`: classification, where each global appears, torch's weights_only verdicts (checked against
torch itself), format-level validation for safetensors and npz, the JSON schema, exit codes and the text report."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import hostile
import numpy as np
import pytest
import torch
from reference import FIXTURES, ROOT
from typer.testing import CliRunner

from paramctl.cli import app
from paramctl.ops.scan import scan
from paramctl.pickles import (
    DANGEROUS,
    INERT,
    REBUILT,
    TORCH_WEIGHTS_ONLY_ALLOWED,
    TORCH_WEIGHTS_ONLY_BLOCKED,
    TORCH_WEIGHTS_ONLY_OPCODES,
    UNKNOWN,
    classify,
)
from paramctl.pickles import globals as globals_table

runner = CliRunner()
TORCH_UNPICKLER = Path(torch._weights_only_unpickler.__file__)


class Config:
    """A user's own class, as a training script pickles it."""

    def __init__(self) -> None:
        self.depth = 3


# -- the static tables against torch -------------------------------------------------------------------------------


def test_allowlist_is_torchs():
    from torch._weights_only_unpickler import _blocklisted_modules, _get_allowed_globals

    assert set(_get_allowed_globals()) == TORCH_WEIGHTS_ONLY_ALLOWED
    assert set(_blocklisted_modules) == TORCH_WEIGHTS_ONLY_BLOCKED


def test_supported_opcodes_are_torchs():
    """The opcodes torch's weights_only `load` loop dispatches on, read from its source."""
    source = TORCH_UNPICKLER.read_text()
    loop = source[source.index("class Unpickler") :]
    names = set(re.findall(r"key\[0\] == (\w+)\[0\]", loop))
    for group in re.findall(r"key\[0\] in \[((?:\w+\[0\],?\s*)+)\]", loop):
        names |= set(re.findall(r"(\w+)\[0\]", group))
    assert names == TORCH_WEIGHTS_ONLY_OPCODES


def test_python2_renames_are_torchs():
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    assert globals_table._TORCH_IMPORT_MAPPING == IMPORT_MAPPING
    assert globals_table._TORCH_NAME_MAPPING == NAME_MAPPING


# -- weights_only verdicts against torch.load ----------------------------------------------------------------------


def _save(path: Path, obj: object, **kw: object) -> Path:
    torch.save(obj, path, **kw)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("checkpoints")
    marker = d / "never.ran"
    files = {
        "namespace": _save(d / "namespace.pt", {"args": argparse.Namespace(lr=0.1), "w": torch.ones(2)}),
        "numpy": _save(d / "numpy.pt", {"s": np.float64(1.0), "a": np.arange(3), "w": torch.ones(2)}),
        "config": _save(d / "config.pt", {"cfg": Config(), "w": torch.ones(2)}),
        "counter": _save(d / "counter.pt", {"c": Counter("aab"), "b": {1, 2}, "z": 1 + 2j, "w": torch.ones(2)}),
        "evil": _save(d / "evil.pt", {"evil": hostile.Reduce(os.system, hostile.shell(marker))}),
        "exec": _save(d / "exec.pt", {"evil": hostile.Reduce(exec, hostile.python(marker))}),
        "parameter": _save(d / "parameter.pt", {"p": torch.nn.Parameter(torch.ones(2)), "s": torch.Size([2, 3])}),
        "model": _save(d / "model.pt", torch.nn.Linear(2, 3)),
    }
    for protocol in range(6):
        files[f"p{protocol}"] = _save(d / f"p{protocol}.pt", {"w": torch.ones(2), "n": 3}, pickle_protocol=protocol)
    files["legacy"] = _save(d / "legacy.pt", {"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    files["legacy_namespace"] = _save(
        d / "legacy_namespace.pt", {"a": argparse.Namespace(x=1)}, _use_new_zipfile_serialization=False
    )
    return files


def _torch_weights_only(path: Path) -> str | None:
    """None when torch.load(weights_only=True) loads the file, else its error message."""
    try:
        torch.load(path, weights_only=True)
    except Exception as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    "name",
    ["namespace", "numpy", "config", "counter", "evil", "exec", "parameter", "model", "p2", "p3", "legacy"],
)
def test_refused_globals_match_torch(checkpoints: dict[str, Path], name: str):
    """weights_only_refused is torch's own static list (get_unsafe_globals_in_checkpoint) for zip files, and
    torch.load(weights_only=True) fails exactly when it is not empty."""
    path = checkpoints[name]
    result = scan(str(path))
    assert result.weights_only_unsupported_opcodes == []
    if not name.startswith("legacy"):
        assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == result.weights_only_refused
    refusal = _torch_weights_only(path)
    assert (refusal is None) == (result.weights_only_refused == []), refusal
    if refusal is not None:
        named = re.search(r"GLOBAL ([\w.]+)", refusal)  # torch prints builtins.exec as "exec"
        refused = {name.removeprefix("builtins.") for name in result.weights_only_refused}
        assert named is not None and named.group(1) in refused, refusal


@pytest.mark.parametrize("protocol", range(6))
def test_unsupported_opcodes_match_torch(checkpoints: dict[str, Path], protocol: int):
    """torch's weights_only loader implements a subset of the opcodes: protocols 0, 1, 4 and 5 use others."""
    result = scan(str(checkpoints[f"p{protocol}"]))
    refusal = _torch_weights_only(checkpoints[f"p{protocol}"])
    assert result.weights_only_refused == []
    assert (refusal is None) == (result.weights_only_unsupported_opcodes == []), (
        refusal,
        result.weights_only_unsupported_opcodes,
    )
    if refusal is not None:
        operand = re.search(r"Unsupported operand (\d+)", refusal)
        if operand:
            from pickletools import opcodes

            name = next(op.name for op in opcodes if ord(op.code) == int(operand.group(1)))
            assert name in result.weights_only_unsupported_opcodes


def test_blocked_modules_are_reported_as_blocked(checkpoints: dict[str, Path]):
    result = scan(str(checkpoints["evil"]))
    (finding,) = result.dangerous
    assert (finding.module, finding.name, finding.weights_only) == ("posix", "system", "blocked")
    assert result.weights_only_refused == ["posix.system"]
    assert "blocked" in _torch_weights_only(checkpoints["evil"])  # type: ignore[operator]


def test_fixtures_scan_clean_and_load_with_weights_only():
    for path in sorted(FIXTURES.glob("*.pt")):
        result = scan(str(path))
        assert result.valid and not result.dangerous, (path, result.problems)
        assert result.weights_only_refused == [] and result.weights_only_unsupported_opcodes == []
        assert _torch_weights_only(path) is None
        assert all(f.cls == REBUILT for f in result.globals), path


# -- classification ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "expected"),
    [
        ("os", "system", DANGEROUS),
        ("posix", "system", DANGEROUS),
        ("nt", "system", DANGEROUS),
        ("subprocess", "Popen", DANGEROUS),
        ("commands", "getoutput", DANGEROUS),  # protocol <= 2 writes subprocess as its Python 2 name
        ("builtins", "eval", DANGEROUS),
        ("__builtin__", "exec", DANGEROUS),
        ("builtins", "getattr", DANGEROUS),
        ("builtins", "__import__", DANGEROUS),
        ("builtins", "open", DANGEROUS),
        ("importlib", "import_module", DANGEROUS),
        ("runpy", "_run_code", DANGEROUS),
        ("socket", "create_connection", DANGEROUS),
        ("pickle", "loads", DANGEROUS),
        ("_pickle", "loads", DANGEROUS),
        ("torch", "load", DANGEROUS),
        ("torch.serialization", "load", DANGEROUS),
        ("torch", "serialization.load", DANGEROUS),  # protocol 4 dotted name: the same function
        ("torch.storage", "_load_from_bytes", DANGEROUS),
        ("torch.fx.graph_module", "reduce_graph_module", DANGEROUS),
        ("numpy", "load", DANGEROUS),
        ("posixpath", "os.system", DANGEROUS),  # posixpath imports os: an attribute chain to os.system
        ("pathlib", "Path.unlink", DANGEROUS),  # a method of an inert class, callable on anything
        ("builtins", "object.__subclasses__", DANGEROUS),
        ("functools", "partial", DANGEROUS),
        ("operator", "attrgetter", DANGEROUS),
        ("<extension registry>", "240", DANGEROUS),
        ("collections", "OrderedDict", REBUILT),
        ("torch._utils", "_rebuild_tensor_v2", REBUILT),
        ("torch", "FloatStorage", REBUILT),
        ("torch", "bfloat16", REBUILT),
        ("_codecs", "encode", REBUILT),
        ("numpy", "dtype", REBUILT),
        ("numpy._core.multiarray", "scalar", REBUILT),
        ("argparse", "Namespace", INERT),
        ("pathlib", "PosixPath", INERT),
        ("collections", "Counter", INERT),
        ("copyreg", "_reconstructor", INERT),
        ("copy_reg", "_reconstructor", INERT),
        ("torch", "device", INERT),
        ("torch.nn.modules.linear", "Linear", INERT),
        ("torch._utils", "_rebuild_qtensor", INERT),  # allowlisted by torch, not rebuilt by paramctl
        ("mypackage.config", "Config", UNKNOWN),
        ("numpy", "frombuffer", UNKNOWN),
    ],
)
def test_classification(module: str, name: str, expected: str):
    assert classify(module, name)[0] == expected


# -- where each global appears -------------------------------------------------------------------------------------


def test_where_names_the_pickle_offset_opcode_and_listing_name(checkpoints: dict[str, Path]):
    path = checkpoints["namespace"]
    result = scan(str(path))
    with zipfile.ZipFile(path) as z:
        data = z.read("namespace/data.pkl")
    opcode_bytes = {"GLOBAL": b"c", "STACK_GLOBAL": b"\x93", "INST": b"i"}
    for finding in result.globals:
        for where in finding.where:
            assert where.pickle == "namespace/data.pkl"
            assert data[where.offset : where.offset + 1] == opcode_bytes[where.opcode]
    by_name = {f.qualname: f for f in result.globals}
    assert by_name["argparse.Namespace"].where[0].path == "args"
    assert by_name["torch._utils._rebuild_tensor_v2"].where[0].path == "w"
    assert by_name["collections.OrderedDict"].where[0].path == "w"  # the tensor's backward-hooks argument
    assert by_name["argparse.Namespace"].cls == INERT


def test_a_broken_pickle_still_reports_what_it_named_before_the_break(tmp_path: Path):
    """pickle runs every call before the point where a file breaks: scan reports them, and the problem."""
    marker = tmp_path / "never.ran"
    data = hostile.as_dict({"evil": hostile.call(hostile.glob("os", "system"), hostile.text(hostile.shell(marker)))})
    path = hostile.torch_zip(tmp_path / "broken.pt", data[:-2] + b"\xff")
    result = scan(str(path))
    assert [f.qualname for f in result.dangerous] == ["os.system"]
    assert not result.valid and "unknown pickle opcode 0xff" in result.problems[0]
    assert result.pickles[0].error is not None and result.pickles[0].size is None
    listed = runner.invoke(app, ["scan", str(path)])
    assert listed.exit_code == 1 and "DANGEROUS" in listed.stdout
    assert not marker.exists()


def test_argument_checks_cannot_hide_a_later_global(tmp_path: Path):
    """A call paramctl's loader refuses (bad _codecs.encode arguments) stops the listing, not the scan: the real
    unpickler would go on to the next call."""
    marker = tmp_path / "never.ran"
    bad_encode = hostile.call(hostile.glob("_codecs", "encode"), hostile.text("x"), hostile.text("utf-16"))
    evil = hostile.call(hostile.glob("os", "system"), hostile.text(hostile.shell(marker)))
    path = hostile.torch_zip(tmp_path / "hidden.pt", hostile.as_dict({"a": bad_encode, "b": evil}))
    assert runner.invoke(app, ["ls", str(path)]).exit_code == 2
    result = scan(str(path))
    assert [f.qualname for f in result.dangerous] == ["os.system"]
    assert result.dangerous[0].where[0].path == "b"


# -- other formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp.safetensors", "tied_mlp.safetensors", "dtypes.npz", "tiny_lm.npz"])
def test_safetensors_and_npz_fixtures_validate(name: str):
    scanned = runner.invoke(app, ["scan", "--json", str(FIXTURES / name)])
    assert scanned.exit_code == 0, scanned.stderr
    report = json.loads(scanned.stdout)
    assert report["valid"] is True and report["problems"] == [] and report["globals"] == []
    assert report["weights_only_refused"] is None and report["weights_only_unsupported_opcodes"] is None


def test_validation_problems_are_reported_and_exit_2(tmp_path: Path):
    path = hostile.safetensors(tmp_path / "lying.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets":
                                                                     [0, 16]}}, bytes(8))  # fmt: skip
    scanned = runner.invoke(app, ["scan", "--json", str(path)])
    assert scanned.exit_code == 2
    report = json.loads(scanned.stdout)
    assert report["valid"] is False and "past the 8 data bytes" in report["problems"][0]
    assert scanned.stderr.strip() == f"paramctl: {path}: {report['problems'][0]}"


def test_npz_object_arrays_are_scanned(tmp_path: Path):
    buffer = io.BytesIO()
    np.save(buffer, np.array([argparse.Namespace(a=1)], dtype=object), allow_pickle=True)
    path = hostile.npz(tmp_path / "objects.npz", {"o.npy": buffer.getvalue()})
    result = scan(str(path))
    assert result.valid and not result.dangerous
    assert {f.qualname: f.cls for f in result.globals}["argparse.Namespace"] == INERT
    assert result.pickles[0].record == "o.npy" and result.globals[0].weights_only is None


def test_torchscript_archives_are_noted(tmp_path: Path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    result = scan(str(path))
    assert any("TorchScript" in note for note in result.notes)
    assert {p.record.rsplit("/", 1)[-1] for p in result.pickles} >= {"data.pkl", "constants.pkl"}


# -- the command ---------------------------------------------------------------------------------------------------


def test_json_schema(checkpoints: dict[str, Path]):
    scanned = runner.invoke(app, ["scan", "--json", str(checkpoints["config"])])
    assert scanned.exit_code == 0, scanned.stderr

    def no_constants(name: str) -> None:
        raise AssertionError(f"bare {name} in JSON")

    report = json.loads(scanned.stdout, parse_constant=no_constants)
    assert list(report) == [
        "file", "format", "valid", "problems", "dangerous", "counts", "globals", "weights_only_refused",
        "weights_only_unsupported_opcodes", "pickles", "notes", "strict_refused",
    ]  # fmt: skip
    assert report["format"] == "torch-zip" and report["dangerous"] is False
    assert report["counts"] == {"rebuilt": 3, "inert": 0, "unknown": 1, "dangerous": 0}
    finding = report["globals"][0]
    assert list(finding) == ["module", "name", "imports", "class", "reason", "weights_only", "where"]
    assert (finding["module"], finding["name"], finding["class"]) == ("test_scan", "Config", "unknown")
    assert finding["weights_only"] == "refused"
    assert list(finding["where"][0]) == ["pickle", "offset", "opcode", "path"]
    assert finding["where"][0]["path"] == "cfg"
    assert report["weights_only_refused"] == ["test_scan.Config"]
    assert list(report["pickles"][0]) == ["record", "offset", "size", "protocol", "error"]


def test_text_report_and_exit_1_for_dangerous(checkpoints: dict[str, Path]):
    scanned = runner.invoke(app, ["scan", str(checkpoints["exec"])])
    assert scanned.exit_code == 1 and scanned.stderr == ""
    out = scanned.stdout
    assert "dangerous" in out and "__builtin__.exec (imports builtins.exec)" in out
    assert "torch.load(weights_only=True) would refuse this file" in out
    assert "builtins.exec  (dangerous: do not allowlist it)" in out
    assert out.rstrip().endswith("would call builtins.exec")


def test_text_report_for_a_clean_file():
    scanned = runner.invoke(app, ["scan", str(FIXTURES / "tied_mlp_legacy.pt")])
    assert scanned.exit_code == 0
    assert "torch-legacy · 5 pickles · globals: 3 rebuilt" in scanned.stdout
    assert "would accept every global and opcode" in scanned.stdout


def test_unknown_globals_are_pointed_out(checkpoints: dict[str, Path]):
    scanned = runner.invoke(app, ["scan", str(checkpoints["config"])])
    assert scanned.exit_code == 0
    assert "unknown" in scanned.stdout and "trust their packages" in scanned.stdout
    assert "test_scan.Config  (if trusted: torch.serialization.add_safe_globals([test_scan.Config]))" in scanned.stdout


def test_bare_pickles_are_scanned(tmp_path: Path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"cfg": argparse.Namespace(a=1)}, protocol=4))
    result = scan(str(path))
    assert result.format == "pickle" and result.valid and not result.dangerous
    assert [f.qualname for f in result.globals] == ["argparse.Namespace"]
    assert result.globals[0].where[0].opcode == "STACK_GLOBAL"
    assert runner.invoke(app, ["scan", str(path)]).exit_code == 0


def test_scan_does_not_import_torch_or_numpy():
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "for f in ('train_ckpt.pt', 'tied_mlp_legacy.pt', 'mlp.safetensors', 'mlp.npz'):\n"
        "    try:\n"
        f"        app(['scan', {str(FIXTURES)!r} + '/' + f])\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_torchscript_container_tags_are_inert_but_the_rest_of_torch_jit_is_dangerous():

    assert classify("torch.jit._pickle", "build_tensorlist")[0] == INERT
    assert classify("torch.jit._pickle", "restore_type_tag")[0] == INERT
    assert classify("torch.jit", "load")[0] == DANGEROUS


# -- the blocklist is a superset of the established scanners' --------------------------------------------------------


def _blocked_names(table: dict[str, object]) -> list[tuple[str, str]]:
    """(module, name) pairs a scanner's table flags; for a whole module, a few names in it and below it."""
    pairs = []
    for module, names in table.items():
        if names == "*":
            pairs += [(module, "anything"), (module, "inner.call"), (f"{module}.sub", "thing")]
        else:
            pairs += [(module, name) for name in ([names] if isinstance(names, str) else names)]  # type: ignore[union-attr]
    return pairs


def test_dangerous_is_a_superset_of_picklescan_and_modelscan():
    import scanner_blocklists as lists

    flagged = _blocked_names(lists.PICKLESCAN_UNSAFE_GLOBALS)
    for severity in lists.MODELSCAN_UNSAFE_GLOBALS.values():
        flagged += _blocked_names(severity)
    assert len(flagged) > 150
    missed = [f"{m}.{n}" for m, n in flagged if classify(m, n)[0] != DANGEROUS]
    assert not missed, missed


def test_uuid_is_blocked_as_a_whole_module_as_picklescan_has_it():
    assert classify("uuid", "_get_command_stdout")[0] == DANGEROUS
    assert classify("uuid", "UUID")[0] == DANGEROUS  # the whole module: an all clear must not contradict picklescan


@pytest.mark.parametrize(
    ("twin", "original", "name"),
    [
        ("_operator", "operator", "attrgetter"),
        ("_operator", "operator", "methodcaller"),
        ("_functools", "functools", "partial"),
        ("_functools", "functools", "reduce"),
        ("_posixsubprocess", "subprocess", "fork_exec"),
        ("_pickle", "pickle", "loads"),
        ("_io", "io", "FileIO"),
        ("_io", "io", "open"),
        ("posix", "os", "system"),
        ("nt", "os", "system"),
        ("_socket", "socket", "socket"),
        ("_ssl", "ssl", "wrap_socket"),
        ("_ctypes", "ctypes", "dlopen"),
        ("_imp", "importlib", "import_module"),
        ("_frozen_importlib", "importlib", "import_module"),
        ("_winapi", "subprocess", "CreateProcess"),
    ],
)
def test_c_halves_and_aliases_are_judged_as_what_they_are(twin: str, original: str, name: str):
    assert classify(original, name)[0] == DANGEROUS
    assert classify(twin, name)[0] == DANGEROUS, classify(twin, name)


def test_twins_table_names_real_twins():
    """Every twin in the table is a module Python has (or had) as the other's C half or alias; a twin of a data
    module stays as it is (`_codecs.encode` is rebuilt, `_collections.OrderedDict` a container)."""
    from paramctl.pickles.globals import MODULE_TWINS

    assert MODULE_TWINS["_operator"] == "operator" and MODULE_TWINS["posix"] == "os"
    assert all(twin.startswith("_") or twin in ("posix", "nt", "cPickle") for twin in MODULE_TWINS)
    assert classify("_codecs", "encode")[0] == REBUILT
    assert classify("_operator", "add")[0] == UNKNOWN


@pytest.mark.parametrize(
    "qualname",
    [
        "pandas.read_pickle", "pandas.io.pickle.read_pickle", "joblib.load", "numpy.load", "numpy.lib.npyio.load",
        "dill.loads", "dill.load", "cloudpickle.loads", "cloudpickle.cloudpickle.subimport", "torch.load",
        "torch.serialization.load", "pickle.loads", "_pickle.loads", "shelve.open", "yaml.unsafe_load",
        "pip.main", "venv.create", "ensurepip.bootstrap", "pydoc.locate", "timeit.timeit", "webbrowser.open",
        "urllib.request.urlopen", "http.client.HTTPSConnection", "requests.get", "aiohttp.request",
        "functools.partial", "operator.itemgetter", "types.CodeType", "_io.FileIO", "logging.FileHandler",
        "pkgutil.resolve_name", "numpy.f2py.compile", "numpy.testing._private.utils.runstring",
        "torch._inductor.codecache.compile_file", "torch.utils.collect_env.run",
    ],
)  # fmt: skip
def test_code_runners_and_pickle_loaders_are_dangerous(qualname: str):
    module, _, name = qualname.rpartition(".")
    assert classify(module, name)[0] == DANGEROUS, classify(module, name)


def test_every_dangerous_entry_has_a_reason():
    from paramctl.pickles.globals import _DANGEROUS_MODULES, MODULE_TWINS

    assert all(isinstance(reason, str) and len(reason) > 5 for reason in _DANGEROUS_MODULES.values())
    assert all(isinstance(target, str) for target in MODULE_TWINS.values())


# -- frames, computed names, bounds ------------------------------------------------------------------------------


def test_frame_violations_are_refused_as_pickle_py_refuses_them(tmp_path: Path):
    """pickle.py's _Unframer refuses every one of these; paramctl refuses them too, and scan calls them dangerous."""
    marker = tmp_path / "never"
    cases = {
        "straddle": hostile.frame_straddle(marker),
        "nested": hostile.framed(b"\x95" + (2).to_bytes(8, "little") + b"N.", b""),
        "line": hostile.framed(b"c" + b"posix\nsys", b"tem\n" + hostile.tup(hostile.text("true")) + b"R."),
    }
    for name, data in cases.items():
        with pytest.raises(pickle.UnpicklingError):
            pickle._loads(data)  # type: ignore[attr-defined]
        path = hostile.torch_zip(tmp_path / f"{name}.pt", data)
        result = scan(str(path))
        assert result.dangerous and not result.valid, (name, result.as_json())
        assert result.dangerous[0].reason == "frame boundary violation: a C unpickler may execute hidden opcodes"
        assert "frame boundary violation" in result.problems[0]
        listed = runner.invoke(app, ["ls", str(path)])
        assert listed.exit_code == 2 and "frame boundary violation" in listed.stderr
        assert runner.invoke(app, ["scan", str(path)]).exit_code == 1
    assert not marker.exists()


def test_frames_torch_writes_still_read(tmp_path: Path):
    """Real protocol 4 and 5 pickles with many frames (and reads ending exactly at a frame's end) load as before."""
    state = {f"layer{i}.weight": torch.randn(64, 8) for i in range(40)}
    state["names"] = ["x" * 70_000, "y" * 10]  # a string longer than a frame: written outside the frames
    for protocol in (4, 5):
        path = tmp_path / f"p{protocol}.pt"
        torch.save(state, path, pickle_protocol=protocol)
        listed = runner.invoke(app, ["ls", "--json", str(path)])
        assert listed.exit_code == 0, listed.stderr
        result = scan(str(path))
        assert result.valid and not result.dangerous
    body = pickle.dumps(b"z" * 10, protocol=4)
    assert pickle._loads(body) == b"z" * 10  # type: ignore[attr-defined]


def test_a_computed_stack_global_is_dangerous(tmp_path: Path):
    data = b"\x80\x04" + hostile.call(hostile.glob("builtins", "str"), hostile.short_uni("os"))
    data += hostile.short_uni("system") + b"\x93" + hostile.tup(hostile.short_uni("true")) + b"R."
    assert pickle.loads(data) == 0  # pickle really imports os.system and calls it (with `true`)
    path = hostile.torch_zip(tmp_path / "computed.pt", data)
    report = json.loads(runner.invoke(app, ["scan", "--json", str(path)]).stdout)
    dangerous = [g for g in report["globals"] if g["class"] == "dangerous"]
    assert [g["module"] for g in dangerous] == ["<built on the stack>"]
    assert "obfuscation" in dangerous[0]["reason"]
    assert runner.invoke(app, ["scan", str(path)]).exit_code == 1


def test_placeholder_names_stay_bounded():
    from paramctl.pickles import Unpickler

    count = 100_000
    data = hostile.placeholder_calls(count)
    obj = Unpickler(data, lambda pid: None).load()
    # the first REDUCE builds foo.bar's result; each later one calls that result again
    assert obj.global_name == f"foo.bar(…)×{count - 1}" and obj.calls == count - 1
    assert len(repr(obj)) < 300


def test_ls_of_a_placeholder_called_100000_times_is_linear(tmp_path: Path):
    """Peak RSS of `paramctl ls` on the 100,000-call file, measured in a subprocess (it used to take 23 GB; now
    about 60 MB, of which some 20 MB is the interpreter and paramctl's imports)."""
    path = hostile.torch_zip(tmp_path / "calls.pt", hostile.placeholder_calls(100_000))
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "try:\n"
        f"    app(['ls', {str(path)!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        # VmHWM, not ru_maxrss: after fork and exec, ru_maxrss keeps the parent's (torch-sized) high-water mark
        "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
        "print(peak, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    assert peak_kib < 150 * 1024, peak_kib
    assert "foo.bar(…)×99999" in done.stdout


def test_the_expansion_budget_counts_string_bytes(tmp_path: Path):
    """One memoized 1 MB string referenced 100,000 times: 100 GB to render, from a 1 MB file."""
    text = b"X" + (1 << 20).to_bytes(4, "little") + b"s" * (1 << 20) + b"\x94"
    data = b"\x80\x04}" + hostile.short_uni("names") + b"](" + text + b"h\x00" * 100_000 + b"e" + b"s."
    assert len(pickle.loads(data)["names"]) == 100_001
    path = hostile.torch_zip(tmp_path / "strings.pt", data)
    listed = runner.invoke(app, ["ls", str(path)])
    assert listed.exit_code == 2 and "string bytes" in listed.stderr, listed.stderr


def test_paged_bytes_keep_few_blocks_and_stop_at_their_cap():
    from paramctl.pickles import PagedBytes, PickleError

    class Counting:
        size = 1 << 24

        def __init__(self) -> None:
            self.reads = 0

        def read(self, offset: int, length: int) -> bytes:
            self.reads += 1
            return bytes(length)

    source = Counting()
    paged = PagedBytes(source, limit=1 << 23)
    for offset in range(0, 1 << 23, PagedBytes.BLOCK):
        assert paged[offset] == 0
    assert len(paged.blocks) == PagedBytes.KEPT_BLOCKS
    with pytest.raises(PickleError, match="run past"):
        paged[(1 << 23) + 1]


# -- any pickle, and --strict -------------------------------------------------------------------------------------


def test_any_pickle_is_scanned_whatever_its_name(tmp_path: Path):
    for protocol in range(6):
        for suffix in (".pkl", ".pickle", ".bin", ".pt", ""):
            path = tmp_path / f"p{protocol}{suffix}"
            path.write_bytes(pickle.dumps({"cfg": argparse.Namespace(a=1), "v": [1.5]}, protocol=protocol))
            result = scan(str(path))
            assert result.format == "pickle" and result.valid, (path, result.problems)
            assert "argparse.Namespace" in [f.qualname for f in result.globals]
            assert not result.dangerous
    no_proto = tmp_path / "no_proto"
    no_proto.write_bytes(b"N0cposix\nsystem\n(S'true'\ntR.")
    assert pickle.loads(no_proto.read_bytes()) == 0  # pickle.load runs it
    assert [f.qualname for f in scan(str(no_proto)).dangerous] == ["posix.system"]
    text = tmp_path / "notes.txt"
    text.write_bytes(b"class Model:\n    pass\n")
    assert runner.invoke(app, ["scan", str(text)]).exit_code == 2  # a text file is no pickle


def test_zip_members_are_scanned_whatever_their_names(tmp_path: Path):
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/config.pkl", pickle.dumps({"lr": 0.1}))
        z.writestr("data.txt", pickle.dumps(Config()))
        z.writestr("README.md", "# a model\n")
    result = scan(str(path))
    assert result.format == "zip" and result.valid
    assert sorted(p.record for p in result.pickles) == ["data.txt", "model/config.pkl"]
    assert [f.qualname for f in result.globals] == ["test_scan.Config"]


def test_strict_refuses_anything_outside_the_allowlist(checkpoints: dict[str, Path]):
    plain = runner.invoke(app, ["scan", "--strict", str(checkpoints["config"])])
    assert plain.exit_code == 1 and "STRICT: refused" in plain.stdout and "test_scan.Config" in plain.stdout
    assert runner.invoke(app, ["scan", str(checkpoints["config"])]).exit_code == 0
    report = json.loads(runner.invoke(app, ["scan", "--json", str(checkpoints["config"])]).stdout)
    assert report["strict_refused"] == ["test_scan.Config"]
    for name in ("p2", "legacy", "namespace", "parameter"):
        assert runner.invoke(app, ["scan", "--strict", str(checkpoints[name])]).exit_code == 0, name


def test_the_pickle_package_sits_below_the_loaders_and_scan_uses_public_names_only():
    import ast

    package = ROOT / "paramctl" / "pickles"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("paramctl."):
                assert node.module.split(".")[1] not in ("loaders", "ops", "cli", "registry"), (module, node.module)
    for node in ast.walk(ast.parse((ROOT / "paramctl" / "ops" / "scan.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("paramctl"):
            assert not node.module.startswith("paramctl.loaders"), node.module
            assert all(not alias.name.startswith("_") for alias in node.names), node.module
