"""Checkpoints at URLs (paramctl/remote.py): every command gives the same JSON over HTTP as locally, header-only
commands fetch only headers, tensor data is fetched once with bounded memory and requests, misbehaving servers get
one-line errors (or still work where that is right), credentials never show, backends resolve through fsspec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from httpserver import LoopbackServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import FIXTURES
from safetensors.numpy import save_file
from typer.testing import CliRunner

from paramctl import FileError, remote
from paramctl.cli import app

runner = CliRunner()
FIXTURE_FILES = sorted(
    str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.suffix in (".pt", ".safetensors", ".npz", ".msgpack")
)
BIG = ("big.pt", "big.safetensors", "big.npz")  # 4 tensors of 1024x1024 float32: 16 MiB each file
BIG_TENSORS = 4


def _big_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {f"layers.{i}.weight": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(BIG_TENSORS)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures, plus the three big files, in one served folder."""
    root = tmp_path_factory.mktemp("served")
    for name in FIXTURE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / name, root / name)
    tensors = _big_tensors()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, root / "big.pt")
    save_file(tensors, str(root / "big.safetensors"))
    np.savez(root / "big.npz", **tensors)
    _write_sharded(root / "sharded", tensors)
    return root


def _write_sharded(folder: Path, tensors: dict[str, np.ndarray]) -> None:
    """The big tensors in two safetensors shards with a Hugging Face index; and an index naming files elsewhere."""
    folder.mkdir()
    names = sorted(tensors)
    weight_map = {name: f"model-0000{1 + i // 2}-of-00002.safetensors" for i, name in enumerate(names)}
    for shard in sorted(set(weight_map.values())):
        save_file({n: tensors[n] for n in names if weight_map[n] == shard}, str(folder / shard))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    hostile = {"weight_map": {"x": "../big.safetensors"}}
    (folder / "hostile.index.json").write_text(json.dumps(hostile))


@pytest.fixture(scope="module")
def server(folder: Path) -> LoopbackServer:
    served = LoopbackServer(folder).start()
    yield served
    served.close()


@pytest.fixture(autouse=True)
def default_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options are process-wide: each test starts from the defaults (tests shrink the download limit)."""
    monkeypatch.setattr(remote, "OPTIONS", remote.RemoteOptions())


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def same_json_as_local(args: list[str], url: str, local: Path) -> None:
    """Run a command on the URL and on the local file: same exit code, same JSON (the URL is the file's name), or
    the same error line when the file is refused."""
    code_remote, out_remote = invoke(*[url if a == "PATH" else a for a in args])
    code_local, out_local = invoke(*[str(local) if a == "PATH" else a for a in args])
    assert code_remote == code_local, out_remote
    out_local = out_local.replace(json.dumps(str(local))[1:-1], url)
    if code_local == 2 and out_local.startswith("paramctl: "):
        assert out_remote == out_local
    else:
        assert json.loads(out_remote) == json.loads(out_local)


# --------------------------------------------------------------------------- every command, every fixture

COMMANDS = {
    "ls": ["ls", "PATH", "--json"],
    "ties": ["ties", "PATH", "--json", "--all"],
    "ties-by-value": ["ties", "PATH", "--by", "value", "--json"],
    "stat": ["stat", "PATH", "--json", "--hist"],
    "scan": ["scan", "PATH", "--json"],
    "show": ["show", "PATH", "*", "--json"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fixture", FIXTURE_FILES)
def test_every_command_gives_the_same_json_remotely(server: LoopbackServer, folder: Path, command: str, fixture: str):
    same_json_as_local(COMMANDS[command], server.url(fixture), folder / fixture)


@pytest.mark.parametrize("pair", [("mlp_step0.pt", "mlp_step1.pt"), ("tied_mlp.pt", "tied_mlp.safetensors")])
def test_diff_of_two_urls_is_the_diff_of_the_files(server: LoopbackServer, folder: Path, pair: tuple[str, str]):
    a, b = pair
    code_remote, out_remote = invoke("diff", server.url(a), server.url(b), "--json", "--all")
    code_local, out_local = invoke("diff", str(folder / a), str(folder / b), "--json", "--all")
    assert code_remote == code_local
    for name in pair:
        out_local = out_local.replace(json.dumps(str(folder / name))[1:-1], server.url(name))
    assert json.loads(out_remote) == json.loads(out_local)


def test_a_url_operand_takes_a_subtree(server: LoopbackServer, folder: Path):
    code, out = invoke("diff", server.url("train_ckpt.pt") + "::model", str(folder / "train_ckpt.pt::model"), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["equal"] is True and result["a"]["subtree"] == "model"


# --------------------------------------------------------------------------- what is transferred


@pytest.mark.parametrize("name", BIG)
@pytest.mark.parametrize("command", ["ls", "ties", "scan"])
def test_header_only_commands_fetch_headers_only(server: LoopbackServer, folder: Path, name: str, command: str):
    """A 16 MiB file: the safetensors header is in the first 64 KiB (one request); a zip adds its last 64 KiB (the
    directory), and an npz its members' local headers, fetched together."""
    with server.behave():
        same_json_as_local([command, "PATH", "--json"], server.url(name), folder / name)
        stats = server.stats()
    local_runs = 1  # the comparison runs the command once remotely
    if name.endswith(".safetensors"):
        assert stats["requests"] == local_runs
    elif name.endswith(".pt"):
        assert stats["requests"] <= 2  # no storage record's local header is read to list
    else:
        assert stats["requests"] <= 2 + BIG_TENSORS
    assert stats["bytes"] < 200_000, stats
    assert stats["max_in_flight"] <= remote.OPTIONS.max_in_flight


@pytest.mark.parametrize("count", [3, 16, 300])
def test_listing_a_torch_archive_costs_the_same_for_any_number_of_tensors(
    server: LoopbackServer, folder: Path, count: int
):
    """The first bytes, the end records and the pickle: no storage record's local header is fetched to list a .pt,
    so 300 tensors cost what 3 do; reading values then finds each record's bytes through its local header."""
    name = f"many_{count}.pt"
    state = {
        f"layers.{i}.weight": torch.randn(128, 128, generator=torch.Generator().manual_seed(i)) for i in range(count)
    }
    torch.save(state, folder / name)
    with server.behave():
        same_json_as_local(["ls", "PATH", "--json"], server.url(name), folder / name)
        stats = server.stats()
    assert stats["requests"] <= 6 and stats["bytes"] < 256 * 1024, stats
    assert not any(range_ and int(range_.split("=")[1].split("-")[0]) in _record_offsets(folder / name)
                   for _, _, range_ in server.log)  # fmt: skip
    code, out = invoke("show", server.url(name), f"layers.{count - 1}.weight", "--json", "--full")
    assert code == 0, out
    assert json.loads(out)["selections"][0]["values"] == state[f"layers.{count - 1}.weight"].tolist()


def _record_offsets(path: Path) -> set[int]:
    import zipfile

    return {info.header_offset for info in zipfile.ZipFile(path).infolist() if "/data/" in info.filename}


def test_a_local_header_that_disagrees_is_found_when_the_bytes_are_read(server: LoopbackServer, folder: Path):
    """Listing trusts the central directory; the first read of a record checks its local header against it."""
    import zipfile

    path = folder / "lying_local_header.pt"
    torch.save({"a": torch.ones(4), "b": torch.zeros(4)}, path)
    info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("/data/1"))
    data = bytearray(path.read_bytes())
    data[info.header_offset + 8 : info.header_offset + 10] = (8).to_bytes(2, "little")  # "deflated"
    path.write_bytes(bytes(data))
    for target in (str(path), server.url(path.name)):
        assert invoke("ls", target)[0] == 0
        code, out = invoke("stat", target)
        assert code == 2
        assert "zip member 'lying_local_header/data/1': local header says compression method 8" in out
        assert len(out.strip().splitlines()) == 1


@pytest.mark.parametrize("name", BIG)
def test_stat_fetches_each_byte_once_with_bounded_requests_in_flight(server: LoopbackServer, folder: Path, name: str):
    size = (folder / name).stat().st_size
    with server.behave():
        code, out = invoke("stat", server.url(name), "--json")
        stats = server.stats()
    assert code == 0
    local = json.loads(invoke("stat", str(folder / name), "--json")[1].replace(str(folder / name), server.url(name)))
    assert json.loads(out) == local
    assert size * 0.99 < stats["bytes"] < size + 200_000, stats  # each chunk fetched once, not its whole storage
    assert stats["max_in_flight"] <= remote.OPTIONS.max_in_flight


def test_show_of_one_row_fetches_that_row(server: LoopbackServer, folder: Path):
    with server.behave():
        code, out = invoke("show", server.url("big.safetensors"), "layers.2.weight[700]", "--json", "--full")
        stats = server.stats()
    assert code == 0
    row = _big_tensors()["layers.2.weight"][700]
    assert json.loads(out)["selections"][0]["values"] == row.tolist()
    assert stats["requests"] == 2 and stats["bytes"] <= 2 * remote.BLOCK_BYTES, stats  # the header, the row's block


def test_large_reads_go_in_parts_with_bounded_requests_in_flight(server: LoopbackServer):
    remote.OPTIONS.max_in_flight = 3
    source = remote.open_source(server.url("big.safetensors"))
    reference = (server.root / "big.safetensors").read_bytes()
    with server.behave():
        data = source.view(100, source.size - 100)  # 16 MiB: two parts of 8 MiB, at most 3 at a time
        assert data == reference[100:]
        assert 2 <= server.stats()["requests"] <= 3
        threads = [threading.Thread(target=source.view, args=(o * 1_000_000, 1_500_000)) for o in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.stats()["max_in_flight"] <= 3
    assert source.cached_bytes <= remote.OPTIONS.cache_bytes


# --------------------------------------------------------------------------- misbehaving servers


def test_a_server_ignoring_range_still_serves_a_small_file(server: LoopbackServer, folder: Path):
    with server.behave("ignore-range"):
        same_json_as_local(["stat", "PATH", "--json"], server.url("mlp.pt"), folder / "mlp.pt")
        assert server.stats()["requests"] == 1  # downloaded once, then read locally


@pytest.mark.parametrize("flags", [("ignore-range",), ("ignore-range", "no-length")])
def test_a_server_ignoring_range_is_refused_above_the_limit(server: LoopbackServer, folder: Path, flags: tuple):
    remote.OPTIONS.full_download_limit = 1 << 20
    with server.behave(*flags):
        code, out = invoke("ls", server.url("big.pt"))
        assert server.stats()["bytes"] < (server.root / "big.pt").stat().st_size  # stopped early (socket buffers)
    assert code == 2
    assert out.count("\n") == 1 and out.startswith(f"paramctl: {server.url('big.pt')}: ")
    assert "does not support range requests" in out and "1 MiB" in out and "--allow-full-download" in out
    with server.behave(*flags):
        same_json_as_local(["--allow-full-download", "ls", "PATH", "--json"], server.url("big.pt"), folder / "big.pt")
        assert server.stats()["requests"] == 1


def test_a_server_without_content_length_gives_the_size_in_content_range(server: LoopbackServer, folder: Path):
    with server.behave("no-length"):
        same_json_as_local(["stat", "PATH", "--json"], server.url("big.npz"), folder / "big.npz")


def test_a_redirect_is_followed_once(server: LoopbackServer, folder: Path):
    with server.behave("redirect"):
        same_json_as_local(["stat", "PATH", "--json"], server.url("big.pt"), folder / "big.pt")
        paths = [path for _, path, _ in server.log]
    assert paths[0] == "/big.pt" and all(path == "/_moved/big.pt" for path in paths[1:])


@pytest.mark.parametrize(
    ("flag", "problem"),
    [
        ("forbidden", "access denied (HTTP 403 Forbidden)"),
        ("not-found", "not found (HTTP 404 Not Found)"),
        ("cut-short", "truncated: got 32768 of the 65536 bytes asked at byte 0"),
    ],
)
def test_errors_are_one_line_naming_the_url(server: LoopbackServer, flag: str, problem: str):
    url = server.url("big.safetensors")
    with server.behave(flag):
        code, out = invoke("ls", url)
    assert code == 2
    assert out == f"paramctl: {url}: {problem}\n"


def test_a_body_cut_short_during_data_reads_is_an_error(server: LoopbackServer):
    source = remote.open_source(server.url("big.safetensors"))
    with server.behave("cut-short"), pytest.raises(FileError, match="truncated: got 1048576 of the 2097152 bytes"):
        source.view(1 << 20, 2 << 20)


def test_a_server_that_stops_honouring_range_is_an_error(server: LoopbackServer):
    source = remote.open_source(server.url("big.safetensors"))
    with server.behave("ignore-range"), pytest.raises(FileError, match="stopped honouring Range"):
        source.view(5 << 20, 100)


@pytest.mark.parametrize("flag", ["stall", "stall-body"])
def test_a_stalled_connection_times_out(server: LoopbackServer, flag: str):
    url = server.url("mlp.safetensors")
    start = time.monotonic()
    with server.behave(flag, stall_seconds=10):
        code, out = invoke("--timeout", "0.3", "ls", url)
    assert time.monotonic() - start < 3
    assert code == 2
    assert out == f"paramctl: {url}: timed out: no data from the server for 0.3 s (--timeout)\n"


def test_a_timeout_must_be_positive(server: LoopbackServer):
    code, out = invoke("--timeout", "0", "ls", server.url("mlp.pt"))
    assert code == 2 and "--timeout" in out


def test_nothing_listening_is_one_line():
    code, out = invoke("ls", "http://127.0.0.1:9/mlp.pt")
    assert code == 2
    assert out.startswith("paramctl: http://127.0.0.1:9/mlp.pt: cannot connect to 127.0.0.1:9") and out.count("\n") == 1


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("flag", ["forbidden", "not-found", "cut-short"])
def test_credentials_in_urls_never_show(server: LoopbackServer, flag: str):
    url = server.url("big.pt").replace("http://", "http://alice:hunter2@") + "?token=SECRET&download=1"
    with server.behave(flag):
        code, out = invoke("ls", url)
        headers = server.headers_seen[0]
    assert code == 2
    assert "SECRET" not in out and "hunter2" not in out and "alice" not in out
    assert "http://***@127.0.0.1:" in out and "/big.pt?token=***&download=***: " in out
    assert headers["Authorization"].startswith("Basic ")  # the credentials were used, not shown


@pytest.fixture()
def elsewhere(folder: Path) -> LoopbackServer:
    """A second loopback server on another port: another origin, serving the same files."""
    served = LoopbackServer(folder).start()
    yield served
    served.close()


CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-Api-Key", "X-Client-Header")


@pytest.mark.parametrize("command", ["ls", "stat"])
def test_credentials_never_follow_a_redirect_to_another_origin(
    server: LoopbackServer, elsewhere: LoopbackServer, folder: Path, monkeypatch: pytest.MonkeyPatch, command: str
):
    """The user's server gets the URL's user:password, the configured headers, client headers and cookies; the
    server it redirects to (another port: another origin) gets none of them, on the first request or any range
    request after it."""
    import fsspec.config

    http = {
        "headers": {"X-Api-Key": "KEY"},
        "client_kwargs": {"headers": {"X-Client-Header": "CLIENT"}, "cookies": {"session": "COOKIE"}},
    }
    monkeypatch.setitem(fsspec.config.conf, "http", http)
    monkeypatch.setattr(remote, "_HTTP_FILESYSTEMS", {})
    url = server.url("big.pt").replace("http://", "http://alice:hunter2@")
    elsewhere.redirect_to = None
    server.redirect_to = elsewhere.base
    try:
        with server.behave("redirect"), elsewhere.behave():
            code, out = invoke(command, url, "--json")
            first, away = server.headers_seen[:], elsewhere.headers_seen[:]
            paths = [path for _, path, _ in elsewhere.log]
    finally:
        server.redirect_to = None
    assert code == 0, out
    local = json.loads(invoke(command, str(folder / "big.pt"), "--json")[1])
    assert json.loads(out)["tensors"] == local["tensors"]
    assert len(first) == 1 and len(away) >= (2 if command == "stat" else 1) and set(paths) == {"/big.pt"}
    assert first[0]["Authorization"].startswith("Basic ") and first[0]["X-Api-Key"] == "KEY"
    assert first[0]["X-Client-Header"] == "CLIENT" and "COOKIE" in first[0]["Cookie"]
    for headers in away:
        assert not set(headers) & set(CREDENTIAL_HEADERS), headers
        assert not any(secret in str(headers) for secret in ("KEY", "CLIENT", "COOKIE", "hunter2"))


def test_credentials_still_follow_a_redirect_on_the_same_origin(server: LoopbackServer):
    url = server.url("big.pt").replace("http://", "http://alice:hunter2@")
    with server.behave("redirect"):
        code, _ = invoke("ls", url, "--json")
        seen = server.headers_seen[:]
    assert code == 0 and len(seen) >= 2 and all(h["Authorization"].startswith("Basic ") for h in seen)


def test_credentials_do_not_show_in_json_either(server: LoopbackServer):
    with server.behave():
        code, out = invoke("ls", server.url("mlp.pt") + "?token=SECRET", "--json")
        assert server.log[0][1] == "/mlp.pt?token=SECRET"  # sent to the server, never shown
    assert code == 0 and "SECRET" not in out
    assert json.loads(out)["file"] == server.url("mlp.pt") + "?token=***"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://huggingface.co/x/resolve/main/m.pt", "https://huggingface.co/x/resolve/main/m.pt"),
        ("https://u:p@host/a.pt?token=t&x=1#frag", "https://***@host/a.pt?token=***&x=***#frag"),
        ("https://tok@host/a.pt", "https://***@host/a.pt"),
        ("s3://bucket/key.pt", "s3://bucket/key.pt"),
    ],
)
def test_redact(url: str, shown: str):
    assert remote.redact(url) == shown
    assert remote.scrub(f"error at {url} failed") == f"error at {shown} failed"


# --------------------------------------------------------------------------- URLs and siblings


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("https://h/a.pt", True),
        ("hf://org/repo", True),
        ("memory://x", True),
        ("C://x/a.pt", False),
        ("fixtures/mlp.pt", False),
        ("a::b", False),
        (Path("https://h/a.pt"), False),
    ],
)
def test_is_url(path: object, url: bool):
    assert remote.is_url(path) is url


def test_file_urls_are_local_paths(folder: Path):
    assert invoke("ls", (folder / "mlp.pt").as_uri(), "--json") == invoke("ls", str(folder / "mlp.pt"), "--json")


@pytest.mark.parametrize(
    ("url", "name", "expected"),
    [
        ("https://h/org/m.safetensors.index.json?token=t", "m-1.safetensors", "https://h/org/m-1.safetensors?token=t"),
        ("https://u:p@h/index.json", "sub dir/a b.bin", "https://u:p@h/sub%20dir/a%20b.bin"),
        (
            "hf://org/repo/model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "hf://org/repo/model-00001-of-00002.safetensors",
        ),
        ("memory://index.json", "a.safetensors", "memory://a.safetensors"),
    ],
)
def test_sibling_keeps_the_folder_and_the_credentials(url: str, name: str, expected: str):
    assert remote.sibling(url, name) == expected


@pytest.mark.parametrize("name", ["../secret.pt", "/etc/passwd", "https://elsewhere/x.pt", "a/../../b", "", "a//b"])
def test_sibling_refuses_names_outside_the_folder(name: str):
    with pytest.raises(FileError, match="not a file in the same folder"):
        remote.sibling("https://h/repo/index.json?token=t", name)


def test_remote_sources_resolve_siblings(server: LoopbackServer):
    source = remote.open_source(server.url("mlp.pt") + "?token=t")
    assert source.sibling("mlp.npz") == server.url("mlp.npz") + "?token=t"
    assert source.name == server.url("mlp.pt") + "?token=***"


# --------------------------------------------------------------------------- sharded checkpoints


def test_an_index_url_opens_its_shards_at_sibling_urls(server: LoopbackServer, folder: Path):
    index = "sharded/model.safetensors.index.json"
    url = server.url(index) + "?token=SECRET"
    with server.behave():
        code, out = invoke("stat", url, "--json")
        paths = [path for _, path, _ in server.log]
    assert code == 0 and "SECRET" not in out
    local = invoke("stat", str(folder / index), "--json")[1]
    assert json.loads(out) == json.loads(local.replace(str(folder / index), server.url(index) + "?token=***"))
    assert sorted(set(paths)) == [  # the token goes to the shards too
        "/sharded/model-00001-of-00002.safetensors?token=SECRET",
        "/sharded/model-00002-of-00002.safetensors?token=SECRET",
        "/sharded/model.safetensors.index.json?token=SECRET",
    ]


def test_an_index_url_naming_a_file_elsewhere_is_refused(server: LoopbackServer):
    url = server.url("sharded/hostile.index.json")
    with server.behave():
        code, out = invoke("ls", url)
        assert [path for _, path, _ in server.log] == ["/sharded/hostile.index.json"]
    assert code == 2
    assert out == f"paramctl: {url}: names '../big.safetensors', which is not a file in the same folder\n"


# --------------------------------------------------------------------------- memory:// and folders


@pytest.fixture
def memory() -> fsspec.AbstractFileSystem:
    fs = fsspec.filesystem("memory")
    fs.pipe("/paramctl-test/repo/model.safetensors", (FIXTURES / "tiny_lm.safetensors").read_bytes())
    fs.pipe("/paramctl-test/repo/README.md", b"# a model\n")
    fs.pipe("/paramctl-test/two/a.pt", (FIXTURES / "mlp.pt").read_bytes())
    fs.pipe("/paramctl-test/two/b.npz", (FIXTURES / "mlp.npz").read_bytes())
    fs.pipe("/paramctl-test/empty.pt", b"")
    yield fs
    fs.rm("/paramctl-test", recursive=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_memory_urls_give_the_same_json(memory: fsspec.AbstractFileSystem, command: str):
    url = "memory://paramctl-test/two/a.pt"
    same_json_as_local(COMMANDS[command], url, FIXTURES / "mlp.pt")


def test_a_folder_url_opens_the_checkpoint_in_it(memory: fsspec.AbstractFileSystem):
    code, out = invoke("ls", "memory://paramctl-test/repo", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["file"] == "memory://paramctl-test/repo/model.safetensors"
    assert {t["name"] for t in listing["tensors"]} == set(torch.load(FIXTURES / "tiny_lm.pt", weights_only=True))


def test_a_folder_url_with_an_index_opens_the_sharded_checkpoint(memory: fsspec.AbstractFileSystem, folder: Path):
    for file in (folder / "sharded").iterdir():
        if file.name != "hostile.index.json":
            memory.pipe(f"/paramctl-test/sharded/{file.name}", file.read_bytes())
    code, out = invoke("ls", "memory://paramctl-test/sharded", "--json")
    assert code == 0, out
    listing = json.loads(out)
    assert listing["file"] == "memory://paramctl-test/sharded/model.safetensors.index.json"
    assert listing["format"] == "sharded-safetensors"
    assert [t["name"] for t in listing["tensors"]] == sorted(_big_tensors())


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("memory://paramctl-test/two", "is a directory holding several checkpoints (a.pt, b.npz): name one"),
        ("memory://paramctl-test/missing.pt", "not found"),
        ("memory://paramctl-test/empty.pt", "empty file"),
    ],
)
def test_memory_errors_are_one_line(memory: fsspec.AbstractFileSystem, url: str, problem: str):
    assert invoke("ls", url) == (2, f"paramctl: {url}: {problem}\n")


def test_choose_checkpoint_prefers_what_the_hub_libraries_load():
    entries = ["hf://o/r/config.json", "hf://o/r/model.safetensors", "hf://o/r/pytorch_model.bin"]
    assert remote.choose_checkpoint("hf://o/r", entries) == "hf://o/r/model.safetensors"
    sharded = ["hf://o/r/model-00001-of-00002.safetensors", "hf://o/r/model.safetensors.index.json"]
    assert remote.choose_checkpoint("hf://o/r", sharded) == "hf://o/r/model.safetensors.index.json"
    with pytest.raises(FileError, match="is a directory without a checkpoint file"):
        remote.choose_checkpoint("hf://o/r", ["hf://o/r/README.md"])


# --------------------------------------------------------------------------- backends fsspec resolves


@pytest.mark.parametrize(("protocol", "package"), [("hf", "huggingface_hub"), ("s3", "s3fs"), ("gs", "gcsfs")])
def test_cloud_schemes_resolve_through_fsspec_to_their_package(protocol: str, package: str):
    from fsspec.registry import known_implementations

    assert known_implementations[protocol]["class"].split(".")[0] == package
    assert remote.backend_package(protocol) == package


@pytest.mark.parametrize(("protocol", "package"), [("hf", "huggingface_hub"), ("s3", "s3fs"), ("gs", "gcsfs")])
def test_a_missing_backend_package_is_named(monkeypatch: pytest.MonkeyPatch, protocol: str, package: str):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed, whether it is or not
    monkeypatch.setattr(sys.modules["fsspec.registry"], "_registry", {})  # no class imported earlier
    url = f"{protocol}://org/repo/model.safetensors"
    assert invoke("ls", url) == (
        2,
        f"paramctl: {url}: reading {protocol}:// URLs needs the {package} package (pip install {package})\n",
    )


def test_an_unknown_scheme_is_one_line():
    assert invoke("ls", "nosuch://x/y.pt") == (
        2,
        "paramctl: nosuch://x/y.pt: unknown URL scheme nosuch:// (fsspec has no filesystem for it)\n",
    )


def test_local_paths_never_import_fsspec():
    code = (
        "import sys\n"
        "from paramctl.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"result = CliRunner().invoke(app, ['ls', {str(FIXTURES / 'tiny_lm.pt')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('fsspec', 'aiohttp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_reads_a_url_in_a_subprocess(server: LoopbackServer, folder: Path):
    out = subprocess.run(
        [sys.executable, "-m", "paramctl", "ls", server.url("tiny_lm.npz"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    local = invoke("ls", str(folder / "tiny_lm.npz"), "--json")[1]
    assert json.loads(out) == json.loads(local.replace(str(folder / "tiny_lm.npz"), server.url("tiny_lm.npz")))


# --------------------------------------------------------------------------- the cache, against the bytes


class _FakeTransport:
    """Ranges of a bytes object, counted; fetches run concurrently when threads ask together."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests = self.bytes = 0
        self.lock = threading.Lock()

    def fetch(self, ranges, targets=None):
        out = []
        for index, (start, end) in enumerate(ranges):
            with self.lock:
                self.requests += 1
                self.bytes += end - start
            chunk = self.data[start:end]
            if targets is not None:
                targets[index][:] = chunk
                chunk = targets[index]
            out.append(chunk)
        return out


def _fake_source(size: int) -> remote.RemoteSource:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    transport = _FakeTransport(data)
    return remote.RemoteSource("fake://x", "fake://x", size, transport, data[: min(size, remote.OPENING_BYTES)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(1, 3 << 20),
    reads=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3 << 20)), min_size=1, max_size=30),
    prefetch=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 4096)), max_size=8),
    cache=st.sampled_from([64 << 10, 1 << 20, 32 << 20]),
    release=st.booleans(),
)
def test_views_are_the_files_bytes(size, reads, prefetch, cache, release, monkeypatch):
    monkeypatch.setattr(remote.OPTIONS, "cache_bytes", cache)
    source = _fake_source(size)
    data = source._transport.data
    source.prefetch((int(f * (size - 1)), n) for f, n in prefetch)
    for fraction, length in reads:
        offset = int(fraction * (size - 1))
        length = min(length, size - offset)
        assert source.view(offset, length) == data[offset : offset + length]
        if release:
            source.release(offset, length)
        assert source.cached_bytes <= cache


def test_views_from_many_threads_are_the_files_bytes():
    source = _fake_source(5 << 20)
    data = source._transport.data
    rng = np.random.default_rng(3)
    wanted = [(int(o), int(n)) for o, n in zip(rng.integers(0, 4 << 20, 400), rng.integers(1, 300_000, 400))]
    failures = []

    def work(part):
        for offset, length in part:
            if source.view(offset, length) != data[offset : offset + length]:
                failures.append((offset, length))

    threads = [threading.Thread(target=work, args=(wanted[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert source.cached_bytes <= remote.OPTIONS.cache_bytes


def test_sequential_small_reads_read_ahead():
    source = _fake_source(16 << 20)
    for offset in range(0, 16 << 20, 4096):
        source.view(offset, 4096)
    assert source._transport.requests < 16  # 64 KiB doubling up to 8 MiB, not 4096 reads
    assert source._transport.bytes < (16 << 20) + (1 << 20)


def test_a_read_at_the_end_fetches_the_tail():
    source = _fake_source(8 << 20)
    source.view((8 << 20) - 22, 22)  # a zip end record
    source.view((8 << 20) - 30_000, 1000)  # its central directory
    assert source._transport.requests == 1
