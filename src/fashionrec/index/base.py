"""What every nearest-neighbour index offers, so evaluation and serving can swap kinds freely."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fashionrec.core.errors import DataError


def as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """Check a (N, D) finite float matrix (a single vector becomes one row) and return it as float32."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array (n, dim), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{name}: dimension {arr.shape[1]} does not match the index dimension {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    return arr


def as_mask(allowed: np.ndarray, size: int) -> np.ndarray:
    """Check a filter: a boolean vector with one entry per indexed item (True: the item may be returned)."""
    mask = np.asarray(allowed)
    if mask.dtype != np.bool_ or mask.shape != (size,):
        raise DataError(f"index query: allowed must be a boolean vector of {size} items, got dtype "
                        f"{mask.dtype} and shape {mask.shape}")
    return mask


def positive_int(key: str, value: object) -> int:
    """An index parameter that must be a positive integer (not a bool), refused naming its `key`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise DataError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


class NeighbourIndex(ABC):
    """Exact k-nearest-neighbour search by Euclidean distance.

    On L2-normalised embeddings the Euclidean order is the cosine order (|a-b|^2 = 2 - 2 cos), so every
    kind returns the same neighbours and Euclidean distances; they differ only in speed.
    """

    kind: str = ""

    def __init__(self, embeddings: np.ndarray) -> None:
        data = as_matrix(embeddings, "index embeddings")
        if data.shape[0] == 0:
            raise DataError("index embeddings: no vectors to index")
        self.size, self.dim = data.shape

    def query(self, queries: np.ndarray, k: int,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return (distances, indices), each (Q, min(k, candidates)), nearest first.

        `allowed` (a boolean vector over the items) restricts the answer to the items it marks; the
        candidates are then those items, so every row holds min(k, allowed.sum()) of them.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise DataError(f"index query: k must be a positive integer, got {k!r}")
        q = as_matrix(queries, "index queries", dim=self.dim)
        mask = None if allowed is None else as_mask(allowed, self.size)
        candidates = self.size if mask is None else int(mask.sum())
        if mask is not None and candidates == self.size:
            mask = None   # a filter that keeps everything is no filter
        k = min(int(k), candidates)
        if q.shape[0] == 0 or k == 0:
            return np.zeros((q.shape[0], k), np.float32), np.zeros((q.shape[0], k), np.int64)
        distances, indices = self._query(q, k) if mask is None else self._query_filtered(q, k, mask)
        return distances.astype(np.float32, copy=False), indices.astype(np.int64, copy=False)

    def status(self) -> dict | None:
        """What a health check reports about the engine behind the index (None: in-process, nothing)."""
        return None

    @abstractmethod
    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search validated float32 queries for 1 <= k <= size neighbours."""

    def _query_filtered(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search for 1 <= k <= mask.sum() neighbours among the items `mask` keeps.

        This fallback, for kinds with no native filter, widens an unfiltered search (4x at a time) until
        each row holds k kept items: exact for an exact kind, slow for a selective filter. Kinds that can
        skip the other items during the search itself override it.
        """
        out_d = np.empty((len(queries), k), np.float64)
        out_i = np.empty((len(queries), k), np.int64)
        for row, q in enumerate(queries):
            depth = min(self.size, 4 * k)
            while True:
                dist, idx = self._query(q[None, :], depth)
                keep = mask[idx[0]]
                if int(keep.sum()) >= k or depth >= self.size:
                    break
                depth = min(self.size, 4 * depth)
            out_d[row], out_i[row] = dist[0][keep][:k], idx[0][keep][:k]
        return out_d, out_i
