"""How good an approximate index is: recall@k against an exact one, and tuning HNSW's `ef_search` to a
recall floor (used at deploy and by evaluation and benchmarks)."""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import NeighbourIndex, positive_int
from fashionrec.index.hnsw import HnswIndex


def overlap(got: np.ndarray, want: np.ndarray) -> float:
    """Mean share of each row of `want` (exact neighbour ids) that the same row of `got` also holds."""
    hits = [len(set(g.tolist()) & set(w.tolist())) / len(w) for g, w in zip(got, want, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def recall_at_k(approx: NeighbourIndex, exact: NeighbourIndex, queries: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k that the index under test also returns in its top-k."""
    return overlap(approx.query(queries, k)[1], exact.query(queries, k)[1])


def tune_ef_search(index: HnswIndex, exact: NeighbourIndex, queries: np.ndarray, k: int, target: float,
                   max_ef: int) -> tuple[int, float]:
    """Raise the index's `ef_search` (doubling, at most `max_ef`) until recall@k reaches `target`.

    The recall one ef gives falls as the inventory grows (ef 64: 0.92-0.96 at 5k items, 0.84 at 1M in
    docs/BENCHMARKS.md), so a fixed ef that suits a small store would silently lose neighbours in a big one.
    Returns the ef kept and its recall; the ef never goes down. Probes that are indexed items overstate the
    recall of new photos where distances crowd together (synthetic 100k: 1.0 probed, 0.94 fresh at ef
    64), hence a configured ef of 128 and this as the guard for larger stores.
    """
    max_ef = positive_int("index.hnsw.max_ef_search", max_ef)
    want = exact.query(queries, k)[1]
    ef = index.ef_search
    while True:
        index.ef_search = ef
        recall = overlap(index.query(queries, k)[1], want)
        if recall >= target or ef >= max_ef:
            return ef, recall
        ef = min(max(2 * ef, k), max_ef)   # a query searches >= k anyway
