"""A ball tree in NumPy alone (Euclidean on normalised embeddings), the index the reference systems used.

NumPy alone, so that serving it needs neither scikit-learn nor SciPy (~190 MB of the serving image, ~0.8 s
of its import time). A ball tree prunes nothing at the embedding's full dimension (1,280 for EfficientNet):
every query would visit every leaf. So by default the tree is built on a lower bound of the distance
instead, and the search stays exact:

- each vector x is lifted to z(x) = (P'(x - m), |r(x)|): its first `dims` principal coordinates and the
  length of the residual r(x) they leave out (P orthonormal, m the mean). For any pair,
  |z(x) - z(q)| <= |x - q| (Pythagoras on the two orthogonal parts, then the reverse triangle inequality
  on the residuals), whatever P is: the principal components only make the bound tight;
- the lifted points are split recursively (at the median of their widest coordinate) into leaves of at
  most `leaf_size` items, each kept as a ball (centre c, radius r): no item of a leaf is nearer to z(q)
  than |z(q) - c| - r, so one small product with the centres bounds every leaf at once;
- a query measures exactly the items of the leaves nearest by that bound (a shortlist of 4k items), and
  the k-th of those exact distances, D, is a radius no true top-k item can lie beyond; every item of a
  leaf whose bound is within D and whose own z-distance is within D is measured exactly, and the k
  nearest of those are the answer: the same neighbours as an exhaustive search.
"""

from __future__ import annotations

import numpy as np

from fashionrec.index.base import NeighbourIndex, as_matrix, positive_int

SHORTLIST_PER_NEIGHBOUR = 4   # shortlist = the items of the leaves nearest by the bound, >= this x k of them
FIT_SAMPLE = 20_000           # rows the principal components are fitted on (exactness needs no fit at all)
POWER_ITERATIONS = 4          # of the randomized subspace iteration (more: a tighter bound, a slower build)
OVERSAMPLE = 10               # extra directions it iterates on
SLACK = 1e-5                  # added to the squared radius: float32 rounding never drops a true neighbour
LIFT_BLOCK = 8192             # rows lifted at once (bounds the float64 temporaries)
GATHER_SHARE = 8              # more than 1/8 of the rows to measure: one product with all of them instead


def principal_basis(sample: np.ndarray, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, basis): the sample's mean and its `dims` leading principal directions as orthonormal columns
    (D, dims), by randomized subspace iteration (float32 products, float64 orthonormalisation: the columns
    are orthonormal to float64 rounding whatever the iteration reached, which is all exactness needs)."""
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = (sample - mean.astype(np.float32)).astype(np.float32, copy=False)
    width = min(dims + OVERSAMPLE, *centred.shape)
    basis = np.linalg.qr(np.random.default_rng(seed).standard_normal((centred.shape[1], width)))[0]
    for _ in range(POWER_ITERATIONS):
        step = centred.T @ (centred @ basis.astype(np.float32))
        basis = np.linalg.qr(step.astype(np.float64))[0]
    # Rayleigh-Ritz: the principal directions within the subspace, leading ones first
    _, _, vt = np.linalg.svd((centred @ basis.astype(np.float32)).astype(np.float64), full_matrices=False)
    return mean, basis @ vt[:dims].T


class BallTreeIndex(NeighbourIndex):
    """Exact k-nearest-neighbour search through a ball tree on `dims` principal coordinates (+ the residual
    length), or on the full embeddings when `dims` is None or not below their dimension and count."""

    kind = "balltree"

    def __init__(self, embeddings: np.ndarray, leaf_size: int = 40, dims: int | None = 64) -> None:
        super().__init__(embeddings)
        self.leaf_size = positive_int("index.balltree.leaf_size", leaf_size)
        wanted = None if dims is None else positive_int("index.balltree.dims", dims)
        data = as_matrix(embeddings, "index embeddings")
        self.dims = wanted if wanted is not None and wanted < min(self.dim, self.size) else None
        self._data = data
        self._sq_norms = np.einsum("ij,ij->i", data, data).astype(np.float64)
        if self.dims is not None:
            sample = data
            if self.size > FIT_SAMPLE:
                sample = data[np.random.default_rng(0).choice(self.size, FIT_SAMPLE, replace=False)]
            self._mean, self._basis = principal_basis(sample, self.dims)
        self._build(self._lift(data))

    def _lift(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, dims + 1): principal coordinates and the residual's length, a block of rows at a
        time (float64 copies of a million 1,280-d rows would take 10 GB each); without `dims`, x itself."""
        if self.dims is None:
            return x.astype(np.float64)
        out = np.empty((len(x), self.dims + 1))
        for start in range(0, len(x), LIFT_BLOCK):
            centred = x[start:start + LIFT_BLOCK].astype(np.float64) - self._mean
            coords = centred @ self._basis
            out[start:start + len(centred), :-1] = coords
            out[start:start + len(centred), -1] = np.linalg.norm(centred - coords @ self._basis.T, axis=1)
        return out

    def _build(self, points: np.ndarray) -> None:
        """Split at the median of the widest coordinate until a node holds at most `leaf_size` items; keep
        the leaves in depth-first order (neighbouring leaves hold neighbouring items), each as a ball."""
        perm = np.arange(self.size)
        bounds: list[tuple[int, int]] = []
        stack = [(0, self.size)]
        while stack:
            start, end = stack.pop()
            if end - start <= self.leaf_size:
                bounds.append((start, end))
                continue
            rows = perm[start:end]
            node = points[rows]
            axis = int(np.argmax(node.max(axis=0) - node.min(axis=0)))
            half = (end - start) // 2
            perm[start:end] = rows[np.argpartition(node[:, axis], half)]
            stack += [(start + half, end), (start, start + half)]   # the lower half is taken first
        bounds.sort()
        self._perm = perm                                   # tree position -> item row
        self._points = np.ascontiguousarray(points[perm])   # lifted items in tree order
        self._counts = np.array([end - start for start, end in bounds])
        self._centres = np.stack([self._points[s:e].mean(axis=0) for s, e in bounds])
        self._radii = np.array([np.sqrt(((self._points[s:e] - c) ** 2).sum(axis=1).max())
                                for (s, e), c in zip(bounds, self._centres, strict=True)])

    def _exact_sq(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # Where the bound rules out little (embeddings without a few dominant directions), one product
        # with every row is cheaper than gathering most of them first.
        many = len(rows) > self.size // GATHER_SHARE
        dots = (self._data @ query)[rows] if many else self._data[rows] @ query
        return np.maximum(self._sq_norms[rows] + float(query @ query) - 2.0 * dots.astype(np.float64), 0.0)

    def _positions(self, leaves: np.ndarray) -> np.ndarray:
        """Tree positions of the items of the marked leaves."""
        return np.flatnonzero(np.repeat(leaves, self._counts))

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        lifted = self._lift(queries)
        shortlist = min(self.size, SHORTLIST_PER_NEIGHBOUR * k)
        distances, indices = np.empty((len(queries), k)), np.empty((len(queries), k), np.int64)
        for i, z in enumerate(lifted):
            bound = np.sqrt(((self._centres - z) ** 2).sum(axis=1)) - self._radii
            order = np.argsort(bound, kind="stable")
            taken = int(np.searchsorted(np.cumsum(self._counts[order]), shortlist)) + 1
            first = np.zeros(len(bound), bool)
            first[order[:taken]] = True
            sq = self._exact_sq(queries[i], self._perm[self._positions(first)])
            radius_sq = float(np.partition(sq, k - 1)[k - 1]) + SLACK
            positions = self._positions(bound <= np.sqrt(radius_sq))
            near = ((self._points[positions] - z) ** 2).sum(axis=1) <= radius_sq
            rows = self._perm[positions[near]]
            sq = self._exact_sq(queries[i], rows)
            best = np.lexsort((rows, sq))[:k]   # (distance, index): ties resolve as brute force's do
            indices[i], distances[i] = rows[best], np.sqrt(sq[best])
        return distances, indices
