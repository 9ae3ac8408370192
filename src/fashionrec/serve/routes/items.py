"""`GET /items/{id}` and its image (a file inside the inventory folder, or a redirect to its URL)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from fashionrec.core.errors import BadRequest
from fashionrec.serve.context import ServeContext
from fashionrec.serve.handlers import error_responses

NOT_READY = "no bundle loaded yet (Retry-After)"


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(tags=["items"])

    @api.get("/items/{item_id}", responses=error_responses(e404="no such item", e503=NOT_READY))
    def item(item_id: str) -> dict[str, Any]:
        """One inventory item."""
        state = ctx.current()
        if item_id not in state.rows:
            raise BadRequest(f"no item {item_id[:80]!r} in bundle {state.version}", status=404,
                             kind="not_found")
        return {**state.item(state.rows[item_id]), "index_version": state.version}

    @api.get("/items/{item_id}/image", responses={
        200: {"content": {"image/*": {}}, "description": "the image file"},
        307: {"description": "a redirect to the image's URL"},
        **error_responses(e404="no such item, or its image is not available", e503=NOT_READY)})
    def item_image(item_id: str) -> Response:
        """The item's image (a file inside the inventory folder, or a redirect to its URL)."""
        state = ctx.current()
        if item_id not in state.rows:
            raise BadRequest(f"no item {item_id[:80]!r} in bundle {state.version}", status=404,
                             kind="not_found")
        source = state.image_source(state.rows[item_id])
        if isinstance(source, str):
            return RedirectResponse(source)
        if source is None or not source.is_file():
            raise BadRequest(f"image of item {item_id!r} is not available", status=404, kind="not_found")
        return FileResponse(source, headers={"Cache-Control": "public, max-age=3600"})

    return api
