"""Benchmark (issue 23): a big inventory in process (HNSW) beside the `milvus` kind on milvus-lite.

Synthetic 256-d clustered, L2-normalised items (bench/index.py's `clustered`), each with a category
(15, drawn at random) and a kids flag (~8 %); queries are fresh draws. For each N:

- in-process HNSW through the project's `index.build_index('hnsw', ...)` with params.yaml's `index.hnsw`:
  build time, RSS growth, single-query p50/p99 and recall@10 at each `--efs`, and filtered recall@10 for
  three filters (one category; with kids=false; with kids=true, ~0.5 %), each query one call of
  `index.query(vector, k, allowed=mask)` as `ServingState.search` makes it (`--graph-dir`: keep the graph);
- the `milvus` kind on a `milvus-lite server` this script starts (and stops, by PID): insert rate of the
  project's `MilvusStore.create` path (batched insert), how long the index took (capped), then a separate
  *replica* process (`--replica`) that opens `MilvusIndex` on the collection, as a serving replica does,
  and reports p50/p99, recall@10, filtered recall@10 and its own RSS: it must not grow with N.

Results: bench/results/scale.json (rewritten after each phase, so a capped run keeps what it measured).

    nice -n 19 .venv/bin/python bench/scale.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, ROOT, Run, loadavg, percentile_ms, rss_mib
from index import clustered, exact_neighbours

CATEGORIES = 15
KIDS_SHARE = 0.08


def labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 7)
    return rng.integers(0, CATEGORIES, n), rng.random(n) < KIDS_SHARE


def filters(cats: np.ndarray, kids: np.ndarray) -> dict[str, np.ndarray]:
    """The filters `/recommend` sends, from broad to very selective (category c3 ~6.7 %, ~0.5 % with kids)."""
    return {"category c3": cats == 3, "category c3 and kids false": (cats == 3) & ~kids,
            "category c3 and kids true": (cats == 3) & kids}


def exact_filtered(data: np.ndarray, queries: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    rows = np.flatnonzero(keep)
    return rows[exact_neighbours(data[rows], queries, k)]


def recall(got: list[np.ndarray] | np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(np.asarray(g).tolist()) & set(t.tolist())) / len(t)
            for g, t in zip(got, truth, strict=False)]
    return round(float(np.mean(hits)), 4) if hits else float("nan")


def hnsw_params() -> dict[str, Any]:
    """params.yaml's `index.hnsw` (M, ef_construction, ef_search, seed, build_threads), as a deploy builds."""
    from fashionrec.core.config import load_params

    return dict(load_params(ROOT / "params.yaml").section("index")["hnsw"])


def timed_search(index: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> dict[str, Any]:
    """One query per call, as `ServingState.search` asks: `index.query(vector, k, allowed=mask)`."""
    index.query(queries[:1], k, allowed=allowed)   # warm-up
    seconds, got = [], []
    for q in queries:
        t0 = time.perf_counter()
        got.append(index.query(q[None, :], k, allowed=allowed)[1][0])
        seconds.append(time.perf_counter() - t0)
    return {"p50_ms": round(percentile_ms(seconds, 50), 3), "p99_ms": round(percentile_ms(seconds, 99), 3),
            "got": got}


def hnsw_phase(n: int, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
               masks: dict[str, tuple[np.ndarray, np.ndarray]], args: argparse.Namespace) -> dict[str, Any]:
    """Build (or load a saved graph of the same vectors), then time unfiltered queries at each ef and each
    filter at params.yaml's ef (the scan / walk choice is the library's own)."""
    from fashionrec.index import build_index

    params = hnsw_params()
    graph = args.graph_dir / f"hnsw-{n}x{data.shape[1]}.faiss" if args.graph_dir else None
    out: dict[str, Any] = {"kind": "hnsw (faiss)", "params": params, "load_before": loadavg()}
    before = rss_mib()
    started = time.perf_counter()
    if graph is not None and graph.is_file():
        index = build_index(data, "hnsw", graph_file=graph, **params)
        out["loaded_graph"] = str(graph)
        out["load_s"] = round(time.perf_counter() - started, 1)
    else:
        index = build_index(data, "hnsw", **params)
        out["build_s"] = round(time.perf_counter() - started, 1)
        out["build_threads"] = index.build_threads
        if graph is not None:
            graph.parent.mkdir(parents=True, exist_ok=True)
            index.save(graph)
    out.update(load_after_build=loadavg(), rss_growth_mib=round(rss_mib() - before, 1),
               rss_mib=round(rss_mib(), 1))
    print(f"  built: {out}", flush=True)
    out["ef_sweep"] = []
    for ef in args.efs:
        index.ef_search = ef
        timed = timed_search(index, queries, args.k, None)
        out["ef_sweep"].append({"ef": ef, "p50_ms": timed["p50_ms"], "p99_ms": timed["p99_ms"],
                                "recall_at_10": recall(timed["got"], truth)})
        print(f"  {out['ef_sweep'][-1]}", flush=True)
    index.ef_search = params["ef_search"]
    out["filtered"] = []
    for name, (keep, ftruth) in masks.items():
        kept = int(keep.sum())
        timed = timed_search(index, queries, args.k, keep)
        out["filtered"].append({"filter": name, "kept": kept, "share": round(kept / n, 4),
                                "path": "scan" if index.scans(kept, args.k) else "walk",
                                "p50_ms": timed["p50_ms"], "p99_ms": timed["p99_ms"],
                                "recall_at_10": recall(timed["got"], ftruth)})
        print(f"  {out['filtered'][-1]}", flush=True)
    out.update(queries=len(queries), rss_mib_end=round(rss_mib(), 1), load_after=loadavg())
    return out


def start_lite(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("milvus-lite")), "server", "--data-dir",
                             str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("milvus-lite did not start")


def milvus_phase(n: int, data: np.ndarray, cats: np.ndarray, kids: np.ndarray, work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    from fashionrec.index.milvus import MilvusSettings, MilvusStore

    proc, uri = start_lite(work / f"lite-{n}", work / f"lite-{n}.log")
    out: dict[str, Any] = {"kind": "milvus (milvus-lite, HNSW M16 efC200, ef 128)", "uri": uri}
    try:
        settings = MilvusSettings(uri=uri, collection_prefix="bench", insert_batch=args.insert_batch,
                                  timeout_s=600.0, build_timeout_s=args.build_wait_s,
                                  allowed_index_types={"lite": ["HNSW"]})
        store = MilvusStore(settings)
        name = settings.collection(f"v{n}")
        items = [{"item_id": f"i{i}", "title": f"item {i}", "category": f"c{cats[i]}", "kids": bool(kids[i]),
                  "attributes": [], "image": f"images/i{i}.jpg"} for i in range(n)]
        started = time.perf_counter()
        try:
            built = store.create(name, data, items, {"fashionrec.bundle_version": f"v{n}"},
                                 wait_built=args.build_wait_s > 0)
            out.update(insert_s=built["insert_seconds"], index_ready_s=built["ready_seconds"],
                       index_built=args.build_wait_s > 0)
        except Exception as exc:   # the build wait capped: the rows are in, the index may still be building
            out.update(index_built=False, note=f"{type(exc).__name__}: {str(exc)[:200]}")
            out["insert_s"] = round(time.perf_counter() - started, 1)
        out["insert_rows_per_s"] = round(n / max(out["insert_s"], 1e-9))
        out["server_rss_mib"] = round(rss_mib(proc.pid), 1)
        store.close()
        replica = subprocess.run([sys.executable, __file__, "--replica", uri, name, str(n), str(work),
                                  str(args.milvus_queries)], capture_output=True, text=True, timeout=3600)
        if replica.returncode != 0:
            out["replica_error"] = replica.stderr[-2000:]
        else:
            out.update(json.loads(replica.stdout.strip().splitlines()[-1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def replica(uri: str, name: str, n: int, work: Path, count: int) -> None:
    """A serving replica's view: `MilvusIndex` on the collection, no embeddings, no item table."""
    from fashionrec.index.milvus import MilvusIndex, MilvusSettings, filter_expression

    queries = np.load(work / f"queries-{n}.npy")[:count]
    truth = np.load(work / f"truth-{n}.npy")[:count]
    ftruth = np.load(work / f"ftruth-{n}.npy")[:count]
    category, kids = json.loads((work / f"filter-{n}.json").read_text())
    index = MilvusIndex(collection=name, size=n, dim=queries.shape[1],
                        settings=MilvusSettings(uri=uri, timeout_s=600.0))
    index.search(queries[0], 10)
    seconds, got, fseconds, fgot = [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        got.append([r for r, _, _ in index.search(q, 10)])
        seconds.append(time.perf_counter() - t0)
    expression = filter_expression(category, kids)
    for q in queries:
        t0 = time.perf_counter()
        fgot.append([r for r, _, _ in index.search(q, 10, expression)])
        fseconds.append(time.perf_counter() - t0)
    print(json.dumps({"p50_ms": round(percentile_ms(seconds, 50), 2),
                      "p99_ms": round(percentile_ms(seconds, 99), 2), "recall_at_10": recall(got, truth),
                      "filtered_p50_ms": round(percentile_ms(fseconds, 50), 2),
                      "filtered_recall_at_10": recall(fgot, ftruth), "queries": len(queries),
                      "replica_rss_mib": round(rss_mib(), 1)}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--replica":
        uri, name, n, work, count = sys.argv[2:7]
        replica(uri, name, int(n), Path(work), int(count))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--milvus-queries", type=int, default=50, help="milvus-lite scans: fewer at 1M")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--efs", type=int, nargs="+", default=[64, 128, 256],
                    help="in-process HNSW: unfiltered queries at each ef (filters at params.yaml's)")
    ap.add_argument("--graph-dir", type=Path,
                    help="save each built HNSW graph here, and load it instead of building on a rerun")
    ap.add_argument("--insert-batch", type=int, default=5000)
    ap.add_argument("--build-wait-s", type=float, default=600.0,
                    help="cap on milvus-lite's index build (0: search at once, while it builds)")
    ap.add_argument("--skip", nargs="*", default=[], help="phases to skip: hnsw, milvus")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    run = Run("scale")
    results: dict[str, Any] = {"dim": args.dim, "k": args.k, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="fashionrec-scale-") as tmp:
        work = Path(tmp)
        for n in args.sizes:
            data = clustered(n, args.dim, clusters=1000, spread=0.8, seed=1)
            queries = clustered(args.queries, args.dim, clusters=1000, spread=0.8, seed=2)
            cats, kids = labels(n, 1)
            masks = {name: (mask, exact_filtered(data, queries, mask, args.k))
                     for name, mask in filters(cats, kids).items()}
            keep, ftruth = masks["category c3 and kids false"]
            truth = exact_neighbours(data, queries, args.k)
            np.save(work / f"queries-{n}.npy", queries)
            np.save(work / f"truth-{n}.npy", truth)
            np.save(work / f"ftruth-{n}.npy", ftruth)
            (work / f"filter-{n}.json").write_text(json.dumps(["c3", False]))
            entry: dict[str, Any] = {"filter": "category c3 and kids false",
                                     "filter_share": round(float(keep.mean()), 4)}
            results["sizes"][str(n)] = entry
            if "hnsw" not in args.skip:
                print(f"N={n}: in-process HNSW ...", flush=True)
                entry["hnsw"] = hnsw_phase(n, data, queries, truth, masks, args)
                run.save(results, args.out)
            if "milvus" not in args.skip:
                print(f"N={n}: milvus kind on milvus-lite ...", flush=True)
                entry["milvus"] = milvus_phase(n, data, cats, kids, work, args)
                print(entry["milvus"], flush=True)
                run.save(results, args.out)
            del data
    run.save(results, args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
