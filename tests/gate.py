"""A loopback HTTP server that holds chosen requests until the test lets them go.

Tests that kill a process "mid-way" must not guess how long the work takes: on a faster machine it is done
before the kill, on a slower one the kill lands too early. Instead the process under test talks to one of
these servers (a static file server for inventory images, or a reverse proxy in front of MLflow), the test
arms the gate with a predicate, and the first matching request is held open: `arrived` tells the test the
process is blocked exactly there, and `release()` (or `close()`) lets it go.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

Match = Callable[[str, str, bytes], bool]     # (method, path, body) -> hold this request?
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}


@dataclass
class Gate:
    """Holds the first request the armed predicate matches (and every later one) until released."""

    match: Match | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    held: list[str] = field(default_factory=list)
    dropped: bool = False        # released by close(): held requests are answered 503, not served

    def arm(self, match: Match) -> None:
        self.arrived.clear()
        self.released.clear()
        self.match = match

    def release(self, drop: bool = False) -> None:
        """Let held requests go on (or, with `drop`, answer them 503: their sender was killed)."""
        self.match = None
        self.dropped = drop
        self.released.set()

    def pass_through(self, method: str, path: str, body: bytes) -> bool:
        """Block the calling handler thread while the request matches the armed predicate; False when the
        held request is to be dropped rather than served."""
        match = self.match
        if match is None or not match(method, path, body):
            return True
        self.held.append(f"{method} {path}")
        self.arrived.set()
        self.released.wait()
        return not self.dropped

    def wait_arrived(self, timeout: float) -> None:
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no request matching the gate arrived within {timeout} s")


class GatedServer:
    """A threading HTTP server on 127.0.0.1: serves files from `root`, or forwards to `upstream`."""

    def __init__(self, root: Path | None = None, upstream: str | None = None) -> None:
        if (root is None) == (upstream is None):
            raise ValueError("give exactly one of root and upstream")
        self.gate = Gate()
        self.requests: list[str] = []
        handler = _handler(self, root, urlsplit(upstream) if upstream else None)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> GatedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.gate.release(drop=True)
        self.server.shutdown()
        self.server.server_close()


def _handler(owner: GatedServer, root: Path | None, upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:   # quiet: the test's output is what matters
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(status)
            for name, value in headers or []:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            body = self._body()
            owner.requests.append(f"{self.command} {self.path}")
            try:
                if not owner.gate.pass_through(self.command, self.path, body):
                    self._answer(503, b"dropped by the test's gate")
                elif root is not None:
                    self._file(root)
                else:
                    self._forward(body)
            except (BrokenPipeError, ConnectionResetError):   # the client was killed while held
                self.close_connection = True

        def _file(self, folder: Path) -> None:
            path = (folder / self.path.split("?", 1)[0].lstrip("/")).resolve()
            if folder.resolve() not in path.parents or not path.is_file():
                self._answer(404, b"not found")
                return
            self._answer(200, path.read_bytes(), [("Content-Type", "application/octet-stream")])

        def _forward(self, body: bytes) -> None:
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = upstream.netloc    # MLflow refuses a foreign Host header
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                self._answer(resp.status, data, kept)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler
