"""`POST /recommend`: admitted (bounded queue, heavy lane), then decoded, embedded and searched on a
compute thread. (No `from __future__ import annotations`: FastAPI must evaluate the route's annotations,
which use the config's limits.)"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel

from fashionrec.serve.config import MIB
from fashionrec.serve.context import ServeContext
from fashionrec.serve.recommend import answer, inspect_upload, parse_query


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


def router(ctx: ServeContext) -> APIRouter:
    config = ctx.config
    limits = config.decode_limits()
    heavy_bytes = config.heavy_decode_mb * MIB
    api = APIRouter(tags=["recommend"])

    @api.post("/recommend", response_model=Recommendation,
              responses={400: {"description": "not an image"}, 413: {"description": "too large or costly"},
                         422: {"description": "bad k, filter, crop or image shape"},
                         503: {"description": "busy, out of memory or no bundle (Retry-After)"}})
    async def recommend(
        image: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, GIF, TIFF...)")],
        k: Annotated[int, Form(description=f"How many items (1..{config.max_k})")] = config.default_k,
        category: Annotated[str | None, Form(description="Only this category")] = None,
        kids: Annotated[bool | None, Form(description="Only kids' (true) or adults' (false) items")] = None,
        crop: Annotated[str | None, Form(description="left,top,right,bottom in image pixels")] = None,
    ) -> dict[str, Any]:
        """The top-k inventory items most similar to the photo (or to its crop)."""
        state = ctx.current()
        query = parse_query(state, k, category, kids, crop, config.max_k)
        loop = asyncio.get_running_loop()
        async with ctx.admission.admit():
            data = await image.read(config.max_upload_bytes + 1)
            probe = inspect_upload(data, query, limits, config.max_upload_bytes)
            if probe.decode_bytes <= heavy_bytes:
                return await loop.run_in_executor(ctx.compute, answer, state, data, query, limits, False)
        # a heavy upload waits in its own lane, not in the queue ordinary photos use
        async with ctx.admission.heavy_lane():
            return await loop.run_in_executor(ctx.compute, answer, state, data, query, limits, True)

    return api
