"""Benchmark: nearest-neighbour indexes (BallTree, brute force, HNSW) on synthetic clustered embeddings.

For each N: build time, memory (RSS growth during the build; the embeddings themselves are not counted),
single-query latency p50/p99 for k=10, and recall@10 against exact search, for the project's own index
classes with the parameters in params.yaml (`index.*`), plus an `ef_search` sweep for HNSW and the ef a
deploy would tune to (`index.target_recall`). Then it checks that `index.kind: auto` (`resolve_kind('auto', n,
index.auto_exact_max)`, HNSW as tuned) picks the fastest kind meeting the recall floor. Embeddings are
L2-normalised points around random cluster centres (a new photo is a new point of the same distribution, so
queries are fresh draws, not indexed items). The dimension comes from a model card (`embedding_dim`) when
one exists, else --dim.

    nice -n 10 .venv/bin/python bench/index.py --sizes 5000 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import ROOT, Run, percentile_ms, rss_mib, table

from fashionrec.index import build_index, resolve_kind
from fashionrec.index.brute import BruteIndex
from fashionrec.index.recall import overlap, tune_ef_search


def embedding_dim(models_dir: Path, default: int) -> tuple[int, str]:
    for card in sorted(models_dir.glob("*/card.json")) + sorted(models_dir.glob("export/preprocessing.json")):
        data = json.loads(card.read_text())
        if data.get("embedding_dim"):
            return int(data["embedding_dim"]), os.path.relpath(card, ROOT)
    return default, "--dim"


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int, latent: int = 32,
              chunk: int = 100_000) -> np.ndarray:
    """n unit vectors: random centres plus noise of relative size `spread`, then normalised.

    With `latent` > 0 the noise lies mostly in a random `latent`-dimensional subspace (plus 10 % isotropic
    noise), as a network's embeddings do (low intrinsic dimension); `latent` = 0 spreads it over all `dim`
    dimensions, the worst case for any index.
    """
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(12345)
    centres = fixed.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(fixed.standard_normal((dim, latent)))[0].T.astype(np.float32) if latent else None
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, m)]
        if basis is None:
            x += rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        else:
            x += rng.standard_normal((m, latent), dtype=np.float32) @ basis * (spread / np.sqrt(latent))
            x += rng.standard_normal((m, dim), dtype=np.float32) * (0.1 * spread / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return BruteIndex(data, block_size=64).query(queries, k)[1]


def time_queries(index: Any, queries: np.ndarray, k: int, budget_s: float,
                 min_queries: int, allowed: np.ndarray | None = None) -> dict[str, Any]:
    """Single-query latency (one query per call, as a server asks) within a time budget."""
    index.query(queries[:1], k, allowed=allowed)   # warm-up
    seconds, got = [], []
    started = time.perf_counter()
    for i in range(len(queries)):
        t0 = time.perf_counter()
        _, idx = index.query(queries[i:i + 1], k, allowed=allowed)
        seconds.append(time.perf_counter() - t0)
        got.append(idx[0])
        if time.perf_counter() - started > budget_s and len(seconds) >= min_queries:
            break
    return {"seconds": seconds, "indices": np.array(got)}


def timed_fields(index: Any, queries: np.ndarray, truth: np.ndarray, k: int, budget_s: float,
                 min_queries: int, allowed: np.ndarray | None = None) -> dict[str, Any]:
    """p50/p99 latency, how many queries fitted the budget, and their recall@k against `truth`."""
    timed = time_queries(index, queries, k, budget_s, min_queries, allowed)
    got = timed["indices"]
    return {"p50_ms": round(percentile_ms(timed["seconds"], 50), 3),
            "p99_ms": round(percentile_ms(timed["seconds"], 99), 3), "queries": len(timed["seconds"]),
            "recall_at_k": round(overlap(got, truth[:len(got)]), 4)}


def measure(kind: str, params: dict[str, Any], data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            k: int, budget_s: float, min_queries: int) -> tuple[Any, dict[str, Any]]:
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    index = build_index(data, kind, **params)
    build = time.perf_counter() - started
    mem = rss_mib() - before
    row: dict[str, Any] = {"kind": kind, "params": params, "build_s": round(build, 2),
                           "mem_mib": round(max(mem, 0.0), 1)}
    if kind == "hnsw":
        with tempfile.TemporaryDirectory() as tmp:
            row["graph_mib"] = round(index.save(Path(tmp) / "g.hnsw").stat().st_size / 2**20, 1)
    row.update(timed_fields(index, queries, truth, k, budget_s, min_queries))
    return index, row


def tuned_row(index: Any, row: dict[str, Any], data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
              sec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """HNSW as a deploy builds it: ef_search raised until recall@k on sampled items reaches
    `index.target_recall` (`deploy.build.index_with_report`), then timed on the fresh queries."""
    rng = np.random.default_rng(args.seed)
    size = min(int(sec.get("recall_queries", 200)), len(data))
    rows = np.sort(rng.choice(len(data), size=size, replace=False))
    started = time.perf_counter()
    ef, probe_recall = tune_ef_search(index, BruteIndex(data, block_size=64), data[rows], args.k,
                                      float(sec["target_recall"]), int(sec.get("max_ef_search", 1024)))
    tune_s = time.perf_counter() - started
    out = {**row, "kind": f"hnsw tuned ef={ef}", "params": {**row["params"], "ef_search": ef},
           "tune_s": round(tune_s, 1), "build_recall_at_k": round(probe_recall, 4),
           **timed_fields(index, queries, truth, args.k, args.query_budget_s, args.min_queries)}
    print(f"  hnsw tuned ef={ef} (build-time recall {probe_recall:.4f}, {tune_s:.1f} s): "
          f"p50 {out['p50_ms']:.3f} ms  p99 {out['p99_ms']:.3f} ms  recall@{args.k} {out['recall_at_k']:.4f}")
    return out


def filtered_row(index: Any, row: dict[str, Any], data: np.ndarray, queries: np.ndarray, share: float,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Queries restricted to a random `share` of the items (as a category or kids filter restricts them),
    timed one per call, recall@k against the exact top k of the kept items."""
    allowed = np.random.default_rng(args.seed + 2).random(len(data)) < share
    truth = BruteIndex(data, block_size=64).query(queries, args.k, allowed=allowed)[1]
    out = {**row, "kind": f"{row['kind']} filter {share:g}", "filter_share": share,
           **timed_fields(index, queries, truth, args.k, args.query_budget_s, args.min_queries, allowed)}
    print(f"  {out['kind']:24s} p50 {out['p50_ms']:8.3f} ms  p99 {out['p99_ms']:8.3f} ms  "
          f"recall@{args.k} {out['recall_at_k']:.4f}")
    return out


def main() -> None:
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    sec = tree["index"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256, help="used when no model card gives embedding_dim")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.8, help="noise norm relative to the centre's")
    ap.add_argument("--latent-dim", type=int, default=32,
                    help="intrinsic dimension of the noise (0: isotropic over all dimensions)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=["brute", "balltree", "hnsw"])
    ap.add_argument("--ef-sweep", type=int, nargs="*", default=[16, 32, 64, 256],
                    help="extra hnsw ef_search values tried on the same graph")
    ap.add_argument("--filter-shares", type=float, nargs="*", default=[0.1, 0.01],
                    help="filtered queries (query(..., allowed)) keeping this share of the items, per kind")
    ap.add_argument("--recall-floor", type=float, default=0.95)
    ap.add_argument("--query-budget-s", type=float, default=20.0, help="per index and size")
    ap.add_argument("--min-queries", type=int, default=30)
    ap.add_argument("--balltree-max-build-s", type=float, default=300.0,
                    help="skip BallTree where its build is predicted to exceed this (n log n from the "
                         "previous size)")
    ap.add_argument("--hnsw-max-build-s", type=float, default=1800.0, help="same for the HNSW build")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    run = Run("index")
    dim, dim_from = embedding_dim(args.models_dir, args.dim)
    print(f"dimension {dim} (from {dim_from}); index params from params.yaml: "
          f"balltree {sec['balltree']}, brute {sec['brute']}, hnsw {sec['hnsw']}")
    rows: list[dict[str, Any]] = []
    autos: list[dict[str, Any]] = []
    last_build: dict[str, tuple[int, float]] = {}
    skipped: list[str] = []
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        data = clustered(n, dim, args.clusters, args.spread, args.seed, args.latent_dim)
        queries = clustered(args.queries, dim, args.clusters, args.spread, args.seed + 1, args.latent_dim)
        truth = exact_neighbours(data, queries, args.k)
        print(f"\nN={n}: data {data.nbytes / 2**20:.0f} MiB generated + exact truth in "
              f"{time.perf_counter() - t0:.1f} s")
        measured = {}
        for kind in args.kinds:
            cap = {"balltree": args.balltree_max_build_s, "hnsw": args.hnsw_max_build_s}.get(kind)
            if cap is not None and kind in last_build:
                n0, s0 = last_build[kind]
                predicted = s0 * (n * np.log(n)) / (n0 * np.log(n0))
                if predicted > cap:
                    note = (f"{kind} at N={n} skipped: build predicted {predicted:.0f} s "
                            f"(> cap {cap:.0f} s, from {s0:.1f} s at N={n0})")
                    print("  " + note)
                    skipped.append(note)
                    continue
            params = dict(sec.get(kind) or {})
            index, row = measure(kind, params, data, queries, truth, args.k, args.query_budget_s,
                                 args.min_queries)
            last_build[kind] = (n, row["build_s"])
            row["n"] = n
            rows.append(row)
            measured[kind] = row
            print(f"  {kind:8s} build {row['build_s']:8.2f} s  p50 {row['p50_ms']:8.3f} ms  "
                  f"p99 {row['p99_ms']:8.3f} ms  recall@{args.k} {row['recall_at_k']:.4f}  "
                  f"mem +{row['mem_mib']:.0f} MiB")
            if kind == "hnsw":
                default_ef = index.ef_search
                for ef in args.ef_sweep:
                    index.ef_search = ef
                    sweep = {**row, "kind": f"hnsw ef={ef}", "params": {**params, "ef_search": ef},
                             **timed_fields(index, queries, truth, args.k, args.query_budget_s,
                                            args.min_queries)}
                    rows.append(sweep)
                    print(f"  hnsw ef={ef:<4d} p50 {sweep['p50_ms']:8.3f} ms  p99 {sweep['p99_ms']:8.3f} ms  "
                          f"recall@{args.k} {sweep['recall_at_k']:.4f}")
                index.ef_search = default_ef
                row["kind"] = f"hnsw ef={default_ef}"
                if sec.get("target_recall") is not None:
                    measured["hnsw"] = tuned_row(index, row, data, queries, truth, sec, args)
                    rows.append(measured["hnsw"])
            for share in args.filter_shares:
                rows.append(filtered_row(index, row, data, queries, share, args))
            del index
            gc.collect()
        ok = {k: r for k, r in measured.items() if r["recall_at_k"] >= args.recall_floor}
        fastest = min(ok, key=lambda k: ok[k]["p50_ms"]) if ok else None
        pick = resolve_kind("auto", n, int(sec.get("auto_exact_max", 5000)))
        autos.append({"n": n, "auto_picks": pick, "fastest_meeting_floor": fastest,
                      "recall_floor": args.recall_floor,
                      "auto_is_fastest": pick == fastest if fastest and pick in measured else None,
                      "auto_p50_ms": measured.get(pick, {}).get("p50_ms"),
                      "fastest_p50_ms": ok[fastest]["p50_ms"] if fastest else None})
        del data
        gc.collect()

    print()
    print(table(rows, ["n", "kind", "build_s", "mem_mib", "p50_ms", "p99_ms", "recall_at_k", "queries"]))
    print()
    print(table(autos, ["n", "auto_picks", "fastest_meeting_floor", "auto_is_fastest", "auto_p50_ms",
                        "fastest_p50_ms"]))
    biggest = max(args.sizes)
    target = [r for r in rows if r["n"] == biggest and r["recall_at_k"] >= 0.95 and r["p50_ms"] <= 2.0]
    print(f"\ntarget at N={biggest}: p50 <= 2 ms at recall@10 >= 0.95: "
          f"{'met by ' + ', '.join(r['kind'] for r in target) if target else 'NOT met'}")
    run.save({"dim": dim, "dim_from": dim_from, "k": args.k, "clusters": args.clusters, "spread": args.spread,
              "latent_dim": args.latent_dim,
              "queries": args.queries, "rows": rows, "auto": autos, "skipped": skipped,
              "target_1m": {"n": biggest, "met_by": [r["kind"] for r in target]}}, args.out)


if __name__ == "__main__":
    main()
