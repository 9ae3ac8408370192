"""Request handling for `POST /recommend`: check the input, bound its cost, decode, crop, embed, search.

Every way a request can be wrong raises `BadRequest` with an HTTP status and a message for the client.
The server decodes uploads in its decode worker processes (`decode_pool`), then embeds and searches the
decoded image here (`answer_image`, on a compute thread). `inspect_upload` and `answer` decode in-process,
for benchmarks and tools that measure the decode itself. Server-side trouble (MemoryError) passes through
to the app's 503 handler: it is never the client's "bad image".
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from fashionrec.core.errors import BadRequest, DataError, ImageRefused, ImageTooLarge
from fashionrec.data.images import DecodeLimits, Probe, decode_bounded, probe_image
from fashionrec.serve.memory import trim_heap
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
        raise BadRequest(f"crop must be four numbers 'left,top,right,bottom', got {text[:80]!r}",
                         kind="bad_crop")
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
        raise BadRequest(f"unknown category {category[:80]!r}; the inventory has {state.categories}",
                         kind="bad_filter")
    return Query(k=k, category=cat, kids=kids, crop=parse_crop(crop))


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """The decoder's refusals as the client's 4xx."""
    try:
        yield
    except ImageTooLarge as exc:
        raise BadRequest(str(exc), status=413, kind="decompression_bomb") from exc
    except ImageRefused as exc:
        status = {"too_costly": 413, "unsupported_format": 415}.get(exc.kind, 422)
        raise BadRequest(str(exc), status=status, kind=exc.kind) from exc
    except DataError as exc:
        raise BadRequest(str(exc), status=400, kind="bad_image") from exc


def check_size(data: bytes, max_bytes: int) -> None:
    """The upload's byte count, the only check made before it reaches a decode worker."""
    if not data:
        raise BadRequest("the uploaded image is empty", status=400, kind="empty_upload")
    if len(data) > max_bytes:
        raise BadRequest(f"the upload has {len(data)} bytes; the limit is {max_bytes}", status=413,
                         kind="too_large")


def inspect_upload(data: bytes, query: Query, limits: DecodeLimits, max_bytes: int) -> Probe:
    """Size, header, shape, crop and decode cost of an upload, all checked before any pixel is decoded."""
    check_size(data, max_bytes)
    with _client_errors():
        probe = probe_image(data, limits)
        if query.crop is None:
            return probe
        left, top, right, bottom = query.crop
        w, h = probe.width, probe.height
        if left < 0 or top < 0 or right > w or bottom > h:
            raise BadRequest(f"crop box {list(query.crop)} lies outside the {w}x{h} image", kind="bad_crop")
        return probe_image(data, limits, crop=query.crop)


def answer(state: ServingState, data: bytes, query: Query, limits: DecodeLimits,
           trim: bool = False) -> dict[str, Any]:
    """One upload -> the top-k inventory items, all from `state` (one model version, one index version).

    `trim`: hand the decode's freed pages back to the OS afterwards (after a large upload)."""
    try:
        with _client_errors():
            img = decode_bounded(data, limits, crop=query.crop)
        return answer_image(state, img, query)
    finally:
        if trim:
            trim_heap()


def answer_image(state: ServingState, img: Image.Image, query: Query) -> dict[str, Any]:
    """A decoded RGB image -> the top-k inventory items, from one (model version, index version)."""
    vector = state.embed([img])[0]
    hits = state.search(vector, query.k, query.category, query.kids)
    items = [{**state.hit_item(h), "score": round(h.score, 6)} for h in hits]
    return {"items": items, "model_version": state.model_version, "index_version": state.version}
