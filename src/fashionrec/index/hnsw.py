"""Approximate search with hnswlib (HNSW graph), for inventories where exact search gets slow.

Same contract as the exact kinds: `query(queries, k) -> (distances, indices)` with Euclidean distances,
nearest first. The graph is saved in hnswlib's own binary format (never a pickle) so a deploy bundle can
carry it and a server need not rebuild it; `fashionrec.index.resolve_kind` picks exact or approximate by
inventory size.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from fashionrec.core.config import DEFAULT_SEED
from fashionrec.core.errors import DataError
from fashionrec.index.base import NeighbourIndex, as_matrix, positive_int


def build_thread_count(value: object) -> int:
    """`build_threads` as a thread count: 0 means every core this process may use."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise DataError("index.hnsw.build_threads must be 0 (all cores) or a positive integer, "
                        f"got {value!r}")
    return int(value) or len(os.sched_getaffinity(0))


class HnswIndex(NeighbourIndex):
    """Hierarchical navigable small-world graph over squared-L2 (the order of cosine on unit vectors).

    `build_threads` inserts in parallel (0: every core this process may use); with 1 thread and the
    fixed seed the same embeddings give the same graph, with more the graph depends on thread timing (a
    1M-item build takes minutes per core, see docs/BENCHMARKS.md). `ef_search` trades recall for speed; a
    query asking for more than `ef_search` neighbours raises ef for itself.
    Given a saved `graph_file` of the first m rows, it loads that graph and inserts only rows m.. (the
    incremental add of new inventory items).
    """

    kind = "hnsw"

    def __init__(self, embeddings: np.ndarray, M: int = 16, ef_construction: int = 200,  # noqa: N803
                 ef_search: int = 128, seed: int = DEFAULT_SEED, graph_file: str | Path | None = None,
                 build_threads: int = 0) -> None:
        import hnswlib

        super().__init__(embeddings)
        self.M = positive_int("index.hnsw.M", M)
        self.ef_construction = positive_int("index.hnsw.ef_construction", ef_construction)
        self.ef_search = positive_int("index.hnsw.ef_search", ef_search)
        self.seed = int(seed)
        self.build_threads = build_thread_count(build_threads)
        data = as_matrix(embeddings, "index embeddings")
        self._lock = threading.Lock()  # set_ef mutates the graph object: queries with a raised ef serialise
        self._index = hnswlib.Index(space="l2", dim=self.dim)
        if graph_file is not None:
            path = Path(graph_file)
            if not path.is_file():
                raise DataError(f"hnsw graph file not found: {path}")
            try:
                self._index.load_index(str(path), max_elements=self.size)
            except Exception as exc:  # hnswlib raises RuntimeError for truncated or foreign files
                raise DataError(f"{path}: cannot load the hnsw graph ({exc})") from exc
            held = self._index.get_current_count()
            if held > self.size:
                raise DataError(f"{path}: graph holds {held} items, more than the {self.size} embeddings")
            if held < self.size:  # an incremental add: only the new rows are inserted
                self._index.add_items(data[held:], np.arange(held, self.size),
                                      num_threads=self.build_threads)
        else:
            self._index.init_index(max_elements=self.size, M=self.M, ef_construction=self.ef_construction,
                                   random_seed=self.seed)
            self._index.add_items(data, np.arange(self.size), num_threads=self.build_threads)
        self._index.set_ef(self.ef_search)

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._ef_search = positive_int("index.hnsw.ef_search", value)
        if hasattr(self, "_index"):
            with self._lock:
                self._index.set_ef(self._ef_search)

    def save(self, path: str | Path) -> Path:
        """Write the graph in hnswlib's binary format (the embeddings are stored separately)."""
        path = Path(path)
        self._index.save_index(str(path))
        return path

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            ef = max(self.ef_search, k)
            self._index.set_ef(ef)
            try:
                labels, sq = self._index.knn_query(queries, k=k, num_threads=1)
            finally:
                if ef != self.ef_search:
                    self._index.set_ef(self.ef_search)
        return np.sqrt(np.maximum(sq, 0.0)), labels.astype(np.int64)
