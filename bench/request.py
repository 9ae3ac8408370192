"""Benchmark: where one `/recommend` spends its time, in-process, stage by stage.

Loads a bundle as the server does (`load_state`) and times, per photo, the stages of the server's own
request path: header probe, bounded decode, resize + normalise, the model, the index search, and the
whole `answer()`. No HTTP: the difference between `answer` here and a client's p50 (`bench/serve.py`)
is the round trip, the event loop and the thread hop. Photos: a seeded sample of --photos of the
bundle's own inventory images (under its `inventory_root`, or --inventory-root).

    nice -n 10 .venv/bin/python bench/request.py --bundle bundles/current --photos 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, Run, table

from fashionrec.data.images import DecodeLimits, decode_bounded
from fashionrec.serve.recommend import Query, answer, inspect_upload
from fashionrec.serve.state import ServingState, load_state

STAGES = ("probe", "decode", "preprocess", "model", "search", "answer")


def photos(state: ServingState, n: int, seed: int) -> list[bytes]:
    """A seeded sample of the inventory's own image files (where the state finds them, as `/items` does)."""
    rows = np.random.default_rng(seed).choice(state.size, size=min(n, state.size), replace=False)
    sources = [state.image_source(int(row)) for row in rows]
    if not all(isinstance(src, Path) for src in sources):
        raise SystemExit(f"{state.folder}: item images are not files under an inventory root; "
                         "pass --inventory-root")
    return [src.read_bytes() for src in sources]


def time_stages(state: ServingState, data: bytes, limits: DecodeLimits, k: int) -> dict[str, float]:
    query = Query(k=k)
    t = [time.perf_counter()]
    inspect_upload(data, query, limits, len(data) + 1)
    t.append(time.perf_counter())
    img = decode_bounded(data, limits)
    t.append(time.perf_counter())
    batch = np.stack([state.prep(img)])
    t.append(time.perf_counter())
    emb = np.asarray(state.session.run(batch)["embedding"], np.float32)[0]
    t.append(time.perf_counter())
    state.search(emb / max(float(np.linalg.norm(emb)), 1e-12), k)
    t.append(time.perf_counter())
    answer(state, data, query, limits)
    t.append(time.perf_counter())
    return {name: 1000.0 * (b - a) for name, a, b in zip(STAGES, t[:-1], t[1:], strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "current")
    ap.add_argument("--inventory-root", type=Path, help="default: the one the bundle records")
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    ap.add_argument("--spinning", action="store_true", help="idle ORT threads spin (serve: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("request")
    folder = args.bundle.resolve()
    state = load_state(folder, args.inventory_root, intra_op_threads=args.threads,
                       allow_spinning=args.spinning)
    payloads = photos(state, args.photos, args.seed)
    limits = DecodeLimits()
    for data in payloads[:args.warmup]:
        answer(state, data, Query(k=args.k), limits)
    samples = [time_stages(state, data, limits, args.k) for data in payloads]
    row: dict[str, Any] = {"bundle": folder.name, "precision": state.precision,
                           "index": state.index.kind, "items": state.size}
    row.update({f"{s}_ms_p50": round(float(np.median([x[s] for x in samples])), 2) for s in STAGES})
    row["answer_ms_p90"] = round(float(np.percentile([x["answer"] for x in samples], 90)), 2)
    print(table([row], list(row)))
    run.save({"rows": [row], "photos": len(payloads), "spinning": args.spinning}, args.out)


if __name__ == "__main__":
    main()
