"""Admission control for `/recommend`: a bounded queue in front of the compute threads, and a heavy lane.

Every request that would wait beyond `queue_size` is refused at once (503 + Retry-After) instead of
queueing without bound. Uploads whose decode is costly (read from the header, before any pixel is
decoded) take a narrower heavy lane (`compute_threads - 1` at a time, at least 1, with its own short
queue), so a burst of heavy uploads always leaves a compute thread to ordinary photos.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fashionrec.core.errors import ServiceUnavailable


class Admission:
    def __init__(self, compute_threads: int, queue_size: int, heavy_queue_size: int,
                 retry_after_s: int) -> None:
        self.capacity = compute_threads + queue_size
        self.heavy_slots = max(1, compute_threads - 1)
        self.heavy_capacity = self.heavy_slots + heavy_queue_size
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.heavy_in_flight = 0
        self.finished = 0          # requests done so far (the idle trim looks whether any were)
        self._heavy: asyncio.Semaphore | None = None

    def _refuse(self, what: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"the server is busy ({what}); retry in {self.retry_after_s} s",
                                  kind="overloaded", retry_after_s=self.retry_after_s)

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place while the request reads, waits and runs; 503 at once when none is left."""
        if self.in_flight >= self.capacity:
            raise self._refuse(f"{self.in_flight} requests running or queued")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.finished += 1

    @contextlib.asynccontextmanager
    async def lane(self, heavy: bool) -> AsyncIterator[None]:
        """Inside `admit`: a heavy upload waits for the heavy lane (503 at once when its queue is full)."""
        if not heavy:
            yield
            return
        if self.heavy_in_flight >= self.heavy_capacity:
            raise self._refuse(f"{self.heavy_in_flight} large images running or queued")
        self.heavy_in_flight += 1
        try:
            if self._heavy is None:   # created on the serving loop
                self._heavy = asyncio.Semaphore(self.heavy_slots)
            async with self._heavy:
                yield
        finally:
            self.heavy_in_flight -= 1
