"""Admission control for `/recommend`: a bounded queue in front of the decode workers and compute threads.

Every request that would wait beyond `queue_size` is refused at once (503 + Retry-After) instead of
queueing without bound. Only work counts here: idle connections and the probes never take a place. (The
heavy lane of earlier versions is gone: decoding runs in memory-capped worker processes now, so a large
upload costs the server's own memory no more than a small one.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fashionrec.core.errors import ServiceUnavailable


class Admission:
    def __init__(self, compute_threads: int, queue_size: int, retry_after_s: int) -> None:
        self.capacity = compute_threads + queue_size
        self.retry_after_s = retry_after_s
        self.ordinary = 0          # requests reading, decoding, queued or running
        self.finished = 0          # requests done so far (the idle trim looks whether any were)

    @property
    def in_flight(self) -> int:
        return self.ordinary

    @property
    def full(self) -> bool:
        return self.ordinary >= self.capacity

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place while the request reads, waits and runs; 503 at once when none is left."""
        if self.ordinary >= self.capacity:
            raise ServiceUnavailable(f"the server is busy ({self.ordinary} requests running or queued); "
                                     f"retry in {self.retry_after_s} s", kind="overloaded",
                                     retry_after_s=self.retry_after_s)
        self.ordinary += 1
        try:
            yield
        finally:
            self.ordinary -= 1
            self.finished += 1
