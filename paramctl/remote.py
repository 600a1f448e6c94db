"""Checkpoints at URLs: a byte source that serves ranges from any filesystem fsspec knows (https, hf, s3, gs, ...).

Loaders read every file through `ByteSource.view`; here a view is served from a small cache of fetched byte extents.
Small reads (headers, pickles, zip directories) fetch 64 KiB and read ahead more while the reads run in sequence, and
a read near the end of the file fetches the last 64 KiB (the zip end records and central directory sit there); large
reads (tensor data, a chunk at a time) are fetched exactly, in parts of at most 8 MiB with a bounded number of
requests in flight, and are not cached, so memory stays flat however large the file. The cache is bounded too.

HTTP(S) is read through fsspec's aiohttp session with paramctl's own checks, since servers misbehave in ways object
stores do not: every answer must be `206 Partial Content` with the asked `Content-Range` and all the bytes; the first
request (bytes 0-65535) also learns the size from `Content-Range`, so listing a safetensors file is one request. A
server that ignores Range (200 with the whole body) is downloaded once to a temporary file when the file is small
(`RemoteOptions.full_download_limit`) or the user allows it (`--allow-full-download`), else refused. Other schemes
go through the backend's own `info` and `cat_file`.

fsspec (and aiohttp) are imported only here and only for URLs: a local path never pays for them. Messages name the
URL with its credentials redacted (`user:password@` and every query value).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from paramctl import folders, paths
from paramctl.errors import CorruptFileError, FileError, ParamctlError
from paramctl.probe import Probe
from paramctl.source import ByteSource, FileSource

KiB, MiB = 1 << 10, 1 << 20
OPENING_BYTES = 64 * KiB  # the first request: a safetensors header, a torch pickle and the npy headers of small files
BLOCK_BYTES = 64 * KiB  # the least a small read fetches
MAX_READAHEAD = 8 * MiB  # what sequential small reads (a deflate stream, a legacy pickle) grow to
DIRECT_BYTES = 1 * MiB  # reads at least this large are fetched exactly, not cached
PART_BYTES = 8 * MiB  # the largest single request
COALESCE_GAP = 32 * KiB  # prefetched ranges closer than this are fetched in one request
NPY_PEEK = 512  # bytes past a zip member's local header prefetched: torch's 64-byte padding, an .npy header

MAX_REDIRECTS = 10
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Request options that carry no credentials: the only ones kept for a server of another origin than the URL's.
_NEUTRAL_OPTIONS = ("ssl", "verify_ssl", "proxy")

# Scheme of a URL: two or more letters, so `C://x` (a Windows drive) stays a path.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_URL_IN_TEXT = r"[A-Za-z][A-Za-z0-9+.-]+://[^\s'\"<>]+"  # compiled on first use (only errors need it)


@dataclass
class RemoteOptions:
    """How URLs are read; the CLI sets `timeout` and `allow_full_download` from its global options."""

    timeout: float = 30.0  # seconds without a byte from the server before a request fails
    allow_full_download: bool = False  # download a file over `full_download_limit` from a server without ranges
    full_download_limit: int = 256 * MiB
    max_in_flight: int = 4  # concurrent requests per file
    cache_bytes: int = 32 * MiB  # fetched extents kept per file (headers, read-ahead)


OPTIONS = RemoteOptions()


def configure(timeout: float | None = None, allow_full_download: bool | None = None) -> None:
    """Set the options the command line exposes (`--timeout`, `--allow-full-download`)."""
    if timeout is not None:
        OPTIONS.timeout = timeout
    if allow_full_download is not None:
        OPTIONS.allow_full_download = allow_full_download


# --------------------------------------------------------------------------- URLs


def is_url(path: object) -> bool:
    """True for `scheme://...` (scheme of two or more characters); pathlib paths are never URLs."""
    return isinstance(path, str) and _URL.match(path) is not None


def scheme(url: str) -> str:
    match = _URL.match(url)
    return match.group(1).lower() if match else ""


def local_path(url: str) -> str | None:
    """The local path of a `file://` URL (read with the local mmap source), else None."""
    if scheme(url) != "file":
        return None
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return None
    return unquote(parts.path)


def redact(url: str) -> str:
    """The URL as messages show it: `user:password@` becomes `***@` and every query value `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{scheme(url)}://***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if "=" in item else "***" for item in parts.query.split("&") if item
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str) -> str:
    """Text from a backend (an exception message) with every URL in it redacted."""
    return re.sub(_URL_IN_TEXT, lambda match: redact(match.group(0)), text)


def sibling(url: str, name: str) -> str:
    """The URL of the file `name` next to the file at `url` (a shard beside its index), keeping credentials and
    the query (a token); `name` must pass the rule every folder loader applies (paramctl/paths.py)."""
    if paths.key_problem(name) is not None:
        raise CorruptFileError(redact(url), f"names {name!r}, which is not a file in the same folder")
    root = url.index("://") + 3
    head, query = url, ""
    if scheme(url) in ("http", "https"):
        head, query = _split_query(url)
        name = quote(name, safe="/")
    cut = head.rfind("/")
    base = head[: cut + 1] if cut >= root else head[:root]
    return base + name + query


def _split_query(url: str) -> tuple[str, str]:
    """(`scheme://host/path`, `?query#fragment`)."""
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    return url[:cut], url[cut:]


# --------------------------------------------------------------------------- opening


def open_probe(url: str) -> Probe:
    """A remote file opened for loaders: its size, its first 64 KiB and, for a zip, its directory and the local
    headers of its `.npy` members (fetched together: the npz loader reads every array's header to list it). A torch
    archive's storage records are not touched: their local headers are read when their bytes are."""
    source = open_source(url)
    if source.size == 0:
        raise FileError(source.name, "empty file")
    probe = Probe(source)
    if isinstance(source, RemoteSource) and probe.is_zip:
        with contextlib.suppress(ParamctlError):  # a broken zip is reported by the loader that reads it
            archive = probe.zip
            if archive is not None:
                source.prefetch(
                    (info.header_offset, 30 + len(info.orig_filename.encode()) + len(info.extra) + 84 + NPY_PEEK)
                    for info in archive.infolist()
                    if info.filename.endswith(".npy")
                )
    return probe


def open_source(url: str) -> ByteSource:
    """A byte source for a URL: remote ranges, or a temporary local copy when the server cannot serve ranges.
    A URL naming a folder (`hf://org/repo`) opens the checkpoint in it (see `choose_checkpoint`)."""
    path = local_path(url)
    if path is not None:
        return FileSource(path)
    name = redact(url)
    if scheme(url) in ("http", "https"):
        return _HttpTransport.open(url, name)
    fs, fs_path = _filesystem(url, name)
    info = _call(name, lambda: fs.info(fs_path, **_timeout_kw(fs)))
    if info.get("type") == "directory":
        entries = _call(name, lambda: fs.ls(fs_path, detail=True, **_timeout_kw(fs)))
        root = url[: url.index("://") + 3]
        files = [root + str(e["name"]).split("://", 1)[-1].lstrip("/") for e in entries if e.get("type") == "file"]
        return open_source(choose_checkpoint(url, files))
    size = info.get("size")
    if size is None:
        raise FileError(name, "the backend does not say the file's size")
    return RemoteSource(url, name, int(size), _FsspecTransport(fs, fs_path, name))


def choose_checkpoint(folder: str, entries: Sequence[str]) -> str:
    """The checkpoint file a remote folder opens as, by the rule local folders follow (paramctl/folders.py)."""
    by_name = {entry.rsplit("/", 1)[-1]: entry for entry in entries}
    return by_name[folders.choose(redact(folder), by_name)]


def backend_package(protocol: str) -> str:
    """The package fsspec needs for a scheme (huggingface_hub for hf, s3fs for s3, gcsfs for gs, aiohttp for
    http), from fsspec's registry of known implementations."""
    if protocol in ("http", "https"):
        return "aiohttp"
    from fsspec.registry import known_implementations

    entry = known_implementations.get(protocol)
    return entry["class"].split(".", 1)[0] if entry else ""


def _filesystem(url: str, name: str) -> tuple[Any, str]:
    protocol = scheme(url)
    try:
        import fsspec.core
    except ImportError:
        raise FileError(name, "reading URLs needs fsspec (pip install 'paramctl[remote]')") from None
    try:
        return fsspec.core.url_to_fs(url)  # type: ignore[no-any-return]
    except ImportError:
        package = backend_package(protocol) or protocol
        raise FileError(
            name, f"reading {protocol}:// URLs needs the {package} package (pip install {package})"
        ) from None
    except ValueError as error:
        if "not known" in str(error).lower():
            raise FileError(name, f"unknown URL scheme {protocol}:// (fsspec has no filesystem for it)") from None
        raise FileError(name, scrub(str(error))) from None


def _timeout_kw(fs: Any) -> dict[str, float]:
    """fsspec's blocking wrappers of async filesystems take `timeout` (seconds for the whole call); others don't."""
    return {"timeout": OPTIONS.timeout} if getattr(fs, "async_impl", False) else {}


def _call(name: str, action: Callable[[], Any]) -> Any:
    """A backend call with its errors as one-line FileErrors naming the (redacted) URL."""
    try:
        return action()
    except ParamctlError:
        raise
    except FileNotFoundError:
        raise FileError(name, "not found") from None
    except PermissionError:
        raise FileError(name, "access denied") from None
    except TimeoutError:
        raise FileError(name, f"timed out after {OPTIONS.timeout:g} s (--timeout)") from None
    except Exception as error:
        if type(error).__name__ == "FSTimeoutError":
            raise FileError(name, f"timed out after {OPTIONS.timeout:g} s (--timeout)") from None
        raise FileError(name, f"{type(error).__name__}: {scrub(str(error))}") from None


# --------------------------------------------------------------------------- the byte source


class RemoteSource(ByteSource):
    """A remote file's bytes, fetched on demand through a transport. Safe to read from several threads."""

    def __init__(self, url: str, name: str, size: int, transport: Any, opening: bytes = b"") -> None:
        self.url = url  # never shown: it may hold credentials (`name` is the redacted form)
        self.name = name
        self.size = size
        self._transport = transport
        self._lock = threading.Lock()
        self._extents = _Extents(OPTIONS.cache_bytes)
        self._inflight: list[tuple[int, int, threading.Event]] = []
        self._readahead = BLOCK_BYTES
        self._last_end = -1
        if opening:
            self._extents.insert(0, opening)

    @property
    def requests(self) -> int:
        """Requests made so far (the opening one included)."""
        return int(self._transport.requests)

    @property
    def bytes_fetched(self) -> int:
        return int(self._transport.bytes)

    @property
    def cached_bytes(self) -> int:
        return self._extents.nbytes

    def sibling(self, name: str) -> str:
        """The URL of a file next to this one (a shard named by an index)."""
        return sibling(self.url, name)

    def view(self, offset: int, length: int) -> memoryview:
        self.check_range(offset, length, "a read")
        if length == 0:
            return memoryview(b"")
        end = offset + length
        with self._lock:
            hit = self._extents.covering(offset)
        if hit is not None and end <= hit[0] + len(hit[1]):
            return memoryview(hit[1])[offset - hit[0] : end - hit[0]]
        if length >= DIRECT_BYTES:
            return self._direct(offset, end)
        return self._cached(offset, end)

    def release(self, offset: int, length: int) -> None:
        with self._lock:
            self._extents.drop(offset, offset + length)

    def close(self) -> None:
        with self._lock:
            self._extents.drop(0, self.size)

    def prefetch(self, ranges: Any) -> None:
        """Fetch these (offset, length) ranges now, together (near ones in one request, the rest concurrently),
        so the reads that follow are served from memory."""
        wanted = sorted((max(0, o), min(self.size, o + n)) for o, n in ranges if n > 0 and o < self.size)
        merged: list[list[int]] = []
        for start, end in wanted:
            if merged and start - merged[-1][1] <= COALESCE_GAP:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        with self._lock:
            gaps = [gap for start, end in merged for gap in self._extents.gaps(start, end)]
            gaps = [gap for gap in gaps if not self._overlaps_inflight(*gap)]
            event = self._register(gaps)
        self._fetch_into_cache(gaps, event)

    # -- small reads: through the cache, with read-ahead

    def _cached(self, offset: int, end: int) -> memoryview:
        while True:
            with self._lock:
                pieces = self._extents.pieces(offset, end)  # the cached bytes are captured: eviction cannot lose them
                gaps = self._expand([(s, e) for s, e, data in pieces if data is None])
                waiting = next((ev for s, e in gaps for a, b, ev in self._inflight if a < e and s < b), None)
                if waiting is None:
                    event = self._register(gaps)
                    break
            waiting.wait()
        fetched = self._fetch_into_cache(gaps, event)
        out = bytearray(end - offset)
        for start, stop, data in pieces:
            if data is not None:
                extent_start, blob = data
                out[start - offset : stop - offset] = blob[start - extent_start : stop - extent_start]
                continue
            for (fetch_start, fetch_end), blob in zip(gaps, fetched):
                if fetch_start <= start and stop <= fetch_end:
                    out[start - offset : stop - offset] = blob[start - fetch_start : stop - fetch_start]
                    break
        return memoryview(out).toreadonly()

    def _expand(self, gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Read ahead past the last gap (more while reads are sequential); fetch the file's last 64 KiB for a read
        that reaches its end. Never into bytes already cached."""
        if not gaps:
            return gaps
        start, stop = gaps[-1]
        self._readahead = min(2 * self._readahead, MAX_READAHEAD) if start == self._last_end else BLOCK_BYTES
        limit = self._extents.next_start(stop, self.size)
        stop = min(limit, max(stop, start + self._readahead))
        if stop == self.size:
            start = max(self._extents.previous_end(start), min(start, self.size - BLOCK_BYTES))
        self._last_end = stop
        return [*gaps[:-1], (start, stop)]

    def _fetch_into_cache(self, gaps: list[tuple[int, int]], event: threading.Event) -> list[Any]:
        fetched: list[Any] = []
        try:
            if gaps:
                fetched = self._transport.fetch(gaps)
            with self._lock:
                for (start, _), blob in zip(gaps, fetched):
                    self._extents.insert(start, bytes(blob))
        finally:
            with self._lock:
                self._inflight = [item for item in self._inflight if item[2] is not event]
            event.set()
        return fetched

    def _register(self, gaps: list[tuple[int, int]]) -> threading.Event:
        event = threading.Event()
        self._inflight.extend((start, end, event) for start, end in gaps)
        return event

    def _overlaps_inflight(self, start: int, end: int) -> bool:
        return any(a < end and start < b for a, b, _ in self._inflight)

    # -- large reads: exact, in parts, uncached

    def _direct(self, offset: int, end: int) -> memoryview:
        buffer = bytearray(end - offset)
        whole = memoryview(buffer)
        parts = [(s, min(s + PART_BYTES, end)) for s in range(offset, end, PART_BYTES)]
        self._transport.fetch(parts, [whole[s - offset : e - offset] for s, e in parts])
        return whole.toreadonly()


class _Extents:
    """Fetched byte ranges: non-overlapping, sorted, the least recently used dropped beyond `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._starts: list[int] = []
        self._data: OrderedDict[int, bytes] = OrderedDict()  # in use order, oldest first

    def covering(self, offset: int) -> tuple[int, bytes] | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            start = self._starts[i]
            data = self._data[start]
            if offset < start + len(data):
                self._data.move_to_end(start)
                return start, data
        return None

    def pieces(self, offset: int, end: int) -> list[tuple[int, int, Any]]:
        """[offset, end) as (start, stop, (extent start, bytes)) for cached pieces and (start, stop, None) for gaps."""
        out: list[tuple[int, int, Any]] = []
        position = offset
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while position < end:
            if i < len(self._starts) and self._starts[i] < end:
                start = self._starts[i]
                data = self._data[start]
                stop = start + len(data)
                if stop <= position:
                    i += 1
                    continue
                if start > position:
                    out.append((position, start, None))
                    position = start
                out.append((position, min(stop, end), (start, data)))
                self._data.move_to_end(start)
                position = min(stop, end)
                i += 1
            else:
                out.append((position, end, None))
                position = end
        return out

    def gaps(self, offset: int, end: int) -> list[tuple[int, int]]:
        return [(s, e) for s, e, data in self.pieces(offset, end) if data is None]

    def next_start(self, offset: int, default: int) -> int:
        i = bisect.bisect_left(self._starts, offset)
        return self._starts[i] if i < len(self._starts) else default

    def previous_end(self, offset: int) -> int:
        i = bisect.bisect_right(self._starts, offset) - 1
        return self._starts[i] + len(self._data[self._starts[i]]) if i >= 0 else 0

    def insert(self, start: int, data: bytes) -> None:
        """Add fetched bytes; only the parts not cached yet are kept (another thread may have fetched the rest)."""
        for gap_start, gap_end in self.gaps(start, start + len(data)):
            piece = (
                data
                if (gap_start, gap_end) == (start, start + len(data))
                else data[gap_start - start : gap_end - start]
            )
            bisect.insort(self._starts, gap_start)
            self._data[gap_start] = piece
            self.nbytes += len(piece)
        while self.nbytes > self.limit and self._data:
            oldest, piece = self._data.popitem(last=False)
            self._starts.remove(oldest)
            self.nbytes -= len(piece)

    def drop(self, start: int, end: int) -> None:
        """Forget the extents lying wholly inside [start, end)."""
        i = bisect.bisect_left(self._starts, start)
        while i < len(self._starts) and self._starts[i] < end:
            first = self._starts[i]
            if first + len(self._data[first]) <= end:
                self.nbytes -= len(self._data.pop(first))
                del self._starts[i]
            else:
                i += 1


# --------------------------------------------------------------------------- transports


class _FsspecTransport:
    """Ranges through a filesystem's `cat_file(path, start, end)`: object stores, the Hub, memory://."""

    def __init__(self, fs: Any, path: str, name: str) -> None:
        self.fs, self.path, self.name = fs, path, name
        self.requests = 1  # the `info` call
        self.bytes = 0
        self._slots = threading.BoundedSemaphore(OPTIONS.max_in_flight)
        self._count_lock = threading.Lock()

    def fetch(self, ranges: list[tuple[int, int]], targets: list[memoryview] | None = None) -> list[Any]:
        out: list[Any] = []
        for index, (start, end) in enumerate(ranges):
            with self._slots:
                data = _call(
                    self.name,
                    lambda s=start, e=end: self.fs.cat_file(self.path, start=s, end=e, **_timeout_kw(self.fs)),
                )
            with self._count_lock:
                self.requests += 1
                self.bytes += len(data)
            if len(data) != end - start:
                raise _truncated(self.name, start, len(data), end - start)
            if targets is not None:
                targets[index][:] = data
                out.append(targets[index])
            else:
                out.append(data)
        return out


def _truncated(name: str, start: int, got: int, wanted: int) -> FileError:
    return FileError(name, f"truncated: got {got} of the {wanted} bytes asked at byte {start}")


class _HttpTransport:
    """Ranged GETs through fsspec's aiohttp session, each answer checked; at most `max_in_flight` at a time."""

    def __init__(self, fs: Any, url: str, name: str) -> None:
        self.fs, self.url, self.name = fs, url, name
        self.target = url  # after a redirect, the final URL (re-resolved from `url` should it expire)
        self.origin = _origin(url)  # credentials go to this origin only, never to a redirect target elsewhere
        self.size = -1
        self.requests = 0
        self.bytes = 0
        self._slots: Any = None  # an asyncio.Semaphore, made on fsspec's event loop

    @classmethod
    def open(cls, url: str, name: str) -> ByteSource:
        """One GET of the first 64 KiB: the size from `Content-Range`, and proof the server honours ranges."""
        transport = cls(_http_filesystem(name), url, name)
        opened = transport._run(transport._open)
        if isinstance(opened, str):  # the server sent the whole file: a temporary local copy
            return _DownloadedSource(opened, url, name)
        size, opening = opened
        return RemoteSource(url, name, size, transport, opening)

    def fetch(self, ranges: list[tuple[int, int]], targets: list[memoryview] | None = None) -> list[Any]:
        return self._run(self._fetch_all, ranges, targets)  # type: ignore[no-any-return]

    # -- on fsspec's event loop

    def _run(self, coroutine: Any, *args: Any) -> Any:
        """Run a coroutine on fsspec's loop from this thread; aiohttp's errors become one-line FileErrors."""
        import aiohttp
        from fsspec.asyn import sync

        try:
            return sync(self.fs.loop, coroutine, *args)
        except ParamctlError:
            raise
        except TimeoutError:  # aiohttp's ServerTimeoutError (no byte for `timeout` s) is one too
            raise FileError(
                self.name, f"timed out: no data from the server for {OPTIONS.timeout:g} s (--timeout)"
            ) from None
        except aiohttp.TooManyRedirects:
            raise FileError(self.name, "too many redirects") from None
        except aiohttp.ClientPayloadError:
            raise FileError(self.name, "truncated: the server closed the connection before the whole answer") from None
        except aiohttp.ClientConnectorError as error:
            code = getattr(error.os_error, "errno", None)
            reason = os.strerror(code).lower() if code else "no connection"
            raise FileError(self.name, f"cannot connect to {error.host}:{error.port}: {reason}") from None
        except aiohttp.ClientError as error:
            raise FileError(self.name, f"request failed ({type(error).__name__}: {scrub(str(error))})") from None

    async def _send(self, method: str, url: str, start: int | None, end: int | None) -> tuple[Any, str]:
        """A request with its redirects followed here, not by aiohttp: each hop is sent with the credentials
        (Authorization, cookies, configured headers and options) only when it goes to the origin (scheme, host,
        port) of the URL the user gave; a hop elsewhere goes through a session that holds none. Returns the answer
        and the URL that gave it."""
        for _ in range(MAX_REDIRECTS + 1):
            trusted = _origin(url) == self.origin
            session = await self.fs.set_session() if trusted else await _bare_session(self.fs)
            self.requests += 1
            response = await session.request(
                method, url, headers=self._headers(start, end, trusted), **self._request_kw(trusted)
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECT_STATUSES or not location:
                return response, url
            response.release()
            url = urljoin(url, location)
        raise FileError(self.name, "too many redirects")

    async def _open(self) -> Any:
        response, self.target = await self._send("GET", self.url, 0, OPENING_BYTES)
        async with response:
            self._check_status(response, opening=True)
            if response.status == 416:  # nothing to serve at byte 0: an empty file ("bytes */0")
                return 0, b""
            if response.status == 200:  # Range ignored: the body is the whole file
                return await self._download(response)
            first, last, total = self._answered_range(response)
            if first != 0 or last >= OPENING_BYTES:
                raise FileError(
                    self.name, f"the server answered bytes {first}-{last} when asked for bytes 0-{OPENING_BYTES - 1}"
                )
            if total is None:
                total = await self._size_from_head()
            self.size = total
            body = await self._body(response, last + 1, memoryview(bytearray(last + 1)), 0)
            return total, bytes(body)

    async def _size_from_head(self) -> int:
        """A `Content-Range` of `bytes 0-N/*`: the size from HEAD's Content-Length, or an error."""
        response, _ = await self._send("HEAD", self.target, None, None)
        async with response:
            self._check_status(response)
            length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise FileError(
                self.name, "the server does not say the file's size (no Content-Range total, no Content-Length)"
            )
        return int(length)

    async def _download(self, response: Any) -> str:
        """Stream the whole body to a temporary file (bounded memory), if allowed: returns its path."""
        length = response.headers.get("Content-Length")
        size = int(length) if length is not None and length.isdigit() else None
        limit = OPTIONS.full_download_limit
        if size is not None and size > limit and not OPTIONS.allow_full_download:
            raise FileError(self.name, _refusal(f"the file is {_human(size)}", limit))
        import tempfile

        handle, path = tempfile.mkstemp(prefix="paramctl-", suffix=".download")
        written = 0
        try:
            with os.fdopen(handle, "wb") as out:
                async for block in response.content.iter_chunked(MiB):
                    written += len(block)
                    if size is None and written > limit and not OPTIONS.allow_full_download:
                        raise FileError(self.name, _refusal(f"the file is over {_human(limit)}", limit))
                    out.write(block)
            self.bytes += written
            if size is not None and written != size:
                raise FileError(self.name, f"truncated: the server sent {written} of the {size} bytes it announced")
        except BaseException:
            os.unlink(path)
            raise
        return path

    async def _fetch_all(self, ranges: list[tuple[int, int]], targets: list[memoryview] | None) -> list[Any]:
        import asyncio

        if self._slots is None:
            self._slots = asyncio.Semaphore(OPTIONS.max_in_flight)
        buffers = targets or [memoryview(bytearray(end - start)) for start, end in ranges]
        return list(await asyncio.gather(*(self._get(s, e, b) for (s, e), b in zip(ranges, buffers))))

    async def _get(self, start: int, end: int, target: memoryview) -> memoryview:
        import aiohttp

        async with self._slots:
            for attempt in range(3):
                try:
                    return await self._get_once(start, end, target)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    if attempt == 2:  # a pooled connection the server had closed: retried, then reported
                        raise
                except _Expired:
                    self.target = self.url  # a signed redirect that expired: resolve it again
        raise AssertionError("unreachable")

    async def _get_once(self, start: int, end: int, target: memoryview) -> memoryview:
        response, _ = await self._send("GET", self.target, start, end)
        async with response:
            if response.status in (401, 403, 404) and self.target != self.url:
                raise _Expired
            self._check_status(response)
            if response.status == 200:
                raise FileError(self.name, "the server stopped honouring Range (it answered 200 with the whole file)")
            first, last, total = self._answered_range(response)
            if (first, last) != (start, end - 1):
                raise FileError(
                    self.name, f"the server answered bytes {first}-{last} when asked for bytes {start}-{end - 1}"
                )
            if total is not None and total != self.size:
                raise FileError(
                    self.name, f"the file changed on the server while being read ({self.size} bytes, now {total})"
                )
            return await self._body(response, end - start, target, start)

    async def _body(self, response: Any, wanted: int, target: memoryview, start: int) -> memoryview:
        """Exactly `wanted` bytes of the answer into `target`: fewer is a truncated answer, more an error."""
        import aiohttp

        got = 0
        try:
            async for block in response.content.iter_chunked(MiB):
                if got + len(block) > wanted:
                    raise FileError(self.name, f"the server sent more than the {wanted} bytes asked at byte {start}")
                target[got : got + len(block)] = block
                got += len(block)
        except aiohttp.ClientPayloadError:
            pass  # the connection closed early: reported below with the counts
        self.bytes += got
        if got < wanted:
            raise _truncated(self.name, start, got, wanted)
        return target

    def _answered_range(self, response: Any) -> tuple[int, int, int | None]:
        """The range a 206 answer holds, from its Content-Range (required: without it the bytes are unplaced)."""
        first, last, total = _content_range(response.headers.get("Content-Range", ""))
        if first is None or last is None:
            raise FileError(self.name, f"the server answered {response.status} without a valid Content-Range")
        return first, last, total

    def _headers(self, start: int | None, end: int | None, trusted: bool) -> dict[str, str]:
        headers = dict(self.fs.kwargs.get("headers") or {}) if trusted else {}
        headers["Accept-Encoding"] = "identity"  # sizes and ranges are of the bytes as stored
        if start is not None and end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        return headers

    def _request_kw(self, trusted: bool) -> dict[str, Any]:
        """The request options of fsspec's configuration (auth, proxies...), headers merged apart; for another
        origin only those that carry no credentials. Redirects are followed by `_send`."""
        options = {
            key: value
            for key, value in self.fs.kwargs.items()
            if key != "headers" and (trusted or key in _NEUTRAL_OPTIONS)
        }
        options["allow_redirects"] = False
        return options

    def _check_status(self, response: Any, opening: bool = False) -> None:
        status = response.status
        if status in (200, 206) or (opening and status == 416):
            return
        reason = f"HTTP {status} {response.reason or ''}".rstrip()
        if status in (401, 403):
            raise FileError(self.name, f"access denied ({reason})")
        if status in (404, 410):
            raise FileError(self.name, f"not found ({reason})")
        raise FileError(self.name, f"the server answered {reason}")


class _Expired(Exception):
    """A resolved (redirected) URL refused a request: resolve the original URL again."""


def _content_range(header: str) -> tuple[int | None, int | None, int | None]:
    """`bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) as numbers; `bytes */TOTAL` gives only the total."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header)
    if not match:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _refusal(what: str, limit: int) -> str:
    return (
        f"the server does not support range requests and {what}, over the {_human(limit)} paramctl downloads whole;"
        " pass --allow-full-download to download it to a temporary file"
    )


def _human(n: int) -> str:
    """256 MiB, 1.5 GiB, 900 B."""
    if n < KiB:
        return f"{n} B"
    value, unit = next((n / size, unit) for size, unit in ((1 << 30, "GiB"), (MiB, "MiB"), (KiB, "KiB")) if n >= size)
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the port made explicit: what credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


_BARE_SESSIONS: dict[int, Any] = {}


async def _bare_session(fs: Any) -> Any:
    """An aiohttp session without fsspec's client options (default headers, cookies, auth) and with no cookie
    jar, for redirect targets of another origin; the same timeouts. One per HTTP filesystem, closed at exit."""
    if id(fs) not in _BARE_SESSIONS:
        import weakref

        import aiohttp

        timeout = fs.client_kwargs.get("timeout")
        options = {"timeout": timeout} if timeout is not None else {}
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), **options)
        _BARE_SESSIONS[id(fs)] = session
        weakref.finalize(fs, fs.close_session, fs.loop, session)
    return _BARE_SESSIONS[id(fs)]


_HTTP_FILESYSTEMS: dict[float, Any] = {}


def _http_filesystem(name: str) -> Any:
    """fsspec's HTTPFileSystem (one per timeout), with fsspec's configured client options and `--timeout` as
    aiohttp's connect and read timeouts: a stalled server fails after that many seconds without a byte."""
    timeout = OPTIONS.timeout
    if timeout not in _HTTP_FILESYSTEMS:
        try:
            import aiohttp
            import fsspec
            from fsspec.config import conf
        except ImportError as error:
            package = "fsspec" if "fsspec" in str(error) else "aiohttp"
            raise FileError(
                name, f"reading http:// URLs needs the {package} package (pip install 'paramctl[remote]')"
            ) from None
        client_kwargs = dict(conf.get("http", {}).get("client_kwargs") or {})
        client_kwargs["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        _HTTP_FILESYSTEMS[timeout] = fsspec.filesystem("http", client_kwargs=client_kwargs)
    return _HTTP_FILESYSTEMS[timeout]


class _DownloadedSource(FileSource):
    """A whole file downloaded from a server without ranges: mapped, then unlinked (the map keeps it alive)."""

    def __init__(self, path: str, url: str, name: str) -> None:
        try:
            super().__init__(path)
        except FileError as error:
            raise FileError(name, error.problem) from None
        finally:
            os.unlink(path)
        self.url, self.name = url, name

    def sibling(self, name: str) -> str:
        return sibling(self.url, name)
