"""scikit-learn BallTree, the index the reference systems used (Euclidean on normalised embeddings)."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import BallTree

from fashionrec.core.errors import DataError
from fashionrec.index.base import NeighbourIndex, as_matrix


class BallTreeIndex(NeighbourIndex):
    """Exact search in O(log n)-ish per query for low intrinsic dimension; build is O(n log n)."""

    kind = "balltree"

    def __init__(self, embeddings: np.ndarray, leaf_size: int = 40) -> None:
        super().__init__(embeddings)
        if isinstance(leaf_size, bool) or not isinstance(leaf_size, int) or leaf_size < 1:
            raise DataError(f"index.leaf_size must be a positive integer, got {leaf_size!r}")
        self.leaf_size = leaf_size
        # float64: BallTree computes in double anyway; converting once here avoids a copy per query.
        self._tree = BallTree(as_matrix(embeddings, "index embeddings").astype(np.float64),
                              leaf_size=leaf_size, metric="euclidean")

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = self._tree.query(queries.astype(np.float64), k=k, return_distance=True,
                                              sort_results=True)
        return distances, indices
