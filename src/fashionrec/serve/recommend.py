"""Request handling for `POST /recommend`: check the input, decode, crop, embed, search, shape the answer.

Every way a request can be wrong raises `BadRequest` with an HTTP status and a message for the client;
nothing a client sends can make it raise anything else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from fashionrec.core.errors import BadRequest, DataError, ImageTooLarge
from fashionrec.data.images import open_image
from fashionrec.serve.state import ServingState


@dataclass(frozen=True)
class Query:
    k: int
    category: str | None = None
    kids: bool | None = None
    crop: tuple[float, float, float, float] | None = None


def parse_crop(text: str | None) -> tuple[float, float, float, float] | None:
    """`left,top,right,bottom` in pixels of the upright image (after EXIF rotation)."""
    if text is None or not text.strip():
        return None
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        box = tuple(float(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise BadRequest(f"crop must be four numbers 'left,top,right,bottom', got {text!r}", kind="bad_crop")
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        raise BadRequest(f"crop box {text!r}: right must exceed left and bottom must exceed top",
                         kind="bad_crop")
    return left, top, right, bottom


def parse_query(state: ServingState, k: int, category: str | None, kids: bool | None, crop: str | None,
                max_k: int) -> Query:
    if k < 1 or k > max_k:
        raise BadRequest(f"k must be between 1 and {max_k}, got {k}", kind="bad_k")
    cat = category.strip().lower() if category and category.strip() else None
    if cat is not None and cat not in state.categories:
        raise BadRequest(f"unknown category {category!r}; the inventory has {state.categories}",
                         kind="bad_filter")
    return Query(k=k, category=cat, kids=kids, crop=parse_crop(crop))


def recommend(state: ServingState, data: bytes, query: Query, max_pixels: int,
              max_bytes: int) -> dict[str, Any]:
    """One upload -> the top-k inventory items, all from `state` (one model version, one index version)."""
    if not data:
        raise BadRequest("the uploaded image is empty", status=400, kind="empty_upload")
    if len(data) > max_bytes:
        raise BadRequest(f"the upload has {len(data)} bytes; the limit is {max_bytes}", status=413,
                         kind="too_large")
    try:
        img = open_image(data, name="upload", max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise BadRequest(str(exc), status=413, kind="decompression_bomb") from exc
    except DataError as exc:
        raise BadRequest(str(exc), status=400, kind="bad_image") from exc
    if query.crop is not None:
        left, top, right, bottom = query.crop
        w, h = img.size
        if left < 0 or top < 0 or right > w or bottom > h:
            raise BadRequest(f"crop box {list(query.crop)} lies outside the {w}x{h} image", kind="bad_crop")
        box = (int(left), int(top), max(int(left) + 1, round(right)), max(int(top) + 1, round(bottom)))
        img = img.crop(box)
    vector = state.embed([img])[0]
    hits = state.search(vector, query.k, query.category, query.kids)
    items = [{**state.item(h.row), "score": round(h.score, 6)} for h in hits]
    return {"items": items, "model_version": state.model_version, "index_version": state.version}
