"""Benchmark: real peak memory of one decode worker per upload format, under the configured budget.

Each case is decoded by a fresh `fashionrec.serve.decode_worker` process (the server's own pool,
`DecodePool`, with params.yaml's `serve` limits); its peak resident memory (VmHWM) and peak data segment
(VmPeak is address space; VmData is what RLIMIT_DATA counts) are read from /proc after the reply, with its
baseline before the job. The figures set `serve.decode_memory_mb` and the Deployment's memory limit
(docs/BENCHMARKS.md has the arithmetic).

    nice -n 10 .venv/bin/python bench/decode_memory.py
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

from common import ROOT, Run, table
from PIL import Image

from fashionrec.core.config import load_params
from fashionrec.core.errors import HttpError
from fashionrec.serve.config import ServeConfig
from fashionrec.serve.decode_pool import DecodePool


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """A photo-like picture (gradients and noise: entropy like a real photo's, not a flat colour)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1).astype(np.int16)
    base += rng.integers(-20, 20, base.shape, dtype=np.int16)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


def cases() -> dict[str, bytes]:
    big = photo(6000, 4000)
    mid = photo(4000, 3000)
    return {
        "jpeg_baseline_24mp_420": encode(big, "JPEG", quality=90),
        "jpeg_progressive_24mp_420": encode(big, "JPEG", quality=90, progressive=True),
        "jpeg_progressive_24mp_444": encode(big, "JPEG", quality=90, progressive=True, subsampling=0),
        "jpeg_cmyk_12mp_444": encode(mid.convert("CMYK"), "JPEG", quality=90),
        "mpo_24mp_2_frames": encode(big, "MPO", quality=90, save_all=True, append_images=[mid]),
        "png_rgb_12mp": encode(mid, "PNG", compress_level=1),
        "webp_12mp": encode(mid, "WEBP", quality=80),
        "jpeg_progressive_49mp_444": encode(photo(7000, 7000), "JPEG", quality=90, progressive=True,
                                            subsampling=0),
        "webp_24mp": encode(photo(6000, 4000), "WEBP", quality=80),
    }


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "VmData"):
            out[key] = int(value.split()[0]) // 1024
    return out


async def measure(config: ServeConfig, data: bytes) -> dict[str, Any]:
    pool = DecodePool(1, config.decode_memory_mb, config.decode_timeout_s, config.decode_limits(), 1)
    await pool.start()
    try:
        worker = next(iter(pool.workers))
        before = status(worker.pid)
        started = time.perf_counter()
        try:
            img = await pool.decode(data, None)
            outcome = f"200 {img.width}x{img.height}"
        except HttpError as exc:
            outcome = f"{exc.status} {exc.kind}"
        seconds = time.perf_counter() - started
        after = status(worker.pid) if worker.proc.returncode is None else {}
        return {"outcome": outcome, "bytes": len(data), "seconds": round(seconds, 3),
                "baseline_rss_mib": before["VmRSS"], "peak_rss_mib": after.get("VmHWM"),
                "peak_over_baseline_mib": (after["VmHWM"] - before["VmRSS"]) if after else None}
    finally:
        await pool.close()


def main() -> None:
    config = ServeConfig.from_params(load_params(ROOT / "params.yaml"))
    run = Run("decode_memory")
    rows = []
    for name, data in cases().items():
        result = asyncio.run(measure(config, data))
        rows.append({"case": name, **result})
        print(name, result, flush=True)
    print(table(rows, list(rows[0])))
    run.save({"decode_memory_mb": config.decode_memory_mb, "cases": rows})


if __name__ == "__main__":
    main()
