"""A loopback HTTP server for remote-checkpoint tests and benchmarks: serves a folder with single-range support,
counts requests and body bytes, and misbehaves on demand.

Behaviours (`server.behave(*flags)`, all off by default):
  ignore-range   answer 200 with the whole body, whatever Range says
  no-length      send no Content-Length (the body ends when the connection closes)
  redirect       answer 302 to /_moved/<path>, which is served normally (to `redirect_to` + /<path> when that
                 is set: the base URL of another server)
  forbidden      403
  not-found      404
  cut-short      announce the full length, send half the body, close
  stall          wait `stall_seconds` before answering
  stall-body     send the headers and half the body, then wait `stall_seconds`

Run as a script (`python tests/httpserver.py FOLDER`) it prints its base URL and serves until killed; GET /_stats
returns {"requests", "bytes", "max_in_flight"} as JSON and GET /_reset zeroes them (neither is counted).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

FLAGS = ("ignore-range", "no-length", "redirect", "forbidden", "not-found", "cut-short", "stall", "stall-body")
_BLOCK = 1 << 16
MOVED = "/_moved"  # where redirects point


class LoopbackServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on 127.0.0.1 (an ephemeral port) serving `root`."""

    daemon_threads = True  # a stalled handler must not hold up shutdown
    block_on_close = False

    def __init__(self, root: Path | str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root).resolve()
        self.flags: set[str] = set()
        self.stall_seconds = 5.0
        self.redirect_to: str | None = None  # with "redirect": another server's base URL (another origin)
        self.wake = threading.Event()  # set on close: stalled handlers return at once
        self.log: list[tuple[str, str, str | None]] = []  # (method, path with query, Range header)
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.requests = self.bytes = self.in_flight = self.max_in_flight = 0
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.wake.set()
        self.shutdown()
        self.server_close()

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes = self.max_in_flight = 0
            self.log.clear()
            self.headers_seen.clear()

    @contextmanager
    def behave(self, *flags: str, stall_seconds: float | None = None) -> Any:
        """Misbehave with these flags inside the block (counters reset on entry)."""
        unknown = set(flags) - set(FLAGS)
        assert not unknown, unknown
        previous = self.stall_seconds
        self.flags, self.stall_seconds = set(flags), stall_seconds or previous
        self.reset()
        try:
            yield self
        finally:
            self.flags, self.stall_seconds = set(), previous

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes": self.bytes, "max_in_flight": self.max_in_flight}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle would hold the body for an ACK
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        server = self.server
        path = unquote(urlsplit(self.path).path)
        if path in ("/_stats", "/_reset"):
            if path == "/_reset":
                server.reset()
            self._send_bytes(json.dumps(server.stats()).encode(), "application/json")
            return
        with server._lock:
            server.requests += 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            server.log.append((self.command, self.path, self.headers.get("Range")))
            server.headers_seen.append(dict(self.headers.items()))
        try:
            self._answer(path, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (it refused a whole-file answer)
        finally:
            with server._lock:
                server.in_flight -= 1

    def _answer(self, path: str, body: bool) -> None:
        server, flags = self.server, self.server.flags
        if "stall" in flags:
            server.wake.wait(server.stall_seconds)
        if "forbidden" in flags:
            return self._status(403, "Forbidden")
        if "not-found" in flags:
            return self._status(404, "Not Found")
        if "redirect" in flags and not path.startswith(MOVED):  # a redirect target of another origin is served
            self.send_response(302)
            self.send_header("Location", f"{server.redirect_to}{path}" if server.redirect_to else MOVED + path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        path = path.removeprefix(MOVED)
        file = (server.root / path.lstrip("/")).resolve()
        if server.root not in file.parents or not file.is_file():
            return self._status(404, "Not Found")
        size = file.stat().st_size
        start, end = 0, size  # [start, end)
        wanted = _parse_range(self.headers.get("Range"), size) if "ignore-range" not in flags else None
        if wanted == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if isinstance(wanted, tuple):
            start, end = wanted
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "none" if "ignore-range" in flags else "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if "no-length" in flags:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not body:
            return None
        stop = end
        if "cut-short" in flags or "stall-body" in flags:
            stop = start + (end - start) // 2
        self._copy(file, start, stop)
        if "stall-body" in flags:
            self.wfile.flush()
            server.wake.wait(server.stall_seconds)
        if stop < end:
            self.close_connection = True
        return None

    def _copy(self, file: Path, start: int, stop: int) -> None:
        with file.open("rb") as f:
            f.seek(start)
            remaining = stop - start
            while remaining > 0:
                block = f.read(min(_BLOCK, remaining))
                if not block:
                    break
                self.wfile.write(block)
                with self.server._lock:
                    self.server.bytes += len(block)
                remaining -= len(block)

    def _status(self, code: int, text: str) -> None:
        self._send_bytes(text.encode(), "text/plain", code)

    def _send_bytes(self, data: bytes, content_type: str, code: int = 200) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range (RFC 9110 §14.1.2) as [start, end); None when absent or not understood (serve it all)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        return (max(0, size - int(last)), size) if int(last) else "unsatisfiable"
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    return (start, end) if start < size and start < end else "unsatisfiable"


if __name__ == "__main__":
    served = LoopbackServer(sys.argv[1])
    print(served.base, flush=True)
    served.serve_forever()
