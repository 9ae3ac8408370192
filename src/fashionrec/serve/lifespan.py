"""Start-up (the first load, with its fallback), the watch on `bundles/current`, which survives every
error (each is recorded on the holder, `/healthz`: `last_error`, `stale_s`, and counted, then it goes on),
and the heap trim once a burst of requests is over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from fashionrec.serve.context import ServeContext
from fashionrec.serve.memory import trim_heap

log = logging.getLogger(__name__)
IDLE_TRIM_S = 1.0


async def trim_when_idle(ctx: ServeContext) -> None:
    """Once the requests of a burst have all finished, hand the freed heap back to the OS (`malloc_trim`):
    what the decodes, conversions and arenas of the compute threads freed would otherwise stay in the RSS."""
    trimmed_at = 0
    while True:
        await asyncio.sleep(IDLE_TRIM_S)
        done = ctx.admission.finished
        if ctx.admission.in_flight == 0 and done != trimmed_at:
            trimmed_at = done
            await asyncio.get_running_loop().run_in_executor(ctx.compute, trim_heap)


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
        await asyncio.gather(asyncio.to_thread(ctx.start), ctx.decoder.start())
        watching = ctx.config.watch_interval_s > 0 and ctx.config.bundle is None
        tasks = [asyncio.create_task(trim_when_idle(ctx))]
        if watching:
            tasks.append(asyncio.create_task(watch(ctx)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ctx.decoder.close()

    return run
