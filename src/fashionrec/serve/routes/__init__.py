"""The HTTP routes, one `APIRouter` module per concern, registered on an app by `register_routes`."""

from __future__ import annotations

from fastapi import FastAPI

from fashionrec.serve.context import ServeContext
from fashionrec.serve.routes import admin, items, meta, pages, recommend


def register_routes(app: FastAPI, ctx: ServeContext) -> dict[str, str]:
    """Every route on `app`; returns the CSPs of pages that need their own (path -> policy)."""
    for module in (recommend, items, meta, admin):
        app.include_router(module.router(ctx))
    return pages.mount(app, ctx.config.static_dir)
