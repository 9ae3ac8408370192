"""`POST /admin/reload`: load what `bundles/current` points at now (token: `Authorization: Bearer ...`)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header

from fashionrec.core.errors import BadRequest, FashionrecError
from fashionrec.serve.context import ServeContext
from fashionrec.serve.handlers import error_responses


def router(ctx: ServeContext) -> APIRouter:
    token = ctx.config.admin_token
    api = APIRouter(tags=["admin"])

    @api.post("/admin/reload", responses=error_responses(
        e401="missing or wrong admin token", e403="admin endpoints disabled (no admin token configured)",
        e409="reload refused: the previous bundle still serves", e503="no bundle loaded (Retry-After)"))
    def admin_reload(authorization: Annotated[str | None, Header()] = None,
                     force: bool = False) -> dict[str, Any]:
        """Load the bundle `bundles/current` points at now (`force`: even one refused before)."""
        if token is None:
            raise BadRequest("admin endpoints are disabled: no admin token configured", status=403,
                             kind="forbidden")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise BadRequest("missing or wrong admin token", status=401, kind="unauthorized")
        try:
            changed = ctx.reload(force)
        except FashionrecError as exc:
            raise BadRequest(f"reload refused, still serving the previous bundle: {exc}", status=409,
                             kind="reload_refused") from exc
        state = ctx.current()
        return {"reloaded": changed, "model_version": state.model_version, "index_version": state.version}

    return api
