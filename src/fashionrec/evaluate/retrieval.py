"""Category and instance retrieval over a nearest-neighbour index, and its query latency."""

from __future__ import annotations

import time

import numpy as np

from fashionrec.evaluate import metrics
from fashionrec.index import NeighbourIndex

RETRIEVAL_KS = (1, 5, 10)
MAP_K = 10
INSTANCE_KS = (1, 5, 10, 20)


def category_retrieval(indices: np.ndarray, query_categories: np.ndarray,
                       inventory_categories: np.ndarray) -> dict[str, float]:
    """precision@k, hit@k (k = 1, 5, 10) and mAP@10 where relevant means 'same category as the query'.

    `indices` (Q, >= 10) are ranked inventory rows; categories are comparable labels (str or int).
    mAP@10 divides by min(10, items of the category in the inventory).
    """
    inv = np.asarray(inventory_categories)
    q = np.asarray(query_categories)
    relevant = inv[indices] == q[:, None]
    values, counts = np.unique(inv, return_counts=True)
    per_category = dict(zip(values.tolist(), counts.tolist(), strict=True))
    n_relevant = np.array([per_category.get(c, 0) for c in q.tolist()])
    out: dict[str, float] = {}
    for k in RETRIEVAL_KS:
        out[f"precision_at_{k}"] = metrics.precision_at_k(relevant, k)
    for k in RETRIEVAL_KS:
        out[f"hit_at_{k}"] = metrics.hit_at_k(relevant, k)
    out[f"map_at_{MAP_K}"] = metrics.map_at_k(relevant, MAP_K, n_relevant)
    return out


def instance_retrieval(indices: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """top1/5/10/20: share of augmented queries whose source item is among the first k results."""
    return {f"top{k}": v for k, v in metrics.instance_top_k(indices, sources, list(INSTANCE_KS)).items()}


def query_latency(index: NeighbourIndex, queries: np.ndarray, k: int, n: int) -> dict[str, float]:
    """p50/p99 of single-query latency in ms, as serving sees it (one shopper photo at a time).

    Cycles through `queries` for `n` timed calls after one untimed warm-up call.
    """
    q = np.asarray(queries, dtype=np.float32)
    index.query(q[:1], k)
    times = np.empty(n)
    for i in range(n):
        row = q[i % len(q)][None, :]
        start = time.perf_counter()
        index.query(row, k)
        times[i] = time.perf_counter() - start
    return {"query_ms_p50": metrics.percentile_ms(times, 50),
            "query_ms_p99": metrics.percentile_ms(times, 99)}
