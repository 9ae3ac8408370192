"""Nearest-neighbour indexes over embeddings: one registry of every kind, `build_index(embeddings, kind,
**params)`.

Kinds: `balltree` (a ball tree in NumPy, the reference systems' choice), `brute` (matrix product, exact),
`hnsw` (Faiss HNSW, approximate; `graph_file` loads a saved graph), `milvus` (a bundle's collection on a
Milvus server, searched by name: `index.milvus`; never chosen by `auto`) and `auto` (`brute` up to
`exact_max` items, `hnsw` above: see `resolve_kind`). Each returns `query(queries, k, allowed) ->
(distances, indices)` with Euclidean distances, nearest first, among the items `allowed` keeps. Adding a
kind = one module with a `NeighbourIndex` subclass + a line in KINDS (and in EXTRAS when it needs a library
beyond the base set: `require_kind` names the extra, so a missing one is a clear error, never an ImportError).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np

from fashionrec.core.errors import DataError, MissingDependency
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
# kind -> (the module it imports, the pyproject extra that installs it); kinds not listed need only NumPy
EXTRAS: dict[str, tuple[str, str]] = {"hnsw": ("faiss", "hnsw"), "milvus": ("pymilvus", "milvus-client")}


def require_kind(kind: str) -> None:
    """Raise MissingDependency, naming the kind and its extra, when the library `kind` needs is not
    importable here (a serving image built without that extra); the base set serves the other kinds."""
    if kind not in EXTRAS:
        return
    module, extra = EXTRAS[kind]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"index kind '{kind}' needs the {module} package, which is not installed here ({exc}): install "
            f"the `{extra}` extra (pip install 'fashionrec[{extra}]'; a serving image: params.yaml "
            f"images.serve_extras: [{extra}], then `make images`)") from None


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
    require_kind(kind)
    return KINDS[kind](embeddings, **params)


__all__ = ["AUTO", "EXTRAS", "IN_PROCESS", "KINDS", "BallTreeIndex", "BruteIndex", "HnswIndex", "MilvusIndex",
           "NeighbourIndex", "build_index",
           "require_kind", "resolve_kind", "AUTO_EXACT_MAX", "RECALL_K"]
