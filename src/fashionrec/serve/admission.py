"""Admission control for `/recommend`: a bounded queue in front of the compute threads, and a heavy lane.

Every request that would wait beyond `queue_size` is refused at once (503 + Retry-After) instead of
queueing without bound. Uploads whose decode is costly (read from the header, before any pixel is
decoded) leave that queue for a narrower heavy lane (`compute_threads - 1` at a time, at least 1, with its
own short queue, `heavy_queue_size`), so a burst of heavy uploads neither fills the queue ordinary photos
use nor takes every compute thread.
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
        self.ordinary = 0          # requests reading, probing, queued or running in the ordinary queue
        self.heavy = 0             # heavy uploads waiting for or running in the heavy lane
        self.finished = 0          # requests done so far (the idle trim looks whether any were)
        self._lane: asyncio.Semaphore | None = None

    @property
    def in_flight(self) -> int:
        return self.ordinary + self.heavy

    def _refuse(self, what: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"the server is busy ({what}); retry in {self.retry_after_s} s",
                                  kind="overloaded", retry_after_s=self.retry_after_s)

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place while the request reads, waits and runs; 503 at once when none is left."""
        if self.ordinary >= self.capacity:
            raise self._refuse(f"{self.ordinary} requests running or queued")
        self.ordinary += 1
        try:
            yield
        finally:
            self.ordinary -= 1
            self.finished += 1

    @contextlib.asynccontextmanager
    async def heavy_lane(self) -> AsyncIterator[None]:
        """A heavy upload (found so inside `admit`, then out of it) waits here: 503 at once when full."""
        if self.heavy >= self.heavy_capacity:
            raise self._refuse(f"{self.heavy} large images running or queued")
        self.heavy += 1
        try:
            if self._lane is None:   # created on the serving loop
                self._lane = asyncio.Semaphore(self.heavy_slots)
            async with self._lane:
                yield
        finally:
            self.heavy -= 1
            self.finished += 1
