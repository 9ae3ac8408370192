"""`POST /recommend`: admitted (bounded queue), decoded in a decode worker process, then embedded and
searched on a compute thread. Nothing here parses the upload: the event loop only moves its bytes. A
client that goes away while its upload decodes frees its place at once (its worker is killed). (No
`from __future__ import annotations`: FastAPI must evaluate the route's annotations, which use the
config's limits.)"""

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel

from fashionrec.core.errors import BadRequest
from fashionrec.serve.context import ServeContext
from fashionrec.serve.recommend import answer_image, check_size, parse_query

T = TypeVar("T")


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


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body is read already: only that is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; cancelled (its worker killed) when the client disconnects first: 499."""
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    if job.cancelled():
        raise BadRequest("the client closed the connection before the answer", status=499,
                         kind="client_closed")
    return job.result()


def router(ctx: ServeContext) -> APIRouter:
    config = ctx.config
    formats = ", ".join(config.formats) or "any Pillow format"
    api = APIRouter(tags=["recommend"])

    @api.post("/recommend", response_model=Recommendation,
              responses={400: {"description": "not an image"}, 413: {"description": "too large or costly"},
                         415: {"description": "an image format not accepted"},
                         422: {"description": "bad k, filter, crop or image shape"},
                         503: {"description": "busy, out of memory or no bundle (Retry-After)"}})
    async def recommend(
        request: Request,
        image: Annotated[UploadFile, File(description=f"The photo ({formats})")],
        k: Annotated[int, Form(description=f"How many items (1..{config.max_k})")] = config.default_k,
        category: Annotated[str | None, Form(description="Only this category")] = None,
        kids: Annotated[bool | None, Form(description="Only kids' (true) or adults' (false) items")] = None,
        crop: Annotated[str | None, Form(description="left,top,right,bottom in image pixels")] = None,
    ) -> dict[str, Any]:
        """The top-k inventory items most similar to the photo (or to its crop)."""
        state = ctx.current()
        query = parse_query(state, k, category, kids, crop, config.max_k)
        async with ctx.admission.admit():
            data = await image.read(config.max_upload_bytes + 1)
            check_size(data, config.max_upload_bytes)
            img = await unless_disconnected(request, ctx.decoder.decode(data, query.crop))
            del data
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(ctx.compute, answer_image, state, img, query)

    return api
