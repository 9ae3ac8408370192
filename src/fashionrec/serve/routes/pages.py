"""The web page (`/`, `/static`) and offline Swagger UI (`/docs`, from the swagger-ui-bundle package)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from fashionrec.serve.middleware import PAGE_CSP


def mount(app: FastAPI, static_dir: Path | None) -> dict[str, str]:
    """Mount the docs and the page; return the CSP of `/docs` (its one inline script, allowed by hash)."""
    csp = {"/docs": _mount_docs(app)}
    _mount_page(app, static_dir)
    return csp


def _mount_docs(app: FastAPI) -> str:
    import swagger_ui_bundle

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    html = get_swagger_ui_html(openapi_url="/openapi.json", title="fashionrec API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon-32x32.png").body
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in re.findall(rb"<script>(.*?)</script>", html, flags=re.S))

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(html)

    return PAGE_CSP.replace("script-src 'self'", f"script-src 'self' {hashes}").replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _mount_page(app: FastAPI, static_dir: Path | None) -> None:
    if static_dir is None or not (static_dir / "index.html").is_file():
        return
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir / "index.html")
