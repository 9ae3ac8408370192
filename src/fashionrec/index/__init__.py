"""Nearest-neighbour indexes over embeddings: one registry of every kind, `build_index(embeddings, kind,
**params)`.

Kinds: `balltree` (scikit-learn BallTree, the reference systems' choice), `brute` (matrix product, exact),
`hnsw` (Faiss HNSW, approximate; `graph_file` loads a saved graph), `milvus` (a bundle's collection on a
Milvus server, searched by name: `index.milvus`; never chosen by `auto`) and `auto` (`brute` up to
`exact_max` items, `hnsw` above: see `resolve_kind`). Each returns `query(queries, k, allowed) ->
(distances, indices)` with Euclidean distances, nearest first, among the items `allowed` keeps. Adding a
kind = one module with a `NeighbourIndex` subclass + a line in KINDS.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fashionrec.core.errors import DataError
from fashionrec.index.balltree import BallTreeIndex
from fashionrec.index.base import NeighbourIndex
from fashionrec.index.brute import BruteIndex
from fashionrec.index.hnsw import HnswIndex
from fashionrec.index.milvus import MilvusIndex

KINDS: dict[str, type[NeighbourIndex]] = {"balltree": BallTreeIndex, "brute": BruteIndex, "hnsw": HnswIndex,
                                          "milvus": MilvusIndex}
IN_PROCESS = ("balltree", "brute", "hnsw")   # what `auto` chooses among (milvus is always asked for by name)
AUTO = "auto"
AUTO_EXACT_MAX = 5000   # `index.auto_exact_max`: above this many items `auto` is HNSW
RECALL_K = 10           # `index.recall_k`: neighbours compared when measuring an index's recall


def resolve_kind(kind: str, size: int, exact_max: int) -> str:
    """A configured kind as built: `auto` is exact brute force up to `exact_max` items (perfect recall, and
    faster than BallTree on high-dimensional embeddings at every size measured in docs/BENCHMARKS.md),
    HNSW above; any other kind is itself."""
    if kind == AUTO:   # among the in-process kinds only: milvus is always asked for by name
        return "brute" if size <= exact_max else "hnsw"
    if kind not in KINDS:
        raise DataError(f"index kind '{kind}' is unknown; choose one of {', '.join([*sorted(KINDS), AUTO])}")
    return kind


def accepted_params(kind: str) -> list[str]:
    """The parameters a kind's constructor takes (beyond the embeddings)."""
    return [name for name in inspect.signature(KINDS[kind].__init__).parameters
            if name not in ("self", "embeddings")]


def build_index(embeddings: np.ndarray, kind: str = "balltree", **params: Any) -> NeighbourIndex:
    """Build an index of `kind` over (N, D) embeddings; unknown kinds or parameters raise DataError."""
    if kind not in KINDS:
        raise DataError(f"index kind '{kind}' is unknown; choose one of {', '.join(sorted(KINDS))}")
    accepted = accepted_params(kind)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise DataError(f"index kind '{kind}': unknown parameter(s) {unknown}; accepted: {accepted}")
    return KINDS[kind](embeddings, **params)


__all__ = ["AUTO", "IN_PROCESS", "KINDS", "BallTreeIndex", "BruteIndex", "HnswIndex", "MilvusIndex",
           "NeighbourIndex", "build_index",
           "resolve_kind", "AUTO_EXACT_MAX", "RECALL_K"]
