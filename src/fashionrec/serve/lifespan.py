"""Start-up (the first load, with its fallback) and the watch on `bundles/current`, which survives every
error: each is recorded on the holder (`/healthz`: `last_error`, `stale_s`) and counted, then it goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from fashionrec.serve.context import ServeContext

log = logging.getLogger(__name__)


async def watch(ctx: ServeContext) -> None:
    while True:
        await asyncio.sleep(ctx.config.watch_interval_s)
        try:
            await asyncio.to_thread(ctx.poll)
        except Exception as exc:   # noqa: BLE001 - the watcher must outlive any error, and report it
            ctx.holder.record_error(exc)
            ctx.metrics.watch_errors.inc()
            log.error("bundle watch: %s", exc, exc_info=exc)


def lifespan(ctx: ServeContext) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ctx.start)
        watching = ctx.config.watch_interval_s > 0 and ctx.config.bundle is None
        task = asyncio.create_task(watch(ctx)) if watching else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run
