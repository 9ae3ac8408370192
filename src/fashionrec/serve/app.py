"""The FastAPI app factory: routes, errors as 4xx JSON, Prometheus metrics, offline docs, the web page.

Routes stay thin: each reads the current state once and calls one library function. (No
`from __future__ import annotations` here: FastAPI must evaluate the route annotations, which use the
config's limits.) Configuration comes
from params.yaml's `serve` section (`ServeConfig.from_params`); the admin token from the environment
variable it names.
"""

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from fashionrec.core.config import Params
from fashionrec.core.errors import BadRequest, FashionrecError
from fashionrec.serve.holder import StateHolder
from fashionrec.serve.memory import use_system_allocator_for_arrow
from fashionrec.serve.recommend import parse_query, recommend
from fashionrec.serve.state import ServingState

log = logging.getLogger(__name__)
MULTIPART_SLACK = 64 * 1024   # form fields and boundaries around the image


@dataclass(frozen=True)
class ServeConfig:
    bundles: Path | None
    bundle: Path | None = None             # serve this one folder only (no pointer, no watch)
    inventory_root: Path | None = None     # None: the root recorded in the bundle
    max_upload_bytes: int = 10_000_000
    max_image_pixels: int = 50_000_000
    max_k: int = 50
    default_k: int = 5
    watch_interval_s: float = 2.0
    intra_op_threads: int = 0
    intra_op_spinning: bool = False        # ONNX Runtime threads busy-wait between operators
    compute_threads: int = 2               # requests decoded, embedded and searched at once
    admin_token: str | None = None
    static_dir: Path | None = None

    @classmethod
    def from_params(cls, params: Params) -> "ServeConfig":
        sec = params.section("serve")

        def path(key: str) -> Path | None:
            return params.path(sec[key]) if sec.get(key) else None

        return cls(bundles=path("bundles"), bundle=path("bundle"), inventory_root=path("inventory_root"),
                   max_upload_bytes=int(sec.get("max_upload_bytes", 10_000_000)),
                   max_image_pixels=int(sec.get("max_image_pixels", 50_000_000)),
                   max_k=int(sec.get("max_k", 50)), default_k=int(sec.get("default_k", 5)),
                   watch_interval_s=float(sec.get("watch_interval_s", 2.0)),
                   intra_op_threads=int(sec.get("intra_op_threads", 0)),
                   intra_op_spinning=bool(sec.get("intra_op_spinning", False)),
                   compute_threads=int(sec.get("compute_threads", 2)),
                   admin_token=os.environ.get(str(sec.get("admin_token_env") or "FASHIONREC_ADMIN_TOKEN"))
                   or None,
                   static_dir=path("static_dir"))


class Metrics:
    """Prometheus collectors in the app's own registry (two apps in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fashionrec_requests_total", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("fashionrec_request_seconds", "Request latency", ["route"],
                                 buckets=(.005, .01, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5),
                                 registry=self.registry)
        self.errors = Counter("fashionrec_errors_total", "Error responses by type", ["type"],
                              registry=self.registry)
        self.reloads = Counter("fashionrec_reloads_total", "Bundle reloads", ["outcome"],
                               registry=self.registry)
        self.bundle = Gauge("fashionrec_bundle_info", "The serving bundle",
                            ["model_version", "index_version"], registry=self.registry)
        self.items = Gauge("fashionrec_inventory_items", "Items in the serving index", registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes: the RSS budget, watched

    def serving(self, state: ServingState) -> None:
        self.bundle.clear()
        self.bundle.labels(state.model_version, state.version).set(1)
        self.items.set(state.size)


class BodyLimit:
    """Refuse request bodies over the limit with 413, by Content-Length up front or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
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
            refusal = JSONResponse({"error": "too_large", "message": message}, status_code=413)
            await refusal(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # an HTTPException passes FastAPI's body parsing unchanged
                    raise StarletteHTTPException(413, message)
            return msg

        await self.app(scope, limited, send)


class Item(BaseModel):
    item_id: str
    title: str
    category: str
    score: float
    image_url: str
    kids: bool = False
    attributes: list[str] = []


class Recommendation(BaseModel):
    items: list[Item]
    model_version: str
    index_version: str


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status)


def create_app(config: ServeConfig) -> FastAPI:
    """A server over `config.bundles/current` (or one pinned bundle).

    `/recommend` does its work (decode, model, search) on `config.compute_threads` threads of its own;
    further requests wait for one. ONNX Runtime already spreads one image over every core, and each
    request in flight holds a decoded photo and the model's activations in memory (and in a glibc
    arena of whichever thread ran it), so more at once only costs memory.
    """
    if config.compute_threads < 1:
        raise FashionrecError(f"serve.compute_threads must be at least 1, got {config.compute_threads}")
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels  # Pillow's own bomb limit, set explicitly
    use_system_allocator_for_arrow()
    holder = StateHolder(config.bundles, config.bundle, config.inventory_root, config.intra_op_threads,
                         allow_spinning=config.intra_op_spinning)
    metrics = Metrics()
    compute = ThreadPoolExecutor(config.compute_threads, thread_name_prefix="fashionrec-compute")

    def reload(force: bool = False) -> bool:
        try:
            changed = holder.reload(force)
        except FashionrecError:
            metrics.reloads.labels("refused").inc()
            raise
        if changed:
            metrics.reloads.labels("loaded").inc()
            metrics.serving(holder.state)  # type: ignore[arg-type]
        return changed

    async def watch() -> None:
        while True:
            await asyncio.sleep(config.watch_interval_s)
            target = holder.target()
            if target is not None and (holder.state is None or holder.state.version != target.name):
                with contextlib.suppress(FashionrecError):
                    await asyncio.to_thread(reload)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(reload)
        except FashionrecError as exc:
            log.error("not ready: %s", exc)
        task = asyncio.create_task(watch()) if config.watch_interval_s > 0 and config.bundle is None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="fashionrec", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Photo in, the most similar inventory items out.")
    app.state.holder = holder
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes + MULTIPART_SLACK, metrics=metrics)

    def current() -> ServingState:
        state = holder.state
        if state is None:
            raise BadRequest(f"no bundle loaded yet ({holder.last_error})", status=503, kind="not_ready")
        return state

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        return _error(exc.status, exc.kind, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_request").inc()
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                 for e in exc.errors()]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 400: "bad_request",
                413: "too_large"}.get(exc.status_code, "http_error")
        metrics.errors.labels(kind).inc()
        return _error(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        log.exception("internal error")
        return _error(500, "internal", f"{type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        return response

    @app.post("/recommend", response_model=Recommendation, tags=["recommend"],
              responses={400: {"description": "not an image"}, 413: {"description": "too large"},
                         422: {"description": "bad k, filter or crop"}})
    async def recommend_route(
        image: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, GIF, TIFF...)")],
        k: Annotated[int, Form(description=f"How many items (1..{config.max_k})")] = config.default_k,
        category: Annotated[str | None, Form(description="Only this category")] = None,
        kids: Annotated[bool | None, Form(description="Only kids' (true) or adults' (false) items")] = None,
        crop: Annotated[str | None, Form(description="left,top,right,bottom in image pixels")] = None,
    ) -> dict[str, Any]:
        """The top-k inventory items most similar to the photo (or to its crop)."""
        state = current()
        query = parse_query(state, k, category, kids, crop, config.max_k)
        data = await image.read(config.max_upload_bytes + 1)
        return await asyncio.get_running_loop().run_in_executor(
            compute, recommend, state, data, query, config.max_image_pixels, config.max_upload_bytes)

    @app.get("/items/{item_id}", tags=["items"])
    def item(item_id: str) -> dict[str, Any]:
        """One inventory item."""
        state = current()
        if item_id not in state.rows:
            raise BadRequest(f"no item {item_id!r} in bundle {state.version}", status=404, kind="not_found")
        return {**state.item(state.rows[item_id]), "index_version": state.version}

    @app.get("/items/{item_id}/image", tags=["items"])
    def item_image(item_id: str) -> Response:
        """The item's image (a file inside the inventory folder, or a redirect to its URL)."""
        state = current()
        if item_id not in state.rows:
            raise BadRequest(f"no item {item_id!r} in bundle {state.version}", status=404, kind="not_found")
        source = state.image_source(state.rows[item_id])
        if isinstance(source, str):
            return RedirectResponse(source)
        if source is None or not source.is_file():
            raise BadRequest(f"image of item {item_id!r} is not available", status=404, kind="not_found")
        return FileResponse(source, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/info", tags=["meta"])
    def info() -> dict[str, Any]:
        """What the web page needs: versions, the model's precision, categories, limits."""
        state = current()
        return {"model_version": state.model_version, "index_version": state.version,
                "model_precision": state.precision,
                "categories": state.categories, "items": state.size, "max_k": config.max_k,
                "default_k": config.default_k, "max_upload_bytes": config.max_upload_bytes}

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers; also says which execution provider really runs the model."""
        state = holder.state
        return {"status": "ok", "ready": state is not None,
                "provider": state.provider if state else None,
                "providers": state.session.providers if state else None,
                "model_version": state.model_version if state else None,
                "index_version": state.version if state else None,
                "index_kind": state.index.kind if state else None,
                "last_error": holder.last_error}

    @app.get("/readyz", tags=["meta"])
    def readyz() -> dict[str, Any]:
        """Readiness: a bundle is loaded and its model answers."""
        state = current()
        return {"status": "ready", "model_version": state.model_version, "index_version": state.version}

    @app.get("/metrics", tags=["meta"])
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", tags=["admin"])
    def admin_reload(authorization: Annotated[str | None, Header()] = None,
                     force: bool = False) -> dict[str, Any]:
        """Load the bundle `bundles/current` points at now (token: `Authorization: Bearer ...`)."""
        if config.admin_token is None:
            raise BadRequest("admin endpoints are disabled: no admin token configured", status=403,
                             kind="forbidden")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), config.admin_token.encode()):
            raise BadRequest("missing or wrong admin token", status=401, kind="unauthorized")
        try:
            changed = reload(force)
        except FashionrecError as exc:
            raise BadRequest(f"reload refused, still serving the previous bundle: {exc}", status=409,
                             kind="reload_refused") from exc
        state = current()
        return {"reloaded": changed, "model_version": state.model_version, "index_version": state.version}

    _mount_docs(app)
    _mount_page(app, config.static_dir)
    return app


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package's files: the docs work with no network."""
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fashionrec API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def _mount_page(app: FastAPI, static_dir: Path | None) -> None:
    if static_dir is None or not (static_dir / "index.html").is_file():
        return
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir / "index.html")


def serve(params: Params) -> None:
    """`fashionrec serve`: one uvicorn worker (ONNX Runtime uses the cores) on 127.0.0.1 by default."""
    import uvicorn

    sec = params.section("serve")
    app = create_app(ServeConfig.from_params(params))
    uvicorn.run(app, host=str(sec.get("host") or "127.0.0.1"), port=int(sec.get("port") or 8000),
                log_level=str(sec.get("log_level", "info")), access_log=bool(sec.get("access_log", False)))
