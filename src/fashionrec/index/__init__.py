"""Nearest-neighbour indexes over embeddings: `build_index(embeddings, kind, **params)`.

Kinds: `balltree` (scikit-learn BallTree, the reference systems' choice) and `brute` (matrix product).
Each returns `query(queries, k) -> (distances, indices)` with Euclidean distances, nearest first.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fashionrec.errors import DataError
from fashionrec.index.balltree import BallTreeIndex
from fashionrec.index.base import NeighbourIndex
from fashionrec.index.brute import BruteIndex

KINDS: dict[str, type[NeighbourIndex]] = {"balltree": BallTreeIndex, "brute": BruteIndex}


def build_index(embeddings: np.ndarray, kind: str = "balltree", **params: Any) -> NeighbourIndex:
    """Build an index of `kind` over (N, D) embeddings; unknown kinds or parameters raise DataError."""
    if kind not in KINDS:
        raise DataError(f"index kind '{kind}' is unknown; choose one of {', '.join(sorted(KINDS))}")
    cls = KINDS[kind]
    accepted = [name for name in inspect.signature(cls.__init__).parameters
                if name not in ("self", "embeddings")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise DataError(f"index kind '{kind}': unknown parameter(s) {unknown}; accepted: {accepted}")
    return cls(embeddings, **params)


__all__ = ["KINDS", "BallTreeIndex", "BruteIndex", "NeighbourIndex", "build_index"]
