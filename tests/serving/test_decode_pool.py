"""The decode pool on its own: real worker processes, their memory cap, their replacement when they die,
and the structure checks that run before any decoder (`data.images.check_structure`)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fashionrec.core.errors import BadRequest, ImageRefused, ServiceUnavailable
from fashionrec.data.images import DecodeLimits, check_structure, format_name
from fashionrec.serve.decode_pool import DecodePool
from tests.reliability.hostile import eps, jpeg_segment_flood, png_chunk_flood, psd, repeated_last_scan

FORMATS = ("JPEG", "MPO", "PNG", "WEBP")
WAIT_S = 60.0


def jpeg(size: tuple[int, int] = (640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def with_pool(body: Callable[[DecodePool], Any], workers: int = 1, memory_mb: int = 256,
              timeout_s: float = 600.0) -> Any:
    async def run() -> Any:
        pool = DecodePool(workers, memory_mb, timeout_s, DecodeLimits(formats=FORMATS), 1)
        await pool.start()
        try:
            return await body(pool)
        finally:
            await pool.close()
    # a loop of its own, on a thread of its own: the session may already run one on this thread
    # (pytest-playwright's sync API does, after the browser tests)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


async def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


def test_a_worker_holds_its_memory_cap_and_decodes_reduced() -> None:
    async def body(pool: DecodePool) -> tuple[str, tuple[int, int]]:
        worker = next(iter(pool.workers))
        limits = Path(f"/proc/{worker.pid}/limits").read_text()
        img = await pool.decode(jpeg((4000, 3000)), None)
        return limits, img.size

    limits, size = with_pool(body)
    line = next(row for row in limits.splitlines() if row.startswith("Max data size"))
    soft = int(line.split()[3])
    assert 256 * 2**20 < soft < 1024 * 2**20, line        # baseline + 256 MiB, not unlimited
    assert size == (1000, 750)                               # JPEG draft at 1/4: short side still >= 512


def test_a_worker_killed_while_idle_gives_one_503_then_is_replaced() -> None:
    async def body(pool: DecodePool) -> tuple[str, int, tuple[int, int]]:
        worker = next(iter(pool.workers))
        os.kill(worker.pid, signal.SIGKILL)
        await worker.proc.wait()
        with pytest.raises(ServiceUnavailable) as failed:
            await pool.decode(jpeg(), None)
        await until(lambda: pool.idle == 1)
        img = await pool.decode(jpeg(), None)
        return failed.value.kind, pool.killed, img.size

    kind, killed, size = with_pool(body)
    assert kind == "decode_failed" and killed == 1 and size == (640, 480)


def test_a_refusal_keeps_the_worker_and_a_memory_refusal_replaces_it() -> None:
    async def body(pool: DecodePool) -> list[Any]:
        first = next(iter(pool.workers)).pid
        out: list[Any] = []
        with pytest.raises(BadRequest) as refused:
            await pool.decode(eps(), None)
        out += [refused.value.status, next(iter(pool.workers)).pid == first]
        x = Image.linear_gradient("L").resize((6000, 4000))
        buf = io.BytesIO()
        Image.merge("RGB", (x, x, x)).save(buf, "WEBP", quality=50)    # ~390 MB in libwebp, cap 256
        with pytest.raises(BadRequest) as costly:
            await pool.decode(buf.getvalue(), None)
        out += [costly.value.status, costly.value.kind]
        await until(lambda: pool.idle == 1)
        out += [next(iter(pool.workers)).pid != first, pool.killed]
        return out

    assert with_pool(body) == [415, True, 413, "too_costly", True, 1]


@pytest.mark.parametrize(("make", "words"), [
    (repeated_last_scan, "scans; the limit is 100"),
    (jpeg_segment_flood, "over 1024 segments"),
    (png_chunk_flood, "over 1024 chunks"),
])
def test_structure_floods_are_refused_before_any_decoder(make: Callable[[], bytes], words: str) -> None:
    with pytest.raises(ImageRefused, match=words) as refused:
        check_structure(make(), max_segments=1024, max_scans=100)
    assert refused.value.kind == "too_costly"
    check_structure(jpeg(), max_segments=1024, max_scans=100)         # an ordinary photo passes


def test_format_names_come_from_signatures_alone() -> None:
    assert format_name(eps()) == "EPS" and format_name(psd()) == "PSD"
    assert format_name(jpeg()) == "JPEG" and format_name(b"certainly not an image") is None
