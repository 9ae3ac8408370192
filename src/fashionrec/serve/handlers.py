"""Named exception handlers, registered in one place (`add_exception_handlers`): every error is a JSON
`{"error": kind, "message": ...}` with a stable kind, counted on `/metrics` by kind.

The client's mistakes are 4xx naming the problem; the server's trouble (overloaded, out of memory, no
bundle) is a 503 with `Retry-After`; anything else a 500 whose body says only that it was logged. No body
carries an exception type, a traceback or an absolute path (`public_message`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashionrec.core.errors import BadRequest, ServiceUnavailable
from fashionrec.serve.metrics import Metrics

log = logging.getLogger(__name__)
HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
              413: "too_large"}
# an absolute path (not part of a URL or a relative path): keep only its last component
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"(),;:]+/)*([^\s/'\"(),;:]*)")


class ErrorBody(BaseModel):
    """Every error's JSON body (documented in the OpenAPI schema for each status a route can return)."""

    error: str
    message: str


def error_responses(**described: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: `error_responses(e404="unknown item")` -> {404: ErrorBody, described}."""
    return {int(code.removeprefix("e")): {"model": ErrorBody, "description": text}
            for code, text in described.items()}


def public_message(text: str) -> str:
    """A message fit for a response body: absolute paths cut to their last component."""
    return _ABSOLUTE.sub(lambda m: m.group(1) or "/", text)


def error_response(status: int, kind: str, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": kind, "message": public_message(message)}, status_code=status,
                        headers=headers)


def add_exception_handlers(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BadRequest)
        metrics.errors.labels(exc.kind).inc()
        return error_response(exc.status, exc.kind, str(exc))

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceUnavailable)
        metrics.errors.labels(exc.kind).inc()
        return error_response(503, exc.kind, str(exc), exc.retry_after_s)

    async def out_of_memory(request: Request, _: Exception) -> JSONResponse:
        metrics.errors.labels("out_of_memory").inc()
        log.error("out of memory answering %s %s", request.method, request.url.path)
        return error_response(503, "out_of_memory", "the server ran out of memory for this request; "
                              f"retry in {retry_after_s} s", retry_after_s)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        metrics.errors.labels("invalid_request").inc()
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                 for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        metrics.errors.labels(kind).inc()
        return error_response(exc.status_code, kind, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal error; it has been logged")

    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(ServiceUnavailable, unavailable)
    app.add_exception_handler(MemoryError, out_of_memory)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal)
