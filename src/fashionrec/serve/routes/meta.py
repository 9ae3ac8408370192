"""`/info`, `/healthz`, `/readyz`, `/metrics`: what the page, the probes and Prometheus read.

The probes are `async` and read only in-memory state: they are answered on the event loop at once,
never queued behind work (the thread pool, the admission queue, the decode workers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fashionrec.serve.context import ServeContext
from fashionrec.serve.handlers import error_responses, public_message


def _public(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The index engine's status (milvus: URI, collection, last error) fit for a response body."""
    if status is None:
        return None
    return {k: public_message(v) if k == "last_error" and isinstance(v, str) else v
            for k, v in status.items()}


def router(ctx: ServeContext) -> APIRouter:
    config = ctx.config
    api = APIRouter(tags=["meta"])

    @api.get("/info", responses=error_responses(e503="no bundle loaded yet (Retry-After)"))
    def info() -> dict[str, Any]:
        """What the web page needs: versions, the model's precision, categories, limits."""
        state = ctx.current()
        return {"model_version": state.model_version, "index_version": state.version,
                "model_precision": state.precision,
                "categories": state.categories, "items": state.size,
                "items_missing": state.manifest["items"].get("missing", 0), "max_k": config.max_k,
                "default_k": config.default_k, "max_upload_bytes": config.max_upload_bytes}

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and what is served: the execution provider that really runs the model, the bundle,
        what `current` names, how stale the served bundle is (`stale_s`), the last bundle error and any
        fallback taken at start."""
        state = ctx.holder.state
        status = ctx.holder.status()
        if status["last_error"] is not None:
            status["last_error"] = public_message(status["last_error"])
        if status["fallback"] is not None:
            status["fallback"] = {k: public_message(v) for k, v in status["fallback"].items()}
        return {"status": "ok", "ready": state is not None,
                "provider": state.provider if state else None,
                "providers": state.session.providers if state else None,
                "model_version": state.model_version if state else None,
                "index_version": state.version if state else None,
                "index_kind": state.index.kind if state else None,
                "index": _public(state.index.status()) if state else None,
                **status, "in_flight": ctx.admission.in_flight, "busy": ctx.admission.full,
                "decoders": len(ctx.decoder.workers), "decoders_idle": ctx.decoder.idle,
                "decoders_killed": ctx.decoder.killed}

    @api.get("/readyz", responses=error_responses(e503="not ready: no bundle loaded yet (Retry-After)"))
    async def readyz() -> dict[str, Any]:
        """Readiness: a bundle is loaded and its model answers. `busy` (the admission queue is full)
        is reported, not failed: a pod taken out of its Service under load only moves the load."""
        state = ctx.current()
        return {"status": "ready", "busy": ctx.admission.full, "model_version": state.model_version,
                "index_version": state.version}

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                              "description": "Prometheus' text format"}})
    def prometheus() -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
