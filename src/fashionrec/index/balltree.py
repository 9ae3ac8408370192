"""scikit-learn BallTree, the index the reference systems used (Euclidean on normalised embeddings).

A BallTree prunes nothing at the embedding's full dimension (1,280 for EfficientNet): every query visits
every leaf, at the speed of a scalar distance loop. So by default the tree is built on a lower bound of
the distance instead, and the search stays exact:

- each vector x is lifted to z(x) = (P'(x - m), |r(x)|): its first `dims` principal coordinates and the
  length of the residual r(x) they leave out (P orthonormal, m the mean). For any pair,
  |z(x) - z(q)| <= |x - q| (Pythagoras on the two orthogonal parts, then the reverse triangle inequality
  on the residuals), whatever P is: the principal components only make the bound tight;
- a query takes a shortlist of its nearest items in z, measures them exactly, and the k-th of those exact
  distances, D, is a radius no true top-k item can lie beyond; every item whose z-distance is within D
  (a radius query on the same tree) is measured exactly, and the k nearest of those are the answer:
  the same neighbours as an exhaustive search.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import BallTree

from fashionrec.index.base import NeighbourIndex, as_matrix, positive_int

SHORTLIST_PER_NEIGHBOUR = 4   # shortlist = this x k items nearest in z, before the radius query
FIT_SAMPLE = 20_000           # rows the principal components are fitted on (exactness needs no fit at all)
SLACK = 1e-5                  # added to the squared radius: float32 rounding never drops a true neighbour
LIFT_BLOCK = 8192             # rows lifted at once (bounds the float64 temporaries)
GATHER_SHARE = 8              # more than 1/8 of the rows to measure: one product with all of them instead


class BallTreeIndex(NeighbourIndex):
    """Exact k-nearest-neighbour search through a BallTree on `dims` principal coordinates (+ the residual
    length), or on the full embeddings when `dims` is None or not below their dimension and count."""

    kind = "balltree"

    def __init__(self, embeddings: np.ndarray, leaf_size: int = 40, dims: int | None = 64) -> None:
        super().__init__(embeddings)
        self.leaf_size = positive_int("index.balltree.leaf_size", leaf_size)
        wanted = None if dims is None else positive_int("index.balltree.dims", dims)
        data = as_matrix(embeddings, "index embeddings")
        self.dims = wanted if wanted is not None and wanted < min(self.dim, self.size) else None
        if self.dims is None:
            # float64: BallTree computes in double anyway; converting once here avoids a copy per query.
            self._tree = BallTree(data.astype(np.float64), leaf_size=leaf_size, metric="euclidean")
            return
        self._data = data
        self._sq_norms = np.einsum("ij,ij->i", data, data).astype(np.float64)
        sample = data
        if self.size > FIT_SAMPLE:
            sample = data[np.random.default_rng(0).choice(self.size, FIT_SAMPLE, replace=False)]
        pca = PCA(self.dims, svd_solver="randomized", random_state=0).fit(sample)
        self._mean = pca.mean_.astype(np.float64)
        self._basis = pca.components_.T.astype(np.float64)   # (D, dims), orthonormal columns
        self._tree = BallTree(self._lift(data), leaf_size=leaf_size, metric="euclidean")

    def _lift(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, dims + 1): principal coordinates and the residual's length, a block of rows at a
        time (float64 copies of a million 1,280-d rows would take 10 GB each)."""
        out = np.empty((len(x), self.dims + 1))
        for start in range(0, len(x), LIFT_BLOCK):
            centred = x[start:start + LIFT_BLOCK].astype(np.float64) - self._mean
            coords = centred @ self._basis
            out[start:start + len(centred), :-1] = coords
            out[start:start + len(centred), -1] = np.linalg.norm(centred - coords @ self._basis.T, axis=1)
        return out

    def _exact_sq(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # Where the bound rules out little (embeddings without a few dominant directions), one product
        # with every row is cheaper than gathering most of them first.
        many = len(rows) > self.size // GATHER_SHARE
        dots = (self._data @ query)[rows] if many else self._data[rows] @ query
        return np.maximum(self._sq_norms[rows] + float(query @ query) - 2.0 * dots.astype(np.float64), 0.0)

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.dims is None:
            return self._tree.query(queries.astype(np.float64), k=k, return_distance=True, sort_results=True)
        lifted = self._lift(queries)
        _, shortlists = self._tree.query(lifted, k=min(self.size, SHORTLIST_PER_NEIGHBOUR * k),
                                         return_distance=True, sort_results=False)
        radii = np.empty(len(queries))
        for i, rows in enumerate(shortlists):
            radii[i] = np.sqrt(np.partition(self._exact_sq(queries[i], rows), k - 1)[k - 1] + SLACK)
        distances, indices = np.empty((len(queries), k)), np.empty((len(queries), k), np.int64)
        for i, rows in enumerate(self._tree.query_radius(lifted, r=radii)):
            sq = self._exact_sq(queries[i], rows)
            best = np.lexsort((rows, sq))[:k]   # (distance, index): ties resolve as brute force's do
            indices[i], distances[i] = rows[best], np.sqrt(sq[best])
        return distances, indices
