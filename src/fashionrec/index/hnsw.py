"""Approximate search with Faiss's HNSW graph (`IndexHNSWFlat`), for inventories where exact search gets slow.

Same contract as the exact kinds: `query(queries, k, allowed) -> (distances, indices)` with Euclidean
distances, nearest first. Faiss (faiss-cpu: wheels for every platform, so no compiler in the serving image)
takes the search depth per call (`SearchParametersHNSW.efSearch`), so concurrent queries never change a
shared setting, and it filters inside the search (an `IDSelectorBitmap`), so a filtered query does not
over-fetch. The graph is saved in Faiss's own binary format (never a pickle) so a deploy bundle can carry
it and a server need not rebuild it; `fashionrec.index.resolve_kind` picks exact or approximate by
inventory size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fashionrec.core.config import DEFAULT_SEED
from fashionrec.core.errors import DataError
from fashionrec.index.base import NeighbourIndex, as_matrix, positive_int

CHECK_BLOCK = 65536   # rows of a loaded graph compared with the embeddings at once (bounds the temporary)


def build_thread_count(value: object) -> int:
    """`build_threads` as a thread count: 0 means every core this process may use."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise DataError("index.hnsw.build_threads must be 0 (all cores) or a positive integer, "
                        f"got {value!r}")
    return int(value) or len(os.sched_getaffinity(0))


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    """Run Faiss's OpenMP loops of this thread on `count` threads, then restore the previous count.

    OpenMP keeps the setting per calling thread, so a build here never changes other threads' searches.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class HnswIndex(NeighbourIndex):
    """Hierarchical navigable small-world graph over squared-L2 (the order of cosine on unit vectors).

    `build_threads` inserts in parallel (0: every core this process may use); with 1 thread and the
    fixed seed the same embeddings give the same graph, with more the graph depends on thread timing (a
    1M-item build takes minutes per core, see docs/BENCHMARKS.md). `ef_search` trades recall for speed; a
    query asking for more than `ef_search` neighbours searches with ef = k for itself.
    Given a saved `graph_file` of the first m rows, it loads that graph and inserts only rows m.. (the
    incremental add of new inventory items); the graph's stored vectors must be those rows.
    A row the graph search cannot fill (a part of the graph it does not reach, k close to the size, a
    filter few items pass) is answered by an exact scan, so every row holds min(k, candidates) items.
    """

    kind = "hnsw"

    def __init__(self, embeddings: np.ndarray, M: int = 16, ef_construction: int = 200,  # noqa: N803
                 ef_search: int = 128, seed: int = DEFAULT_SEED, graph_file: str | Path | None = None,
                 build_threads: int = 0) -> None:
        import faiss

        super().__init__(embeddings)
        self.M = positive_int("index.hnsw.M", M)
        self.ef_construction = positive_int("index.hnsw.ef_construction", ef_construction)
        self.ef_search = positive_int("index.hnsw.ef_search", ef_search)
        self.seed = int(seed)
        self.build_threads = build_thread_count(build_threads)
        data = as_matrix(embeddings, "index embeddings")
        if graph_file is not None:
            self._index = self._load(Path(graph_file), data)
        else:
            self._index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_L2)
            self._index.hnsw.efConstruction = self.ef_construction
        held = self._index.ntotal
        if held < self.size:   # a new graph, or an incremental add: only the new rows are inserted
            # levels drawn from the seed (and the rows already held, so an add is reproducible too)
            self._index.hnsw.rng = faiss.RandomGenerator(self.seed + held)
            with omp_threads(self.build_threads):
                self._index.add(data[held:])

    def _load(self, path: Path, data: np.ndarray) -> Any:
        """A saved graph, checked to be an L2 HNSW graph over the first rows of `data`."""
        import faiss

        if not path.is_file():
            raise DataError(f"hnsw graph file not found: {path}")
        try:
            index = faiss.read_index(str(path))   # already its own class, and owning the graph
        except Exception as exc:  # Faiss raises RuntimeError for truncated or foreign files
            raise DataError(f"{path}: cannot load the hnsw graph ({exc}); a graph written by hnswlib "
                            "(before Faiss) must be rebuilt") from exc
        if not isinstance(index, faiss.IndexHNSWFlat) or index.metric_type != faiss.METRIC_L2:
            raise DataError(f"{path}: not a Faiss L2 HNSW graph ({type(index).__name__})")
        if index.d != self.dim:
            raise DataError(f"{path}: graph dimension {index.d} does not match the embeddings' {self.dim}")
        held = int(index.ntotal)
        if held > self.size:
            raise DataError(f"{path}: graph holds {held} items, more than the {self.size} embeddings")
        stored = faiss.rev_swig_ptr(faiss.downcast_index(index.storage).get_xb(), held * self.dim)
        stored = stored.reshape(held, self.dim)
        for start in range(0, held, CHECK_BLOCK):
            stop = min(start + CHECK_BLOCK, held)
            if not np.array_equal(stored[start:stop], data[start:stop]):
                raise DataError(f"{path}: the graph's vectors from row {start} on are not the embeddings "
                                "it is loaded with (a graph of another bundle?)")
        return index

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        """The default search depth; each query passes its own to Faiss, so nothing shared changes."""
        self._ef_search = positive_int("index.hnsw.ef_search", value)

    def save(self, path: str | Path) -> Path:
        """Write the graph (and its vectors) in Faiss's binary format."""
        import faiss

        path = Path(path)
        faiss.write_index(self._index, str(path))
        return path

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._search(queries, k, None)

    def _query_filtered(self, queries: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered inside the search: the graph walk passes through the other items but returns none.

        A walk with the plain ef meets ef * share kept items, so its recall falls with the share kept
        (measured, 20k items, ef 128: 0.99 at 50 %, 0.91 at 10 %, 0.63 at 1 %); it searches with ef / share
        instead, which costs ~ef / share distances against kept ones for an exact scan of the kept items.
        So the scan answers when kept^2 <= 2 M ef size (the walk's ~2M distances per step; docs/BENCHMARKS.md
        measures both sides), the walk above, where it is the cheaper one and its recall holds.
        """
        kept = int(mask.sum())
        if self.scans(kept, k):
            return self._search(queries, k, mask, exact_first=True)
        ef = max(self.ef_search, k)
        return self._search(queries, k, mask, ef=min(kept, math.ceil(ef * self.size / kept)))

    def scans(self, kept: int, k: int) -> bool:
        """Whether a filter keeping `kept` items is answered by the exact scan (else by the graph walk)."""
        return kept * kept <= 2 * self.M * max(self.ef_search, k) * self.size

    def _search(self, queries: np.ndarray, k: int, mask: np.ndarray | None, exact_first: bool = False,
                ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        bits = None if mask is None else np.packbits(mask, bitorder="little")
        # the selector reads `bits` in place: it stays referenced until the searches below return
        selector = None if bits is None else faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bits))
        if exact_first:
            sq, labels = self._exact(queries, k, selector)
        else:
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef if ef is not None else max(self.ef_search, k)
            if selector is not None:
                params.sel = selector
            sq, labels = self._index.search(queries, k, params=params)
            short = np.flatnonzero((labels < 0).any(axis=1))
            if len(short):   # rows the walk could not fill: an exact scan answers them
                sq[short], labels[short] = self._exact(queries[short], k, selector)
        # (distance, index) order, so ties resolve as brute force's do
        order = np.lexsort((labels, sq), axis=1)
        labels, sq = np.take_along_axis(labels, order, 1), np.take_along_axis(sq, order, 1)
        return np.sqrt(np.maximum(sq, 0.0)), labels.astype(np.int64)

    def _exact(self, queries: np.ndarray, k: int, selector: Any) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive search over the graph's own stored vectors (those `selector` keeps, if any)."""
        import faiss

        params = None
        if selector is not None:
            params = faiss.SearchParameters()
            params.sel = selector
        return self._index.storage.search(queries, k, params=params)

