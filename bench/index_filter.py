"""Benchmark: a filtered HNSW query both ways, the graph walk (ef / share kept) and the exact scan of the
kept items, forced one way or the other at several shares, to check where `HnswIndex` switches
(kept^2 <= 2 M ef size: the scan). Synthetic clustered embeddings as in bench/index.py.

    nice -n 10 .venv/bin/python bench/index_filter.py --size 20000 --dim 1280
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
from common import Run, percentile_ms, table
from index import clustered

from fashionrec.index.brute import BruteIndex
from fashionrec.index.hnsw import HnswIndex
from fashionrec.index.recall import overlap


def timed(index: HnswIndex, queries: np.ndarray, k: int, allowed: np.ndarray, scan: bool) -> dict[str, Any]:
    kept = int(allowed.sum())
    ef = min(kept, math.ceil(max(index.ef_search, k) * index.size / kept))
    seconds, got = [], []
    for i in range(len(queries)):
        started = time.perf_counter()
        _, idx = index._search(queries[i:i + 1], k, allowed, exact_first=scan, ef=None if scan else ef)
        seconds.append(time.perf_counter() - started)
        got.append(idx[0])
    return {"p50_ms": round(percentile_ms(seconds, 50), 3), "p99_ms": round(percentile_ms(seconds, 99), 3),
            "got": np.array(got), "ef": None if scan else ef}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.05, 0.01])
    args = ap.parse_args()
    run = Run("index_filter")
    data = clustered(args.size, args.dim, 1000, 0.8, 0, 32)
    queries = clustered(args.queries, args.dim, 1000, 0.8, 1, 32)
    started = time.perf_counter()
    index = HnswIndex(data)
    build_s = time.perf_counter() - started
    switch = math.sqrt(2 * index.M * index.ef_search * index.size)
    print(f"N={args.size} dim={args.dim}: build {build_s:.1f} s; the scan answers up to {switch:.0f} "
          "kept items")
    exact, rows = BruteIndex(data, block_size=64), []
    for share in args.shares:
        allowed = np.random.default_rng(2).random(args.size) < share
        truth = exact.query(queries, args.k, allowed=allowed)[1]
        for scan in (False, True):
            out = timed(index, queries, args.k, allowed, scan)
            rows.append({"share": share, "kept": int(allowed.sum()), "path": "scan" if scan else "walk",
                         "ef": out["ef"], "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"],
                         "recall_at_k": round(overlap(out["got"], truth), 4),
                         "chosen": (int(allowed.sum()) <= switch) == scan})
    print(table(rows, ["share", "kept", "path", "ef", "p50_ms", "p99_ms", "recall_at_k", "chosen"]))
    run.save({"size": args.size, "dim": args.dim, "build_s": round(build_s, 1), "switch_kept": round(switch),
              "rows": rows})


if __name__ == "__main__":
    main()
