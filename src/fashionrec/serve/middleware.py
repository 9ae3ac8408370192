"""ASGI middleware: request bodies bounded in size and time, security headers on every response, metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashionrec.serve.admission import Admission
from fashionrec.serve.handlers import error_response
from fashionrec.serve.metrics import Metrics

MULTIPART_SLACK = 64 * 1024   # form fields and boundaries around the image
# The web page loads its own script and style only; item images may be URLs; the preview is a blob: URL.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
                    "x-frame-options": "DENY", "cross-origin-opener-policy": "same-origin"}


class RequestBody:
    """Refuse request bodies over the limit with 413 (by Content-Length up front, or while streaming), and
    bodies that do not arrive within `timeout_s` with 408: a slow client cannot hold a request forever."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        message = (f"request body of over {self.max_bytes} bytes: the upload limit is "
                   f"{self.max_bytes - MULTIPART_SLACK} bytes")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            self.metrics.errors.labels("too_large").inc()
            await error_response(413, "too_large", message)(scope, receive, send)
            return
        seen = 0
        done = False
        deadline = time.monotonic() + self.timeout_s

        async def limited() -> Message:
            nonlocal seen, done
            if done:   # the body is in; later receives wait for a disconnect, untimed
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within "
                                                  f"{self.timeout_s:g} s") from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                done = not msg.get("more_body", False)
                if seen > self.max_bytes:  # FastAPI's HTTPException passes its body parsing unchanged
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, limited, send)


class RefuseWhenFull:
    """`POST /recommend` while the admission queue is full: a 503 + Retry-After before its body is read
    (reading and parsing a multi-megabyte upload only to refuse it is the cost an overload cannot pay).
    The handler's own `admit` still counts the requests let through."""

    def __init__(self, app: ASGIApp, admission: Admission, metrics: Metrics,
                 path: str = "/recommend") -> None:
        self.app = app
        self.admission = admission
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") == self.path
                and self.admission.full):
            self.metrics.errors.labels("overloaded").inc()
            retry = self.admission.retry_after_s
            message = (f"the server is busy ({self.admission.in_flight} requests running or queued); "
                       f"retry in {retry} s")
            await error_response(503, "overloaded", message, retry)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff`, a CSP (the page's own, or the one given for a path) with
    `frame-ancestors 'none'`, and their companions, on every HTTP response the app sends."""

    def __init__(self, app: ASGIApp, csp_by_path: dict[str, str] | None = None) -> None:
        self.app = app
        self.csp_by_path = csp_by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.csp_by_path.get(scope.get("path", ""), PAGE_CSP).encode()

        async def with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                present = {k.lower() for k, _ in msg.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.encode() not in present]
                msg["headers"] = [*msg.get("headers", []), *extra, (b"content-security-policy", csp)]
            await send(msg)

        await self.app(scope, receive, with_headers)


class Measure:
    """Latency and count of every HTTP request by route template, method and status. Plain ASGI, not
    `BaseHTTPMiddleware`, which costs every request a task group and a memory stream; an exception the
    app lets out counts as the 500 the server answers with."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")   # the router sets it in this scope
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()


def add_middleware(app: FastAPI, metrics: Metrics, max_upload_bytes: int, body_timeout_s: float,
                   csp_by_path: dict[str, str], admission: Admission) -> None:
    """The stack, innermost first: body limits, metrics, security headers (outermost: on every answer).
    The body limits sit inside the metrics middleware: their exceptions must reach FastAPI's body parsing
    unwrapped."""
    app.add_middleware(RequestBody, max_bytes=max_upload_bytes + MULTIPART_SLACK, timeout_s=body_timeout_s,
                       metrics=metrics)
    app.add_middleware(RefuseWhenFull, admission=admission, metrics=metrics)
    app.add_middleware(Measure, metrics=metrics)
    app.add_middleware(SecurityHeaders, csp_by_path=csp_by_path)
