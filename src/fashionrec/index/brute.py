"""Exhaustive search by one matrix product per block of queries: the reference for every other kind."""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import NeighbourIndex, as_matrix, positive_int


class BruteIndex(NeighbourIndex):
    """|q - x|^2 = |q|^2 + |x|^2 - 2 q.x for all pairs at once; fastest for a few thousand items."""

    kind = "brute"

    def __init__(self, embeddings: np.ndarray, block_size: int = 1024) -> None:
        super().__init__(embeddings)
        # queries per product, bounding memory at block_size x size floats
        self.block_size = positive_int("index.brute.block_size", block_size)
        self._data = as_matrix(embeddings, "index embeddings")
        self._sq_norms = np.einsum("ij,ij->i", self._data, self._data)

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._search(queries, k, None)

    def _query_filtered(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered natively: the other items get an infinite distance, so they never make the top k."""
        return self._search(queries, k, mask)

    def _search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        all_d, all_i = [], []
        drop = None if mask is None else ~mask
        for start in range(0, queries.shape[0], self.block_size):
            q = queries[start:start + self.block_size]
            sq = np.einsum("ij,ij->i", q, q)[:, None] + self._sq_norms[None, :] - 2.0 * (q @ self._data.T)
            np.maximum(sq, 0.0, out=sq)
            if drop is not None:
                sq[:, drop] = np.inf
            if k < self.size:
                part = np.argpartition(sq, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(self.size), (q.shape[0], self.size))
            part_sq = np.take_along_axis(sq, part, axis=1)
            # Stable order by (distance, index) so ties resolve the same way on every run.
            order = np.lexsort((part, part_sq), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
            all_i.append(idx)
            all_d.append(np.sqrt(np.take_along_axis(sq, idx, axis=1)))
        return np.concatenate(all_d), np.concatenate(all_i)
