"""uvicorn's h11 protocol with a deadline on request headers.

uvicorn times out idle keep-alive connections, but any byte received cancels that timer and nothing times
out a request whose headers trickle in: a slow-header client would hold a connection (and a
`limit_concurrency` slot) for ever. Here the headers of each request must be complete within
`header_timeout_s` of the connection opening or the previous response; otherwise the connection is closed.

Open connections are capped at `max_connections` (idle ones included: each holds a socket and a buffer);
one beyond it is answered a JSON 503 with `Retry-After` and closed. That cap is far above the work the
server admits (`/recommend` has its own admission), so idle keep-alive connections never crowd out work
or the probes, as uvicorn's `limit_concurrency` (which also answers a plain-text 503) would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def busy_response(retry_after_s: int) -> bytes:
    """A complete HTTP/1.1 503 with a JSON body, `Retry-After` and `Connection: close`."""
    message = f"the server has too many open connections; retry in {retry_after_s} s"
    body = json.dumps({"error": "too_many_connections", "message": message}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: %d\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"x-content-type-options: nosniff\r\n\r\n" % (retry_after_s, len(body))) + body


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout_s: float = 10.0
    max_connections: int = 1024
    retry_after_s: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took over %.0f s",
                             self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(busy_response(self.retry_after_s))
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_headers():
            self._arm()
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()   # idle from here: uvicorn's keep-alive timeout applies until the next byte
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_with_deadline(header_timeout_s: float, max_connections: int = 1024,
                           retry_after_s: int = 1) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections,
                 "retry_after_s": retry_after_s})
