"""Benchmark: `/recommend` latency against a server already running (the `make run` one, by default).

`bench/serve.py` builds its own bundles and server; this one measures what a shopper meets on the
server as deployed: --photos real test-split photos of --manifest posted by `serve.load()` (httpx
AsyncClient) at each --concurrency for --duration seconds, after --warmup requests. The client shares
the machine's cores with the server, as it did in the issue's figures.

    nice -n 10 .venv/bin/python bench/latency.py --url http://127.0.0.1:8000 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, Run, table
from serve import load

from fashionrec.runtime.parity import sample_split


def test_photos(manifest: Path, n: int, seed: int) -> list[bytes]:
    return [Path(row["abspath"]).read_bytes() for row in sample_split(manifest, "test", n, seed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--manifest", type=Path, default=ROOT / "data/validated/catalog/manifest.parquet")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("latency")
    payloads = test_photos(args.manifest, args.photos, args.seed)
    with httpx.Client(base_url=args.url, timeout=60) as http:
        for i in range(args.warmup):
            http.post("/recommend", files={"image": ("q.jpg", payloads[i % len(payloads)], "image/jpeg")})
        health = http.get("/healthz").json()
    rows: list[dict[str, Any]] = []
    for c in args.concurrency:
        row = asyncio.run(load(args.url, payloads, c, args.duration))
        rows.append({k: row[k] for k in ("concurrency", "requests", "errors", "rps", "p50_ms", "p99_ms")})
    print(table(rows, list(rows[0])))
    print(f"bundle {health.get('index_version')} ({health.get('index_kind')}), "
          f"model {health.get('model_version')}")
    run.save({"url": args.url, "health": health, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
